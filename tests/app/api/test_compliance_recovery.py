"""Recovery rules in policies and deletion requests (no workers: the jobs' results are written straight into
the database, then the reaper's step moves the request on): the recovery stage is added once the unlearning,
the retrain and the identity control have succeeded, the report carries the recovery table and the line
"forgetting survives 4-bit quantization", and the verdict needs the identity control to fail a recovery
rule."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import AuditEvent, DeletionRequest, Job
from app.schemas.compliance import PolicyRule
from app.services.compliance import deletion_requests, policies, reports, signing
from app.services.compliance.report_pdf import render_pdf, report_lines
from tests.app.api.test_compliance import ROLE_METRICS, finish_jobs, publish, request_body, upload_model
from tests.app.api.test_resources import assert_problem, create_digits

RELEARN_RULE = {"metric": "relearn.forget_subset.step_10.gap_to_control", "max": 5}
QUANT_RULE = {"metric": "transform.int4.gap_to_control", "max": 5}
SMALL = {"relearn_steps": [10], "sparsities": [0.5], "relearn_samples": 8}


@pytest.fixture
def world(api: TestClient, tenant) -> dict:
    dataset = create_digits(api, tenant)
    model = upload_model(api, tenant, dataset["id"])
    forget = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "indices", "indices": [1, 5, 9, 40]}},
        headers=tenant.headers("submit"),
    ).json()
    return {"tenant": tenant, "dataset": dataset, "model": model, "forget_set": forget}


def recovery_metrics(above: float, relearned: float, gap: float = 90.0) -> dict[str, float]:
    """A recovery audit's metric rows: ``above`` = how far above the equally quantized retrain the model is
    after int4 / nf4, ``relearned`` = the same after 10 relearning steps on the forget subset."""
    rows = {"forget_accuracy": above, "recovery_gap": gap}
    for name, delta in (("int8", 0.0), ("int4", 0.5), ("nf4", 0.25), ("prune_50", 1.0)):
        rows |= {
            f"transform.{name}.delta": delta,
            f"transform.{name}.control_delta": 0.0,
            f"transform.{name}.excess_recovery": delta,
            f"transform.{name}.gap_to_control": above + delta,
            f"transform.{name}.score": 1 - delta / gap,
        }
    rows |= {
        "relearn.forget_subset.step_0.gap_to_control": above,
        "relearn.forget_subset.step_10.gap_to_control": relearned,
        "relearn.forget_subset.steps_to_recover": 10,
        "relearn.forget_subset.control_steps_to_recover": 50,
        "relearn.forget_subset.steps_ratio": 0.2,
        "relearn.forget_subset.score": 1 - max(0.0, relearned - above) / gap,
        "recovery_quantization_score": 1 - 0.5 / gap,
        "recovery_pruning_score": 1 - 1 / gap,
        "recovery_relearning_score": 0.9,
        "recovery_robustness": 0.92,
    }
    return rows


def with_outputs(sessions, created: dict, world: dict) -> None:
    """Every model-producing job succeeded with an output (the uploaded model stands in for all of them)."""
    with sessions() as session:
        for role in ("retrain", "identity"):
            job = session.get(Job, uuid.UUID(created["jobs"][role]["job_id"]))
            job.output_model_id = uuid.UUID(world["model"]["id"])
        session.commit()


def run_request(
    api: TestClient,
    world: dict,
    sessions,
    migrated,
    rules: list[dict],
    unlearned: dict,
    identity: dict,
    **extra,
) -> dict:
    tenant = world["tenant"]
    policy = publish(api, tenant, f"r-{uuid.uuid4().hex[:6]}", rules)
    response = api.post(
        "/v1/deletion-requests",
        json=request_body(world, policy, recovery=SMALL, **extra),
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert set(created["jobs"]) == {"unlearn", "retrain", "original", "identity"}  # recovery comes later
    finish_jobs(sessions, created, world, ROLE_METRICS)
    with_outputs(sessions, created, world)
    published: list[uuid.UUID] = []
    request_id = uuid.UUID(created["id"])
    # First tick: the recovery stage is added (and handed to the publisher), the request keeps running.
    assert deletion_requests.advance(sessions, request_id, migrated, publish=published.extend) is None
    staged = api.get(f"/v1/deletion-requests/{created['id']}", headers=tenant.headers("read")).json()
    assert staged["status"] == "running"
    assert set(staged["jobs"]) == {*created["jobs"], "recovery", "recovery_identity"}
    assert {uuid.UUID(staged["jobs"][r]["job_id"]) for r in ("recovery", "recovery_identity")} == set(
        published
    )
    with sessions() as session:
        jobs = {role: session.get(Job, uuid.UUID(e["job_id"])) for role, e in staged["jobs"].items()}
        for role, subject in (("recovery", "unlearn"), ("recovery_identity", "identity")):
            job = jobs[role]
            assert job.kind == "recovery" and job.seed == jobs["unlearn"].seed
            assert job.model_id == jobs[subject].output_model_id
            assert job.params["original_model_id"] == world["model"]["id"]
            assert job.params["retrain_model_id"] == str(jobs["retrain"].output_model_id)
            assert job.params["relearn_steps"] == [0, 10] and job.params["sparsities"] == [0.5]
        stage_rows = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.resource_id == created["id"], AuditEvent.action == "deletion_request.stage")
        )
        assert stage_rows == 1
    # Nothing more while the audits run; then the report.
    assert deletion_requests.advance(sessions, request_id, migrated) is None
    finish_jobs(
        sessions, staged, world, {**ROLE_METRICS, "recovery": unlearned, "recovery_identity": identity}
    )
    assert deletion_requests.advance(sessions, request_id, migrated) == "issued"
    done = api.get(f"/v1/deletion-requests/{created['id']}", headers=tenant.headers("read")).json()
    return done


def document_of(api: TestClient, tenant, done: dict) -> tuple[bytes, dict]:
    data = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content
    return data, json.loads(data)


def test_recovery_rules_run_the_stage_and_the_report_says_whether_forgetting_survives(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    tenant = world["tenant"]
    done = run_request(
        api,
        world,
        sessions,
        migrated,
        [RELEARN_RULE, QUANT_RULE],
        unlearned=recovery_metrics(above=1.0, relearned=3.0),
        identity=recovery_metrics(above=88.0, relearned=89.0),
    )
    data, document = document_of(api, tenant, done)
    assert document["format"] == reports.FORMAT == "lethe.compliance-report/3"
    # The unlearned model passes both rules; the identity control (and so the original) fails both.
    assert done["verdict"] == "pass", document["verdict_reason"]
    assert [v["passed"] for v in document["verdicts"]] == [True, True]
    assert document["verdicts"][0]["source"] == "recovery" and document["verdicts"][0]["observed"] == 3.0
    for name in ("original", "identity"):
        control = document["controls"][name]
        assert control["recovery_role"] == "recovery_identity" and control["outcome"] == "fail"
        assert [v["source"] for v in control["verdicts"]] == ["recovery_identity"] * 2
    statement = document["verdicts"][0]["statement"]
    assert statement == (
        "Forget-set knowledge after 10 relearning steps on a subset of the forget set (above the retrained"
        " model's after the same steps; accuracy points, regression: MAE) at most 5.0"
    )
    # The recovery table, from the signed metric rows.
    section = document["recovery"]
    unlearned, identity = section["models"]["unlearned"], section["models"]["identity"]
    assert [row["name"] for row in unlearned["transforms"]] == ["int4", "int8", "nf4", "prune_50"]
    assert unlearned["survival_tolerance"] == pytest.approx(9.0)  # a tenth of the 90-point gap
    assert unlearned["survives_4bit_quantization"] is True and identity["survives_4bit_quantization"] is False
    relearn = unlearned["relearning"][0]
    assert relearn["source"] == "forget_subset" and relearn["steps_ratio"] == 0.2
    assert relearn["gap_to_control"] == [{"step": 0, "value": 1.0}, {"step": 10, "value": 3.0}]
    assert unlearned["scores"]["robustness"] == 0.92
    line = (
        "Forgetting survives 4-bit quantization: yes (with the control: the identity control, which forgot"
        " nothing: no)."
    )
    assert reports.recovery_lines(document)[0] == line
    public = signing.load_public_key(
        api.get("/v1/report-signing-key", headers=tenant.headers("read")).json()["pem"].encode()
    )
    assert reports.verify_json(data, public).ok
    page = api.get(f"/v1/reports/{done['report_id']}/html", headers=tenant.headers("read")).text
    visible = page.split("<script", 1)[0]
    assert line in visible and "Recovery audits: does the forgetting survive?" in visible
    assert "relearn forget_subset" in visible and "robustness 0.920" in visible
    assert "88.50" in visible  # the identity control's int4 row: 88 + 0.5 above the quantized retrain
    assert reports.verify_html(page.encode(), public).ok
    lines = [text for _, text in report_lines(document)]
    assert line in lines and any(text.startswith("int4 | +0.50 | +0.00 | 1.50") for text in lines)
    assert render_pdf(data).startswith(b"%PDF-")

    # The dry run on this request's own controls reads the identity recovery audit too.
    check = api.post(
        "/v1/policies/check",
        json={"rules": [RELEARN_RULE], "deletion_request_id": done["id"]},
        headers=tenant.headers("submit"),
    ).json()
    assert check["separates"] is True and "recovery_identity" in check["control"]["jobs"]
    # Given jobs: a recovery audit only counts as the control's when it audits an identity output (here the
    # uploaded model stands in for every output, so no job produced it).
    jobs = {role: entry["job_id"] for role, entry in done["jobs"].items()}
    wrong = {
        "rules": [RELEARN_RULE],
        "original_job_id": jobs["identity"],
        "retrain_job_id": jobs["retrain"],
        "recovery_job_id": jobs["recovery_identity"],
    }
    refused = api.post("/v1/policies/check", json=wrong, headers=tenant.headers("submit"))
    assert_problem(refused, 422, "wrong-control-job")
    by_metrics = {
        "rules": [RELEARN_RULE],
        "metrics": {"original": {"UA": 1.0}, "recovery": recovery_metrics(above=88.0, relearned=89.0)},
    }
    measured = api.post("/v1/policies/check", json=by_metrics, headers=tenant.headers("submit")).json()
    assert measured["separates"] is True and measured["control"]["rules"][0]["passed"] is False


def test_identity_passing_the_recovery_rule_makes_the_verdict_inconclusive(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    # The identity control passes the rule too (e.g. a tolerance wider than what there is to forget): a pass
    # of the unlearned model shows nothing.
    tenant = world["tenant"]
    loose = [{"metric": "relearn.forget_subset.step_10.gap_to_control", "max": 95}]
    done = run_request(
        api,
        world,
        sessions,
        migrated,
        loose,
        unlearned=recovery_metrics(above=1.0, relearned=3.0),
        identity=recovery_metrics(above=88.0, relearned=89.0),
        seed=21,
    )
    _, document = document_of(api, tenant, done)
    assert done["verdict"] == "inconclusive" and "does not separate" in document["verdict_reason"]
    assert document["controls"]["identity"]["outcome"] == "pass"
    # The unlearned model whose forgetting comes back under relearning fails.
    failing = run_request(
        api,
        world,
        sessions,
        migrated,
        [RELEARN_RULE],
        unlearned=recovery_metrics(above=1.0, relearned=60.0),
        identity=recovery_metrics(above=88.0, relearned=89.0),
        seed=22,
    )
    _, document = document_of(api, tenant, failing)
    assert failing["verdict"] == "fail" and document["verdicts"][0]["finding"].endswith("→ fail")
    # A gap too small to recover anything: the survival line says so instead of yes/no.
    flat = run_request(
        api,
        world,
        sessions,
        migrated,
        [RELEARN_RULE],
        unlearned={
            k: v for k, v in recovery_metrics(1.0, 3.0, gap=0.5).items() if k != "recovery_quantization_score"
        },
        identity=recovery_metrics(88.0, 89.0),
        seed=23,
    )
    _, document = document_of(api, tenant, flat)
    assert document["recovery"]["models"]["unlearned"]["survives_4bit_quantization"] is None
    assert reports.recovery_lines(document)[0].startswith(
        "Forgetting survives 4-bit quantization: not measured"
    )


def test_requests_without_recovery_rules_have_no_stage_and_v2_reports_still_verify(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    from tests.app.api.test_compliance import POLICY_RULES, issued_request

    tenant = world["tenant"]
    done = issued_request(api, world, sessions, migrated, POLICY_RULES, seed=31)
    assert "recovery" not in done["jobs"]
    _, document = document_of(api, tenant, done)
    assert document["recovery"] is None and reports.recovery_lines(document) == []
    # A version-2 document (no recovery key) keeps verifying and rendering: the renderer adds nothing to it.
    old = {k: v for k, v in document.items() if k not in ("signature", "recovery")}
    old["format"] = reports.FORMAT_V2
    old["controls"] = {
        name: {k: v for k, v in control.items() if k != "recovery_role"}
        for name, control in old["controls"].items()
    }
    key = signing.signing_key(migrated)
    signed = reports.sign_document(old, key)
    assert reports.verify_json(signed, key.public).ok
    page = reports.render_html(signed)
    assert "Recovery audits" not in page and reports.verify_html(page.encode(), key.public).ok


@pytest.mark.parametrize(
    ("recovery", "status", "code"),
    [
        ({"sparsities": [1.5]}, 422, "invalid-params"),
        ({"relearn_steps": [-1]}, 422, "invalid-params"),
        ({"unknown_option": 1}, 422, "invalid-params"),
        ({"retrain_model_id": str(uuid.uuid4())}, 422, "validation-error"),
    ],
)
def test_bad_recovery_settings_are_refused_before_anything_is_written(
    api: TestClient, world: dict, sessions, recovery: dict, status: int, code: str
) -> None:
    tenant = world["tenant"]
    policy = publish(api, tenant, f"bad-{uuid.uuid4().hex[:6]}", [RELEARN_RULE])
    with sessions() as session:
        before = (
            session.scalar(select(func.count()).select_from(Job)),
            session.scalar(select(func.count()).select_from(DeletionRequest)),
        )
    response = api.post(
        "/v1/deletion-requests",
        json=request_body(world, policy, recovery=recovery),
        headers=tenant.headers("submit"),
    )
    assert_problem(response, status, code)
    with sessions() as session:
        after = (
            session.scalar(select(func.count()).select_from(Job)),
            session.scalar(select(func.count()).select_from(DeletionRequest)),
        )
    assert after == before


def test_recovery_metrics_read_in_words() -> None:
    info = policies.metric_info("transform.nf4.gap_to_control")
    assert info.label.startswith("Forget-set knowledge after NF4-style 4-bit quantization") and not info.unit
    assert policies.metric_info("transform.prune_50.score").label.startswith(
        "Recovery score under magnitude pruning to 50 % sparsity"
    )
    assert policies.metric_info("recovery_robustness").high == 1.0
    assert policies.metric_info("relearn.unrelated.steps_ratio").label.startswith(
        "Steps to recover on unrelated retained samples"
    )
    # A score bound covering [0, 1] holds whatever happens: linted like any other.
    warnings = policies.lint([PolicyRule(metric="recovery_robustness", min=0)])
    assert [w.code for w in warnings] == ["always-satisfied", "vacuous-policy"]
