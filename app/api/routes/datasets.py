from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import Admin, Reader, SessionDep, SettingsDep, StoreDep, Submitter, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.api.routes.discovery import builtin_datasets
from app.core.config import Settings
from app.core.security import Principal
from app.models import Dataset
from app.schemas.resources import (
    NAME_MAX,
    NAME_PATTERN,
    BuiltinDatasetCreate,
    DataRootDatasetCreate,
    DatasetOut,
    DatasetPage,
)
from app.services.compliance import audit
from app.services.data.dataset_sources import (
    BUILTIN,
    DATA_ROOT,
    UPLOAD,
    DatasetUpload,
    IntakeContext,
    create_dataset,
)
from app.services.data.datasets import get_dataset, parse_normalization
from app.services.data.deletion import CASCADE_DESCRIPTION, DELETE_RESPONSES, DeletionReport, delete_resource
from app.storage import ArtifactStore
from workers.engine.task_types import DatasetTask, TaskType

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("", response_model=DatasetPage)
def list_datasets(
    principal: Reader,
    session: SessionDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> DatasetPage:
    rows, next_cursor = paginate(
        session, select(Dataset).where(Dataset.tenant_id == principal.tenant_id), Dataset, cursor, limit
    )
    return DatasetPage(
        data=[DatasetOut.model_validate(r) for r in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
        builtins=builtin_datasets(),
    )


def _create(
    source: str,
    description: object,
    principal: Principal,
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    request: Request,
    response: Response,
) -> DatasetOut:
    """Every source's route: the source's own intake, then the same audit row, commit and answer."""
    context = IntakeContext(session=session, store=store, settings=settings, tenant_id=principal.tenant_id)
    intake = create_dataset(source, context, description)
    row = intake.row
    if intake.created:
        audit.record(
            session,
            tenant_id=principal.tenant_id,
            actor=principal.actor,
            action=intake.audit_action,
            resource_type="dataset",
            resource_id=str(row.id),
            request_id=request_id(request),
            details=intake.audit_details,
        )
    session.commit()
    response.status_code = 201 if intake.created else 200
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return DatasetOut.model_validate(row)


@router.post(
    "",
    response_model=DatasetOut,
    status_code=201,
    responses={200: {"description": "Identical data already stored"}},
)
def create_builtin_dataset(
    body: BuiltinDatasetCreate,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> DatasetOut:
    """Materialise a built-in dataset (digits, procedural, …) with a config."""
    return _create(BUILTIN, body, principal, session, store, settings, request, response)


def _name_from_filename(filename: str | None) -> str:
    """A default name from the client's file name: printable characters only, at most NAME_MAX."""
    cleaned = "".join(ch for ch in filename or "" if ch.isprintable())[:NAME_MAX].strip()
    return cleaned or "upload"


@router.post(
    "/upload",
    response_model=DatasetOut,
    status_code=201,
    responses={200: {"description": "Identical data already stored"}},
)
def upload_dataset(
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train, x_test, y_test")],
    name: Annotated[str | None, Form(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)] = None,
    task: Annotated[
        DatasetTask,
        Form(description="'classification' (integer class labels) or 'regression' (continuous targets)."),
    ] = DatasetTask.classification,
    normalization: Annotated[
        str | None,
        Form(
            max_length=4096,
            description='Per-channel normalisation applied on the device: JSON {"mean": [...], "std": [...]} '
            '(on the [0, 1] pixel scale), or "computed" (the training split\'s per-channel mean and std, '
            "computed once at intake). Images only. Recorded in the dataset's config and every result.",
        ),
    ] = None,
) -> DatasetOut:
    """Upload an .npz dataset. Validated and converted from the spooled upload file a chunk of rows at a
    time (a plain ``def``: the work runs in the thread pool, off the event loop); uint8 images stay uint8
    in storage (scaled and normalised on the worker's device). Counted against the tenant's storage quota
    at its stored size before anything is written (413 storage-quota-exceeded)."""
    upload = DatasetUpload(
        file=file.file,
        name=name or _name_from_filename(file.filename),
        task=TaskType(task.value),
        normalization=parse_normalization(normalization),
    )
    return _create(UPLOAD, upload, principal, session, store, settings, request, response)


@router.post(
    "/data-root",
    response_model=DatasetOut,
    status_code=201,
    responses={200: {"description": "The same files with the same options already registered"}},
)
def register_data_root_dataset(
    body: DataRootDatasetCreate,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> DatasetOut:
    """Register a dataset from the operator's data root (``LETHE_DATA_ROOT``) by format and relative path,
    e.g. ``{"format": "cifar10", "path": "cifar-10-batches-py"}``. Every file is read and validated here (a
    plain ``def``: in the thread pool) and its SHA-256 recorded; workers read the files at each job and
    refuse them if they changed. 409 ``data-root-disabled`` when the operator set no data root; 422
    ``invalid-data-root-path`` (absolute, ``..``, a link out of the root), ``invalid-dataset-files``,
    ``unknown-data-root-format`` or ``invalid-dataset-config`` otherwise."""
    return _create(DATA_ROOT, body, principal, session, store, settings, request, response)


@router.get("/{dataset_id}", response_model=DatasetOut)
def read_dataset(dataset_id: uuid.UUID, principal: Reader, session: SessionDep) -> DatasetOut:
    return DatasetOut.model_validate(get_dataset(session, principal.tenant_id, dataset_id))


@router.delete("/{dataset_id}", response_model=DeletionReport, responses=DELETE_RESPONSES)
def delete_dataset(
    dataset_id: uuid.UUID,
    principal: Admin,
    session: SessionDep,
    store: StoreDep,
    request: Request,
    cascade: Annotated[bool, Query(description=CASCADE_DESCRIPTION)] = False,
) -> DeletionReport:
    """Delete the dataset, its stored arrays and the audit shadow models trained on it (admin scope).

    Refused (409) while a queued or running job uses it, and, without ``cascade``, while models, forget sets,
    jobs or campaigns depend on it. Audited; the files go once no other row references the same content."""
    return delete_resource(
        session,
        request.app.state.sessions,
        store,
        principal,
        "dataset",
        dataset_id,
        cascade=cascade,
        request_id=request_id(request),
    )
