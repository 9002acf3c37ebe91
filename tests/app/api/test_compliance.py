"""Policies, deletion requests and signed compliance reports through the API (no workers: the jobs' results
are written straight into the database, then the reaper's step issues the report)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.models import Job, JobStatus, Metric
from app.models.base import utcnow
from app.services import deletion_requests, reports, signing
from tests.app.api.test_bad_input_corpus import MLP_CONFIG, mlp_state, safetensors_bytes
from tests.app.api.test_resources import assert_problem, create_digits

RECIPE = {"epochs": 1, "batch_size": 64, "lr": 0.05}
POLICY_RULES = [
    {"metric": "MIA-Efficacy", "relative_to": "retrain", "max_abs_gap": 5},
    {"metric": "TA", "max_drop_from_original": 2},
    {"metric": "UA", "min": 1, "max": 50},
]
AUDIT_RULE = {"metric": "ulira_auc", "max": 0.6, "use": "ci_high"}


def upload_model(api: TestClient, tenant, dataset_id: str) -> dict:
    response = api.post(
        "/v1/models",
        data={"architecture": "mlp", "config": json.dumps(MLP_CONFIG), "dataset_id": dataset_id},
        files={"weights": ("m.safetensors", safetensors_bytes(mlp_state()))},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    return response.json()


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


def publish(api: TestClient, tenant, name: str, rules: list[dict]) -> dict:
    response = api.post("/v1/policies", json={"name": name, "rules": rules}, headers=tenant.headers("admin"))
    assert response.status_code == 201, response.text
    return response.json()


def request_body(world: dict, policy: dict, **extra) -> dict:
    return {
        "model_id": world["model"]["id"],
        "forget_set_id": world["forget_set"]["id"],
        "method": "ft",
        "params": {"epochs": 1, "batch_size": 64},
        "retrain_params": {"recipe": RECIPE},
        "seed": 7,
        "policy_id": policy["id"],
        **extra,
    }


# ------------------------------------------------------------------------------------------ policies
def test_policies_are_versioned_and_immutable(api: TestClient, tenant, other_tenant) -> None:
    first = publish(api, tenant, "gdpr-art17", POLICY_RULES)
    second = publish(api, tenant, "gdpr-art17", [*POLICY_RULES, AUDIT_RULE])
    assert (first["version"], second["version"]) == (1, 2) and first["sha256"] != second["sha256"]
    assert publish(api, other_tenant, "gdpr-art17", POLICY_RULES)["version"] == 1
    listed = api.get("/v1/policies", params={"name": "gdpr-art17"}, headers=tenant.headers("read")).json()
    assert [p["version"] for p in listed["data"]] == [2, 1]
    again = api.get(f"/v1/policies/{first['id']}", headers=tenant.headers("read")).json()
    assert again["rules"] == first["rules"] and len(again["rules"]) == 3
    assert_problem(api.get(f"/v1/policies/{first['id']}", headers=other_tenant.headers("read")), 404)
    assert_problem(
        api.post("/v1/policies", json={"name": "x", "rules": POLICY_RULES}, headers=tenant.headers("submit")),
        403,
        "insufficient-scope",
    )


@pytest.mark.parametrize(
    "rule",
    [
        {"metric": "UA"},  # no bound
        {"metric": "UA", "max_abs_gap": 3},  # gap without reference
        {"metric": "UA", "max": 3, "relative_to": "retrain"},
        {"metric": "UA", "max": 1, "min": 2},
        {"metric": "UA", "max": 1, "max_drop_from_original": 2},
        {"metric": "UA", "max": 1, "use": "median"},
        {"metric": "bad name!", "max": 1},
        {"metric": "UA", "max": 1, "extra": True},
    ],
)
def test_invalid_rules_are_422(api: TestClient, tenant, rule: dict) -> None:
    response = api.post("/v1/policies", json={"name": "p", "rules": [rule]}, headers=tenant.headers("admin"))
    assert_problem(response, 422)


# ------------------------------------------------------------------------------------------ submission
def test_deletion_request_creates_its_jobs_and_reuses_cached_oracles(api: TestClient, world: dict) -> None:
    tenant = world["tenant"]
    policy = publish(api, tenant, "no-audit", POLICY_RULES)
    response = api.post(
        "/v1/deletion-requests", json=request_body(world, policy), headers=tenant.headers("submit")
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "running" and created["policy"]["version"] == 1
    assert set(created["jobs"]) == {"unlearn", "retrain", "original"}
    assert not any(entry["reused"] for entry in created["jobs"].values())
    jobs = {
        role: api.get(f"/v1/jobs/{e['job_id']}", headers=tenant.headers("read")).json()
        for role, e in created["jobs"].items()
    }
    assert jobs["unlearn"]["method"] == "ft" and jobs["unlearn"]["seed"] == 7
    assert jobs["retrain"]["kind"] == "retrain" and jobs["retrain"]["seed"] == 7
    assert jobs["original"]["kind"] == "evaluate"
    assert 0.0 <= created["progress"]["fraction"] < 1.0

    # Same inputs again: the retrain and the evaluation are reused, the unlearning runs again.
    again = api.post(
        "/v1/deletion-requests",
        json=request_body(world, policy, name="second"),
        headers=tenant.headers("submit"),
    ).json()
    assert again["jobs"]["retrain"] == {"job_id": created["jobs"]["retrain"]["job_id"], "reused": True}
    assert again["jobs"]["original"]["reused"] is True
    assert again["jobs"]["unlearn"]["job_id"] != created["jobs"]["unlearn"]["job_id"]

    # A rule on an audit metric adds the audit.
    audited = publish(api, tenant, "audited", [AUDIT_RULE])
    with_audit = api.post(
        "/v1/deletion-requests",
        json=request_body(world, {"id": audited["id"]}, audit={"shadows": 3, "recipe": RECIPE}),
        headers=tenant.headers("submit"),
    ).json()
    audit_job = api.get(
        f"/v1/jobs/{with_audit['jobs']['audit']['job_id']}", headers=tenant.headers("read")
    ).json()
    assert (
        audit_job["kind"] == "audit" and audit_job["method"] == "ft" and audit_job["params"]["shadows"] == 3
    )


def test_deletion_request_idempotency_and_errors(api: TestClient, world: dict, other_tenant) -> None:
    tenant = world["tenant"]
    policy = publish(api, tenant, "idem", POLICY_RULES)
    headers = {**tenant.headers("submit"), "Idempotency-Key": "dr-1"}
    first = api.post("/v1/deletion-requests", json=request_body(world, policy), headers=headers)
    replay = api.post("/v1/deletion-requests", json=request_body(world, policy), headers=headers)
    assert (
        first.status_code == 202 and replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    )
    changed = api.post("/v1/deletion-requests", json=request_body(world, policy, seed=8), headers=headers)
    assert_problem(changed, 422, "idempotency-key-reused")
    by_name = api.post(
        "/v1/deletion-requests",
        json={**request_body(world, policy), "policy_id": None, "policy_name": "idem", "policy_version": 9},
        headers=tenant.headers("submit"),
    )
    assert_problem(by_name, 404, "policy-not-found")
    assert_problem(
        api.post(
            "/v1/deletion-requests",
            json=request_body(world, policy, method="nope"),
            headers=tenant.headers("submit"),
        ),
        422,
        "unknown-method",
    )
    foreign = api.post(
        "/v1/deletion-requests", json=request_body(world, policy), headers=other_tenant.headers("submit")
    )
    assert_problem(foreign, 404)
    missing = api.get(f"/v1/deletion-requests/{uuid.uuid4()}", headers=tenant.headers("read"))
    assert_problem(missing, 404, "deletion-request-not-found")


# ------------------------------------------------------------------------------------------ reports
UNLEARN_METRICS = {"UA": 12.5, "RA": 97.0, "TA": 90.0, "MIA-Efficacy": 20.0, "mia_auc": 0.55}
RETRAIN_METRICS = {"UA": 10.0, "RA": 99.0, "TA": 91.0, "MIA-Efficacy": 18.0}
ORIGINAL_METRICS = {"UA": 1.0, "RA": 99.5, "TA": 91.5, "MIA-Efficacy": 2.0}
AUDIT_METRICS = {"ulira_auc": 0.52, "ulira_auc_ci_low": 0.47, "ulira_auc_ci_high": 0.58, "kaggle_score": 0.9}
POPULATION = {
    "attacks": {
        "population": {
            "attacks": {
                "logit_confidence": {
                    "threshold": {
                        "auc": {"value": 0.55, "ci_low": 0.5, "ci_high": 0.6},
                        "roc": {"fpr": [0.0, 0.01, 0.1, 1.0], "tpr": [0.0, 0.02, 0.2, 1.0]},
                    }
                }
            }
        }
    },
    "per_class_accuracy": {"test": [90.0] * 10, "forget": [50.0] * 10},
    "history": [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5}],
}


def finish_jobs(sessions, request: dict, world: dict, metrics: dict[str, dict[str, float]]) -> None:
    """Write what the workers would have: succeeded, results, environment, timings, metrics."""
    now = utcnow()
    with sessions() as session:
        for role, entry in request["jobs"].items():
            job = session.get(Job, uuid.UUID(entry["job_id"]))
            if job.status is JobStatus.succeeded:
                continue
            job.status = JobStatus.succeeded
            job.attempt = 1
            job.started_at = now - timedelta(seconds=3)
            job.finished_at = now
            job.environment = {"device": "cpu", "torch": "2.13.0", "numpy": "2.4.6", "python": "3.11"}
            job.timings = {"method_s": 1.25, "eval_s": 0.5}
            job.result = POPULATION if role == "unlearn" else {}
            if role == "unlearn":
                job.output_model_id = uuid.UUID(world["model"]["id"])  # stands in for the unlearned model
            for name, value in metrics[role].items():
                session.add(Metric(job_id=job.id, tenant_id=job.tenant_id, name=name, value=value, attempt=1))
        session.commit()


def issued_request(api: TestClient, world: dict, sessions, migrated, rules: list[dict], **extra) -> dict:
    tenant = world["tenant"]
    policy = publish(api, tenant, f"p-{uuid.uuid4().hex[:6]}", rules)
    created = api.post(
        "/v1/deletion-requests", json=request_body(world, policy, **extra), headers=tenant.headers("submit")
    ).json()
    assert deletion_requests.advance(sessions, uuid.UUID(created["id"]), migrated) is None  # still running
    metrics = {
        "unlearn": UNLEARN_METRICS,
        "retrain": RETRAIN_METRICS,
        "original": ORIGINAL_METRICS,
        "audit": AUDIT_METRICS,
    }
    finish_jobs(sessions, created, world, metrics)
    assert deletion_requests.advance(sessions, uuid.UUID(created["id"]), migrated) == "issued"
    assert deletion_requests.advance(sessions, uuid.UUID(created["id"]), migrated) is None  # once only
    done = api.get(f"/v1/deletion-requests/{created['id']}", headers=tenant.headers("read")).json()
    assert done["status"] == "issued" and done["report_id"] and done["progress"]["fraction"] == 1.0
    return done


def public_key(api: TestClient, tenant):
    served = api.get("/v1/report-signing-key", headers=tenant.headers("read")).json()
    assert served["algorithm"] == "ed25519"
    return signing.load_public_key(served["pem"].encode())


def test_report_contents_verdicts_and_signature(api: TestClient, world: dict, sessions, migrated) -> None:
    tenant = world["tenant"]
    done = issued_request(
        api, world, sessions, migrated, [*POLICY_RULES, AUDIT_RULE], audit={"shadows": 3, "recipe": RECIPE}
    )
    response = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    data = response.content
    document = json.loads(data)
    assert document["format"] == reports.FORMAT and document["verdict"] == "pass" == done["verdict"]
    inputs = document["inputs"]
    assert inputs["model"]["sha256"] == world["model"]["sha256"]
    assert inputs["forget_set"]["sha256"] == world["forget_set"]["sha256"]
    assert inputs["dataset"]["sha256"] == world["dataset"]["sha256"] and inputs["output_model"]["sha256"]
    assert document["method"] == {
        "name": "ft",
        "params": document["jobs"]["unlearn"]["params"],
        "seed": 7,
        "device": "cpu",
    }
    unlearn = document["jobs"]["unlearn"]
    assert unlearn["environment"]["torch"] == "2.13.0" and unlearn["timings"]["method_s"] == 1.25
    assert unlearn["code_version"] and unlearn["seed"] == 7
    # intervals: from <name>_ci_low/high metrics, and from the population attack's bootstrap
    assert document["jobs"]["audit"]["metrics"]["ulira_auc"] == {
        "value": 0.52,
        "ci_low": 0.47,
        "ci_high": 0.58,
    }
    assert "ulira_auc_ci_high" not in document["jobs"]["audit"]["metrics"]
    assert unlearn["metrics"]["mia_auc"] == {"value": 0.55, "ci_low": 0.5, "ci_high": 0.6}
    assert unlearn["metrics"]["UA"] == {"value": 12.5, "ci_low": None, "ci_high": None}
    verdicts = document["verdicts"]
    assert [v["passed"] for v in verdicts] == [True, True, True, True]
    assert (
        verdicts[0]["observed"] == 20.0
        and verdicts[0]["reference"] == 18.0
        and verdicts[0]["computed"] == 2.0
    )
    assert verdicts[1]["computed"] == pytest.approx(1.5) and verdicts[1]["reference"] == 91.5
    assert verdicts[3]["observed"] == 0.58 and verdicts[3]["statistic"] == "ci_high"

    public = public_key(api, tenant)
    assert reports.verify_json(data, public).ok
    # Altering any one byte breaks it: a digit of a metric, a letter of a hash, or a structural byte.
    for position in (
        data.index(b'"UA":{"ci_high":null,"ci_low":null,"value":12.5') + 45,
        data.index(world["model"]["sha256"].encode()) + 3,
        0,
        len(data) - 1,
    ):
        altered = bytearray(data)
        altered[position] = ord("7") if altered[position] != ord("7") else ord("8")
        assert not reports.verify_json(bytes(altered), public).ok, position
    other = signing.load_or_create(migrated.home / "other-key.pem")
    assert "signed with key" in reports.verify_json(data, other.public).reason

    html = api.get(f"/v1/reports/{done['report_id']}/html", headers=tenant.headers("read"))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    page = html.content
    assert b"<script src" not in page and b"http://" not in page and b"https://" not in page
    assert b"PASS" in page and world["model"]["sha256"].encode() in page
    assert reports.verify_html(page, public).ok
    tampered = page.replace(b"PASS", b"FAIL", 1)
    assert not reports.verify_html(tampered, public).ok

    # The PDF rendering: A4 pages, deterministic, its footer naming the signed JSON's SHA-256.
    pdf = api.get(f"/v1/reports/{done['report_id']}/pdf", headers=tenant.headers("read"))
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and pdf.content.rstrip().endswith(b"%%EOF")
    assert f"signed JSON sha256 {hashlib.sha256(data).hexdigest()}".encode() in pdf.content
    assert pdf.content.count(b"/Type /Page\n") + pdf.content.count(b"/Type /Page ") >= 1
    again = api.get(f"/v1/reports/{done['report_id']}/pdf", headers=tenant.headers("read"))
    assert again.content == pdf.content


def test_failing_rule_gives_fail_and_missing_metric_inconclusive(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    strict = [{"metric": "MIA-Efficacy", "relative_to": "retrain", "max_abs_gap": 1}]
    done = issued_request(api, world, sessions, migrated, strict)
    assert done["verdict"] == "fail"
    missing = [{"metric": "not_measured", "max": 1}]
    assert issued_request(api, world, sessions, migrated, missing, seed=8)["verdict"] == "inconclusive"


def test_reissued_report_is_identical_but_for_issue_time_and_signature(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    tenant = world["tenant"]
    done = issued_request(api, world, sessions, migrated, POLICY_RULES)
    first = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content
    reissued = api.post(f"/v1/deletion-requests/{done['id']}/reports", headers=tenant.headers("submit"))
    assert reissued.status_code == 201, reissued.text
    second = api.get(f"/v1/reports/{reissued.json()['id']}", headers=tenant.headers("read")).content
    assert first != second
    pattern = re.compile(rb'"issued_at":"[^"]+"|"signature":\{[^{}]*\}')
    assert pattern.sub(b"", first) == pattern.sub(b"", second)
    assert len(pattern.findall(first)) == 2
    public = public_key(api, tenant)
    assert reports.verify_json(first, public).ok and reports.verify_json(second, public).ok
    listed = api.get(f"/v1/deletion-requests/{done['id']}/reports", headers=tenant.headers("read")).json()
    assert [r["id"] for r in listed] == [done["report_id"], reissued.json()["id"]]
    latest = api.get(f"/v1/deletion-requests/{done['id']}", headers=tenant.headers("read")).json()
    assert latest["report_id"] == reissued.json()["id"]
    # the first report is untouched
    assert api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content == first


def test_verify_report_cli(api: TestClient, world: dict, sessions, migrated, tmp_path, monkeypatch) -> None:
    from app.cli import cli
    from app.core.config import reset_settings_cache

    tenant = world["tenant"]
    done = issued_request(api, world, sessions, migrated, POLICY_RULES)
    data = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content
    report_file = tmp_path / "report.json"
    report_file.write_bytes(data)
    pem = tmp_path / "public.pem"
    pem.write_text(api.get("/v1/report-signing-key", headers=tenant.headers("read")).json()["pem"])
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify-report", str(report_file), "--public-key", str(pem)])
    assert ok.exit_code == 0 and "valid" in ok.output, ok.output
    # Without --public-key: the installation's own key file under the Lethe home.
    monkeypatch.setenv("LETHE_HOME", str(migrated.home))
    reset_settings_cache()
    try:
        assert runner.invoke(cli, ["verify-report", str(report_file)]).exit_code == 0
    finally:
        reset_settings_cache()
    altered = bytearray(data)
    altered[len(altered) // 2] ^= 0x01
    report_file.write_bytes(bytes(altered))
    bad = runner.invoke(cli, ["verify-report", str(report_file), "--public-key", str(pem)])
    assert bad.exit_code == 1 and "INVALID" in bad.output, bad.output
    html_file = tmp_path / "report.html"
    html_file.write_bytes(
        api.get(f"/v1/reports/{done['report_id']}/html", headers=tenant.headers("read")).content
    )
    assert runner.invoke(cli, ["verify-report", str(html_file), "--public-key", str(pem)]).exit_code == 0


def test_failed_job_fails_the_request_and_cancel(api: TestClient, world: dict, sessions, migrated) -> None:
    tenant = world["tenant"]
    policy = publish(api, tenant, "f", POLICY_RULES)
    created = api.post(
        "/v1/deletion-requests", json=request_body(world, policy, seed=11), headers=tenant.headers("submit")
    ).json()
    with sessions() as session:
        for entry in created["jobs"].values():
            job = session.get(Job, uuid.UUID(entry["job_id"]))
            job.status, job.finished_at = JobStatus.failed, utcnow()
        session.commit()
    assert deletion_requests.advance(sessions, uuid.UUID(created["id"]), migrated) == "failed"
    failed = api.get(f"/v1/deletion-requests/{created['id']}", headers=tenant.headers("read")).json()
    assert failed["status"] == "failed" and failed["error"]["jobs"]["unlearn"] == "failed"
    assert failed["report_id"] is None
    assert_problem(
        api.post(f"/v1/deletion-requests/{created['id']}/reports", headers=tenant.headers("submit")),
        409,
        "report-not-available",
    )
    running = api.post(
        "/v1/deletion-requests", json=request_body(world, policy, seed=12), headers=tenant.headers("submit")
    ).json()
    cancelled = api.post(f"/v1/deletion-requests/{running['id']}/cancel", headers=tenant.headers("submit"))
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    unlearn = api.get(
        f"/v1/jobs/{running['jobs']['unlearn']['job_id']}", headers=tenant.headers("read")
    ).json()
    assert unlearn["status"] == "cancelled"


def test_report_not_found_for_other_tenant(
    api: TestClient, world: dict, sessions, migrated, other_tenant
) -> None:
    done = issued_request(api, world, sessions, migrated, POLICY_RULES)
    for path in (
        f"/v1/reports/{done['report_id']}",
        f"/v1/reports/{done['report_id']}/html",
        f"/v1/deletion-requests/{done['id']}",
    ):
        assert_problem(api.get(path, headers=other_tenant.headers("admin")), 404)


def test_signing_key_is_created_once(tmp_path) -> None:
    path = tmp_path / "k" / "report-signing.key"
    first = signing.load_or_create(path)
    again = signing.load_or_create(path)
    assert first.key_id == again.key_id and oct(path.stat().st_mode & 0o777) == "0o600"


def test_inputs_of_a_deletion_request_cannot_be_deleted(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    tenant = world["tenant"]
    done = issued_request(api, world, sessions, migrated, [{"metric": "TA", "max_drop_from_original": 5}])
    unlearn_job = done["jobs"]["unlearn"]["job_id"]
    for path in (
        f"/v1/models/{world['model']['id']}?cascade=true",
        f"/v1/forget-sets/{world['forget_set']['id']}?cascade=true",
        f"/v1/jobs/{unlearn_job}",
    ):
        response = api.delete(path, headers=tenant.headers("admin"))
        assert response.status_code == 409, (path, response.text)
        problem = response.json()
        assert problem["code"] == "resource-held-by-compliance-record"
        assert problem["errors"][0]["id"] == done["id"]
    report = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read"))
    assert report.status_code == 200
