"""Plot endpoints (PNG/SVG), Prometheus /metrics and the readiness check."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.app.api.test_compliance import (
    ORIGINAL_METRICS,
    POLICY_RULES,
    RETRAIN_METRICS,
    UNLEARN_METRICS,
    finish_jobs,
    publish,
    request_body,
    world,  # noqa: F401  (fixture)
)
from tests.app.api.test_resources import assert_problem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def finished(api: TestClient, world: dict, sessions) -> dict:  # noqa: F811
    tenant = world["tenant"]
    policy = publish(api, tenant, "plots", POLICY_RULES)
    created = api.post(
        "/v1/deletion-requests", json=request_body(world, policy, seed=21), headers=tenant.headers("submit")
    ).json()
    metrics = {"unlearn": UNLEARN_METRICS, "retrain": RETRAIN_METRICS, "original": ORIGINAL_METRICS}
    finish_jobs(sessions, created, world, metrics)
    return {**world, "jobs": {role: e["job_id"] for role, e in created["jobs"].items()}}


def assert_image(response, fmt: str) -> None:
    assert response.status_code == 200, response.text
    if fmt == "png":
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(PNG_MAGIC)
    else:
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in response.content[:2000] and response.content.rstrip().endswith(b"</svg>")
        assert b'href="http' not in response.content  # namespaces only, no external assets


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_job_plots(api: TestClient, finished: dict, fmt: str) -> None:
    headers = finished["tenant"].headers("read")
    unlearn = finished["jobs"]["unlearn"]
    for name in ("roc", "per-class-accuracy", "history"):
        assert_image(api.get(f"/v1/jobs/{unlearn}/plots/{name}.{fmt}", headers=headers), fmt)
    assert_image(
        api.get(f"/v1/forget-sets/{finished['forget_set']['id']}/plots/tradeoff.{fmt}", headers=headers), fmt
    )


def test_plots_without_data_are_404(api: TestClient, finished: dict, other_tenant) -> None:
    headers = finished["tenant"].headers("read")
    retrain = finished["jobs"]["retrain"]  # finished with an empty result
    for name in ("roc", "per-class-accuracy", "history"):
        assert_problem(
            api.get(f"/v1/jobs/{retrain}/plots/{name}.png", headers=headers), 404, "plot-data-not-found"
        )
    forget_set = finished["forget_set"]["id"]
    assert_problem(
        api.get(f"/v1/forget-sets/{forget_set}/plots/scores.svg", headers=headers), 404, "plot-data-not-found"
    )
    assert_problem(api.get(f"/v1/jobs/{uuid.uuid4()}/plots/roc.png", headers=headers), 404, "job-not-found")
    unlearn = finished["jobs"]["unlearn"]
    assert_problem(api.get(f"/v1/jobs/{unlearn}/plots/roc.png", headers=other_tenant.headers("read")), 404)
    assert api.get(f"/v1/jobs/{unlearn}/plots/roc.gif", headers=headers).status_code == 422


def test_svg_is_reproducible(api: TestClient, finished: dict) -> None:
    headers = finished["tenant"].headers("read")
    url = f"/v1/jobs/{finished['jobs']['unlearn']}/plots/roc.svg"
    assert api.get(url, headers=headers).content == api.get(url, headers=headers).content


def test_scores_histogram(api: TestClient, finished: dict, sessions) -> None:
    """A searched forget set's scores (written as the search job would)."""
    import json

    from app.models import ForgetSet
    from app.storage import LocalArtifactStore

    store = LocalArtifactStore(api.app.state.settings.artifacts)
    key = f"scores/{uuid.uuid4().hex}.json"
    store.put(key, json.dumps({"granularity": "data", "scores": [i / 100 for i in range(100)]}).encode())
    with sessions() as session:
        row = session.get(ForgetSet, uuid.UUID(finished["forget_set"]["id"]))
        row.scores_key = key
        session.commit()
    response = api.get(
        f"/v1/forget-sets/{finished['forget_set']['id']}/plots/scores.png",
        headers=finished["tenant"].headers("read"),
    )
    assert_image(response, "png")


def test_prometheus_metrics(api: TestClient, finished: dict, monkeypatch) -> None:
    assert_problem(api.get("/metrics"), 404, "not-found")  # off by default: counts span every tenant
    monkeypatch.setattr(api.app.state.settings, "metrics_token", SecretStr("scrape-token"))
    tenant_key = finished["tenant"].headers("admin")  # a tenant's key must not see other tenants' counts
    assert_problem(api.get("/metrics", headers=tenant_key), 401, "invalid-metrics-token")
    response = api.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for series in (
        'lethe_jobs{kind="unlearn",status="succeeded"}',
        "lethe_queue_depth ",
        # Counted where they happen (app.services.ops.telemetry): the API's own requests are appended.
        "# TYPE lethe_http_requests_total counter",
        'lethe_http_requests_total{method="GET",route="/metrics",status="401"}',
        "# TYPE lethe_worker_heartbeat_age_seconds gauge",
        'lethe_deletion_requests{status="running"}',
        "lethe_compliance_reports ",
        "lethe_broker_up 1.0",
    ):
        assert series in text, series
    succeeded = next(
        line for line in text.splitlines() if line.startswith('lethe_jobs{kind="unlearn",status="succeeded"}')
    )
    assert float(succeeded.split()[-1]) >= 1


def test_readiness_checks_database_and_broker(api: TestClient, monkeypatch) -> None:
    body = api.get("/readyz").json()
    assert body["status"] == "ready" and body["checks"] == {"database": "ok", "broker": "ok"}
    monkeypatch.setattr(api.app.state.settings, "broker_url", "redis://127.0.0.1:1/0")
    assert_problem(api.get("/readyz"), 503, "broker-unavailable")
