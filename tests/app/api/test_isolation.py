"""Tenant isolation and scopes over every route of the app (issue 9).

``ROUTES`` classifies every route the app serves (``fastapi.routing.iter_route_contexts(app.routes)``):
the scope it needs, a request that succeeds for its owner (tenant A), and for mutations the audit action it
must write. A route the table does not know, or a table entry the app no longer serves, fails
``test_every_route_is_classified``, so a new route cannot go untested.

For every route, with A's resources created first:

* a key of tenant B (admin scope) gets 404 problem+json on every route that names one of A's resources in
  its path or body (never 403, which would confirm the id exists, never 2xx), and no listing or read of B
  contains any of A's ids;
* a key of A without the route's scope gets 403 ``insufficient-scope``;
* neither attempt changes anything: both tenants' audit trails keep their length;
* A's own request, with exactly the needed scope, succeeds, and every mutation appends its audit row (the
  expected action on the expected resource, in an intact hash chain).
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.security import Scope
from app.models import AuditEvent, Campaign
from app.models import Tenant as TenantRow
from app.services.compliance import audit
from app.services.ops.keys import create_key
from tests.app.api.test_bad_input_corpus import MLP_CONFIG, mlp_state, safetensors_bytes
from tests.app.api.test_compliance import POLICY_RULES, issued_request
from tests.conftest import Tenant, make_tenant
from tests.workers.engine.datasets.data_root_files import write_cifar10

PROBLEM = "application/problem+json"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RECIPE = {"epochs": 1, "batch_size": 64, "lr": 0.05}
# The scope one step below each scope: a key with it must be refused. "none" is a key without scopes.
BELOW = {Scope.read: "none", Scope.submit: Scope.read.value, Scope.admin: Scope.submit.value}
UNIQUE = count(1)
Request = tuple[str, dict[str, Any]]  # (path, keyword arguments of TestClient.request)


# ------------------------------------------------------------------------------------------ A's world
@dataclass
class World:
    """Tenant A's resources, and helpers that make fresh ones for requests that consume them."""

    client: TestClient
    owner: Tenant
    sessions: sessionmaker[Session]
    settings: Settings
    ids: dict[str, str] = field(default_factory=dict)

    def post(self, path: str, scope: str = "submit", **kwargs: Any) -> dict[str, Any]:
        response = self.client.post(path, headers=self.owner.headers(scope), **kwargs)
        assert response.status_code < 300, response.text
        body: dict[str, Any] = response.json()
        return body

    def new_dataset(self) -> str:
        config = {"split_seed": 1000 + next(UNIQUE)}
        return str(self.post("/v1/datasets", json={"builtin": "digits", "config": config})["id"])

    def new_model(self) -> str:
        return str(self.post("/v1/models", **model_upload(self.ids["dataset_id"]))["id"])

    def new_forget_set(self) -> str:
        spec = {"kind": "random", "fraction": 0.05, "seed": next(UNIQUE)}
        return str(
            self.post("/v1/forget-sets", json={"dataset_id": self.ids["dataset_id"], "spec": spec})["id"]
        )

    def new_deletion_request(self) -> str:
        body = {
            "model_id": self.ids["model_id"],
            "forget_set_id": self.new_forget_set(),
            "method": "ft",
            "params": {"epochs": 1},
            "retrain_params": {"recipe": RECIPE},
            "policy_id": self.ids["policy_id"],
        }
        return str(self.post("/v1/deletion-requests", json=body)["id"])

    def new_upload(self, data: bytes = b"part") -> str:
        return str(self.post("/v1/uploads", json={"purpose": "dataset", "size_bytes": len(data)})["id"])

    def new_full_upload(self) -> str:
        """An upload of a fresh npz with every byte received (one part), ready to complete."""
        data = npz_upload()["files"]["file"][1]
        upload_id = self.new_upload(data)
        response = self.client.put(
            f"/v1/uploads/{upload_id}",
            content=data,
            headers={**self.owner.headers("submit"), **part_headers(data, 0)},
        )
        assert response.status_code == 200, response.text
        return upload_id

    def new_job(self, *, cancelled: bool = False) -> str:
        job = self.post("/v1/jobs", json=train_body(self.ids["dataset_id"]))
        if cancelled:
            self.post(f"/v1/jobs/{job['id']}/cancel")
        return str(job["id"])


