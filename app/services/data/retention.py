"""Retention of regenerable intermediates (``LETHE_RETENTION_DAYS_INTERMEDIATE``, off by default).

Purged once older than the retention period, by a maintenance beat, with one audit row per tenant:

* audit **shadow models** (``shadow_models`` rows and their weights) not used for that long: a later audit
  with the same inputs trains them again (workers.shadow_store treats a missing file the same way);
* **epoch checkpoints** of jobs that ended that long ago (they only serve to resume a running attempt);
* **chunked uploads** (app.services.data.uploads), whatever the retention setting: open ones that received
  no part for ``upload_expiry_seconds`` and completed ones older than that, with their stored parts;
* **per-example arrays**: an audit job's attack scores (``GET /v1/jobs/{id}/arrays`` then answers 410) and a
  searched forget set's per-item difficulty scores (``GET /v1/forget-sets/{id}/scores`` answers 410).
  Metrics, comparisons and campaign tables are rows, never purged; the searched forget set itself stays.

Models (uploaded, trained, retrained, unlearned) are never purged: the retrain models are the gold-standard
rows that comparisons and campaign tables (the reports) are built on; delete them explicitly. Shadows of a
tenant with a queued or running audit are left for the next run, so a running audit never loses a shadow it
has just looked up.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import session_scope
from app.models import ForgetSet, Job, JobStatus, ShadowModel
from app.models.base import utcnow
from app.models.job import TERMINAL_STATUSES
from app.services.compliance import audit
from app.services.data.artifacts import FileReport, delete_unreferenced
from app.services.data.uploads import expire_uploads
from app.storage import ArtifactStore
from workers.engine.job_kinds import kinds_producing, kinds_where

RETENTION_ACTOR = "system:retention"
ACTIVE = (JobStatus.queued, JobStatus.running)
MAX_AUDITED_IDS = 1000


def _report_kinds() -> list[str]:
    """Kinds whose results reference per-example report arrays (audits: ``arrays_key``)."""
    return kinds_producing("report")


def _shadow_store_kinds() -> list[str]:
    """Kinds that read and write the tenant's shadow models while they run (audits)."""
    return kinds_where(uses_shadow_store=True)


@dataclass
class RetentionReport:
    shadow_models: list[uuid.UUID] = field(default_factory=list)
    checkpoints: list[uuid.UUID] = field(default_factory=list)  # job ids
    audit_arrays: list[uuid.UUID] = field(default_factory=list)  # job ids
    search_scores: list[uuid.UUID] = field(default_factory=list)  # forget set ids
    expired_uploads: list[uuid.UUID] = field(default_factory=list)  # chunked uploads deleted with their parts
    files: FileReport = field(default_factory=FileReport)
    tenants: list[uuid.UUID] = field(default_factory=list)

    @property
    def purged(self) -> int:
        # Intermediates only: expired uploads are not retention's to keep (they go whatever the setting).
        return (
            len(self.shadow_models) + len(self.checkpoints) + len(self.audit_arrays) + len(self.search_scores)
        )


def _candidate_tenants(session: Session, cutoff: datetime) -> set[uuid.UUID]:
    last_used = func.coalesce(ShadowModel.last_used_at, ShadowModel.created_at)
    tenants = set(session.scalars(select(ShadowModel.tenant_id).where(last_used < cutoff).distinct()))
    tenants |= set(
        session.scalars(
            select(Job.tenant_id)
            .where(
                Job.status.in_(TERMINAL_STATUSES),
                Job.finished_at < cutoff,
                (Job.checkpoint_key.is_not(None)) | (Job.kind.in_(_report_kinds())),
            )
            .distinct()
        )
    )
    tenants |= set(
        session.scalars(
            select(ForgetSet.tenant_id)
            .where(ForgetSet.scores_key.is_not(None), ForgetSet.created_at < cutoff)
            .distinct()
        )
    )
    return tenants


