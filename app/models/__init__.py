"""ORM tables. Importing this package registers every table on ``Base.metadata``."""

from app.models.audit import AuditCheckpoint, AuditEvent
from app.models.base import Base
from app.models.compliance import ComplianceReport, DeletionRequest, DeletionRequestStatus, Policy
from app.models.job import Campaign, CampaignStatus, Job, JobEvent, JobKind, JobStatus, Metric
from app.models.resources import Dataset, ForgetSet, Model, ShadowModel
from app.models.tenant import ApiKey, Tenant
from app.models.uploads import Upload, UploadPurpose, UploadStatus

__all__ = [
    "ApiKey",
    "AuditCheckpoint",
    "AuditEvent",
    "Base",
    "Campaign",
    "CampaignStatus",
    "ComplianceReport",
    "Dataset",
    "DeletionRequest",
    "DeletionRequestStatus",
    "ForgetSet",
    "Job",
    "JobEvent",
    "JobKind",
    "JobStatus",
    "Metric",
    "Model",
    "Policy",
    "ShadowModel",
    "Tenant",
    "Upload",
    "UploadPurpose",
    "UploadStatus",
]
