"""The synchronous client."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from lethe_client import api, uploads
from lethe_client._transport import Request, RetryPolicy, SyncSender, check
from lethe_client.api import Id
from lethe_client.models import (
    Campaign,
    CampaignTable,
    Comparison,
    Dataset,
    DeletionRequest,
    ForgetSet,
    Job,
    Model,
    Page,
    Policy,
)

M = TypeVar("M", bound=BaseModel)
DEFAULT_TIMEOUT_S = 60.0


class Client:
    """``Client(base_url, api_key)``; ``transport`` (e.g. httpx.MockTransport) or ``http`` (an existing
    httpx.Client, e.g. a FastAPI TestClient) replace the network for tests."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        auth = {"Authorization": f"Bearer {api_key}"}
        self._owns_http = http is None
        if http is None:
            http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)
        self.http = http
        self._sleep = sleep
        self.sender = SyncSender(http, retry or RetryPolicy(), headers=auth, sleep=sleep, rng=rng)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:  # a client passed in belongs to the caller
            self.http.close()

    # ---------------------------------------------------------------------------------- plumbing
    def send(self, request: Request) -> httpx.Response:
        """Send with retries; raises LetheError on 4xx/5xx."""
        return check(self.sender.send(request))

    def _one(self, request: Request, model: type[M]) -> M:
        return model.model_validate(self.send(request).json())

    def _page(self, request: Request, model: type[M]) -> Page[M]:
        return Page[model].model_validate(self.send(request).json())  # type: ignore[valid-type]

    def paginate(self, request: Request, model: type[M]) -> Iterator[M]:
        """Every item over the cursor pages of a list request."""
        while True:
            page = self._page(request, model)
            yield from page.data
            if not page.has_more or not page.next_cursor:
                return
            request = api.with_cursor(request, page.next_cursor)

    # ---------------------------------------------------------------------------------- datasets
    def create_builtin_dataset(
        self, builtin: str, config: Mapping[str, Any] | None = None, name: str | None = None
    ) -> Dataset:
        return self._one(api.create_builtin_dataset(builtin, config, name), Dataset)

    def upload_dataset(
        self, npz: bytes | Path, *, name: str | None = None, task: str = "classification"
    ) -> Dataset:
        """Upload an .npz (bytes or a file path) with x_train, y_train, x_test, y_test."""
        data = npz.read_bytes() if isinstance(npz, Path) else npz
        filename = npz.name if isinstance(npz, Path) else "dataset.npz"
        return self._one(api.upload_dataset(data, name, task, filename), Dataset)

    def upload_dataset_arrays(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        name: str | None = None,
        task: str = "classification",
    ) -> Dataset:
        """Upload numpy arrays (needs the ``[numpy]`` extra)."""
        return self.upload_dataset(
            uploads.dataset_npz(x_train, y_train, x_test, y_test), name=name, task=task
        )

    def get_dataset(self, dataset_id: Id) -> Dataset:
        return self._one(api.get_dataset(dataset_id), Dataset)

    def list_datasets(self, cursor: str | None = None, limit: int | None = None) -> Page[Dataset]:
        return self._page(api.list_datasets(cursor, limit), Dataset)

    def iter_datasets(self, limit: int | None = None) -> Iterator[Dataset]:
        return self.paginate(api.list_datasets(limit=limit), Dataset)

    # ---------------------------------------------------------------------------------- models
    def upload_model(
        self,
        weights: bytes | Path | Mapping[str, Any],
        *,
        architecture: str,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        dataset_id: Id | None = None,
    ) -> Model:
        """Upload a checkpoint: safetensors bytes, a .safetensors path, or a torch ``state_dict`` (needs
        the ``[torch]`` extra; written as safetensors, never pickled)."""
        if isinstance(weights, Path):
            data = weights.read_bytes()
        elif isinstance(weights, bytes | bytearray):
            data = bytes(weights)
        else:
            data = uploads.state_dict_safetensors(weights)
        request = api.upload_model(data, architecture, uploads.config_json(config), name, dataset_id)
        return self._one(request, Model)

    def get_model(self, model_id: Id) -> Model:
        return self._one(api.get_model(model_id), Model)

    def list_models(self, cursor: str | None = None, limit: int | None = None) -> Page[Model]:
        return self._page(api.list_models(cursor, limit), Model)

    def iter_models(self, limit: int | None = None) -> Iterator[Model]:
        return self.paginate(api.list_models(limit=limit), Model)

    # ---------------------------------------------------------------------------------- forget sets
    def create_forget_set(
        self, dataset_id: Id, spec: Mapping[str, Any], name: str | None = None
    ) -> ForgetSet:
        return self._one(api.create_forget_set(dataset_id, spec, name), ForgetSet)

    def get_forget_set(self, forget_set_id: Id) -> ForgetSet:
        return self._one(api.get_forget_set(forget_set_id), ForgetSet)

    def iter_forget_sets(self, dataset_id: Id | None = None, limit: int | None = None) -> Iterator[ForgetSet]:
        return self.paginate(api.list_forget_sets(dataset_id, limit=limit), ForgetSet)

    def comparison(self, forget_set_id: Id, model_id: Id | None = None) -> Comparison:
        return self._one(api.comparison(forget_set_id, model_id), Comparison)

    # ---------------------------------------------------------------------------------- jobs
    def submit_job(self, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Queue a job. The Idempotency-Key (given, or fresh per call) is kept across retries, so a
        resent submission returns the first job instead of queueing a second one."""
        key = idempotency_key or api.new_idempotency_key()
        return self._one(api.submit_job(body, key), Job)

    def get_job(self, job_id: Id) -> Job:
        return self._one(api.get_job(job_id), Job)

    def cancel_job(self, job_id: Id) -> Job:
        return self._one(api.cancel_job(job_id), Job)

    def list_jobs(self, *, cursor: str | None = None, limit: int | None = None, **filters: Any) -> Page[Job]:
        """``filters``: status, kind, method, model_id, forget_set_id."""
        return self._page(api.list_jobs(cursor=cursor, limit=limit, **filters), Job)

    def iter_jobs(self, *, limit: int | None = None, **filters: Any) -> Iterator[Job]:
        return self.paginate(api.list_jobs(limit=limit, **filters), Job)

    def follow(
        self,
        job_id: Id,
        on_update: Callable[[Job], None] | None = None,
        *,
        poll_seconds: float = 0.5,
        timeout_s: float = 3600.0,
    ) -> Job:
        """Poll the job until it ends, sending its ETag (an unchanged job costs a 304 and no body);
        ``on_update`` sees every new version (status, ``progress.fraction``, ``progress.phase``)."""
        deadline = time.monotonic() + timeout_s
        etag: str | None = None
        while True:
            response = self.send(api.get_job(job_id, etag))
            if response.status_code != 304:
                job = Job.model_validate(response.json())
                etag = response.headers.get("ETag")
                if on_update is not None:
                    on_update(job)
                if job.done:
                    return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
            self._sleep(poll_seconds)

    # ---------------------------------------------------------------------------------- campaigns
    def create_campaign(self, body: Mapping[str, Any]) -> Campaign:
        return self._one(api.create_campaign(body), Campaign)

    def get_campaign(self, campaign_id: Id) -> Campaign:
        return self._one(api.get_campaign(campaign_id), Campaign)

    def campaign_table(self, campaign_id: Id) -> CampaignTable:
        return self._one(api.campaign_table(campaign_id), CampaignTable)

    def cancel_campaign(self, campaign_id: Id) -> Campaign:
        return self._one(api.cancel_campaign(campaign_id), Campaign)

    def iter_campaigns(self, limit: int | None = None) -> Iterator[Campaign]:
        return self.paginate(api.list_campaigns(limit=limit), Campaign)

    # ---------------------------------------------------------------------------------- compliance
    def create_policy(
        self, name: str, rules: list[Mapping[str, Any]], description: str | None = None
    ) -> Policy:
        return self._one(api.create_policy(name, rules, description), Policy)

    def iter_policies(self, name: str | None = None) -> Iterator[Policy]:
        return self.paginate(api.list_policies(name), Policy)

    def submit_deletion_request(
        self, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> DeletionRequest:
        key = idempotency_key or api.new_idempotency_key()
        return self._one(api.submit_deletion_request(body, key), DeletionRequest)

    def get_deletion_request(self, request_id: Id) -> DeletionRequest:
        return self._one(api.get_deletion_request(request_id), DeletionRequest)

    def iter_deletion_requests(self, limit: int | None = None) -> Iterator[DeletionRequest]:
        return self.paginate(api.list_deletion_requests(limit=limit), DeletionRequest)
