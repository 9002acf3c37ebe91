"""Observability of the API: offline /docs and /redoc, API-key securitySchemes, JSON access log lines with
the request id round trip, HTTP counters and latency histograms, and the code version in cache keys."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.core.logs import JsonFormatter, configure_logging, log_context
from app.models import Job, JobStatus
from tests.app.api.test_compliance import world  # noqa: F401  (fixture)
from tests.app.api.test_resources import create_digits


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_and_their_assets_are_served_without_network(api: TestClient, page: str) -> None:
    response = api.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    # No other host anywhere in the page (FastAPI's defaults name a CDN, Google Fonts and its own favicon).
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), html
    parser = _Refs()
    parser.feed(html)
    scripts = [url for url in parser.urls if url.endswith(".js")]
    assert scripts and all(url.startswith("/docs/assets/") for url in parser.urls), parser.urls
    for url in parser.urls:
        asset = api.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    bundle = api.get(scripts[0])
    assert "javascript" in bundle.headers["content-type"]
    assert len(bundle.content) > 500_000  # the real bundle, not a placeholder
    licences = ["/docs/assets/swagger/LICENSE", "/docs/assets/redoc/redoc.standalone.js.LICENSE.txt"]
    assert all(api.get(url).status_code == 200 for url in licences)


def test_openapi_declares_the_api_key_schemes(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerApiKey"] == {**schemes["bearerApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["headerApiKey"]["type"] == "apiKey" and schemes["headerApiKey"]["in"] == "header"
    assert schemes["headerApiKey"]["name"] == "X-API-Key"
    operations = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    either_key = [{"bearerApiKey": []}, {"headerApiKey": []}]
    assert operations[("POST", "/v1/jobs")]["security"] == either_key
    assert operations[("GET", "/v1/jobs/{job_id}")]["security"] == either_key
    assert operations[("GET", "/metrics")]["security"] == [{"metricsToken": []}]
    assert "security" not in operations[("GET", "/healthz")]
    for (method, path), operation in operations.items():
        headers = [p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"]
        assert "authorization" not in headers and "x-api-key" not in headers, (method, path)
        if path.startswith("/v1/"):
            assert operation.get("security") == either_key, (method, path)


def test_swagger_authorize_sends_what_the_api_accepts(api: TestClient, tenant) -> None:
    # What Swagger UI sends for each declared scheme once "Authorize" holds a key.
    for headers in ({"Authorization": f"Bearer {tenant.read}"}, {"X-API-Key": tenant.read}):
        assert api.get("/v1/jobs", headers=headers).status_code == 200


@pytest.fixture
def json_logs() -> io.StringIO:
    """The root logger's JSON handler, as a served process installs it, writing into a buffer."""
    stream = io.StringIO()
    configure_logging("json", "INFO")
    root = logging.getLogger()
    handler = next(h for h in root.handlers if getattr(h, "_lethe_handler", False))
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_access_log_lines_are_json_with_request_id_tenant_route_status_latency(
    api: TestClient, tenant, json_logs: io.StringIO
) -> None:
    sent = f"req-{uuid.uuid4().hex[:12]}"
    response = api.get(f"/v1/jobs/{uuid.uuid4()}", headers={**tenant.headers("read"), "X-Request-ID": sent})
    assert response.status_code == 404 and response.headers["x-request-id"] == sent
    generated = api.get("/healthz", headers={"X-Request-ID": "not valid!"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)  # an unusable client id is replaced, not echoed
    access = [line for line in _lines(json_logs) if line["logger"] == "lethe.access"]
    mine = next(line for line in access if line.get("request_id") == sent)
    assert mine["route"] == "/v1/jobs/{job_id}" and mine["method"] == "GET" and mine["status"] == 404
    assert mine["tenant"] == str(tenant.id) and mine["level"] == "info"
    assert isinstance(mine["latency_ms"], float) and mine["latency_ms"] >= 0
    health = next(line for line in access if line.get("request_id") == generated)
    assert health["tenant"] is None and health["route"] == "/healthz"


def test_a_job_row_keeps_the_submitting_request_id(api: TestClient, world: dict, sessions) -> None:  # noqa: F811
    tenant = world["tenant"]
    sent = f"submit-{uuid.uuid4().hex[:8]}"
    response = api.post(
        "/v1/jobs",
        json={
            "kind": "evaluate",
            "model_id": world["model"]["id"],
            "forget_set_id": world["forget_set"]["id"],
        },
        headers={**tenant.headers("submit"), "X-Request-ID": sent},
    )
    assert response.status_code == 202, response.text
    with sessions() as session:
        job = session.get(Job, uuid.UUID(response.json()["id"]))
        assert job is not None and job.request_id == sent


def test_formatter_adds_context_fields_and_exceptions() -> None:
    record = logging.LogRecord("lethe.test", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    with log_context(job_id="j1", attempt=2, phase="train", request_id=None):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed x" and line["job_id"] == "j1" and line["attempt"] == 2
    assert line["phase"] == "train" and "request_id" not in line and "ValueError: boom" in line["exc"]
    assert json.loads(JsonFormatter().format(record)).get("job_id") is None  # the block ended


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', series[len(name) :]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def test_http_counters_and_latency_histograms(api: TestClient, tenant, monkeypatch) -> None:
    monkeypatch.setattr(api.app.state.settings, "metrics_token", SecretStr("scrape"))
    scrape = {"Authorization": "Bearer scrape"}
    before = api.get("/metrics", headers=scrape).text
    route = "/v1/jobs/{job_id}"
    for _ in range(3):
        api.get(f"/v1/jobs/{uuid.uuid4()}", headers=tenant.headers("read"))
    api.get(f"/no-such-path-{uuid.uuid4().hex}")
    text = api.get("/metrics", headers=scrape).text
    assert "# TYPE lethe_http_requests_total counter" in text
    assert "# TYPE lethe_http_request_duration_seconds histogram" in text
    counted = _sample(text, "lethe_http_requests_total", method="GET", route=route, status="404")
    assert (
        counted - _sample(before, "lethe_http_requests_total", method="GET", route=route, status="404") == 3
    )
    count = _sample(text, "lethe_http_request_duration_seconds_count", method="GET", route=route)
    inf = _sample(text, "lethe_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf")
    assert count == inf >= 3
    buckets = [
        _sample(text, "lethe_http_request_duration_seconds_bucket", method="GET", route=route, le=le)
        for le in ("0.005", "0.05", "0.5", "5.0", "+Inf")
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert _sample(text, "lethe_http_requests_total", route="unmatched", status="404") >= 1
    assert "/no-such-path" not in text  # unmatched paths share one label value


def test_code_version_is_part_of_the_result_cache_key(api: TestClient, tenant, sessions, monkeypatch) -> None:
    from tests.app.api.test_compliance import upload_model

    dataset = create_digits(api, tenant)
    model = upload_model(api, tenant, dataset["id"])
    forget = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "indices", "indices": [2, 3]}},
        headers=tenant.headers("submit"),
    ).json()
    body = {"kind": "evaluate", "model_id": model["id"], "forget_set_id": forget["id"]}

    def submit(version: str) -> dict:
        monkeypatch.setenv("LETHE_CODE_VERSION", version)
        response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
        assert response.status_code in (200, 202), response.text
        return response.json()

    first = submit("build-aaa")
    with sessions() as session:
        row = session.get(Job, uuid.UUID(first["id"]))
        assert row is not None and row.code_version == "build-aaa"
        row.status = JobStatus.succeeded
        session.commit()
    assert submit("build-aaa")["id"] == first["id"]  # same code: the cached result is served
    other = submit("build-bbb")  # an image of another commit must not reuse it
    assert other["id"] != first["id"] and other["code_version"] == "build-bbb"