def part_headers(data: bytes, offset: int) -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*",
        "Content-Digest": f"sha-256=:{digest}:",
    }


def model_upload(dataset_id: str) -> dict[str, Any]:
    return {
        "data": {"architecture": "mlp", "config": json.dumps(MLP_CONFIG), "dataset_id": dataset_id},
        "files": {"weights": ("m.safetensors", safetensors_bytes(mlp_state()))},
    }


def train_body(dataset_id: str) -> dict[str, Any]:
    return {
        "kind": "train",
        "dataset_id": dataset_id,
        "architecture": "mlp",
        "arch_config": {"hidden": [8]},
        "params": {"recipe": RECIPE},
        "seed": next(UNIQUE),
    }


def campaign_body(w: World) -> dict[str, Any]:
    return {
        "name": f"isolation-{next(UNIQUE)}",
        "model_id": w.ids["model_id"],
        "methods": [{"method": "ft", "params": {"epochs": 1}}],
        "forget_sets": [{"forget_set_id": w.ids["forget_set_id"]}],
        "seeds": [next(UNIQUE)],
        "retrain_params": {"recipe": RECIPE},
    }


def npz_upload() -> dict[str, Any]:
    rng = np.random.default_rng(next(UNIQUE))
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((40, 1, 4, 4), dtype=np.float32),
        y_train=np.arange(40) % 4,
        x_test=rng.random((12, 1, 4, 4), dtype=np.float32),
        y_test=np.arange(12) % 4,
    )
    return {"files": {"file": ("d.npz", buffer.getvalue())}}


def data_root_body(w: World) -> dict[str, Any]:
    """A fresh tiny CIFAR-10 directory under the test data root (new content: a new dataset each time)."""
    root = w.settings.data_root
    assert root is not None
    name = f"cifar-{next(UNIQUE)}"
    write_cifar10(root / name, seed=next(UNIQUE))
    return {"json": {"source": "data_root", "format": "cifar10", "path": name}}


def fresh_key_id(w: World) -> str:
    """A new read key of the owner's tenant, for requests that revoke or rotate one."""
    return str(w.post("/v1/keys", "admin", json={"name": f"k{next(UNIQUE)}", "scopes": ["read"]})["key_id"])


# ------------------------------------------------------------------------------------- the route table
@dataclass(frozen=True)
class RouteSpec:
    scope: Scope | None  # None: public, no key needed
    request: Callable[
        [World], Request
    ]  # what the owner sends (fresh resources when the request uses them up)
    audit: str | None = None  # action of the audit row a successful mutation writes
    # The owner's answer when the request cannot succeed for the owner either (a dense model has no mask):
    # it must then differ from the foreign tenant's generic "<resource>-not-found".
    owner_code: str | None = None


def get(path: str, **kwargs: Any) -> Callable[[World], Request]:
    return lambda w: (path.format(**w.ids), kwargs)


