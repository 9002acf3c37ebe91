"""lethe-client: a typed sync and async client for the Lethe API (httpx + pydantic only)."""

from lethe_client._transport import IDEMPOTENT_POSTS, LetheError, Request, RetryPolicy
from lethe_client.aio import AsyncClient
from lethe_client.models import (
    CAMPAIGN_TERMINAL,
    JOB_TERMINAL,
    REQUEST_TERMINAL,
    Campaign,
    CampaignTable,
    Comparison,
    ComparisonRow,
    Dataset,
    DeletionRequest,
    ForgetSet,
    Job,
    JobProgress,
    Model,
    Page,
    Policy,
    Problem,
)
from lethe_client.sync import Client

__version__ = "0.1.0"

__all__ = [
    "CAMPAIGN_TERMINAL",
    "IDEMPOTENT_POSTS",
    "JOB_TERMINAL",
    "REQUEST_TERMINAL",
    "AsyncClient",
    "Campaign",
    "CampaignTable",
    "Client",
    "Comparison",
    "ComparisonRow",
    "Dataset",
    "DeletionRequest",
    "ForgetSet",
    "Job",
    "JobProgress",
    "LetheError",
    "Model",
    "Page",
    "Policy",
    "Problem",
    "Request",
    "RetryPolicy",
]
