"""Tenancy and scopes: a foreign key sees 404 everywhere; a read-only key cannot mutate; audit rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from tests.app.api.test_jobs_api import train_body
from tests.app.api.test_resources import assert_problem, create_digits, model_weights


@pytest.fixture
def resources(api: TestClient, tenant) -> dict[str, str]:
    dataset = create_digits(api, tenant)
    config = {"input_shape": [1, 8, 8], "hidden": [8], "num_classes": 10}
    model = api.post(
        "/v1/models",
        data={"architecture": "mlp", "config": json.dumps(config), "dataset_id": dataset["id"]},
        files={"weights": ("m.safetensors", model_weights("mlp", config))},
        headers=tenant.headers("submit"),
    ).json()
    forget = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": 1}},
        headers=tenant.headers("submit"),
    ).json()
    job = api.post("/v1/jobs", json=train_body(dataset["id"]), headers=tenant.headers("submit")).json()
    return {"dataset": dataset["id"], "model": model["id"], "forget_set": forget["id"], "job": job["id"]}


def foreign_requests(r: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", f"/v1/datasets/{r['dataset']}", None),
        ("GET", f"/v1/models/{r['model']}", None),
        ("GET", f"/v1/models/{r['model']}/weights", None),
        ("GET", f"/v1/forget-sets/{r['forget_set']}", None),
        ("GET", f"/v1/forget-sets/{r['forget_set']}/indices", None),
        ("GET", f"/v1/forget-sets/{r['forget_set']}/comparison", None),
        ("GET", f"/v1/jobs/{r['job']}", None),
        ("GET", f"/v1/jobs/{r['job']}/metrics", None),
        ("GET", f"/v1/jobs/{r['job']}/events", None),
        ("GET", f"/v1/jobs/{r['job']}/events/stream", None),
        ("POST", f"/v1/jobs/{r['job']}/cancel", None),
        ("POST", "/v1/forget-sets", {"dataset_id": r["dataset"], "spec": {"kind": "class", "class": 1}}),
        ("POST", "/v1/jobs", {"kind": "evaluate", "model_id": r["model"], "forget_set_id": r["forget_set"]}),
        ("POST", "/v1/jobs", {"kind": "retrain", "model_id": r["model"], "forget_set_id": r["forget_set"]}),
        ("POST", "/v1/jobs", train_body(r["dataset"])),
    ]


def test_foreign_tenant_gets_404_on_every_resource(api: TestClient, resources, other_tenant) -> None:
    for method, path, body in foreign_requests(resources):
        response = api.request(method, path, json=body, headers=other_tenant.headers("admin"))
        assert_problem(response, 404)
    for listing in ("/v1/jobs", "/v1/models", "/v1/forget-sets", "/v1/datasets"):
        assert api.get(listing, headers=other_tenant.headers("read")).json()["data"] == []


def test_read_only_key_cannot_mutate(api: TestClient, resources, tenant) -> None:
    mutations = [(m, p, b) for m, p, b in foreign_requests(resources) if m == "POST"]
    mutations += [
        ("POST", "/v1/datasets", {"builtin": "digits"}),
        ("POST", "/v1/keys", {"name": "x", "scopes": ["read"]}),
    ]
    for method, path, body in mutations:
        assert_problem(
            api.request(method, path, json=body, headers=tenant.headers("read")), 403, "insufficient-scope"
        )
    assert api.get(f"/v1/jobs/{resources['job']}", headers=tenant.headers("read")).status_code == 200


def test_submit_key_cannot_administer(api: TestClient, tenant) -> None:
    assert_problem(
        api.post("/v1/keys", json={"name": "x", "scopes": ["admin"]}, headers=tenant.headers("submit")), 403
    )
    assert_problem(api.get("/v1/audit-events", headers=tenant.headers("submit")), 403)


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer lk_abc_def", "Basic x"])
def test_missing_or_invalid_key_is_401(api: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    assert_problem(api.get("/v1/jobs", headers=headers), 401)


def test_every_mutation_is_audited_with_an_intact_chain(api: TestClient, resources, tenant, sessions) -> None:
    from app.services.compliance.audit import verify_chain

    api.post(f"/v1/jobs/{resources['job']}/cancel", headers=tenant.headers("submit"))
    created = api.post("/v1/keys", json={"name": "ci", "scopes": ["read"]}, headers=tenant.headers("admin"))
    assert created.status_code == 201 and created.json()["token"].startswith("lk_")
    events = api.get("/v1/audit-events", headers=tenant.headers("admin")).json()
    actions = [e["action"] for e in events]
    for action in (
        "key.create",
        "dataset.create",
        "model.upload",
        "forget_set.create",
        "job.create",
        "job.cancel",
    ):
        assert action in actions, actions
    assert all("indices" not in json.dumps(e["details"]) for e in events)  # personal data stays out
    with sessions() as session:
        assert verify_chain(session, tenant.id)


def test_tampering_breaks_the_audit_chain(api: TestClient, resources, tenant, sessions) -> None:
    from sqlalchemy import select

    from app.models import AuditEvent
    from app.services.compliance.audit import verify_chain

    with sessions() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant.id)).first()
        event.details = {"forged": True}
        session.flush()
        assert not verify_chain(session, tenant.id)
        session.rollback()


def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys; import app.main; from app.main import create_app; "
        "from app.core.config import Settings; import tempfile; "
        "create_app(Settings(home=tempfile.mkdtemp()), publisher=lambda job_id: None); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_openapi_lists_every_route(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events/stream",
        "/v1/methods",
        "/v1/architectures",
        "/v1/datasets",
        "/v1/datasets/upload",
        "/v1/models",
        "/v1/forget-sets",
        "/v1/forget-sets/{forget_set_id}/comparison",
    ):
        assert path in paths


def test_discovery_lists_registries_with_schemas(api: TestClient, tenant) -> None:
    methods = {m["name"]: m for m in api.get("/v1/methods", headers=tenant.headers("read")).json()}
    assert {"train", "retrain", "ft"} <= set(methods)
    assert methods["ft"]["job_kind"] == "unlearn" and "properties" in methods["ft"]["params_schema"]
    archs = {a["name"] for a in api.get("/v1/architectures", headers=tenant.headers("read")).json()}
    assert {"mlp", "small_cnn", "resnet18"} <= archs