OPERATOR_ONLY = {"GET /metrics"}  # public paths that no tenant's key can read
ROUTES: dict[str, RouteSpec] = {
    # discovery and health
    "GET /v1/methods": RouteSpec(Scope.read, get("/v1/methods")),
    "GET /v1/job-kinds": RouteSpec(Scope.read, get("/v1/job-kinds")),
    "GET /v1/paper-presets": RouteSpec(Scope.read, get("/v1/paper-presets")),
    "GET /v1/architectures": RouteSpec(Scope.read, get("/v1/architectures")),
    "GET /v1/datasets/builtins": RouteSpec(Scope.read, get("/v1/datasets/builtins")),
    "GET /v1/audit-params": RouteSpec(Scope.read, get("/v1/audit-params")),
    "GET /healthz": RouteSpec(None, get("/healthz")),
    "GET /readyz": RouteSpec(None, get("/readyz")),
    # Prometheus: counts over all tenants, for the operator's scrape token only (no API key reads it).
    "GET /metrics": RouteSpec(None, get("/metrics")),
    # datasets
    "GET /v1/datasets": RouteSpec(Scope.read, get("/v1/datasets")),
    "POST /v1/datasets": RouteSpec(
        Scope.submit,
        lambda w: ("/v1/datasets", {"json": {"builtin": "digits", "config": {"split_seed": next(UNIQUE)}}}),
        audit="dataset.create",
    ),
    "POST /v1/datasets/upload": RouteSpec(
        Scope.submit, lambda w: ("/v1/datasets/upload", npz_upload()), audit="dataset.upload"
    ),
    "POST /v1/datasets/data-root": RouteSpec(
        Scope.submit, lambda w: ("/v1/datasets/data-root", data_root_body(w)), audit="dataset.data_root"
    ),
    "GET /v1/datasets/{dataset_id}": RouteSpec(Scope.read, get("/v1/datasets/{dataset_id}")),
    "DELETE /v1/datasets/{dataset_id}": RouteSpec(
        Scope.admin, lambda w: (f"/v1/datasets/{w.new_dataset()}", {}), audit="dataset.delete"
    ),
    # models
    "GET /v1/models": RouteSpec(Scope.read, get("/v1/models")),
    "POST /v1/models": RouteSpec(
        Scope.submit, lambda w: ("/v1/models", model_upload(w.ids["dataset_id"])), audit="model.upload"
    ),
    "GET /v1/models/{model_id}": RouteSpec(Scope.read, get("/v1/models/{model_id}")),
    "GET /v1/models/{model_id}/weights": RouteSpec(Scope.read, get("/v1/models/{model_id}/weights")),
    "GET /v1/models/{model_id}/mask": RouteSpec(
        Scope.read, get("/v1/models/{model_id}/mask"), owner_code="mask-not-found"
    ),
    "DELETE /v1/models/{model_id}": RouteSpec(
        Scope.submit, lambda w: (f"/v1/models/{w.new_model()}", {}), audit="model.delete"
    ),
    # forget sets
    "GET /v1/forget-sets": RouteSpec(Scope.read, get("/v1/forget-sets")),
    "POST /v1/forget-sets": RouteSpec(
        Scope.submit,
        lambda w: (
            "/v1/forget-sets",
            {
                "json": {
                    "dataset_id": w.ids["dataset_id"],
                    "spec": {"kind": "indices", "indices": [next(UNIQUE)]},
                }
            },
        ),
        audit="forget_set.create",
    ),
    "GET /v1/forget-sets/{forget_set_id}": RouteSpec(Scope.read, get("/v1/forget-sets/{forget_set_id}")),
    "GET /v1/forget-sets/{forget_set_id}/indices": RouteSpec(
        Scope.read, get("/v1/forget-sets/{forget_set_id}/indices")
    ),
    "GET /v1/forget-sets/{forget_set_id}/scores": RouteSpec(
        Scope.read, get("/v1/forget-sets/{forget_set_id}/scores"), owner_code="scores-not-found"
    ),
    "GET /v1/forget-sets/{forget_set_id}/comparison": RouteSpec(
        Scope.read,
        lambda w: get("/v1/forget-sets/{forget_set_id}/comparison", params={"model_id": w.ids["model_id"]})(
            w
        ),
    ),
    # chunked uploads
    "POST /v1/uploads": RouteSpec(
        Scope.submit,
        lambda w: ("/v1/uploads", {"json": {"purpose": "dataset", "size_bytes": 10}}),
        audit="upload.create",
    ),
    "GET /v1/uploads/{upload_id}": RouteSpec(Scope.read, get("/v1/uploads/{upload_id}")),
    "PUT /v1/uploads/{upload_id}": RouteSpec(
        Scope.submit,
        lambda w: (
            f"/v1/uploads/{w.new_upload()}",
            {"content": b"part", "headers": part_headers(b"part", 0)},
        ),
        audit="upload.part",
    ),
    "POST /v1/uploads/{upload_id}/complete": RouteSpec(
        Scope.submit,
        lambda w: (f"/v1/uploads/{w.new_full_upload()}/complete", {"json": {}}),
        audit="upload.complete",
    ),
    "DELETE /v1/uploads/{upload_id}": RouteSpec(
        Scope.submit, lambda w: (f"/v1/uploads/{w.new_upload()}", {}), audit="upload.delete"
    ),
    "DELETE /v1/forget-sets/{forget_set_id}": RouteSpec(
        Scope.submit, lambda w: (f"/v1/forget-sets/{w.new_forget_set()}", {}), audit="forget_set.delete"
    ),
    # jobs
    "POST /v1/jobs": RouteSpec(
        Scope.submit,
        lambda w: (
            "/v1/jobs",
            {
                "json": {
                    "kind": "evaluate",
                    "model_id": w.ids["model_id"],
                    "forget_set_id": w.new_forget_set(),
                }
            },
        ),
        audit="job.create",
    ),
    "GET /v1/jobs": RouteSpec(
        Scope.read, lambda w: ("/v1/jobs", {"params": {"model_id": w.ids["model_id"]}})
    ),
    "GET /v1/jobs/{job_id}": RouteSpec(Scope.read, get("/v1/jobs/{job_id}")),
    "POST /v1/jobs/{job_id}/cancel": RouteSpec(
        Scope.submit, lambda w: (f"/v1/jobs/{w.new_job()}/cancel", {}), audit="job.cancel"
    ),
    "GET /v1/jobs/{job_id}/metrics": RouteSpec(Scope.read, get("/v1/jobs/{job_id}/metrics")),
    "GET /v1/jobs/{job_id}/arrays": RouteSpec(
        Scope.read, get("/v1/jobs/{job_id}/arrays"), owner_code="arrays-not-found"
    ),
    "GET /v1/jobs/{job_id}/events": RouteSpec(Scope.read, get("/v1/jobs/{job_id}/events")),
    "GET /v1/jobs/{job_id}/events/stream": RouteSpec(Scope.read, get("/v1/jobs/{job_id}/events/stream")),
    "DELETE /v1/jobs/{job_id}": RouteSpec(
        Scope.submit, lambda w: (f"/v1/jobs/{w.new_job(cancelled=True)}", {}), audit="job.delete"
    ),
    # generative outputs (the owner's resources are classification ones: no grid, no samples)
    "GET /v1/jobs/{job_id}/grid.png": RouteSpec(
        Scope.read, get("/v1/jobs/{job_id}/grid.png"), owner_code="grid-not-found"
    ),
    "GET /v1/jobs/{job_id}/samples.npz": RouteSpec(
        Scope.read, get("/v1/jobs/{job_id}/samples.npz"), owner_code="samples-not-found"
    ),
    "GET /v1/models/{model_id}/samples.png": RouteSpec(
        Scope.read, get("/v1/models/{model_id}/samples.png"), owner_code="grid-not-found"
    ),
    # campaigns
    "POST /v1/campaigns": RouteSpec(
        Scope.submit, lambda w: ("/v1/campaigns", {"json": campaign_body(w)}), audit="campaign.create"
    ),
    "GET /v1/campaigns": RouteSpec(Scope.read, get("/v1/campaigns")),
    "GET /v1/campaigns/{campaign_id}": RouteSpec(Scope.read, get("/v1/campaigns/{campaign_id}")),
    "GET /v1/campaigns/{campaign_id}/table": RouteSpec(Scope.read, get("/v1/campaigns/{campaign_id}/table")),
    "POST /v1/campaigns/{campaign_id}/cancel": RouteSpec(
        Scope.submit, get("/v1/campaigns/{campaign_id}/cancel"), audit="campaign.cancel"
    ),
    "POST /v1/campaigns/{campaign_id}/cells/{job_id}/cancel": RouteSpec(
        Scope.submit, get("/v1/campaigns/{campaign_id}/cells/{cell_job_id}/cancel"), audit="campaign.cancel"
    ),
    # plots (SVG; the owner's job is the issued deletion request's unlearn job, which has every series)
    "GET /v1/jobs/{job_id}/plots/roc.{fmt}": RouteSpec(
        Scope.read, get("/v1/jobs/{plot_job_id}/plots/roc.svg")
    ),
    "GET /v1/jobs/{job_id}/plots/per-class-accuracy.{fmt}": RouteSpec(
        Scope.read, get("/v1/jobs/{plot_job_id}/plots/per-class-accuracy.svg")
    ),
    "GET /v1/jobs/{job_id}/plots/history.{fmt}": RouteSpec(
        Scope.read, get("/v1/jobs/{plot_job_id}/plots/history.svg")
    ),
    # The owner's plot job is no recovery audit: the owner hears it has no curves, the foreign tenant 404.
    "GET /v1/jobs/{job_id}/plots/recovery.{fmt}": RouteSpec(
        Scope.read, get("/v1/jobs/{plot_job_id}/plots/recovery.svg"), owner_code="plot-data-not-found"
    ),
    "GET /v1/forget-sets/{forget_set_id}/plots/tradeoff.{fmt}": RouteSpec(
        Scope.read, get("/v1/forget-sets/{forget_set_id}/plots/tradeoff.svg")
    ),
    "GET /v1/forget-sets/{forget_set_id}/plots/scores.{fmt}": RouteSpec(
        Scope.read, get("/v1/forget-sets/{forget_set_id}/plots/scores.svg"), owner_code="plot-data-not-found"
    ),
    # compliance: policies, deletion requests, signed reports
    "POST /v1/policies": RouteSpec(
        Scope.admin,
        lambda w: ("/v1/policies", {"json": {"name": f"p{next(UNIQUE)}", "rules": POLICY_RULES}}),
        audit="policy.create",
    ),
    "GET /v1/policies": RouteSpec(Scope.read, get("/v1/policies")),
    "GET /v1/policies/{policy_id}": RouteSpec(Scope.read, get("/v1/policies/{policy_id}")),
    "POST /v1/policies/check": RouteSpec(
        Scope.submit,
        lambda w: (
            "/v1/policies/check",
            {"json": {"policy_id": w.ids["policy_id"], "deletion_request_id": w.ids["request_id"]}},
        ),
        audit="policy.check",
    ),
    "POST /v1/deletion-requests": RouteSpec(
        Scope.submit,
        lambda w: (
            "/v1/deletion-requests",
            {
                "json": {
                    "model_id": w.ids["model_id"],
                    "forget_set_id": w.new_forget_set(),
                    "method": "ft",
                    "params": {"epochs": 1},
                    "retrain_params": {"recipe": RECIPE},
                    "policy_id": w.ids["policy_id"],
                }
            },
        ),
        audit="deletion_request.create",
    ),
    "GET /v1/deletion-requests": RouteSpec(Scope.read, get("/v1/deletion-requests")),
    "GET /v1/deletion-requests/{request_id}": RouteSpec(
        Scope.read, get("/v1/deletion-requests/{request_id}")
    ),
    "POST /v1/deletion-requests/{request_id}/cancel": RouteSpec(
        Scope.submit,
        lambda w: (f"/v1/deletion-requests/{w.new_deletion_request()}/cancel", {}),
        audit="deletion_request.cancel",
    ),
    "GET /v1/deletion-requests/{request_id}/reports": RouteSpec(
        Scope.read, get("/v1/deletion-requests/{request_id}/reports")
    ),
    "POST /v1/deletion-requests/{request_id}/reports": RouteSpec(
        Scope.submit, get("/v1/deletion-requests/{request_id}/reports"), audit="report.issue"
    ),
    "GET /v1/reports/{report_id}": RouteSpec(Scope.read, get("/v1/reports/{report_id}")),
    "GET /v1/reports/{report_id}/html": RouteSpec(Scope.read, get("/v1/reports/{report_id}/html")),
    "GET /v1/reports/{report_id}/pdf": RouteSpec(Scope.read, get("/v1/reports/{report_id}/pdf")),
    "GET /v1/reports/{report_id}/meta": RouteSpec(Scope.read, get("/v1/reports/{report_id}/meta")),
    "GET /v1/report-signing-key": RouteSpec(Scope.read, get("/v1/report-signing-key")),
    # audits and admin
    "GET /v1/shadow-models": RouteSpec(Scope.read, get("/v1/shadow-models")),
    "POST /v1/keys": RouteSpec(
        Scope.admin, lambda w: ("/v1/keys", {"json": {"name": "k", "scopes": ["read"]}}), audit="key.create"
    ),
    "GET /v1/audit-events": RouteSpec(Scope.admin, get("/v1/audit-events")),
    # key lifecycle and audit anchors (issue 17): an admin key manages its own tenant's keys only
    "GET /v1/admin/keys": RouteSpec(Scope.admin, get("/v1/admin/keys")),
    "POST /v1/admin/keys/{key_id}/revoke": RouteSpec(
        Scope.admin, lambda w: (f"/v1/admin/keys/{fresh_key_id(w)}/revoke", {}), audit="key.revoke"
    ),
    "POST /v1/admin/keys/{key_id}/rotate": RouteSpec(
        Scope.admin, lambda w: (f"/v1/admin/keys/{fresh_key_id(w)}/rotate", {}), audit="key.rotate"
    ),
    "GET /v1/admin/audit/verify": RouteSpec(Scope.admin, get("/v1/admin/audit/verify")),
    "POST /v1/admin/audit/checkpoints": RouteSpec(
        Scope.admin, lambda w: ("/v1/admin/audit/checkpoints", {}), audit="audit.checkpoint"
    ),
}
# Served by FastAPI itself (no tenant data): the OpenAPI document and its viewers.
DOCUMENTATION = frozenset({"GET /openapi.json", "GET /docs", "GET /docs/oauth2-redirect", "GET /redoc"})