def _purge_tenant(
    session: Session, tenant_id: uuid.UUID, cutoff: datetime, now: datetime, report: RetentionReport
) -> list[str]:
    keys: list[str] = []
    purged: dict[str, list[str]] = defaultdict(list)
    audit_running = session.scalar(
        select(func.count(Job.id)).where(
            Job.tenant_id == tenant_id, Job.kind.in_(_shadow_store_kinds()), Job.status.in_(ACTIVE)
        )
    )
    if not audit_running:
        last_used = func.coalesce(ShadowModel.last_used_at, ShadowModel.created_at)
        for shadow in session.scalars(
            select(ShadowModel).where(ShadowModel.tenant_id == tenant_id, last_used < cutoff)
        ):
            keys.append(shadow.storage_key)
            purged["shadow_models"].append(str(shadow.id))
            report.shadow_models.append(shadow.id)
            session.delete(shadow)
    ended = session.scalars(
        select(Job).where(
            Job.tenant_id == tenant_id,
            Job.status.in_(TERMINAL_STATUSES),
            Job.finished_at < cutoff,
            (Job.checkpoint_key.is_not(None)) | (Job.kind.in_(_report_kinds())),
        )
    ).all()
    for job in ended:
        values: dict[str, Any] = {}
        if job.checkpoint_key:
            keys.append(job.checkpoint_key)
            values.update(checkpoint_key=None, checkpoint_epoch=None)
            purged["checkpoints"].append(str(job.id))
            report.checkpoints.append(job.id)
        arrays_key = (job.result or {}).get("arrays_key")
        if isinstance(arrays_key, str) and arrays_key:
            keys.append(arrays_key)
            result = {k: v for k, v in (job.result or {}).items() if k != "arrays_key"}
            result["arrays_purged_at"] = now.isoformat()
            values["result"] = result
            purged["audit_arrays"].append(str(job.id))
            report.audit_arrays.append(job.id)
        if values:
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(**values, version=Job.version + 1)
                .execution_options(synchronize_session=False)
            )
    for forget_set in session.scalars(
        select(ForgetSet).where(
            ForgetSet.tenant_id == tenant_id, ForgetSet.scores_key.is_not(None), ForgetSet.created_at < cutoff
        )
    ):
        assert forget_set.scores_key is not None
        keys.append(forget_set.scores_key)
        forget_set.scores_key = None
        purged["search_scores"].append(str(forget_set.id))
        report.search_scores.append(forget_set.id)
    if purged:
        audit.record(
            session,
            tenant_id=tenant_id,
            actor=RETENTION_ACTOR,
            action="retention.purge",
            resource_type="tenant",
            resource_id=str(tenant_id),
            details={
                "cutoff": cutoff.isoformat(),
                "counts": {name: len(ids) for name, ids in sorted(purged.items())},
                "ids": {name: ids[:MAX_AUDITED_IDS] for name, ids in sorted(purged.items())},
            },
        )
        report.tenants.append(tenant_id)
    return keys


def purge_intermediates(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    settings: Settings,
    *,
    now: datetime | None = None,
    tenant_ids: Collection[uuid.UUID] | None = None,
) -> RetentionReport:
    """One retention run: per tenant, drop the rows' references and audit it in one transaction, then
    delete the files no row references any more. ``tenant_ids`` limits the run to those tenants."""
    report = RetentionReport()
    now = now or utcnow()
    # Incomplete chunked uploads are never kept, whatever the intermediates' retention is.
    report.expired_uploads = expire_uploads(factory, store, settings, now=now, tenant_ids=tenant_ids)
    days = settings.retention_days_intermediate
    if days is None:
        return report
    started = time.time()
    cutoff = now - timedelta(days=days)
    with session_scope(factory) as session:
        tenants = sorted(_candidate_tenants(session, cutoff))
    if tenant_ids is not None:
        tenants = [t for t in tenants if t in tenant_ids]
    for tenant_id in tenants:
        with session_scope(factory) as session:
            keys = _purge_tenant(session, tenant_id, cutoff, now, report)
        report.files.merge(delete_unreferenced(factory, store, keys, written_before=started))
    return report
