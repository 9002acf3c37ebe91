"""A synchronous raw-JSON client for Lethe (the demo, `lethe deletion-request`, compliance tooling).

Requests go through the ``lethe_client`` package's transport: retried with backoff (honouring
``Retry-After``) on 429/503 and connection errors, every POST with an ``Idempotency-Key`` kept across its
retries. Compliance calls return typed models (``app.schemas.compliance``). The installable, typed client
for users is ``lethe_client`` (client/).
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from lethe_client import IDEMPOTENT_POSTS, Request, RetryPolicy
from lethe_client._transport import SyncSender

from app.schemas.compliance import DeletionRequestOut, PolicyOut, ReportOut, SigningKeyOut

TERMINAL = {"succeeded", "failed", "cancelled"}
REQUEST_TERMINAL = {"issued", "failed", "cancelled"}
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 5
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


class LetheError(RuntimeError):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code', '')}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


class LetheClient:
    """Raw JSON (dicts) over lethe_client's transport: the same retry and idempotency rules as the
    typed ``lethe_client.Client``. Kept for the demo, the deletion-request CLI and their tests, which read
    nested results freely and type compliance answers with the server's own schemas; new code should use
    ``lethe_client.Client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = BACKOFF_BASE_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``http``: an existing client to send through (e.g. a FastAPI TestClient); else one is made."""
        if http is None:
            http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)
        self.http = http
        policy = RetryPolicy(retries=retries, backoff_s=backoff_s, max_backoff_s=BACKOFF_MAX_S)
        self.sender = SyncSender(http, policy, headers={"Authorization": f"Bearer {api_key}"}, sleep=sleep)

    def __enter__(self) -> LetheClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send with retries. POSTs get an Idempotency-Key (``idempotency_key`` or a fresh one); only GETs
        and the POSTs whose key the server stores are resent after a failure the server may have acted on."""
        sent = dict(headers or {})
        if method.upper() == "POST":
            sent.setdefault("Idempotency-Key", idempotency_key or uuid.uuid4().hex)
        replay_safe = method.upper() == "GET" or (method.upper() == "POST" and path in IDEMPOTENT_POSTS)
        request = Request(method, path, params=params, json=json_body, headers=sent, replay_safe=replay_safe)
        return self.sender.send(request)

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise LetheError(response.status_code, problem)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.request("GET", path, params=params or None))

    def post(
        self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        return self._check(self.request("POST", path, json_body=body or {}, headers=headers))

    def create_builtin_dataset(self, builtin: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.post("/v1/datasets", {"builtin": builtin, "config": config or {}})

    def create_forget_set(
        self, dataset_id: str, spec: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        return self.post("/v1/forget-sets", {"dataset_id": dataset_id, "spec": spec, "name": name})

    def submit_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.post("/v1/jobs", body, headers=headers)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/v1/jobs/{job_id}/cancel")

    def comparison(self, forget_set_id: str, model_id: str | None = None) -> dict[str, Any]:
        params = {"model_id": model_id} if model_id else {}
        return self.get(f"/v1/forget-sets/{forget_set_id}/comparison", **params)

    def follow(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_seconds: float = 0.5,
        timeout_s: float = 3600.0,
    ) -> dict[str, Any]:
        """Poll a job with ETags until it ends; ``on_update`` sees every changed version."""
        deadline = time.monotonic() + timeout_s
        tag: str | None = None
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.request(
                "GET", f"/v1/jobs/{job_id}", headers={"If-None-Match": tag} if tag else None
            )
            if response.status_code != 304:
                job = self._check(response)
                tag = response.headers.get("ETag")
                if on_update:
                    on_update(job)
                if job["status"] in TERMINAL:
                    return job
            time.sleep(poll_seconds)
        raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")

    # ------------------------------------------------------------------------------ compliance
    def create_policy(
        self, name: str, rules: list[dict[str, Any]], description: str | None = None
    ) -> PolicyOut:
        body = {"name": name, "rules": rules, "description": description}
        return PolicyOut.model_validate(self.post("/v1/policies", body))

    def policies(self, name: str | None = None) -> list[PolicyOut]:
        params = {"name": name} if name else {}
        return [PolicyOut.model_validate(p) for p in self.get("/v1/policies", **params)["data"]]

    def forget_set_from_indices(
        self, dataset_id: str, indices: list[int], name: str | None = None
    ) -> dict[str, Any]:
        return self.create_forget_set(dataset_id, {"kind": "indices", "indices": indices}, name)

    def submit_deletion_request(
        self, body: dict[str, Any], idempotency_key: str | None = None
    ) -> DeletionRequestOut:
        """POST /v1/deletion-requests; pass a stable ``idempotency_key`` to make resubmissions safe."""
        response = self.request(
            "POST", "/v1/deletion-requests", json_body=body, idempotency_key=idempotency_key
        )
        return DeletionRequestOut.model_validate(self._check(response))

    def deletion_request(self, request_id: str) -> DeletionRequestOut:
        return DeletionRequestOut.model_validate(self.get(f"/v1/deletion-requests/{request_id}"))

    def cancel_deletion_request(self, request_id: str) -> DeletionRequestOut:
        return DeletionRequestOut.model_validate(self.post(f"/v1/deletion-requests/{request_id}/cancel"))

    def follow_deletion_request(
        self,
        request_id: str,
        on_update: Callable[[DeletionRequestOut], None] | None = None,
        poll_seconds: float = 0.5,
        timeout_s: float = 3600.0,
    ) -> DeletionRequestOut:
        """Poll until the request is issued, failed or cancelled; ``on_update`` sees every poll."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            current = self.deletion_request(request_id)
            if on_update:
                on_update(current)
            if current.status.value in REQUEST_TERMINAL:
                return current
            time.sleep(poll_seconds)
        raise TimeoutError(f"deletion request {request_id} did not finish within {timeout_s} s")

    def reports(self, request_id: str) -> list[ReportOut]:
        return [ReportOut.model_validate(r) for r in self.get(f"/v1/deletion-requests/{request_id}/reports")]

    def reissue_report(self, request_id: str) -> ReportOut:
        return ReportOut.model_validate(self.post(f"/v1/deletion-requests/{request_id}/reports"))

    def report_bytes(self, report_id: str, fmt: str = "json") -> bytes:
        """The report exactly as signed (``json``), or its HTML (``html``) or PDF (``pdf``) rendering."""
        return self._bytes(f"/v1/reports/{report_id}" + (f"/{fmt}" if fmt in ("html", "pdf") else ""))

    def _bytes(self, path: str) -> bytes:
        response = self.request("GET", path)
        self._check_status(response)
        return response.content

    def job_grid(self, job_id: str) -> bytes:
        """A generative job's sample grid (PNG, one class per row)."""
        return self._bytes(f"/v1/jobs/{job_id}/grid.png")

    def job_samples(self, job_id: str) -> dict[str, Any]:
        """A sample job's images (uint8, N x C x H x W) and labels, read without unpickling anything."""
        import io

        import numpy as np

        with np.load(io.BytesIO(self._bytes(f"/v1/jobs/{job_id}/samples.npz")), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}

    def signing_key(self) -> SigningKeyOut:
        return SigningKeyOut.model_validate(self.get("/v1/report-signing-key"))

    def _check_status(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            self._check(response)


def read_indices(path: Path) -> list[int]:
    """Forget-set indices from a file: ``.json`` (a list, or an object with ``indices``), ``.csv`` (one
    index per row, first column; a non-numeric header row is skipped) or ``.npy`` (a 1-D integer array)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        array = np.load(path, allow_pickle=False)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: expected a 1-D integer array, got {array.dtype} with shape {array.shape}"
            )
        return [int(v) for v in array]
    text = path.read_text()
    if suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("indices")
        if not isinstance(data, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in data
        ):
            raise ValueError(f"{path}: expected a JSON list of integers (or {{'indices': [...]}})")
        return list(data)
    if suffix == ".csv":
        values = []
        for number, row in enumerate(csv.reader(io.StringIO(text))):
            if not row or not row[0].strip():
                continue
            try:
                values.append(int(row[0].strip()))
            except ValueError as exc:
                if number == 0:
                    continue  # header
                raise ValueError(f"{path}: row {number + 1} is not an integer index: {row[0]!r}") from exc
        return values
    raise ValueError(f"{path}: unsupported forget-set file type {suffix!r} (use .json, .csv or .npy)")