def served_routes(app: Any) -> dict[str, Any]:
    """``"METHOD /path"`` of every route the app serves (HEAD, added by Starlette to GETs, left out)."""
    routes = {}
    for context in iter_route_contexts(app.routes):
        for method in sorted((context.methods or set()) - {"HEAD"}):
            routes[f"{method} {context.path}"] = context
    return routes


def required_scope(context: Any) -> Scope | None:
    """The scope the route's ``require(scope)`` dependency checks, found in its dependency tree."""
    found: set[Scope] = set()

    def walk(dependant: Any) -> None:
        for dependency in dependant.dependencies:
            call = dependency.call
            if getattr(call, "__qualname__", "").startswith("require.<locals>"):
                found.add(inspect.getclosurevars(call).nonlocals["scope"])
            walk(dependency)

    walk(context.dependant)
    assert len(found) <= 1, found
    return found.pop() if found else None


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def owner(sessions: sessionmaker[Session], migrated: Settings) -> Tenant:
    return make_tenant(sessions, migrated)


@pytest.fixture(scope="module")
def foreign(sessions: sessionmaker[Session], migrated: Settings) -> Tenant:
    return make_tenant(sessions, migrated)


@pytest.fixture(scope="module")
def scopeless_key(owner: Tenant, sessions: sessionmaker[Session], migrated: Settings) -> str:
    """A valid key of the owner's tenant with no scope at all."""
    with sessions() as session:
        tenant = session.get(TenantRow, owner.id)
        assert tenant is not None
        _, new = create_key(session, tenant=tenant, name="none", scopes=[], pepper=migrated.key_pepper)
        session.commit()
    return new.token


