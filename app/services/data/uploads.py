"""Resumable chunked uploads: a file above the single-request limit sent in parts, then validated and
registered as a dataset or model by the very code a single-request upload goes through.

* ``POST /v1/uploads`` declares the purpose (``dataset`` | ``model``), the whole size and optionally the
  whole file's SHA-256; the answer's ``id`` names the upload.
* ``PUT /v1/uploads/{id}`` appends one part: ``Content-Range: bytes START-END/TOTAL`` (START must be the
  bytes received so far, TOTAL the declared size) and ``Content-Digest: sha-256=:<base64>:`` (RFC 9530) of
  the part. The part is streamed to a staging file while it is hashed; only a part whose digest matches is
  stored (an artifact of its own) and counted, in one transaction with the row, so a failed or repeated
  part leaves the upload as it was.
* ``GET /v1/uploads/{id}`` says what was received (``received_bytes``, ``ranges``), i.e. where to resume.
* ``POST /v1/uploads/{id}/complete`` joins the parts into a staging file and hands it to the purpose's
  intake: the dataset source ``upload`` or the model upload, with every check of the single-request path
  (the upload size limit being ``max_chunked_upload_bytes``). A refusal leaves the upload open and nothing
  registered; success registers the resource, marks the upload completed and deletes its parts.
* ``DELETE /v1/uploads/{id}`` abandons it.

A tenant's incomplete bytes (received parts of open uploads) are capped (``max_incomplete_upload_bytes_
per_tenant``) and count towards its storage quota, both checked on every part under the tenant lock, and its
open uploads are capped in number; an open upload that receives nothing for ``upload_expiry_seconds``
expires (404) and the maintenance retention sweep deletes it and its parts (``expire_uploads``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import session_scope
from app.core.problems import (
    Conflict,
    DomainError,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    validation_errors,
)
from app.models import Tenant, Upload, UploadPurpose, UploadStatus
from app.models.base import utcnow
from app.schemas.common import NAME_MAX, NAME_PATTERN
from app.services.compliance import audit
from app.services.ops import quotas
from app.storage import ArtifactStore, StorageError
from workers.engine.registry import Registry
from workers.engine.task_types import DatasetTask, TaskType

log = logging.getLogger(__name__)

UPLOAD_KIND = "uploads"  # key prefix <tenant>/uploads/<id>/: outside the orphan sweep's kinds
EXPIRY_ACTOR = "system:retention"
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
DIGEST_ITEM = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):\s*(?:,|$)")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK_BYTES = 8 * 1024 * 1024


class TooManyOpenUploads(DomainError):
    status, code, title = 429, "too-many-open-uploads", "Too many open uploads"


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: UploadPurpose = Field(description="What the file becomes once complete: a dataset or a model.")
    size_bytes: int = Field(gt=0, description="The whole file's size; parts must add up to exactly this.")
    sha256: str | None = Field(
        None,
        pattern=SHA256_HEX.pattern,
        description="Optional SHA-256 (hex) of the whole file.",
    )


class DatasetCompletion(BaseModel):
    """What POST /v1/datasets/upload takes beside the file."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    task: DatasetTask = DatasetTask.classification
    normalization: str | dict[str, Any] | None = Field(
        None, description='"computed", or {"mean": [...], "std": [...]}: as the single-request upload.'
    )


class ModelCompletion(BaseModel):
    """What POST /v1/models takes beside the weights."""

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    dataset_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Registered:
    resource_type: str  # dataset | model
    resource_id: uuid.UUID
    created: bool
    audit_action: str
    audit_details: dict[str, Any]


@dataclass(frozen=True)
class UploadPurposeSpec:
    """One entry per purpose: the completion body it takes and the intake it hands the joined file to."""

    name: str
    completion: type[BaseModel]
    register: Callable[[Session, ArtifactStore, Settings, uuid.UUID, Path, Any], Registered]


UPLOAD_PURPOSES: Registry[UploadPurposeSpec] = Registry("upload purpose")


