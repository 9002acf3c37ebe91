"""Dataset sources: one registry entry per way a dataset can enter Lethe, named by ``Dataset.source``.

An entry says both halves of what a source means:

* ``create`` (API process, torch-free): validate the request that describes the dataset, check the limits
  and quotas, and store (or find, by content) the dataset row; it returns what the route audits.
* ``load`` (worker, and the API when it needs the train labels of a forget set): the arrays of a stored
  row, as an ``ArrayDataset``.

Built-in datasets are themselves a registry (``workers.engine.datasets.DATASETS``, name → config model +
builder) behind the ``builtin`` source; ``upload`` takes a validated ``.npz``. Both materialise the arrays
into the artifact store at intake, so both load the stored npz. The operator data-root source of issue 16
(CIFAR, SVHN, MNIST, ImageFolder under ``LETHE_DATA_ROOT``) is a third entry here: its ``create`` validates
the format and path against the data root, and its ``load`` may read the files there instead of a stored
copy (``DatasetRef`` carries the row's ``config`` for that). Routes and the job runner dispatch through
``create_dataset`` / ``load_dataset``; neither branches on a source name.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Generic, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.problems import Conflict, DomainError, Unprocessable, validation_errors
from app.models import Dataset
from app.schemas.common import NAME_MAX
from app.schemas.resources import BuiltinDatasetCreate, DataRootDatasetCreate
from app.services.data.datasets import (
    NormalizationRequest,
    build_builtin,
    store_dataset,
    store_uploaded_dataset,
)
from app.services.ops import quotas
from app.storage import ArtifactStore
from app.storage.base import content_key, seekable
from workers.engine.datasets import ArrayDataset
from workers.engine.datasets.data_root import (
    DATA_ROOT_FORMATS,
    DataRootConfigError,
    DataRootPathError,
    DataRootRead,
    read_dataset,
)
from workers.engine.errors import InvalidInputError
from workers.engine.registry import Registry
from workers.engine.task_types import TaskType

RequestT = TypeVar("RequestT")


@dataclass(frozen=True)
class DatasetRef:
    """What loading a dataset needs from its row: plain values, so the worker can read the row in a short
    session and load the arrays after it closed."""

    id: uuid.UUID
    source: str
    storage_key: str
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Dataset) -> DatasetRef:
        return cls(
            id=row.id,
            source=row.source,
            storage_key=row.storage_key,
            sha256=row.sha256,
            config=dict(row.config),  # a copy: the row's JSON must not change behind the session's back
        )


@dataclass(frozen=True)
class IntakeContext:
    """What every source's ``create`` may use: the request's session (not committed by ``create``), the
    artifact store, the settings and the caller's tenant."""

    session: Session
    store: ArtifactStore
    settings: Settings
    tenant_id: uuid.UUID


@dataclass(frozen=True)
class Intake:
    row: Dataset
    created: bool  # False: identical data of this tenant was already stored (the route answers 200)
    audit_action: str
    audit_details: dict[str, Any]


def load_stored_npz(store: ArtifactStore, ref: DatasetRef) -> ArrayDataset:
    """The arrays a source materialised into the artifact store at intake (``store_dataset``)."""
    with store.open(ref.storage_key) as stream, seekable(stream) as source:
        return ArrayDataset.from_npz_file(source)


@dataclass(frozen=True)
class DatasetSource(Generic[RequestT]):
    name: str  # stored in Dataset.source (at most 20 characters)
    description: str
    request_type: type[RequestT]  # what the API validated the caller's description of the dataset into
    create: Callable[[IntakeContext, RequestT], Intake]
    load: Callable[[ArtifactStore, DatasetRef], ArrayDataset] = load_stored_npz


DATASET_SOURCES: Registry[DatasetSource[Any]] = Registry("dataset source")


def create_dataset(source: str, context: IntakeContext, request: object) -> Intake:
    spec = DATASET_SOURCES.get(source)
    if not isinstance(request, spec.request_type):
        # A programming error (a route handing one source another's request), not the caller's.
        raise TypeError(f"dataset source {source!r} takes {spec.request_type.__name__}, not {type(request)}")
    return spec.create(context, request)


