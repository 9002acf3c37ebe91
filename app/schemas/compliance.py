"""Request/response models of policies, deletion requests and compliance reports."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from app.models.compliance import DeletionRequestStatus
from app.schemas.jobs import MAX_SEED

METRIC_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"
MAX_RULES = 50
# Metrics an audit job produces (U-LiRA, Kaggle, LiRA, RMIA): a rule on one of them makes the deletion
# request run an audit.
AUDIT_METRIC_PREFIXES = ("ulira_", "kaggle_", "lira_", "rmia_")


def is_audit_metric(metric: str) -> bool:
    return metric.startswith(AUDIT_METRIC_PREFIXES)


def _finite(value: float | None, name: str) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be finite")


class PolicyRule(BaseModel):
    """One check on a metric of the deletion request's result. Exactly one kind of bound:

    - ``max_abs_gap`` with ``relative_to`` (``retrain`` or ``original``): |value - reference| <= gap;
    - ``max`` and/or ``min``: an absolute bound on the value;
    - ``max_drop_from_original``: original - value <= drop (utility loss, e.g. TA).

    ``use`` picks the statistic compared: the point value, or the lower/upper end of its confidence interval
    (``<metric>_ci_low`` / ``<metric>_ci_high``; audits store them for their AUCs). Metrics named
    ``ulira_*``, ``kaggle_*``, ``lira_*``, ``rmia_*`` come from an audit, which the request then runs;
    every other metric comes from the unlearned model's evaluation.
    """

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(pattern=METRIC_PATTERN, examples=["MIA-Efficacy", "ulira_auc", "TA"])
    relative_to: Literal["retrain", "original"] | None = None
    max_abs_gap: float | None = Field(None, ge=0)
    max: float | None = None
    min: float | None = None
    max_drop_from_original: float | None = None
    use: Literal["value", "ci_low", "ci_high"] = "value"
    description: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        for name in ("max_abs_gap", "max", "min", "max_drop_from_original"):
            _finite(getattr(self, name), name)
        kinds = [
            self.max_abs_gap is not None,
            self.max is not None or self.min is not None,
            self.max_drop_from_original is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError("a rule takes exactly one of: max_abs_gap, max/min, max_drop_from_original")
        if (self.max_abs_gap is not None) != (self.relative_to is not None):
            raise ValueError("max_abs_gap needs relative_to (retrain | original), and only it takes one")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError("min exceeds max")
        return self


class PolicyCreate(BaseModel):
    """Publish a policy; a name that exists gets its next version (versions are immutable)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(None, max_length=2000)
    rules: list[PolicyRule] = Field(min_length=1, max_length=MAX_RULES)


class PolicyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: int
    description: str | None
    rules: list[dict[str, Any]]
    sha256: str = Field(description="SHA-256 of the canonical JSON of {name, version, rules}.")
    created_at: datetime


class AuditOptions(BaseModel):
    """How hard the audit (run when a rule names an audit metric) works; the method and its params are the
    request's. Any other field of GET /v1/audit-params may be given too."""

    model_config = ConfigDict(extra="allow")

    shadows: int = Field(16, ge=3, le=256)


class DeletionRequestCreate(BaseModel):
    """Forget ``forget_set_id`` from ``model_id`` with ``method`` and check the result against a policy.

    The policy is ``policy_id`` (one version), or ``policy_name`` with an optional ``policy_version``
    (default: the latest)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    model_id: uuid.UUID
    forget_set_id: uuid.UUID
    method: str = Field(max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    policy_id: uuid.UUID | None = None
    policy_name: str | None = Field(None, pattern=NAME_PATTERN)
    policy_version: StrictInt | None = Field(None, ge=1)
    retrain_params: dict[str, Any] = Field(
        default_factory=dict, description="Params of the retrain oracle (default: the original's recipe)."
    )
    audit: AuditOptions | None = Field(
        None, description="Audit settings, used when a policy rule needs an audit metric."
    )

    @model_validator(mode="after")
    def _policy_ref(self) -> Self:
        if (self.policy_id is None) == (self.policy_name is None):
            raise ValueError("give exactly one of policy_id, policy_name")
        if self.policy_version is not None and self.policy_name is None:
            raise ValueError("policy_version goes with policy_name")
        return self


class PolicyRef(BaseModel):
    id: uuid.UUID
    name: str
    version: int


class DeletionRequestProgress(BaseModel):
    fraction: float
    jobs: dict[str, str] = Field(description="Status of each job by role.")


class DeletionRequestOut(BaseModel):
    id: uuid.UUID
    name: str | None
    status: DeletionRequestStatus
    model_id: uuid.UUID
    forget_set_id: uuid.UUID
    method: str
    params: dict[str, Any]
    seed: int
    device: str
    policy: PolicyRef
    jobs: dict[str, Any] = Field(description="{role: {job_id, reused}}: unlearn, retrain, original, audit.")
    progress: DeletionRequestProgress
    error: dict[str, Any] | None
    report_id: uuid.UUID | None = Field(None, description="The latest report issued for this request.")
    verdict: str | None = None
    created_at: datetime
    finished_at: datetime | None
    version: int


class ReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    deletion_request_id: uuid.UUID
    issued_at: datetime
    verdict: str
    sha256: str
    key_id: str
    algorithm: str


class SigningKeyOut(BaseModel):
    algorithm: str
    key_id: str
    public_key: str = Field(description="Base64 of the raw 32-byte Ed25519 public key.")
    pem: str
