from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app.api.deps import Reader, SessionDep, SettingsDep, StoreDep, Submitter, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.api.uploads import read_upload
from app.core.problems import NotFound
from app.models import Model
from app.schemas.common import Page
from app.schemas.resources import NAME_MAX, NAME_PATTERN, ModelOut
from app.services.compliance import audit
from app.services.data.datasets import get_dataset
from app.services.data.deletion import CASCADE_DESCRIPTION, DELETE_RESPONSES, DeletionReport, delete_resource
from app.services.data.models import get_model, parse_config_json, store_uploaded_model
from app.storage.base import digest_of, iter_chunks

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=Page[ModelOut])
def list_models(
    principal: Reader,
    session: SessionDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[ModelOut]:
    rows, next_cursor = paginate(
        session, select(Model).where(Model.tenant_id == principal.tenant_id), Model, cursor, limit
    )
    return Page[ModelOut](
        data=[ModelOut.model_validate(r) for r in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


@router.post("", response_model=ModelOut, status_code=201)
async def upload_model(
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    architecture: Annotated[str, Form(max_length=100, description="Name from GET /v1/architectures.")],
    weights: Annotated[UploadFile, File(description="safetensors state_dict; pickles are rejected.")],
    config: Annotated[str, Form(max_length=100_000, description="Architecture config as JSON.")] = "{}",
    name: Annotated[str | None, Form(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)] = None,
    dataset_id: Annotated[uuid.UUID | None, Form()] = None,
) -> ModelOut:
    config_dict = parse_config_json(config)
    if dataset_id is not None:  # 404 before the body is read
        get_dataset(session, principal.tenant_id, dataset_id)
    data = await read_upload(weights, settings.max_upload_bytes)
    row = store_uploaded_model(
        session,
        store,
        settings,
        tenant_id=principal.tenant_id,
        architecture=architecture,
        config=config_dict,
        name=name,
        dataset_id=dataset_id,
        weights=data,
        max_bytes=settings.max_upload_bytes,
    )
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="model.upload",
        resource_type="model",
        resource_id=str(row.id),
        request_id=request_id(request),
        details={"architecture": architecture, "sha256": row.sha256, "bytes": row.size_bytes},
    )
    session.commit()
    response.headers["Location"] = f"/v1/models/{row.id}"
    return ModelOut.model_validate(row)


@router.get("/{model_id}", response_model=ModelOut)
def read_model(model_id: uuid.UUID, principal: Reader, session: SessionDep) -> ModelOut:
    return ModelOut.model_validate(get_model(session, principal.tenant_id, model_id))


@router.get(
    "/{model_id}/weights",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "safetensors weights"}},
)
def download_weights(
    model_id: uuid.UUID, principal: Reader, session: SessionDep, store: StoreDep
) -> Response:
    row = get_model(session, principal.tenant_id, model_id)
    info = store.stat(row.storage_key)
    digest = digest_of(row.storage_key)
    if info is None or digest is None:
        # Not content-addressed (never written so) or gone: read it whole, the digest from the bytes.
        body = store.get(row.storage_key)
        info, digest = None, hashlib.sha256(body).hexdigest()
    headers = {
        "Content-Disposition": f'attachment; filename="{row.id}.safetensors"',
        # The ETag names the weights (the model's identity); the Digest, these bytes (the file), which the
        # content-addressed key names.
        "ETag": f'"{row.sha256}"',
        "Digest": f"sha-256={digest}",
    }
    if info is None:
        return Response(body, media_type="application/octet-stream", headers=headers)
    # Streamed a chunk at a time: a large model never sits whole in the API's memory (or its S3 reads).
    headers["Content-Length"] = str(info.size)
    return StreamingResponse(
        iter_chunks(store, row.storage_key), media_type="application/octet-stream", headers=headers
    )


@router.get(
    "/{model_id}/mask",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "safetensors masks (uint8, 1 = kept)",
        },
        404: {"description": "Unknown model, or a dense model without masks"},
    },
)
def download_mask(model_id: uuid.UUID, principal: Reader, session: SessionDep, store: StoreDep) -> Response:
    """A pruned model's sparsity masks, keyed by parameter name."""
    row = get_model(session, principal.tenant_id, model_id)
    if row.mask_key is None or row.mask_sha256 is None:
        raise NotFound(f"model {model_id} is dense: it has no sparsity masks", code="mask-not-found")
    return Response(
        store.get(row.mask_key),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{row.id}.mask.safetensors"',
            "ETag": f'"{row.mask_sha256}"',
        },
    )


@router.delete("/{model_id}", response_model=DeletionReport, responses=DELETE_RESPONSES)
def delete_model(
    model_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    request: Request,
    cascade: Annotated[bool, Query(description=CASCADE_DESCRIPTION)] = False,
) -> DeletionReport:
    """Delete the model, its weights and masks, and the epoch checkpoint of the job that produced it (that job
    stays, its output_model_id cleared).

    Refused (409) while a queued or running job uses it, and, without ``cascade``, while jobs (and through
    them their output models) or campaigns depend on it. Audited; the files go once no other row references
    the same content."""
    return delete_resource(
        session,
        request.app.state.sessions,
        store,
        principal,
        "model",
        model_id,
        cascade=cascade,
        request_id=request_id(request),
    )