def _register_dataset(
    session: Session, store: ArtifactStore, settings: Settings, tenant_id: uuid.UUID, path: Path, body: Any
) -> Registered:
    import json

    from app.services.data.dataset_sources import UPLOAD, DatasetUpload, IntakeContext, create_dataset
    from app.services.data.datasets import parse_normalization

    assert isinstance(body, DatasetCompletion)
    text = json.dumps(body.normalization) if isinstance(body.normalization, dict) else body.normalization
    context = IntakeContext(session=session, store=store, settings=settings, tenant_id=tenant_id)
    with open(path, "rb") as handle:
        upload = DatasetUpload(
            file=handle,
            name=body.name or "upload",
            task=TaskType(body.task.value),
            normalization=parse_normalization(text),
            max_bytes=settings.max_chunked_upload_bytes,
        )
        intake = create_dataset(UPLOAD, context, upload)
    return Registered("dataset", intake.row.id, intake.created, intake.audit_action, intake.audit_details)


def _register_model(
    session: Session, store: ArtifactStore, settings: Settings, tenant_id: uuid.UUID, path: Path, body: Any
) -> Registered:
    from app.services.data.models import store_uploaded_model

    assert isinstance(body, ModelCompletion)
    row = store_uploaded_model(
        session,
        store,
        settings,
        tenant_id=tenant_id,
        architecture=body.architecture,
        config=body.config,
        name=body.name,
        dataset_id=body.dataset_id,
        weights=path.read_bytes(),  # the safetensors checks read the whole header and every tensor's range
        max_bytes=settings.max_chunked_upload_bytes,
    )
    details = {"architecture": body.architecture, "sha256": row.sha256, "bytes": row.size_bytes}
    return Registered("model", row.id, True, "model.upload", details)


UPLOAD_PURPOSES.register(UploadPurposeSpec(UploadPurpose.dataset.value, DatasetCompletion, _register_dataset))
UPLOAD_PURPOSES.register(UploadPurposeSpec(UploadPurpose.model.value, ModelCompletion, _register_model))


# --------------------------------------------------------------------------------------------- helpers
def part_prefix(upload: Upload) -> str:
    return f"{upload.tenant_id}/{UPLOAD_KIND}/{upload.id}/"


def staging_prefix(tenant_id: uuid.UUID) -> str:
    # Staged in the tenant's datasets directory, as the dataset intake stages: a leftover of a process that
    # died mid-part is a temporary file there, which the orphan sweep deletes after its grace period.
    return f"{tenant_id}/datasets"


def _not_found(upload_id: uuid.UUID) -> NotFound:
    detail = f"upload {upload_id} not found (unknown, another tenant's, or expired)"
    return NotFound(detail, code="upload-not-found")


def _expired(upload: Upload, now: datetime) -> bool:
    return upload.status == UploadStatus.open.value and upload.expires_at <= now


def get_upload(session: Session, tenant_id: uuid.UUID, upload_id: uuid.UUID, *, lock: bool = False) -> Upload:
    """The tenant's upload (locked for update when ``lock``); 404 for unknown, foreign and expired ids."""
    query = select(Upload).where(Upload.id == upload_id)
    if lock:
        query = query.with_for_update()
    upload = session.scalar(query)
    if upload is None or upload.tenant_id != tenant_id or _expired(upload, utcnow()):
        raise _not_found(upload_id)
    return upload


def _lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    # As quotas and audit.record do (FOR NO KEY UPDATE): two parts of one tenant racing for the last bytes
    # of its cap are counted one after the other.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))


def incomplete_bytes(session: Session, tenant_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Upload.received_bytes), 0)).where(
                Upload.tenant_id == tenant_id, Upload.status == UploadStatus.open.value
            )
        )
        or 0
    )


def describe(upload: Upload) -> dict[str, Any]:
    """The upload as the API shows it: where to resume (``received_bytes``; ``ranges`` inclusive)."""
    return {
        "id": upload.id,
        "purpose": upload.purpose,
        "status": upload.status,
        "size_bytes": upload.size_bytes,
        "received_bytes": upload.received_bytes,
        "ranges": [[0, upload.received_bytes - 1]] if upload.received_bytes else [],
        "parts": [{k: part[k] for k in ("offset", "size", "sha256")} for part in upload.parts],
        "sha256": upload.sha256,
        "created_at": upload.created_at,
        "expires_at": upload.expires_at,
        "result_type": upload.result_type,
        "result_id": upload.result_id,
    }


