"""Model checkpoints: registry architecture + validated config + safetensors weights checked against it."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.problems import DomainError, NotFound, Unprocessable, validation_errors
from app.models import Dataset, Model
from app.services.ops import quotas
from app.storage import ArtifactStore
from app.storage.base import content_key
from workers.engine.architectures import ARCHITECTURES, ArchitectureSpec
from workers.engine.errors import InvalidInputError, UnknownEntryError

# Config fields an architecture may take from the dataset it is trained on.
_DATASET_DERIVED_FIELDS = ("input_shape", "in_channels", "image_channels", "image_size", "num_classes")


def get_architecture(name: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES.get(name)
    except UnknownEntryError as exc:
        raise Unprocessable(
            f"unknown architecture '{name}'; available: {ARCHITECTURES.names()}", code="unknown-architecture"
        ) from exc


def _dataset_defaults(dataset: Dataset) -> dict[str, Any]:
    shape = list(dataset.input_shape)
    return {
        "input_shape": shape,
        "in_channels": shape[0] if len(shape) == 3 else None,
        "image_channels": shape[0] if len(shape) == 3 else None,
        "image_size": shape[-1] if len(shape) == 3 else None,
        "num_classes": dataset.num_classes,
    }


def validate_arch_config(
    spec: ArchitectureSpec, config: dict[str, Any], dataset: Dataset | None
) -> BaseModel:
    """Validate a config; fields derivable from the dataset are filled in and must agree with it."""
    merged = dict(config)
    if dataset is not None:
        fields = spec.config_model.model_fields
        for key, value in _dataset_defaults(dataset).items():
            if key in fields and value is not None and key not in merged:
                merged[key] = value
    try:
        parsed = spec.config_model.model_validate(merged)
    except ValidationError as exc:
        raise Unprocessable(
            f"invalid config for architecture '{spec.name}'",
            code="invalid-architecture-config",
            errors=validation_errors(exc.errors()),
        ) from exc
    try:
        spec.parse_config(parsed)  # the parameter budget
    except InvalidInputError as exc:
        raise Unprocessable(str(exc), code="invalid-architecture-config") from exc
    if dataset is not None and spec.check_input is not None:
        try:
            spec.check_input(parsed, tuple(dataset.input_shape), dataset.num_classes)
        except InvalidInputError as exc:
            raise Unprocessable(str(exc), code="architecture-dataset-mismatch") from exc
    if dataset is not None:
        dumped = parsed.model_dump(mode="json")
        for key, expected in _dataset_defaults(dataset).items():
            if expected is not None and key in dumped and dumped[key] != expected:
                raise Unprocessable(
                    f"architecture config {key}={dumped[key]} does not match the dataset ({key}={expected})",
                    code="architecture-dataset-mismatch",
                )
    return parsed


def register_upload(
    session: Session,
    store: ArtifactStore,
    *,
    tenant_id: uuid.UUID,
    name: str,
    architecture: str,
    config: dict[str, Any],
    weights: bytes,
    dataset: Dataset | None,
    max_bytes: int,
) -> Model:
    from app.intake import IntakeError, reject_pickle, validate_safetensors

    spec = get_architecture(architecture)
    parsed = validate_arch_config(spec, config, dataset)
    expected = spec.param_shapes(parsed)
    try:
        reject_pickle(weights, "model weights")
        summary = validate_safetensors(weights, expected, max_bytes=max_bytes)
    except IntakeError as exc:
        raise DomainError(exc.detail, code=exc.code, status=exc.status, errors=exc.errors or None) from exc
    key = content_key("models", str(tenant_id), summary.sha256, ".safetensors")
    store.put(key, weights)
    row = Model(
        tenant_id=tenant_id,
        name=name,
        architecture=architecture,
        arch_config=parsed.model_dump(mode="json"),
        dataset_id=dataset.id if dataset else None,
        source="upload",
        job_id=None,
        train_recipe=None,
        seed=None,
        sha256=summary.weights_sha256,
        storage_key=key,
        size_bytes=len(weights),
        num_params=summary.total_params,
    )
    session.add(row)
    session.flush()
    return row


def parse_config_json(config: str) -> dict[str, Any]:
    """A model upload's ``config`` form field: a JSON object."""
    try:
        parsed = json.loads(config)
    except json.JSONDecodeError as exc:
        raise Unprocessable(
            f"config is not valid JSON: {exc.msg} at position {exc.pos}", code="invalid-json"
        ) from exc
    if not isinstance(parsed, dict):
        raise Unprocessable("config must be a JSON object", code="invalid-architecture-config")
    return parsed


def store_uploaded_model(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    architecture: str,
    config: dict[str, Any],
    name: str | None,
    dataset_id: uuid.UUID | None,
    weights: bytes,
    max_bytes: int,
) -> Model:
    """What every model upload goes through (one request, or a completed chunked upload): the dataset (the
    tenant's), the storage quota (the tenant row stays locked until the caller commits, so a concurrent
    upload waits and then counts this one), then the architecture, config and safetensors checks."""
    from app.services.data.datasets import get_dataset

    dataset = get_dataset(session, tenant_id, dataset_id) if dataset_id else None
    quotas.check_storage(session, tenant_id, len(weights), settings, what="these weights")
    return register_upload(
        session,
        store,
        tenant_id=tenant_id,
        name=name or architecture,
        architecture=architecture,
        config=config,
        weights=weights,
        dataset=dataset,
        max_bytes=max_bytes,
    )


def get_model(session: Session, tenant_id: uuid.UUID, model_id: uuid.UUID) -> Model:
    row = session.get(Model, model_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"model {model_id} not found", code="model-not-found")
    return row
