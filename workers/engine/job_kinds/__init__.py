"""The job-kind registry: one :class:`JobKindSpec` per kind (torch-free, so the API validates with it).

Adding a kind means one entry (``entries.py``, or ``JOB_KINDS.register`` elsewhere) whose ``run`` names its
engine function; the API's submission validation (``app.services.jobs.submission``), the quotas, the engine's
``execute`` and the worker's job runner read the entry instead of testing kind names. ``JobCreate.kind`` is
validated against this registry and ``jobs.kind`` stores the entry's name (a VARCHAR, no database enum), so a
new kind reaches the HTTP API and the database without a migration; ``app.models.JobKind`` only names the
built-in kinds for code that submits them.
"""

from __future__ import annotations

from workers.engine.errors import UnknownEntryError
from workers.engine.job_kinds.entries import ENTRIES
from workers.engine.job_kinds.spec import (
    ComparisonRole,
    EngineRun,
    Input,
    JobKindSpec,
    MethodUse,
    Output,
    Presence,
    SubmissionContext,
    SubmissionRefused,
)
from workers.engine.registry import Registry

JOB_KINDS: Registry[JobKindSpec] = Registry("job kind")
for _entry in ENTRIES:
    JOB_KINDS.register(_entry)


def job_kind(name: str) -> JobKindSpec:
    """The entry of ``name`` (a ``JobKind`` member works too: it is a str)."""
    return JOB_KINDS.get(str(name))


def kinds_where(**fields: object) -> list[str]:
    """Names of the kinds whose fields equal ``fields`` (e.g. ``comparison_role="reference"``)."""
    return [spec.name for spec in JOB_KINDS if all(getattr(spec, k) == v for k, v in fields.items())]


def kinds_producing(output: Output) -> list[str]:
    return [spec.name for spec in JOB_KINDS if output in spec.produces]


def comparison_role(kind: str) -> ComparisonRole | None:
    """The part ``kind``'s rows play in a forget set's comparison (None: they are not compared)."""
    return job_kind(kind).comparison_role


def kinds_compared() -> list[str]:
    """Kinds whose succeeded jobs are rows of a forget set's comparison."""
    return [spec.name for spec in JOB_KINDS if spec.comparison_role is not None]


__all__ = [
    "JOB_KINDS",
    "ComparisonRole",
    "EngineRun",
    "Input",
    "JobKindSpec",
    "MethodUse",
    "Output",
    "Presence",
    "SubmissionContext",
    "SubmissionRefused",
    "UnknownEntryError",
    "comparison_role",
    "job_kind",
    "kinds_compared",
    "kinds_producing",
    "kinds_where",
]