def parse_content_range(header: str | None) -> tuple[int, int, int | None]:
    """``bytes START-END/TOTAL`` (END inclusive; TOTAL may be ``*``) → (start, end, total)."""
    match = CONTENT_RANGE.match((header or "").strip())
    if match is None or int(match.group(2)) < int(match.group(1)):
        raise DomainError(
            "each part needs Content-Range: bytes START-END/TOTAL (END inclusive, END >= START)",
            code="invalid-content-range",
            status=400,
        )
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def parse_content_digest(header: str | None) -> str:
    """The hex SHA-256 from ``Content-Digest: sha-256=:<base64>:`` (RFC 9530)."""
    match = DIGEST_ITEM.search(header or "")
    digest = b""
    if match is not None:
        try:
            digest = base64.b64decode(match.group(1), validate=True)
        except binascii.Error:
            digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise DomainError(
            "each part needs Content-Digest: sha-256=:<base64 of the part's SHA-256>: (RFC 9530)",
            code="invalid-content-digest",
            status=400,
        )
    return digest.hex()


# ------------------------------------------------------------------------------------------ operations
def create_upload(session: Session, settings: Settings, tenant_id: uuid.UUID, body: UploadCreate) -> Upload:
    if body.size_bytes > settings.max_chunked_upload_bytes:
        raise PayloadTooLarge(
            f"the upload declares {body.size_bytes} bytes; the limit is {settings.max_chunked_upload_bytes}",
            code="upload-too-large",
        )
    _lock_tenant(session, tenant_id)
    now = utcnow()
    open_count = int(
        session.scalar(
            select(func.count(Upload.id)).where(
                Upload.tenant_id == tenant_id,
                Upload.status == UploadStatus.open.value,
                Upload.expires_at > now,
            )
        )
        or 0
    )
    if open_count >= settings.max_open_uploads_per_tenant:
        raise TooManyOpenUploads(
            f"this tenant has {open_count} open uploads, the most allowed "
            f"(LETHE_MAX_OPEN_UPLOADS_PER_TENANT): complete or delete one first"
        )
    upload = Upload(
        tenant_id=tenant_id,
        purpose=body.purpose.value,
        status=UploadStatus.open.value,
        size_bytes=body.size_bytes,
        received_bytes=0,
        sha256=body.sha256,
        parts=[],
        updated_at=now,
        expires_at=now + timedelta(seconds=settings.upload_expiry_seconds),
    )
    session.add(upload)
    session.flush()
    return upload


def append_part(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    upload_id: uuid.UUID,
    content_range: tuple[int, int, int | None],
    staged: Path,
    size: int,
    sha256: str,
    claimed_sha256: str,
) -> Upload:
    """Store one received part (``staged``, ``size`` bytes hashing to ``sha256``) and count it; every
    check comes first, so a refused part changes nothing. The caller commits, then the part is durable."""
    upload = get_upload(session, tenant_id, upload_id, lock=True)  # the upload row, then the tenant row
    start, end, total = content_range
    if upload.status != UploadStatus.open.value:
        raise Conflict(f"upload {upload_id} is already {upload.status}", code="upload-not-open")
    if total is not None and total != upload.size_bytes:
        raise Unprocessable(
            f"Content-Range says the file has {total} bytes; the upload declared {upload.size_bytes}",
            code="upload-size-mismatch",
        )
    if end - start + 1 != size:
        raise DomainError(
            f"Content-Range covers {end - start + 1} bytes but the body has {size}",
            code="invalid-content-range",
            status=400,
        )
    if start != upload.received_bytes:
        raise DomainError(
            f"this part starts at byte {start}; the upload has {upload.received_bytes} bytes, so the next "
            f"part starts at {upload.received_bytes} (GET the upload to resume)",
            code="upload-offset-mismatch",
            status=409,
            errors=[{"expected_offset": upload.received_bytes, "offset": start}],
        )
    if start + size > upload.size_bytes:
        raise PayloadTooLarge(
            f"this part ends at byte {start + size}, beyond the declared size of {upload.size_bytes}",
            code="upload-too-large",
        )
    if sha256 != claimed_sha256:
        raise Unprocessable(
            f"the part's SHA-256 is {sha256}; its Content-Digest says {claimed_sha256}: resend it",
            code="digest-mismatch",
        )
    _lock_tenant(session, tenant_id)
    pending = incomplete_bytes(session, tenant_id)
    cap = settings.max_incomplete_upload_bytes_per_tenant
    if pending + size > cap:
        raise PayloadTooLarge(
            f"this tenant holds {pending} bytes in incomplete uploads; this part's {size} would exceed the "
            f"cap of {cap} (LETHE_MAX_INCOMPLETE_UPLOAD_BYTES_PER_TENANT): complete or delete uploads first",
            code="incomplete-uploads-quota-exceeded",
            errors=[{"incomplete_bytes": pending, "limit_bytes": cap, "requested_bytes": size}],
        )
    # Received parts take disk like stored datasets do: they count towards the storage quota too.
    quotas.check_storage(session, tenant_id, pending + size, settings, what="this upload's received parts")
    key = f"{part_prefix(upload)}{start:016d}.part"
    store.put_file(key, staged)
    now = utcnow()
    upload.parts = [*upload.parts, {"offset": start, "size": size, "sha256": sha256, "key": key}]
    upload.received_bytes = start + size
    upload.updated_at = now
    upload.expires_at = now + timedelta(seconds=settings.upload_expiry_seconds)
    session.flush()
    return upload


