"""A small synchronous HTTP client for Lethe (used by the CLI and the demo)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}
DEFAULT_TIMEOUT_S = 60.0


class LetheError(RuntimeError):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code', '')}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


class LetheClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise LetheError(response.status_code, problem)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params=params or None))

    def post(
        self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        return self._check(self.http.post(path, json=body or {}, headers=headers))

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
            response = self.http.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": tag} if tag else None)
            if response.status_code != 304:
                job = self._check(response)
                tag = response.headers.get("ETag")
                if on_update:
                    on_update(job)
                if job["status"] in TERMINAL:
                    return job
            time.sleep(poll_seconds)
        raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
