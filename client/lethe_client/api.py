"""One request builder per endpoint, shared by the sync and the async client (they differ only in I/O)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from lethe_client._transport import Request, get, post

Id = uuid.UUID | str


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _body(body: Any) -> Any:
    """Pydantic models and UUIDs as JSON-ready values."""
    if hasattr(body, "model_dump"):
        return body.model_dump(mode="json", exclude_none=True, by_alias=True)
    if isinstance(body, Mapping):
        return {k: _body(v) for k, v in body.items()}
    if isinstance(body, list | tuple):
        return [_body(v) for v in body]
    if isinstance(body, uuid.UUID):
        return str(body)
    return body


# ------------------------------------------------------------------------------------------ datasets
def list_datasets(cursor: str | None = None, limit: int | None = None) -> Request:
    return get("/v1/datasets", {"cursor": cursor, "limit": limit})


def get_dataset(dataset_id: Id) -> Request:
    return get(f"/v1/datasets/{dataset_id}")


def create_builtin_dataset(builtin: str, config: Mapping[str, Any] | None, name: str | None) -> Request:
    # The same builtin and config answer the stored dataset (200): safe to resend.
    body = _body({"builtin": builtin, "config": dict(config or {}), "name": name})
    return post("/v1/datasets", body, deduplicated=True)


def upload_dataset(npz: bytes, name: str | None, task: str, filename: str = "dataset.npz") -> Request:
    # The server deduplicates identical data (200 with the stored row): resending is harmless.
    data = {"task": task, **({"name": name} if name else {})}
    files = {"file": (filename, npz, "application/octet-stream")}
    return post("/v1/datasets/upload", data=data, files=files, deduplicated=True)


# ------------------------------------------------------------------------------------------ models
def list_models(cursor: str | None = None, limit: int | None = None) -> Request:
    return get("/v1/models", {"cursor": cursor, "limit": limit})


def get_model(model_id: Id) -> Request:
    return get(f"/v1/models/{model_id}")


def upload_model(
    weights: bytes,
    architecture: str,
    config_json: str,
    name: str | None,
    dataset_id: Id | None,
    filename: str = "model.safetensors",
) -> Request:
    data = {"architecture": architecture, "config": config_json}
    if name:
        data["name"] = name
    if dataset_id is not None:
        data["dataset_id"] = str(dataset_id)
    return post("/v1/models", data=data, files={"weights": (filename, weights, "application/octet-stream")})


# ------------------------------------------------------------------------------------------ forget sets
def list_forget_sets(
    dataset_id: Id | None = None, cursor: str | None = None, limit: int | None = None
) -> Request:
    params = {"dataset_id": str(dataset_id) if dataset_id else None, "cursor": cursor, "limit": limit}
    return get("/v1/forget-sets", params)


def get_forget_set(forget_set_id: Id) -> Request:
    return get(f"/v1/forget-sets/{forget_set_id}")


def create_forget_set(dataset_id: Id, spec: Mapping[str, Any], name: str | None) -> Request:
    return post("/v1/forget-sets", _body({"dataset_id": dataset_id, "spec": dict(spec), "name": name}))


def comparison(forget_set_id: Id, model_id: Id | None = None) -> Request:
    return get(
        f"/v1/forget-sets/{forget_set_id}/comparison", {"model_id": str(model_id) if model_id else None}
    )


# ------------------------------------------------------------------------------------------ jobs
def list_jobs(
    *,
    status: str | None = None,
    kind: str | None = None,
    method: str | None = None,
    model_id: Id | None = None,
    forget_set_id: Id | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Request:
    params = {
        "status": status,
        "kind": kind,
        "method": method,
        "model_id": str(model_id) if model_id else None,
        "forget_set_id": str(forget_set_id) if forget_set_id else None,
        "cursor": cursor,
        "limit": limit,
    }
    return get("/v1/jobs", params)


def get_job(job_id: Id, etag: str | None = None) -> Request:
    return get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag} if etag else None)


def submit_job(body: Mapping[str, Any], idempotency_key: str) -> Request:
    return post("/v1/jobs", _body(body), idempotency_key=idempotency_key)


def cancel_job(job_id: Id) -> Request:
    return post(f"/v1/jobs/{job_id}/cancel")


def job_metrics(job_id: Id) -> Request:
    return get(f"/v1/jobs/{job_id}/metrics")


# ------------------------------------------------------------------------------------------ campaigns
def list_campaigns(cursor: str | None = None, limit: int | None = None) -> Request:
    return get("/v1/campaigns", {"cursor": cursor, "limit": limit})


def get_campaign(campaign_id: Id) -> Request:
    return get(f"/v1/campaigns/{campaign_id}")


def create_campaign(body: Mapping[str, Any]) -> Request:
    return post("/v1/campaigns", _body(body))


def campaign_table(campaign_id: Id) -> Request:
    return get(f"/v1/campaigns/{campaign_id}/table")


def cancel_campaign(campaign_id: Id) -> Request:
    return post(f"/v1/campaigns/{campaign_id}/cancel")


# ------------------------------------------------------------------------------------------ compliance
def list_deletion_requests(cursor: str | None = None, limit: int | None = None) -> Request:
    return get("/v1/deletion-requests", {"cursor": cursor, "limit": limit})


def get_deletion_request(request_id: Id) -> Request:
    return get(f"/v1/deletion-requests/{request_id}")


def submit_deletion_request(body: Mapping[str, Any], idempotency_key: str) -> Request:
    return post("/v1/deletion-requests", _body(body), idempotency_key=idempotency_key)


def list_policies(name: str | None = None, cursor: str | None = None, limit: int | None = None) -> Request:
    return get("/v1/policies", {"name": name, "cursor": cursor, "limit": limit})


def create_policy(name: str, rules: list[Mapping[str, Any]], description: str | None) -> Request:
    return post("/v1/policies", _body({"name": name, "rules": rules, "description": description}))


def with_cursor(request: Request, cursor: str) -> Request:
    return Request(
        request.method,
        request.path,
        params={**(request.params or {}), "cursor": cursor},
        headers=request.headers,
        replay_safe=request.replay_safe,
    )