def load_dataset(store: ArtifactStore, dataset: DatasetRef | Dataset) -> ArrayDataset:
    """The row's arrays, carrying the row's source and config (its transforms and normalisation), which
    ``ArrayDataset.input_record`` puts into every job result."""
    ref = dataset if isinstance(dataset, DatasetRef) else DatasetRef.of(dataset)
    loaded = DATASET_SOURCES.get(ref.source).load(store, ref)
    loaded.provenance = {"id": str(ref.id), "source": ref.source, "sha256": ref.sha256, "config": ref.config}
    return loaded


def load_train_labels(store: ArtifactStore, row: Dataset) -> np.ndarray:
    try:
        return load_dataset(store, row).y_train
    except InvalidInputError as exc:  # a data-root dataset whose files changed or went away
        raise DomainError(str(exc), code="dataset-unreadable", status=409) from exc


# --- builtin: a registry dataset generated from a validated config ------------------------------------------

BUILTIN = "builtin"


def _create_builtin(context: IntakeContext, body: BuiltinDatasetCreate) -> Intake:
    quotas.check_builtin_dataset(body.builtin, body.config, context.settings)
    dataset, config = build_builtin(body.builtin, body.config)
    row, created = store_dataset(
        context.session,
        context.store,
        context.settings,
        tenant_id=context.tenant_id,
        dataset=dataset,
        name=body.name or body.builtin,
        source=BUILTIN,
        builtin=body.builtin,
        config=config,
    )
    return Intake(row, created, "dataset.create", {"builtin": body.builtin, "sha256": row.sha256})


DATASET_SOURCES.register(
    DatasetSource(
        name=BUILTIN,
        description="A built-in dataset (GET /v1/datasets/builtins) generated from its config: "
        "POST /v1/datasets.",
        request_type=BuiltinDatasetCreate,
        create=_create_builtin,
    )
)


# --- upload: a validated .npz ------------------------------------------------------------------------------

UPLOAD = "upload"


@dataclass(frozen=True)
class DatasetUpload:
    """A multipart upload as the route received it: the spooled (seekable) file, the name and the task."""

    file: BinaryIO
    name: str
    task: TaskType
    normalization: NormalizationRequest = None
    max_bytes: int | None = None  # the file's size limit; None: max_upload_bytes (one request)


def _create_upload(context: IntakeContext, upload: DatasetUpload) -> Intake:
    row, created, plan = store_uploaded_dataset(
        context.session,
        context.store,
        context.settings,
        tenant_id=context.tenant_id,
        source=upload.file,
        name=upload.name,
        task=upload.task,
        normalization=upload.normalization,
        max_bytes=upload.max_bytes,
    )
    details = {"sha256": row.sha256, "upload_sha256": plan.sha256, "bytes": plan.upload_bytes}
    return Intake(row, created, "dataset.upload", details)


DATASET_SOURCES.register(
    DatasetSource(
        name=UPLOAD,
        description="An .npz of x_train, y_train, x_test, y_test, validated without unpickling: "
        "POST /v1/datasets/upload.",
        request_type=DatasetUpload,
        create=_create_upload,
    )
)

# --- data_root: torchvision's on-disk formats under the operator's LETHE_DATA_ROOT --------------------------

DATA_ROOT = "data_root"