def parse_completion(upload: Upload, body: dict[str, Any]) -> BaseModel:
    spec = UPLOAD_PURPOSES.get(upload.purpose)
    try:
        return spec.completion.model_validate(body)
    except ValidationError as exc:
        raise Unprocessable(
            f"invalid completion of a {upload.purpose} upload",
            code="invalid-upload-completion",
            errors=validation_errors(exc.errors()),
        ) from exc


def _join_parts(store: ArtifactStore, upload: Upload) -> Path:
    """The parts, in order, in one staging file (each part re-read and re-hashed: a part changed in the store
    since it was received is refused rather than registered)."""
    staged = store.staging_path(staging_prefix(upload.tenant_id))
    whole = hashlib.sha256()
    try:
        with open(staged, "wb") as out:
            for part in upload.parts:
                data = store.get(part["key"])
                if hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise Conflict(
                        f"the stored part at offset {part['offset']} no longer matches its digest",
                        code="upload-part-corrupt",
                    )
                whole.update(data)
                out.write(data)
        if upload.sha256 is not None and whole.hexdigest() != upload.sha256:
            raise Unprocessable(
                f"the joined file's SHA-256 is {whole.hexdigest()}; the upload declared {upload.sha256}",
                code="digest-mismatch",
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def complete_upload(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    upload_id: uuid.UUID,
    body: dict[str, Any],
) -> tuple[Upload, Registered]:
    """Validate and register the joined file through the purpose's intake. The caller audits and commits,
    then deletes the parts (``delete_parts``); a refusal raises with nothing registered, the upload open."""
    upload = get_upload(session, tenant_id, upload_id, lock=True)
    if upload.status != UploadStatus.open.value:
        raise Conflict(f"upload {upload_id} is already {upload.status}", code="upload-not-open")
    if upload.received_bytes != upload.size_bytes:
        raise Conflict(
            f"upload {upload_id} has {upload.received_bytes} of its {upload.size_bytes} bytes",
            code="upload-incomplete",
            errors=[{"received_bytes": upload.received_bytes, "size_bytes": upload.size_bytes}],
        )
    completion = parse_completion(upload, body)
    staged = _join_parts(store, upload)
    try:
        registered = UPLOAD_PURPOSES.get(upload.purpose).register(
            session, store, settings, tenant_id, staged, completion
        )
    finally:
        staged.unlink(missing_ok=True)
    # The dataset intake releases its locks while it converts the arrays (a rollback): a concurrent complete
    # or delete of this upload may have happened meanwhile. Raising rolls the registration back with it.
    upload = get_upload(session, tenant_id, upload_id, lock=True)
    if upload.status != UploadStatus.open.value:
        raise Conflict(f"upload {upload_id} was {upload.status} meanwhile", code="upload-not-open")
    upload.status = UploadStatus.completed.value
    upload.result_type = registered.resource_type
    upload.result_id = registered.resource_id
    upload.updated_at = utcnow()
    session.flush()
    return upload, registered


def delete_parts(store: ArtifactStore, upload: Upload) -> int:
    """Delete every file under the upload's prefix (strays of a part whose commit failed included)."""
    deleted = 0
    for info in list(store.scan(part_prefix(upload))):
        try:
            store.delete(info.key)
            deleted += 1
        except (OSError, StorageError) as exc:
            log.warning("upload part %s not deleted (the next sweep retries): %s", info.key, exc)
    return deleted


def expire_uploads(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    settings: Settings,
    *,
    now: datetime | None = None,
    tenant_ids: Collection[uuid.UUID] | None = None,
) -> list[uuid.UUID]:
    """The retention sweep's share: delete open uploads past their expiry, and completed ones older than the
    expiry period (their rows only say what they became), with their parts; one audit row per upload.
    Runs whatever the intermediates' retention setting is: incomplete uploads are never kept.
    ``tenant_ids`` limits it to those tenants."""
    now = now or utcnow()
    completed_before = now - timedelta(seconds=settings.upload_expiry_seconds)
    expired: list[uuid.UUID] = []
    with session_scope(factory) as session:
        rows = session.scalars(
            select(Upload).where(
                ((Upload.status == UploadStatus.open.value) & (Upload.expires_at <= now))
                | ((Upload.status == UploadStatus.completed.value) & (Upload.updated_at <= completed_before))
            )
        ).all()
        ids = [row.id for row in rows if tenant_ids is None or row.tenant_id in tenant_ids]
    for upload_id in ids:
        with session_scope(factory) as session:
            row = session.scalar(select(Upload).where(Upload.id == upload_id).with_for_update())
            if row is None:
                continue
            still_due = (row.status == UploadStatus.open.value and row.expires_at <= now) or (
                row.status == UploadStatus.completed.value and row.updated_at <= completed_before
            )
            if not still_due:  # a part arrived since the listing
                continue
            if row.status == UploadStatus.open.value:
                audit.record(
                    session,
                    tenant_id=row.tenant_id,
                    actor=EXPIRY_ACTOR,
                    action="upload.expire",
                    resource_type="upload",
                    resource_id=str(row.id),
                    details={"received_bytes": row.received_bytes, "size_bytes": row.size_bytes},
                )
            session.delete(row)
            session.flush()
            detached = Upload(id=row.id, tenant_id=row.tenant_id)
        delete_parts(store, detached)
        expired.append(upload_id)
    _delete_stray_parts(factory, store, settings, tenant_ids)
    return expired


def _delete_stray_parts(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    settings: Settings,
    tenant_ids: Collection[uuid.UUID] | None,
) -> None:
    """Part files whose upload row is gone (a deletion whose file removal failed after its commit), once
    older than the orphan grace period (a part is put before its row's commit)."""
    cutoff = time.time() - settings.orphan_grace_seconds
    with session_scope(factory) as session:
        tenants = list(session.scalars(select(Tenant.id)).all()) if tenant_ids is None else list(tenant_ids)
        live = {str(i) for i in session.scalars(select(Upload.id).where(Upload.tenant_id.in_(tenants))).all()}
    for tenant in tenants:
        for info in list(store.scan(f"{tenant}/{UPLOAD_KIND}/")):
            upload_id = info.key.split("/")[2] if info.key.count("/") >= 3 else ""
            if upload_id not in live and info.modified < cutoff:
                try:
                    store.delete(info.key)
                except (OSError, StorageError) as exc:
                    log.warning("stray upload part %s not deleted: %s", info.key, exc)


__all__ = [
    "UPLOAD_PURPOSES",
    "DatasetCompletion",
    "ModelCompletion",
    "UploadCreate",
    "append_part",
    "complete_upload",
    "create_upload",
    "delete_parts",
    "describe",
    "expire_uploads",
    "get_upload",
    "incomplete_bytes",
    "parse_content_digest",
    "parse_content_range",
]
