"""Request/response models of policies, deletion requests and compliance reports."""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, model_validator

from app.models.compliance import DeletionRequestStatus
from app.schemas.jobs import MAX_SEED

METRIC_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"
METRIC_NAME = re.compile(METRIC_PATTERN)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"
MAX_RULES = 50
# Metrics an audit job produces (U-LiRA, Kaggle, LiRA, RMIA): a rule on one of them makes the deletion
# request run an audit.
AUDIT_METRIC_PREFIXES = ("ulira_", "kaggle_", "lira_", "rmia_")
# Metrics a recovery audit produces (workers.engine.recovery.job.summarise): a rule on one of them makes the
# deletion request run recovery audits of the unlearned model and of the identity control's output.
RECOVERY_METRIC_PREFIXES = ("recovery_", "transform.", "relearn.")
STAGE_AUDIT = "audit"
STAGE_RECOVERY = "recovery"
# Which further stage of a deletion request measures a metric, one entry per stage (first match wins): the
# report reads such a rule from that stage's job, for the unlearned model and for the controls alike.
METRIC_STAGES: dict[str, tuple[str, ...]] = {
    STAGE_AUDIT: AUDIT_METRIC_PREFIXES,
    STAGE_RECOVERY: RECOVERY_METRIC_PREFIXES,
}


MAX_REFERENCE = 200
MAX_CHECK_METRICS = 500
# Characters that would let a reference rewrite what a reader of the report sees: bidirectional overrides and
# isolates (reordering text) in addition to the control characters (categories Cc/Cs/Co/Cn, Zl/Zp).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REJECTED_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})


def metric_stage(metric: str) -> str | None:
    """The stage whose job measures ``metric`` (``audit``, ``recovery``), None for the evaluation's."""
    return next((stage for stage, prefixes in METRIC_STAGES.items() if metric.startswith(prefixes)), None)


def is_audit_metric(metric: str) -> bool:
    return metric_stage(metric) == STAGE_AUDIT


def is_recovery_metric(metric: str) -> bool:
    return metric_stage(metric) == STAGE_RECOVERY


def _printable_reference(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    for char in value:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _REJECTED_CATEGORIES:
            raise ValueError(f"must not contain control characters (found U+{ord(char):04X})")
    return value


# A reference to a person or a ticket, shown in the signed report: one printable line.
Reference = Annotated[
    str, Field(min_length=1, max_length=MAX_REFERENCE), AfterValidator(_printable_reference)
]


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


class PolicyRef(BaseModel):
    id: uuid.UUID
    name: str
    version: int


class PolicyWarning(BaseModel):
    """Why a rule (or the whole policy) cannot tell an unlearned model from the untouched original."""

    code: Literal[
        "holds-for-original",  # met by the original by construction (a utility rule: fine beside others)
        "always-satisfied",  # the bounds cover every value the metric can take
        "control-passes",  # the measured control meets the rule
        "vacuous-policy",  # the untouched model would pass the whole policy
    ]
    rule_index: int | None = Field(None, description="The rule concerned; null for the whole policy.")
    detail: str


class PolicyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: int
    description: str | None
    rules: list[dict[str, Any]]
    sha256: str = Field(description="SHA-256 of the canonical JSON of {name, version, rules}.")
    created_at: datetime
    warnings: list[PolicyWarning] = Field(
        default_factory=list,
        description=(
            "Rules the untouched original meets whatever happens (by construction or because the bounds"
            " cover the metric's range). A policy whose every rule is such can never give a request a pass:"
            " its verdicts are inconclusive. Check a policy against measured controls with"
            " POST /v1/policies/check."
        ),
    )


class CheckMetrics(BaseModel):
    """Measured metrics by role, as ``{metric: value}``: ``original`` (the untouched model's evaluation on the
    forget set), ``retrain`` (the oracle, for gap rules), ``audit`` (an audit of the ``identity`` method,
    for audit-metric rules) and ``recovery`` (a recovery audit of the untouched model, for recovery rules)."""

    model_config = ConfigDict(extra="forbid")

    original: dict[str, float] = Field(max_length=MAX_CHECK_METRICS)
    retrain: dict[str, float] = Field(default_factory=dict, max_length=MAX_CHECK_METRICS)
    audit: dict[str, float] = Field(default_factory=dict, max_length=MAX_CHECK_METRICS)
    recovery: dict[str, float] = Field(default_factory=dict, max_length=MAX_CHECK_METRICS)

    @model_validator(mode="after")
    def _finite_names(self) -> Self:
        for role in ("original", "retrain", "audit", "recovery"):
            for name, value in getattr(self, role).items():
                if not METRIC_NAME.fullmatch(name):
                    raise ValueError(f"{role}: metric name {name[:100]!r} does not match {METRIC_PATTERN}")
                _finite(value, f"{role}.{name}")
        return self


class PolicyCheck(BaseModel):
    """Dry-run a policy (published, or rules not yet published) against the untouched-model control.

    Evidence (at most one): ``model_id`` + ``forget_set_id`` (the newest succeeded evaluation of that model
    on that forget set, with the newest retrain oracle and identity audit of the pair, if any),
    ``deletion_request_id`` (that request's own controls, once its jobs succeeded), ``original_job_id`` (a
    succeeded evaluation of the original on the forget set, with the retrain oracle's job for gap rules,
    an identity audit's job for audit rules and a recovery audit of an identity output for recovery rules),
    or ``metrics`` given directly. Without evidence only what
    holds by construction is checked."""

    model_config = ConfigDict(extra="forbid")

    policy_id: uuid.UUID | None = None
    rules: list[PolicyRule] | None = Field(None, min_length=1, max_length=MAX_RULES)
    model_id: uuid.UUID | None = None
    forget_set_id: uuid.UUID | None = None
    deletion_request_id: uuid.UUID | None = None
    original_job_id: uuid.UUID | None = None
    retrain_job_id: uuid.UUID | None = None
    audit_job_id: uuid.UUID | None = None
    recovery_job_id: uuid.UUID | None = None
    metrics: CheckMetrics | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.policy_id is None) == (self.rules is None):
            raise ValueError("give exactly one of policy_id, rules")
        if (self.model_id is None) != (self.forget_set_id is None):
            raise ValueError("model_id and forget_set_id go together")
        evidence = [self.model_id, self.deletion_request_id, self.original_job_id, self.metrics]
        if sum(e is not None for e in evidence) > 1:
            raise ValueError(
                "give at most one of model_id + forget_set_id, deletion_request_id, original_job_id, metrics"
            )
        if self.original_job_id is None and (
            self.retrain_job_id or self.audit_job_id or self.recovery_job_id
        ):
            raise ValueError("retrain_job_id, audit_job_id and recovery_job_id go with original_job_id")
        return self