@pytest.fixture(scope="module")
def world(api: TestClient, owner: Tenant, sessions: sessionmaker[Session], migrated: Settings) -> World:
    w = World(api, owner, sessions, migrated)
    w.ids["dataset_id"] = w.new_dataset()
    w.ids["model_id"] = w.new_model()
    w.ids["forget_set_id"] = w.post(
        "/v1/forget-sets", json={"dataset_id": w.ids["dataset_id"], "spec": {"kind": "class", "class": 1}}
    )["id"]
    w.ids["job_id"] = w.new_job(cancelled=True)  # terminal: its event stream ends
    campaign = w.post("/v1/campaigns", json=campaign_body(w))
    w.ids["campaign_id"] = campaign["id"]
    with sessions() as session:
        row = session.get(Campaign, uuid.UUID(campaign["id"]))
        assert row is not None and row.cells
        w.ids["cell_job_id"] = row.cells[0]["job_id"]
    # A deletion request carried to its signed report, the way tests/app/api/test_compliance.py does it
    # (the jobs' results written as the workers would); its unlearn job has every plotted series.
    dataset = {"id": w.ids["dataset_id"]}
    done = issued_request(
        api,
        {
            "tenant": owner,
            "dataset": dataset,
            "model": {"id": w.ids["model_id"]},
            "forget_set": {"id": w.ids["forget_set_id"]},
        },
        sessions,
        migrated,
        POLICY_RULES,
    )
    w.ids["request_id"], w.ids["report_id"] = done["id"], done["report_id"]
    w.ids["plot_job_id"] = done["jobs"]["unlearn"]["job_id"]
    policy = w.post("/v1/policies", "admin", json={"name": "isolation", "rules": POLICY_RULES})
    w.ids["policy_id"] = policy["id"]
    w.ids["upload_id"] = w.new_upload()
    return w


