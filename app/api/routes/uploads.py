"""Resumable chunked uploads (app.services.data.uploads): create, append parts, resume, complete, abandon."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.api.deps import Reader, SessionDep, SettingsDep, StoreDep, Submitter, request_id
from app.core.config import Settings
from app.core.problems import PayloadTooLarge
from app.core.security import Principal
from app.services.compliance import audit
from app.services.data import uploads as service
from app.storage import ArtifactStore

router = APIRouter(prefix="/uploads", tags=["uploads"])
RANGE_HELP = "bytes START-END/TOTAL (END inclusive)"
DIGEST_HELP = "sha-256=:<base64>: of this part (RFC 9530)"
COMPLETE_HELP = "dataset: name, task, normalization; model: architecture, config, name, dataset_id"


class UploadOut(BaseModel):
    id: uuid.UUID
    purpose: str
    status: str
    size_bytes: int
    received_bytes: int
    ranges: list[list[int]]
    parts: list[dict[str, Any]]
    sha256: str | None
    created_at: datetime
    expires_at: datetime
    result_type: str | None
    result_id: uuid.UUID | None


def _out(upload: Any) -> UploadOut:
    return UploadOut.model_validate(service.describe(upload))


def _audit(
    session: Session,
    principal: Principal,
    request: Request,
    action: str,
    upload_id: uuid.UUID,
    details: dict[str, Any],
) -> None:
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action=action,
        resource_type="upload",
        resource_id=str(upload_id),
        request_id=request_id(request),
        details=details,
    )


@router.post("", response_model=UploadOut, status_code=201)
def create_upload(
    body: service.UploadCreate,
    principal: Submitter,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> UploadOut:
    """Start a resumable upload of a file above the single-request limit (``purpose``: dataset or model;
    ``size_bytes``: the whole file; optional ``sha256`` of it). Then PUT its parts in order and POST
    ``/complete``. 413 ``upload-too-large`` beyond ``max_chunked_upload_bytes``; 429
    ``too-many-open-uploads``."""
    upload = service.create_upload(session, settings, principal.tenant_id, body)
    _audit(
        session,
        principal,
        request,
        "upload.create",
        upload.id,
        {"purpose": upload.purpose, "size_bytes": upload.size_bytes},
    )
    session.commit()
    response.headers["Location"] = f"/v1/uploads/{upload.id}"
    return _out(upload)


@router.get("/{upload_id}", response_model=UploadOut)
def read_upload(upload_id: uuid.UUID, principal: Reader, session: SessionDep) -> UploadOut:
    """Where the upload stands: ``received_bytes`` (the next part's offset) and the received ``ranges``."""
    return _out(service.get_upload(session, principal.tenant_id, upload_id))


def _check_upload(session: Session, tenant_id: uuid.UUID, upload_id: uuid.UUID) -> None:
    service.get_upload(session, tenant_id, upload_id)
    session.rollback()  # no transaction stays open while the body streams in


def _store_part(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    request: Request,
    upload_id: uuid.UUID,
    content_range: tuple[int, int, int | None],
    staged: Path,
    size: int,
    sha256: str,
    claimed: str,
) -> UploadOut:
    upload = service.append_part(
        session,
        store,
        settings,
        tenant_id=principal.tenant_id,
        upload_id=upload_id,
        content_range=content_range,
        staged=staged,
        size=size,
        sha256=sha256,
        claimed_sha256=claimed,
    )
    _audit(
        session,
        principal,
        request,
        "upload.part",
        upload_id,
        {"offset": content_range[0], "bytes": size, "sha256": sha256},
    )
    session.commit()
    return _out(upload)


@router.put(
    "/{upload_id}",
    response_model=UploadOut,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def put_part(
    upload_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    content_range: Annotated[str | None, Header(description=RANGE_HELP)] = None,
    content_digest: Annotated[str | None, Header(description=DIGEST_HELP)] = None,
) -> UploadOut:
    """Append one part (``application/octet-stream``, at most ``max_upload_bytes``) at the upload's current
    end. 409 ``upload-offset-mismatch`` (with ``expected_offset``) when START is not the bytes received so
    far; 422 ``digest-mismatch`` when the body does not hash to ``Content-Digest``; a refused part changes
    nothing, so the client resends it (or resumes from GET's ``received_bytes``)."""
    parsed_range = service.parse_content_range(content_range)
    claimed = service.parse_content_digest(content_digest)
    # Checked before the body is read: unknown, foreign and expired ids answer 404 without receiving it.
    await run_in_threadpool(_check_upload, session, principal.tenant_id, upload_id)
    staged = store.staging_path(service.staging_prefix(principal.tenant_id))
    try:
        digest, size = hashlib.sha256(), 0
        with open(staged, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise PayloadTooLarge(
                        f"a part may have at most {settings.max_upload_bytes} bytes (the single-request "
                        "limit)",
                        code="part-too-large",
                    )
                digest.update(chunk)
                out.write(chunk)
        return await run_in_threadpool(
            _store_part,
            session,
            store,
            settings,
            principal,
            request,
            upload_id,
            parsed_range,
            staged,
            size,
            digest.hexdigest(),
            claimed,
        )
    finally:
        staged.unlink(missing_ok=True)  # put_file consumed it when the part was stored


def _complete(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    request: Request,
    upload_id: uuid.UUID,
    body: dict[str, Any],
) -> tuple[Any, service.Registered]:
    upload, registered = service.complete_upload(
        session, store, settings, tenant_id=principal.tenant_id, upload_id=upload_id, body=body
    )
    if registered.created:
        audit.record(
            session,
            tenant_id=principal.tenant_id,
            actor=principal.actor,
            action=registered.audit_action,
            resource_type=registered.resource_type,
            resource_id=str(registered.resource_id),
            request_id=request_id(request),
            details={**registered.audit_details, "upload_id": str(upload_id)},
        )
    _audit(
        session,
        principal,
        request,
        "upload.complete",
        upload_id,
        {"resource_type": registered.resource_type, "resource_id": str(registered.resource_id)},
    )
    session.commit()
    service.delete_parts(store, upload)
    return upload, registered


@router.post(
    "/{upload_id}/complete",
    response_model=UploadOut,
    status_code=201,
    responses={200: {"description": "Identical data already stored (datasets)"}},
)
def complete_upload(
    upload_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    body: Annotated[dict[str, Any] | None, Body(description=COMPLETE_HELP)] = None,
) -> UploadOut:
    """Join the parts and register them exactly as POST /v1/datasets/upload or POST /v1/models would (every
    check of those routes; their problem codes). 409 ``upload-incomplete`` before every byte arrived. A
    refusal registers nothing and leaves the upload open; success answers the upload with ``result_type``
    and ``result_id`` (``Location``: the new resource) and deletes the parts."""
    upload, registered = _complete(session, store, settings, principal, request, upload_id, body or {})
    response.status_code = 201 if registered.created else 200
    response.headers["Location"] = f"/v1/{registered.resource_type}s/{registered.resource_id}"
    return _out(upload)


@router.delete("/{upload_id}", response_model=UploadOut)
def delete_upload(
    upload_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    request: Request,
) -> UploadOut:
    """Abandon an upload: its row and received parts are deleted (a completed upload's resource stays).
    Answers the upload as it was."""
    upload = service.get_upload(session, principal.tenant_id, upload_id, lock=True)
    gone = _out(upload)
    _audit(
        session,
        principal,
        request,
        "upload.delete",
        upload_id,
        {"status": upload.status, "received_bytes": upload.received_bytes},
    )
    session.delete(upload)
    session.commit()
    service.delete_parts(store, upload)
    return gone