class RuleOutcome(BaseModel):
    index: int
    metric: str
    statement: str = Field(description="The rule in plain language.")
    meaning: str = Field(description="What the rule checks, in one sentence.")
    finding: str = Field(description="The measured numbers, rounded, and the margin.")
    passed: bool | None = Field(description="null: a number the rule needs was not measured.")


class ControlCheck(BaseModel):
    evidence: Literal["inputs", "deletion_request", "jobs", "metrics"]
    jobs: dict[str, uuid.UUID] = Field(
        default_factory=dict, description="The jobs whose metrics were used, by role (none for metrics)."
    )
    outcome: Literal["pass", "fail", "inconclusive"] = Field(
        description="The untouched model's verdict under the policy: 'pass' means the policy is vacuous."
    )
    rules: list[RuleOutcome]


class PolicyCheckOut(BaseModel):
    id: uuid.UUID = Field(description="This check (its audit row names it).")
    policy: PolicyRef | None = Field(None, description="The published policy checked, if one was named.")
    separates: bool | None = Field(
        description=(
            "true: the untouched model fails at least one rule, so a pass would mean something; false: it"
            " passes every rule (by construction or as measured), so requests under this policy can only be"
            " inconclusive or fail; null: no evidence and nothing decided by construction."
        )
    )
    summary: str
    warnings: list[PolicyWarning]
    control: ControlCheck | None = None


class AuditOptions(BaseModel):
    """How hard the audit (run when a rule names an audit metric) works; the method and its params are the
    request's. Any other field of GET /v1/audit-params may be given too."""

    model_config = ConfigDict(extra="allow")

    shadows: int = Field(16, ge=3, le=256)


class RecoveryOptions(BaseModel):
    """How the recovery audits (run when a rule names a recovery metric) work: any field of the ``recovery``
    kind's params (GET /v1/job-kinds) but the model ids, which the request fills in (its original, its
    retrain)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _no_model_ids(self) -> Self:
        given = sorted(set(self.model_extra or {}) & {"original_model_id", "retrain_model_id"})
        if given:
            raise ValueError(f"{', '.join(given)}: the request's own original and retrain are audited")
        return self


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
    recovery: RecoveryOptions | None = Field(
        None, description="Recovery-audit settings, used when a policy rule needs a recovery metric."
    )
    subject_reference: Reference | None = Field(
        None,
        description=(
            "The data subject's reference in your records (a pseudonymous id, not a name): carried into the"
            " signed report. Personal data: kept out of logs and the audit trail."
        ),
        examples=["subject-4711"],
    )
    ticket_reference: Reference | None = Field(
        None, description="The erasure request's ticket in your case system.", examples=["DSR-2026-0142"]
    )
    requested_by: Reference | None = Field(
        None, description="Who asked for the deletion (person or role).", examples=["privacy-office"]
    )

    @model_validator(mode="after")
    def _policy_ref(self) -> Self:
        if (self.policy_id is None) == (self.policy_name is None):
            raise ValueError("give exactly one of policy_id, policy_name")
        if self.policy_version is not None and self.policy_name is None:
            raise ValueError("policy_version goes with policy_name")
        return self


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
    subject_reference: str | None = None
    ticket_reference: str | None = None
    requested_by: str | None = None
    jobs: dict[str, Any] = Field(
        description=(
            "{role: {job_id, reused}}: unlearn, retrain, original (the untouched-model control), identity"
            " (the no-op method's control) and, when a rule needs an audit, audit and audit_identity; when"
            " a rule needs a recovery audit, recovery and recovery_identity (added once the unlearning, the"
            " retrain and the identity control have succeeded)."
        )
    )
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