def audit_count(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).where(AuditEvent.tenant_id == tenant_id)) or 0


@pytest.fixture
def audit_trails(
    sessions: sessionmaker[Session], owner: Tenant, foreign: Tenant
) -> Callable[[], tuple[int, int]]:
    """The length of both tenants' audit trails: a refused request must not change them."""
    return lambda: (audit_count(sessions, owner.id), audit_count(sessions, foreign.id))


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"].endswith("/" + body["code"])
    if code is not None:
        assert body["code"] == code, body
    return body


def send(api: TestClient, method: str, path: str, auth: dict[str, str], kwargs: dict[str, Any]) -> Any:
    """The request with the key's headers beside its own (an upload part's Content-Range and digest)."""
    extra = {k: v for k, v in kwargs.items() if k != "headers"}
    return api.request(method, path, headers={**auth, **kwargs.get("headers", {})}, **extra)


def path_ids(route: str) -> bool:
    return "{" in route


def body_ids(request: Request, world: World) -> bool:
    """Does the request name one of the owner's resources in its body? (A query filter naming a foreign id,
    as in ``GET /v1/jobs?model_id=...``, gets an empty page instead: checked as a listing.)"""
    _, kwargs = request
    sent = json.dumps({k: v for k, v in kwargs.items() if k in ("json", "data")}, default=str)
    return any(value in sent for value in world.ids.values())


