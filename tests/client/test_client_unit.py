"""lethe_client in process, against httpx.MockTransport: retries and their limits, idempotency keys,
cursor pagination, follow() with ETags, the async twin, and the upload helpers' bytes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import numpy as np
import pytest
from lethe_client import AsyncClient, Client, LetheError, RetryPolicy, uploads

NOW = "2026-01-01T00:00:00Z"
NO_JITTER = RetryPolicy(retries=3, backoff_s=0.5, jitter=False)


def job_json(status: str = "queued", version: int = 1, fraction: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(extra.pop("id", uuid.UUID(int=1))),
        "kind": "train",
        "status": status,
        "seed": 1,
        "created_at": NOW,
        "version": version,
        "progress": {"fraction": fraction, "phase": "epoch"},
        **extra,
    }


def forget_set_json() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "dataset_id": str(uuid.uuid4()),
        "name": "f",
        "kind": "random",
        "size": 3,
        "created_at": NOW,
    }


def make(
    handler: Callable[[httpx.Request], httpx.Response], policy: RetryPolicy = NO_JITTER
) -> tuple[Client, list[float]]:
    sleeps: list[float] = []
    client = Client(
        "http://lethe.test", "lk_x", transport=httpx.MockTransport(handler), retry=policy, sleep=sleeps.append
    )
    return client, sleeps


def test_retries_503_and_429_honouring_retry_after_seconds_and_dates() -> None:
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "7"}),
            httpx.Response(
                429,
                headers={
                    "Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
                },
            ),
            httpx.Response(503),  # no hint: exponential backoff, attempt 2 -> 0.5 * 4
            httpx.Response(200, json=job_json()),
        ]
    )
    client, sleeps = make(lambda request: next(answers))
    job = client.get_job(uuid.UUID(int=1))
    assert job.status == "queued"
    assert sleeps[0] == 7.0
    assert 17.0 <= sleeps[1] <= 20.0
    assert sleeps[2] == 2.0


def test_retry_after_is_capped_and_jitter_stays_within_half_to_full() -> None:
    policy = RetryPolicy(retries=5, backoff_s=1.0, max_backoff_s=4.0)
    import random

    rng = random.Random(0)
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "3600"}), rng) == 4.0
    for attempt in range(6):
        base = min(2.0**attempt, 4.0)
        assert base / 2 <= policy.delay(attempt, None, rng) <= base


def test_gives_up_after_the_last_retry_with_the_problem_document() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        problem = {
            "type": "about:blank",
            "title": "Too Many Requests",
            "status": 429,
            "code": "too-many-active-jobs",
            "detail": "limit 2",
        }
        return httpx.Response(429, json=problem, headers={"Content-Type": "application/problem+json"})

    client, sleeps = make(handler)
    with pytest.raises(LetheError) as caught:
        client.submit_job({"kind": "train"})
    assert caught.value.status == 429 and caught.value.code == "too-many-active-jobs"
    assert len(calls) == 4 and len(sleeps) == 3  # 1 + retries


def test_a_submission_keeps_its_idempotency_key_across_retries_after_a_dropped_answer() -> None:
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) < 3:
            raise httpx.ReadError("connection reset after the server read the body", request=request)
        return httpx.Response(202, json=job_json())

    client, _ = make(handler)
    client.submit_job({"kind": "train", "dataset_id": uuid.UUID(int=5)})
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    keys.clear()
    client.submit_job({"kind": "train"})
    assert keys[0] and keys[0] not in (None,) and len(set(keys)) == 1
    keys.clear()
    client.submit_job({"kind": "train"}, idempotency_key="mine")
    assert set(keys) == {"mine"}


def test_a_post_the_server_does_not_deduplicate_is_resent_only_when_it_never_left() -> None:
    attempts: list[str] = []

    def dropped(request: httpx.Request) -> httpx.Response:
        attempts.append("read")
        raise httpx.ReadError("reset", request=request)

    client, sleeps = make(dropped)
    with pytest.raises(httpx.ReadError):
        client.create_forget_set(uuid.uuid4(), {"kind": "random", "fraction": 0.1})
    assert attempts == ["read"] and sleeps == []  # may have been created: not sent twice

    refused = iter([httpx.ConnectError("refused"), httpx.ConnectError("refused")])

    def connect(request: httpx.Request) -> httpx.Response:
        error = next(refused, None)
        if error is not None:
            raise error
        return httpx.Response(201, json=forget_set_json())

    client, sleeps = make(connect)
    assert client.create_forget_set(uuid.uuid4(), {"kind": "random", "fraction": 0.1}).size == 3
    assert sleeps == [0.5, 1.0]


def test_a_dataset_upload_is_resent_after_a_dropped_answer_the_server_deduplicates_it() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        dataset = {"id": str(uuid.uuid4()), "name": "d", "source": "upload", "task": "classification"}
        dataset |= {"num_classes": 2, "n_train": 4, "n_test": 2, "input_shape": [3], "created_at": NOW}
        return httpx.Response(200, json=dataset)

    client, sleeps = make(handler)
    assert client.upload_dataset(b"PK-npz-bytes", name="d").n_train == 4
    assert len(bodies) == 2 and all(b"PK-npz-bytes" in body for body in bodies) and sleeps == [0.5]


def test_gateway_errors_are_retried_for_reads_but_not_for_unkeyed_posts() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(502, text="bad gateway")

    client, _ = make(handler)
    with pytest.raises(LetheError):
        client.get_job(uuid.UUID(int=1))
    assert seen == ["GET"] * 4
    seen.clear()
    with pytest.raises(LetheError) as caught:
        client.create_campaign({"name": "c"})
    assert seen == ["POST"] and caught.value.problem.detail == "bad gateway"


def test_pagination_follows_cursors_until_has_more_is_false() -> None:
    pages = {
        None: (["a", "b"], "c1"),
        "c1": (["c", "d"], "c2"),
        "c2": (["e"], None),
    }
    cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        cursors.append(cursor)
        assert request.url.params.get("status") == "succeeded" and request.url.params.get("limit") == "2"
        ids, nxt = pages[cursor]
        data = [job_json(id=uuid.uuid5(uuid.NAMESPACE_OID, i), status="succeeded") for i in ids]
        return httpx.Response(200, json={"data": data, "next_cursor": nxt, "has_more": nxt is not None})

    client, _ = make(handler)
    jobs = list(client.iter_jobs(status="succeeded", limit=2))
    assert [j.id for j in jobs] == [uuid.uuid5(uuid.NAMESPACE_OID, i) for i in "abcde"]
    assert cursors == [None, "c1", "c2"]
    page = client.list_jobs(status="succeeded", limit=2)
    assert page.has_more and page.next_cursor == "c1" and len(page.data) == 2


def test_follow_sends_the_etag_and_reports_each_new_version() -> None:
    versions = iter(
        [
            (200, job_json("queued", 1)),
            (304, None),
            (200, job_json("running", 2, 0.5)),
            (304, None),
            (200, job_json("succeeded", 3, 1.0, metrics={"UA": 12.5})),
        ]
    )
    sent_tags: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_tags.append(request.headers.get("If-None-Match"))
        status, body = next(versions)
        if status == 304:
            return httpx.Response(304, headers={"ETag": sent_tags[-1] or ""})
        return httpx.Response(200, json=body, headers={"ETag": f'"v{body["version"]}"'})

    client, sleeps = make(handler)
    updates: list[tuple[str, float | None]] = []
    job = client.follow(
        uuid.UUID(int=1), lambda j: updates.append((j.status, j.progress.fraction)), poll_seconds=0.25
    )
    assert job.status == "succeeded" and job.metrics == {"UA": 12.5}
    assert updates == [("queued", 0.0), ("running", 0.5), ("succeeded", 1.0)]
    assert sent_tags == [None, '"v1"', '"v1"', '"v2"', '"v2"']
    assert sleeps == [0.25] * 4


def test_the_api_key_goes_on_every_request_but_not_onto_a_shared_http_client() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json=job_json())

    shared = httpx.Client(base_url="http://lethe.test", transport=httpx.MockTransport(handler))
    with Client("http://lethe.test", "lk_secret", http=shared) as client:
        client.get_job(uuid.UUID(int=1))
    shared.get("/v1/jobs/x")  # still open: the caller's client is the caller's to close
    assert seen == ["Bearer lk_secret", None]


def test_async_client_retries_paginates_and_follows() -> None:
    state = {"listed": 0, "polled": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs":
            state["listed"] += 1
            if state["listed"] == 1:
                return httpx.Response(503, headers={"Retry-After": "1"})
            if request.url.params.get("cursor") is None:
                return httpx.Response(
                    200, json={"data": [job_json(id=uuid.UUID(int=1))], "next_cursor": "n", "has_more": True}
                )
            return httpx.Response(
                200, json={"data": [job_json(id=uuid.UUID(int=2))], "next_cursor": None, "has_more": False}
            )
        state["polled"] += 1
        status = "succeeded" if state["polled"] > 1 else "running"
        return httpx.Response(
            200, json=job_json(status, state["polled"]), headers={"ETag": f'"{state["polled"]}"'}
        )

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> tuple[list[uuid.UUID], str, list[str]]:
        seen: list[str] = []

        async def on_update(job: Any) -> None:
            seen.append(job.status)

        async with AsyncClient(
            "http://lethe.test", "lk_x", transport=httpx.MockTransport(handler), retry=NO_JITTER, sleep=sleep
        ) as client:
            ids = [job.id async for job in client.iter_jobs()]
            done = await client.follow(uuid.UUID(int=1), on_update, poll_seconds=0.1)
        return ids, done.status, seen

    ids, status, seen = asyncio.run(main())
    assert ids == [uuid.UUID(int=1), uuid.UUID(int=2)]
    assert status == "succeeded" and seen == ["running", "succeeded"]
    assert sleeps == [1.0, 0.1]


def test_upload_helpers_write_what_the_server_intake_accepts() -> None:
    from app.intake import validate_npz
    from app.intake.safetensors_check import load_safetensors_arrays

    rng = np.random.default_rng(0)
    npz = uploads.dataset_npz(
        rng.random((20, 4)), rng.integers(0, 3, 20), rng.random((5, 4)), rng.integers(0, 3, 5)
    )
    dataset = validate_npz(npz, max_bytes=1 << 20, max_uncompressed_bytes=1 << 20)
    assert dataset.x_train.shape == (20, 4)
    with pytest.raises(ValueError, match="object array"):
        uploads.dataset_npz(np.array([{}], dtype=object), [0], [[0.0]], [0])

    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(4, 3)
    tied = {"weight": layer.weight, "bias": layer.bias, "weight_again": layer.weight}  # shared storage
    data = uploads.state_dict_safetensors(tied)
    arrays = load_safetensors_arrays(data)  # the server's own reader: no torch, no pickle
    assert set(arrays) == {"weight", "bias", "weight_again"}
    np.testing.assert_array_equal(arrays["weight_again"], layer.weight.detach().numpy())