def _data_root_digest(body: DataRootDatasetCreate, read: DataRootRead) -> str:
    """The row's content address: the files' digest together with what makes arrays of them (format, path,
    options with the normalisation), so one tenant's two registrations differ exactly when their inputs do."""
    material = {
        "source": DATA_ROOT,
        "format": body.format,
        "path": body.path,
        "config": read.config,
        "files_sha256": read.files_sha256,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _create_data_root(context: IntakeContext, body: DataRootDatasetCreate) -> Intake:
    """Read and validate the files at registration (every file, every label; in the API's thread pool,
    torch-free), then store only a JSON manifest (per-file SHA-256): the arrays stay in the data root and
    the worker reads them there, refusing them if the files' digest changed."""
    root = context.settings.data_root
    if root is None:
        raise Conflict(
            "this service has no data root: the operator sets LETHE_DATA_ROOT to a directory of datasets "
            "in torchvision's formats to enable POST /v1/datasets/data-root",
            code="data-root-disabled",
        )
    try:
        read = read_dataset(root, body.format, body.path, body.config)
    except DataRootConfigError as exc:
        errors = validation_errors(exc.errors)
        raise Unprocessable(str(exc), code="invalid-dataset-config", errors=errors) from exc
    except DataRootPathError as exc:
        raise Unprocessable(str(exc), code="invalid-data-root-path") from exc
    except InvalidInputError as exc:  # unknown format, missing or malformed files
        code = "unknown-data-root-format" if body.format not in DATA_ROOT_FORMATS else "invalid-dataset-files"
        raise Unprocessable(str(exc), code=code) from exc
    digest = _data_root_digest(body, read)
    existing = context.session.scalar(
        select(Dataset).where(Dataset.tenant_id == context.tenant_id, Dataset.sha256 == digest)
    )
    if existing is not None:
        return Intake(existing, False, "dataset.data_root", {"sha256": digest})
    config = {
        "format": body.format,
        "path": body.path,
        "options": read.config,
        "files_sha256": read.files_sha256,
        "files": len(read.files),
        "bytes": read.total_bytes,
        "input": read.dataset.input_record(),
    }
    blob = json.dumps({**config, "files": read.files, "class_names": read.class_names}, indent=1).encode()
    quotas.check_storage(
        context.session, context.tenant_id, len(blob), context.settings, what="this dataset's manifest"
    )
    key = content_key("datasets", str(context.tenant_id), digest, ".json")
    context.store.put(key, blob)
    dataset = read.dataset
    row = Dataset(
        tenant_id=context.tenant_id,
        name=body.name or f"{body.format}:{body.path}"[:NAME_MAX],
        source=DATA_ROOT,
        builtin=None,
        config=config,
        task=dataset.task.value,
        num_classes=dataset.num_classes,
        n_train=dataset.n_train,
        n_test=dataset.n_test,
        input_shape=list(dataset.input_shape),
        class_counts=[int(c) for c in np.bincount(dataset.y_train, minlength=dataset.num_classes)],
        sha256=digest,
        storage_key=key,
        size_bytes=len(blob),  # the manifest: the arrays are the operator's files, not tenant storage
    )
    context.session.add(row)
    context.session.flush()
    details = {"format": body.format, "path": body.path, "sha256": digest, "files_sha256": read.files_sha256}
    return Intake(row, True, "dataset.data_root", details)


def _load_data_root(store: ArtifactStore, ref: DatasetRef) -> ArrayDataset:
    """The worker's (or the API's, for forget-set labels) read of the registered files, under this
    process's LETHE_DATA_ROOT; refused when the files' content changed since registration."""
    from app.core.config import get_settings

    root = get_settings().data_root
    if root is None:
        raise InvalidInputError(f"dataset {ref.id} lives in the data root, and LETHE_DATA_ROOT is unset here")
    config = ref.config
    read = read_dataset(root, config["format"], config["path"], config["options"])
    if read.files_sha256 != config["files_sha256"]:
        raise InvalidInputError(
            f"the files of dataset {ref.id} ({config['format']} at {config['path']!r}) changed since it was "
            "registered; register them again as a new dataset"
        )
    return read.dataset


DATASET_SOURCES.register(
    DatasetSource(
        name=DATA_ROOT,
        description="A dataset in torchvision's on-disk format under the operator's LETHE_DATA_ROOT, by "
        "format and relative path: POST /v1/datasets/data-root.",
        request_type=DataRootDatasetCreate,
        create=_create_data_root,
        load=_load_data_root,
    )
)

__all__ = [
    "BUILTIN",
    "DATASET_SOURCES",
    "DATA_ROOT",
    "UPLOAD",
    "DatasetRef",
    "DatasetSource",
    "DatasetUpload",
    "Intake",
    "IntakeContext",
    "create_dataset",
    "load_dataset",
    "load_stored_npz",
    "load_train_labels",
]
