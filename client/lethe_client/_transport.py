"""Requests as values, and the retry rule both clients apply to them.

A request says whether the server may safely receive it twice (``replay_safe``): GETs, dataset creation
(the server answers a repeat with the stored dataset), and POSTs that carry an ``Idempotency-Key`` the
server honours (jobs, deletion requests). Only those are resent after a failure
that may have happened after the server acted (a read timeout, a dropped connection, 502/504). Everything
is resent after failures that prove the server did nothing: the connection was never made, or it answered
429 / 503 (rate limit, quota, not ready) — those are refused before any write.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from lethe_client.models import Problem

# POST endpoints whose Idempotency-Key header the server stores (a retry returns the first answer).
IDEMPOTENT_POSTS = frozenset({"/v1/jobs", "/v1/deletion-requests"})
REFUSED_STATUSES = frozenset({429, 503})
GATEWAY_STATUSES = frozenset({502, 504})
# The request never reached the server: always safe to send again.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The server may have acted before the connection broke: resend only what it deduplicates.
MAYBE_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)


class LetheError(RuntimeError):
    """The API answered 4xx/5xx; ``problem`` is its RFC 9457 document (``code`` names the case)."""

    def __init__(self, status: int, problem: Problem) -> None:
        super().__init__(f"{status} {problem.code or problem.title or ''}: {problem.detail or ''}".strip())
        self.status = status
        self.problem = problem

    @property
    def code(self) -> str | None:
        return self.problem.code


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    # Bytes, not streams: a retry must be able to send the same body again.
    files: Mapping[str, tuple[str, bytes, str]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    replay_safe: bool = False

    def kwargs(self, headers: Mapping[str, str]) -> dict[str, Any]:
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        return {
            "params": params or None,
            "json": self.json,
            "data": self.data,
            "files": self.files,
            "headers": {**headers, **self.headers},
        }


def get(
    path: str, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
) -> Request:
    return Request("GET", path, params=params, headers=headers or {}, replay_safe=True)


def post(
    path: str,
    json: Any = None,
    *,
    idempotency_key: str | None = None,
    data: Mapping[str, str] | None = None,
    files: Mapping[str, tuple[str, bytes, str]] | None = None,
    deduplicated: bool = False,
) -> Request:
    """``deduplicated``: the server answers a repeat with the stored resource (content-addressed)."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    safe = deduplicated or (idempotency_key is not None and path in IDEMPOTENT_POSTS)
    return Request("POST", path, json=json, data=data, files=files, headers=headers, replay_safe=safe)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` resends at most; delays ``backoff_s * 2**attempt`` capped at ``max_backoff_s`` with
    jitter (half fixed, half random, so that clients refused together do not come back together), or
    the server's ``Retry-After`` (seconds or an HTTP date) when it sends one, capped the same way."""

    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    jitter: bool = True

    def delay(self, attempt: int, response: httpx.Response | None, rng: random.Random) -> float:
        after = retry_after_seconds(response) if response is not None else None
        if after is not None:
            return min(after, self.max_backoff_s)
        base = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return base / 2 + rng.uniform(0, base / 2) if self.jitter else base

    def retry_response(self, request: Request, response: httpx.Response) -> bool:
        if response.status_code in REFUSED_STATUSES:
            return True
        return response.status_code in GATEWAY_STATUSES and request.replay_safe

    def retry_error(self, request: Request, error: Exception) -> bool:
        if isinstance(error, NOT_SENT_ERRORS):
            return True
        return isinstance(error, MAYBE_SENT_ERRORS) and request.replay_safe


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def problem_of(response: httpx.Response) -> Problem:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return Problem.model_validate(body)
    return Problem(status=response.status_code, title=response.reason_phrase, detail=response.text[:500])


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise LetheError(response.status_code, problem_of(response))
    return response


class SyncSender:
    """Sends a Request through an httpx.Client under a RetryPolicy."""

    def __init__(
        self,
        http: httpx.Client,
        policy: RetryPolicy,
        *,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        # Per request rather than on ``http``: a shared client (a test's TestClient) must not keep our key.
        self.headers = dict(headers or {})
        self.http = http
        self.policy = policy
        self.sleep = sleep
        self.rng = rng or random.Random()

    def send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.http.request(request.method, request.path, **request.kwargs(self.headers))
            except httpx.TransportError as error:
                if attempt >= self.policy.retries or not self.policy.retry_error(request, error):
                    raise
                self.sleep(self.policy.delay(attempt, None, self.rng))
            else:
                if attempt >= self.policy.retries or not self.policy.retry_response(request, response):
                    return response
                response.close()
                self.sleep(self.policy.delay(attempt, response, self.rng))
            attempt += 1


class AsyncSender:
    """The same rule over an httpx.AsyncClient."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: RetryPolicy,
        *,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        import asyncio

        self.headers = dict(headers or {})
        self.http = http
        self.policy = policy
        self.sleep = sleep or asyncio.sleep
        self.rng = rng or random.Random()

    async def send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self.http.request(
                    request.method, request.path, **request.kwargs(self.headers)
                )
            except httpx.TransportError as error:
                if attempt >= self.policy.retries or not self.policy.retry_error(request, error):
                    raise
                await self.sleep(self.policy.delay(attempt, None, self.rng))
            else:
                if attempt >= self.policy.retries or not self.policy.retry_response(request, response):
                    return response
                await response.aclose()
                await self.sleep(self.policy.delay(attempt, response, self.rng))
            attempt += 1