# ---------------------------------------------------------------------------------------------- tests
def test_every_route_is_classified(api: TestClient) -> None:
    served = served_routes(api.app)
    unclassified = sorted(set(served) - set(ROUTES) - DOCUMENTATION)
    stale = sorted(set(ROUTES) - set(served))
    assert not unclassified, f"routes missing from ROUTES in {__file__}: {unclassified}"
    assert not stale, f"ROUTES lists routes the app no longer serves: {stale}"
    wrong = {
        route: (required_scope(served[route]), spec.scope)
        for route, spec in ROUTES.items()
        if required_scope(served[route]) != spec.scope
    }
    assert not wrong, f"route scope (served, classified) differs: {wrong}"
    assert all(spec.audit for route, spec in ROUTES.items() if route.split()[0] in MUTATING)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_foreign_tenant_gets_404(
    route: str, api: TestClient, world: World, foreign: Tenant, audit_trails: Callable[[], tuple[int, int]]
) -> None:
    spec = ROUTES[route]
    method = route.split()[0]
    request = spec.request(world)
    path, kwargs = request
    before = audit_trails()
    response = send(api, method, path, foreign.headers("admin"), kwargs)
    if route in OPERATOR_ONLY:
        # Off unless a scrape token is set, and then only for that token: never for a tenant's key.
        assert response.status_code in (401, 404), response.text
        return
    if path_ids(route) or body_ids(request, world):
        body = assert_problem(response, 404)
        assert body["code"].endswith("-not-found"), body
        assert body["code"] != spec.owner_code, body
        assert audit_trails() == before
        # The same request is fine for its owner: the 404 came from the tenancy check, not from the request.
        mine = send(api, method, path, world.owner.headers("admin"), kwargs)
        if spec.owner_code is None:
            assert mine.status_code < 300, mine.text
        else:
            assert_problem(mine, 404, spec.owner_code)
    elif method not in MUTATING:
        assert response.status_code == 200, response.text
        leaked = [name for name, value in world.ids.items() if value in response.text]
        assert not leaked, f"{route} shows another tenant's {leaked}"


