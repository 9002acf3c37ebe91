"""Which artifact files the database references, deleting files no row references, and the orphan sweep.

Artifacts are content-addressed per tenant (``<tenant>/<kind>/<aa>/<sha256><suffix>``, see
app.storage.base.content_key), so identical bytes stored for two rows of one tenant share one file: a file
is deleted only when no row references it any more. Rows are deleted first (one transaction, audited);
files after the commit. A crash in between leaves unreferenced files behind, and so does a worker that
wrote its output and then lost its lease: ``sweep_orphans`` (a maintenance beat) deletes files that no row
references once they are older than a grace period (younger ones may belong to a write whose row is not
committed yet).

Every column that holds an artifact key must be listed in ``KEY_COLUMNS`` (job results are searched for
keys whatever the field); the sweep only looks at the kinds in ``ARTIFACT_KINDS`` and leaves anything else
in the store alone. Files are reached only through the ``ArtifactStore`` interface (stat, scan, delete), so
the same rules hold for every backend.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from app.core.db import session_scope
from app.models import Dataset, ForgetSet, Job, Model, ShadowModel, Tenant
from app.services.compliance import audit
from app.storage import ArtifactInfo, ArtifactStore, StorageError

log = logging.getLogger(__name__)

# The kind directories the service writes (app.services.data.datasets/models, workers.jobrunner,
# workers.shadow_store). The sweep never touches other paths.
ARTIFACT_KINDS = frozenset(
    {
        "datasets",
        "models",
        "masks",
        "checkpoints",
        "scores",
        "audits",
        "shadows",
        "grids",  # generative jobs' sample grids (PNG)
        "samples",  # sample jobs' images (npz)
        "classifiers",  # the generative metric classifier, shared by the jobs that name it
    }
)
SWEEP_ACTOR = "system:maintenance"
CHUNK = 500

# Columns that hold one artifact key each.
KEY_COLUMNS: tuple[InstrumentedAttribute[str] | InstrumentedAttribute[str | None], ...] = (
    Dataset.storage_key,
    Model.storage_key,
    Model.mask_key,
    ForgetSet.scores_key,
    Job.checkpoint_key,
    ShadowModel.storage_key,
)
# Job results (JSON) may name artifacts too (an audit's ``arrays_key``): any string in a result that is an
# artifact key of the job's tenant counts as a reference, whatever the field is called.

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tenant_of(key: str) -> uuid.UUID | None:
    head = key.split("/", 1)[0]
    try:
        return uuid.UUID(head)
    except ValueError:
        return None


def is_artifact_key(value: str) -> bool:
    parts = value.split("/")
    return len(parts) >= 3 and parts[1] in ARTIFACT_KINDS and tenant_of(value) is not None


def keys_in(value: Any) -> Iterator[str]:
    """Artifact keys anywhere in a JSON value."""
    if isinstance(value, str):
        if is_artifact_key(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from keys_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from keys_in(item)


def job_keys(job: Job) -> list[str]:
    """The artifacts a job owns: its epoch checkpoint and whatever its result names (an audit's arrays)."""
    keys = [job.checkpoint_key] if job.checkpoint_key else []
    prefix = f"{job.tenant_id}/"
    keys += [k for k in keys_in(job.result) if k.startswith(prefix)]
    return keys


def referenced(session: Session, keys: Iterable[str]) -> set[str]:
    """The subset of ``keys`` that some row still references."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    for chunk in chunks(wanted):
        for column in KEY_COLUMNS:
            found.update(k for k in session.scalars(select(column).where(column.in_(chunk))) if k)
    tenants = sorted({t for t in map(tenant_of, wanted) if t is not None})
    rest = set(wanted) - found
    if rest and tenants:
        # Job results (JSON): read in Python, no dialect-specific JSON operators. Keys are tenant-prefixed,
        # so only the tenants of the keys asked about are read.
        for tenant_chunk in chunks(tenants):
            for result in session.scalars(
                select(Job.result).where(Job.tenant_id.in_(tenant_chunk), Job.result.is_not(None))
            ):
                found.update(k for k in keys_in(result) if k in rest)
    return found


@dataclass
class FileReport:
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    shared: list[str] = field(default_factory=list)  # still referenced by another row: kept
    deferred: list[str] = field(default_factory=list)  # rewritten meanwhile, or not removable: the sweep's

    def merge(self, other: FileReport) -> None:
        self.deleted += other.deleted
        self.bytes_freed += other.bytes_freed
        self.shared += other.shared
        self.deferred += other.deferred


def _unlink(store: ArtifactStore, key: str, *, written_before: float | None) -> tuple[bool, int]:
    """Delete one file unless it was (re)written after ``written_before``. Returns (deleted, bytes)."""
    info = store.stat(key)
    if info is None:
        return True, 0  # already gone
    if written_before is not None and info.modified > written_before:
        return False, 0  # identical content stored again since: its row may be about to commit
    store.delete(key)
    return True, info.size


def delete_unreferenced(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    keys: Iterable[str],
    *,
    written_before: float | None,
) -> FileReport:
    """After the rows were deleted and committed: delete each file no row references any more.

    The reference check and the unlinks share one transaction (a writing one: on SQLite it holds the write
    lock, so a concurrent writer of the same content commits either before the check or after the files are
    gone). A file rewritten after ``written_before`` (an identical upload racing the deletion) is left to
    the orphan sweep, which deletes it later if no row references it.
    """
    report = FileReport()
    wanted = sorted(set(keys))
    if not wanted:
        return report
    with session_scope(factory) as session:
        still = referenced(session, wanted)
        for key in wanted:
            if key in still:
                report.shared.append(key)
                continue
            try:
                deleted, size = _unlink(store, key, written_before=written_before)
            except (OSError, StorageError) as exc:
                log.warning("artifact %s not deleted (the orphan sweep retries): %s", key, exc)
                deleted, size = False, 0
            if deleted:
                report.deleted.append(key)
                report.bytes_freed += size
            else:
                report.deferred.append(key)
    return report


@dataclass
class SweepReport:
    deleted: list[str] = field(default_factory=list)
    temp_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    skipped_young: int = 0
    audited_tenants: list[uuid.UUID] = field(default_factory=list)


def _artifact_files(store: ArtifactStore, tenant_ids: Collection[uuid.UUID] | None) -> Iterator[ArtifactInfo]:
    """Every object under ``<tenant uuid>/<known kind>/`` (of the given tenants), in key order."""
    if tenant_ids is None:
        yield from (info for info in store.scan() if is_artifact_key(info.key))
        return
    for tenant in sorted(str(t) for t in tenant_ids):
        for kind in sorted(ARTIFACT_KINDS):
            yield from store.scan(f"{tenant}/{kind}/")


def sweep_orphans(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    *,
    grace_seconds: float,
    now: float | None = None,
    tenant_ids: Collection[uuid.UUID] | None = None,
) -> SweepReport:
    """Delete artifact files that no row references and that are older than ``grace_seconds``, and the
    leftover temporary files of interrupted writes; one audit row per tenant that lost files.
    ``tenant_ids`` limits the sweep to those tenants' files."""
    report = SweepReport()
    cutoff = (time.time() if now is None else now) - grace_seconds
    candidates: list[str] = []
    for info in _artifact_files(store, tenant_ids):
        if info.modified >= cutoff:
            report.skipped_young += 1
        elif info.temporary:
            if _unlink(store, info.key, written_before=cutoff)[0]:
                report.temp_deleted.append(info.key)
        else:
            candidates.append(info.key)
    per_tenant: dict[uuid.UUID, list[tuple[str, int]]] = defaultdict(list)
    for chunk in chunks(candidates):
        with session_scope(factory) as session:
            still = referenced(session, chunk)
            for key in chunk:
                if key in still:
                    continue
                try:
                    # Re-checked against the cutoff: a put of the same bytes since the listing refreshes it.
                    deleted, size = _unlink(store, key, written_before=cutoff)
                except (OSError, StorageError) as exc:
                    log.warning("orphan sweep: cannot delete %s: %s", key, exc)
                    continue
                if deleted:
                    report.deleted.append(key)
                    report.bytes_freed += size
                    tenant = tenant_of(key)
                    assert tenant is not None
                    per_tenant[tenant].append((key, size))
    for tenant_id, files in per_tenant.items():
        with session_scope(factory) as session:
            if session.get(Tenant, tenant_id) is None:
                continue  # a deleted tenant: nothing to chain the record to
            kinds: dict[str, int] = defaultdict(int)
            for key, _ in files:
                kinds[key.split("/")[1]] += 1
            audit.record(
                session,
                tenant_id=tenant_id,
                actor=SWEEP_ACTOR,
                action="artifacts.sweep",
                resource_type="tenant",
                resource_id=str(tenant_id),
                details={
                    "reason": "artifact files no row references (a deletion interrupted before its files "
                    "were removed, or the output of a job attempt that lost its lease)",
                    "files": len(files),
                    "bytes": sum(size for _, size in files),
                    "kinds": dict(sorted(kinds.items())),
                    "grace_seconds": grace_seconds,
                },
            )
        report.audited_tenants.append(tenant_id)
    if report.deleted or report.temp_deleted:
        log.info(
            "orphan sweep: deleted %d files (%d bytes) and %d temporary files",
            len(report.deleted),
            report.bytes_freed,
            len(report.temp_deleted),
        )
    return report
