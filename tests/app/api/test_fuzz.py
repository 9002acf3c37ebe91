"""API fuzzing with schemathesis against the app's own OpenAPI document (issue 9).

Schemathesis generates requests for every operation of ``/openapi.json`` (valid bodies, queries and
headers, and invalid ones that the app must refuse) and runs them in-process against the ASGI app on the
test database, with a recording publisher (no job runs) and an admin key of a tenant that owns a
dataset, a model, a forget set, a campaign, a policy and a deletion request with its signed report (its
unlearn job finished, with every result). Path, query and body ids are sometimes swapped for those real
ids, so the generated requests reach the handlers' logic instead of stopping at 404.

Checks on every response: no server error (5xx), the status code is one the operation documents, the
``Content-Type`` and the body conform to what the document declares for that status.

``FUZZ_EXAMPLES`` positive and as many negative examples per operation (``LETHE_FUZZ_EXAMPLES``
overrides it): about 50 s of CPU time, a minute on two idle cores. ``derandomize`` makes each run explore
the same cases, so a failure reproduces. Hypothesis drives schemathesis's strategies directly, one
subtest per operation and mode: schemathesis's own lazy pytest integration
(``schemathesis.pytest.from_fixture``) fails under pytest 9.2 (``'Function' object has no attribute
'_nodeid'``).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from tests.app.api.test_bad_input_corpus import MLP_CONFIG, mlp_state, safetensors_bytes
from tests.app.api.test_compliance import POLICY_RULES, issued_request
from tests.conftest import RecordingPublisher, Tenant, make_tenant

FUZZ_EXAMPLES = int(os.environ.get("LETHE_FUZZ_EXAMPLES", "20"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ID_FIELDS = (
    "dataset_id",
    "model_id",
    "forget_set_id",
    "job_id",
    "campaign_id",
    "policy_id",
    "request_id",
    "report_id",
)


def _create_resources(
    client: Any, tenant: Tenant, sessions: sessionmaker[Session], settings: Settings
) -> dict[str, str]:
    headers = tenant.headers("submit")

    def ok(response: Any) -> dict[str, Any]:
        assert response.status_code < 300, response.text
        body: dict[str, Any] = response.json()
        return body

    dataset = ok(client.post("/v1/datasets", json={"builtin": "digits"}, headers=headers))
    model = ok(
        client.post(
            "/v1/models",
            data={"architecture": "mlp", "config": json.dumps(MLP_CONFIG), "dataset_id": dataset["id"]},
            files={"weights": ("m.safetensors", safetensors_bytes(mlp_state()))},
            headers=headers,
        )
    )
    forget_set = ok(
        client.post(
            "/v1/forget-sets",
            json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": 1}},
            headers=headers,
        )
    )
    recipe = {"epochs": 1, "batch_size": 64, "lr": 0.05}
    job = ok(
        client.post(
            "/v1/jobs",
            json={
                "kind": "train",
                "dataset_id": dataset["id"],
                "architecture": "mlp",
                "arch_config": {"hidden": [8]},
                "params": {"recipe": recipe},
            },
            headers=headers,
        )
    )
    # A cancelled job: its event stream ends instead of following a job that nothing will ever run.
    ok(client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers))
    campaign = ok(
        client.post(
            "/v1/campaigns",
            json={
                "name": "fuzz",
                "model_id": model["id"],
                "methods": [{"method": "ft", "params": {"epochs": 1}}],
                "forget_sets": [{"forget_set_id": forget_set["id"]}],
                "seeds": [0],
                "retrain_params": {"recipe": recipe},
            },
            headers=headers,
        )
    )
    ok(client.post(f"/v1/campaigns/{campaign['id']}/cancel", headers=headers))
    # A deletion request carried to its signed report as in test_compliance.py; its unlearn job succeeded
    # with every result the plots draw (and, finished, its event stream ends).
    world = {"tenant": tenant, "dataset": dataset, "model": model, "forget_set": forget_set}
    done = issued_request(client, world, sessions, settings, POLICY_RULES)
    return {
        "dataset_id": dataset["id"],
        "model_id": model["id"],
        "forget_set_id": forget_set["id"],
        "job_id": done["jobs"]["unlearn"]["job_id"],
        "campaign_id": campaign["id"],
        "policy_id": done["policy"]["id"],
        "request_id": done["id"],
        "report_id": done["report_id"],
    }


@pytest.fixture(scope="module")
def fuzz_schema(migrated: Settings, sessions: sessionmaker[Session]) -> schemathesis.BaseSchema:
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(migrated, publisher=RecordingPublisher())
    tenant = make_tenant(sessions, migrated)
    with TestClient(app) as client:
        real_ids = _create_resources(client, tenant, sessions, migrated)
    token = tenant.headers("admin")["Authorization"]

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any]:
        # The fuzzer may generate an X-API-Key (it is a documented header): the admin key must win.
        kept = {k: v for k, v in (headers or {}).items() if k.lower() not in ("x-api-key", "authorization")}
        return {**kept, "Authorization": token}

    def with_real_ids(context: Any, values: Any) -> st.SearchStrategy[Any]:
        # Deleting the shared resources would turn every later operation into a 404: DELETEs get none.
        deleting = context.operation is not None and context.operation.method.upper() == "DELETE"
        if deleting or not isinstance(values, dict) or not any(k in real_ids for k in values):
            return st.just(values)
        swapped = {k: real_ids.get(k, v) if k in ID_FIELDS else v for k, v in values.items()}
        return st.sampled_from([values, swapped])

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        return with_real_ids(context, path_parameters)

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        return with_real_ids(context, body)

    @schema.hook
    def flatmap_query(context: Any, query: dict[str, Any] | None) -> Any:
        return with_real_ids(context, query)

    return schema


def fuzz(operation: Any, mode: GenerationMode, statuses: Counter[int]) -> None:
    """Run ``FUZZ_EXAMPLES`` generated cases of one operation through every check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    run()


def test_api_fuzz(fuzz_schema: schemathesis.BaseSchema, subtests: pytest.Subtests) -> None:
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 30
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    for operation in operations:
        # Negative cases need something to break besides the credentials, which the hook always sets.
        negatable = operation.body or any(p.location != "header" for p in operation.iter_parameters())
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negatable else [])
        for mode in modes:
            with subtests.test(msg=f"{operation.label} [{mode.value}]"):
                fuzz(operation, mode, statuses[operation.label])
    total = sum(statuses.values(), Counter())
    by_class = {f"{c}xx": sum(n for s, n in total.items() if s // 100 == c) for c in (2, 3, 4, 5)}
    # The real-id hooks work: operations on one resource also answer 2xx, not only 404.
    reached = [label for label, seen in statuses.items() if "{" in label and any(s < 300 for s in seen)]
    print(
        f"\nfuzzing: {len(operations)} operations, {total.total()} requests, {by_class};"
        f" {len(reached)} operations on a resource reached it"
    )
    assert len(reached) >= 10, reached