@pytest.mark.parametrize("route", sorted(r for r, spec in ROUTES.items() if spec.scope is not None))
def test_key_without_scope_gets_403(
    route: str,
    api: TestClient,
    world: World,
    scopeless_key: str,
    audit_trails: Callable[[], tuple[int, int]],
) -> None:
    spec = ROUTES[route]
    assert spec.scope is not None
    below = BELOW[spec.scope]
    token = scopeless_key if below == "none" else getattr(world.owner, below)
    path, kwargs = spec.request(world)
    before = audit_trails()
    response = send(api, route.split()[0], path, {"Authorization": f"Bearer {token}"}, kwargs)
    body = assert_problem(response, 403, "insufficient-scope")
    assert spec.scope.value in body["detail"]
    assert audit_trails() == before


@pytest.mark.parametrize("route", sorted(r for r in ROUTES if r.split()[0] in MUTATING))
def test_mutation_writes_its_audit_row(
    route: str, api: TestClient, world: World, sessions: sessionmaker[Session]
) -> None:
    spec = ROUTES[route]
    assert spec.scope is not None and spec.audit is not None
    path, kwargs = spec.request(world)
    with sessions() as session:
        last = session.scalar(select(func.max(AuditEvent.id))) or 0
    response = send(api, route.split()[0], path, world.owner.headers(spec.scope.value), kwargs)
    assert response.status_code < 300, response.text
    with sessions() as session:
        rows = list(session.scalars(select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id)))
        assert audit.verify_chain(session, world.owner.id)
    assert rows, f"{route} wrote no audit row"
    assert {row.tenant_id for row in rows} == {world.owner.id}
    actions = [row.action for row in rows]
    assert spec.audit in actions, actions
    row = rows[actions.index(spec.audit)]
    assert row.actor.startswith("key:")
    # The row names what was acted on: the created resource, or one named in the path (what was cancelled,
    # deleted, or, for a reissued report, the deletion request).
    body = response.json()
    named = {segment for segment in path.split("/") if len(segment) == len(str(uuid.UUID(int=0)))}
    candidates = {str(body[k]) for k in ("id", "key_id") if body.get(k)} | named
    assert row.resource_id in candidates, (row.resource_id, candidates)


def test_audit_trail_is_tenant_scoped(api: TestClient, world: World, foreign: Tenant) -> None:
    mine = api.get("/v1/audit-events", headers=world.owner.headers("admin")).json()
    theirs = api.get("/v1/audit-events", headers=foreign.headers("admin")).json()
    assert mine and {e["resource_id"] for e in mine} & set(world.ids.values())
    assert not {e["resource_id"] for e in theirs} & set(world.ids.values())
