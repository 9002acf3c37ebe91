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
from app.services.compliance import deletion_requests, reports, signing
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
    assert set(created["jobs"]) == {"unlearn", "retrain", "original", "identity"}
    assert not any(entry["reused"] for entry in created["jobs"].values())
    jobs = {
        role: api.get(f"/v1/jobs/{e['job_id']}", headers=tenant.headers("read")).json()
        for role, e in created["jobs"].items()
    }
    assert jobs["unlearn"]["method"] == "ft" and jobs["unlearn"]["seed"] == 7
    assert jobs["retrain"]["kind"] == "retrain" and jobs["retrain"]["seed"] == 7
    assert jobs["original"]["kind"] == "evaluate"
    # the no-op control runs like the unlearning: same kind, seed and device
    assert (jobs["identity"]["kind"], jobs["identity"]["method"], jobs["identity"]["seed"]) == (
        "unlearn",
        "identity",
        7,
    )
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
    # ...and the audit of the identity control, with the same settings (its shadows are shared)
    control_audit = api.get(
        f"/v1/jobs/{with_audit['jobs']['audit_identity']['job_id']}", headers=tenant.headers("read")
    ).json()
    assert control_audit["kind"] == "audit" and control_audit["method"] == "identity"
    assert control_audit["params"]["shadows"] == 3 and control_audit["params"]["method_params"] == {}


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
# The identity control's audit: U-LiRA tells the untouched model from the retrained ones.
AUDIT_IDENTITY_METRICS = {"ulira_auc": 0.72, "ulira_auc_ci_low": 0.66, "ulira_auc_ci_high": 0.78}
ROLE_METRICS = {
    "unlearn": UNLEARN_METRICS,
    "retrain": RETRAIN_METRICS,
    "original": ORIGINAL_METRICS,
    "identity": ORIGINAL_METRICS,  # the no-op returns the original weights: the same numbers
    "audit": AUDIT_METRICS,
    "audit_identity": AUDIT_IDENTITY_METRICS,
}
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
    """Write what the workers would have: succeeded, results, environment, timings, metrics (a role that
    ``metrics`` leaves out, such as a control, gets ``ROLE_METRICS``')."""
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
            for name, value in (metrics[role] if role in metrics else ROLE_METRICS[role]).items():
                session.add(Metric(job_id=job.id, tenant_id=job.tenant_id, name=name, value=value, attempt=1))
        session.commit()


def issued_request(
    api: TestClient,
    world: dict,
    sessions,
    migrated,
    rules: list[dict],
    metrics: dict[str, dict[str, float]] | None = None,
    **extra,
) -> dict:
    tenant = world["tenant"]
    policy = publish(api, tenant, f"p-{uuid.uuid4().hex[:6]}", rules)
    created = api.post(
        "/v1/deletion-requests", json=request_body(world, policy, **extra), headers=tenant.headers("submit")
    ).json()
    assert deletion_requests.advance(sessions, uuid.UUID(created["id"]), migrated) is None  # still running
    finish_jobs(sessions, created, world, {**ROLE_METRICS, **(metrics or {})})
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


# ------------------------------------------------------------------------------------------ controls
# A gap of 20 points to the retrain's MIA-Efficacy accepts the original too (2.0 vs 18.0: gap 16).
LOOSE_RULES = [{"metric": "MIA-Efficacy", "relative_to": "retrain", "max_abs_gap": 20}]


@pytest.mark.parametrize(
    ("method", "params", "unlearned"), [("identity", {}, ORIGINAL_METRICS), ("ft", None, UNLEARN_METRICS)]
)
def test_loose_policy_is_inconclusive_never_pass(
    api: TestClient, world: dict, sessions, migrated, method: str, params: dict | None, unlearned: dict
) -> None:
    tenant = world["tenant"]
    extra = {"method": method} | ({"params": params} if params is not None else {})
    done = issued_request(
        api, world, sessions, migrated, LOOSE_RULES, metrics={"unlearn": unlearned}, **extra
    )
    assert done["verdict"] == "inconclusive"
    data = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content
    document = json.loads(data)
    assert document["verdicts"][0]["passed"] is True  # the unlearned model meets the rule...
    controls = document["controls"]
    assert set(controls) == {"original", "identity"}  # ...and so does every control
    assert all(c["outcome"] == "pass" and c["verdicts"][0]["passed"] for c in controls.values())
    assert controls["original"]["verdicts"][0]["finding"] == (
        "2.00 vs 18.00 for the retrained model, gap 16.00 points, margin 4.00 → pass"
    )
    assert "does not separate a model that forgot nothing" in document["verdict_reason"]
    assert reports.verify_json(data, public_key(api, tenant)).ok
    page = api.get(f"/v1/reports/{done['report_id']}/html", headers=tenant.headers("read")).text
    visible = page.split("<script", 1)[0]
    assert "INCONCLUSIVE" in visible and "does not separate a model that forgot nothing" in visible


def test_tight_policy_passes_because_every_control_fails(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    tenant = world["tenant"]
    done = issued_request(
        api, world, sessions, migrated, [*POLICY_RULES, AUDIT_RULE], audit={"shadows": 3, "recipe": RECIPE}
    )
    document = json.loads(api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content)
    assert document["verdict"] == "pass"
    controls = document["controls"]
    # The original is 16 points off the retrain's MIA-Efficacy (rule 1), and U-LiRA catches the no-op
    # (rule 4, from the identity control's audit); the utility rule holds for it by construction.
    for name in ("original", "identity"):
        assert controls[name]["outcome"] == "fail"
        assert [v["passed"] for v in controls[name]["verdicts"]] == [False, True, True, False]
        assert controls[name]["audit_role"] == "audit_identity"
    assert controls["identity"]["verdicts"][3]["observed"] == 0.78
    assert document["verdict_reason"].startswith("The unlearned model passes every rule and every control")
    assert "fails rule 1, 4" in document["verdict_reason"]


def test_report_reads_in_plain_language_with_references(
    api: TestClient, world: dict, sessions, migrated
) -> None:
    from app.models import AuditEvent
    from app.services.compliance.report_pdf import report_lines

    tenant = world["tenant"]
    rules = [
        {"metric": "forget_accuracy", "relative_to": "retrain", "max_abs_gap": 5},
        {"metric": "MIA-Efficacy", "relative_to": "retrain", "max_abs_gap": 5},
    ]
    metrics = {
        "unlearn": {**UNLEARN_METRICS, "forget_accuracy": 94.9861},
        "retrain": {**RETRAIN_METRICS, "forget_accuracy": 95.2646},
        "original": {**ORIGINAL_METRICS, "forget_accuracy": 100.0},
        "identity": {**ORIGINAL_METRICS, "forget_accuracy": 100.0},
    }
    references = {
        "subject_reference": "subject-4711 <b>",
        "ticket_reference": "DSR-2026-0142",
        "requested_by": "Privacy Office (Zoë)",
    }
    done = issued_request(api, world, sessions, migrated, rules, metrics=metrics, **references)
    assert done["verdict"] == "pass" and {k: done[k] for k in references} == references
    data = api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content
    document = json.loads(data)
    assert {k: document["deletion_request"][k] for k in references} == references
    first = document["verdicts"][0]
    expected = "94.99 vs 95.26 for the retrained model, gap 0.28 points, margin 4.72 → pass"
    assert first["statement"] == "Forget accuracy within 5.0 points of the retrained model"
    assert first["finding"] == expected and first["meaning"]
    assert first["observed"] == 94.9861  # the exact numbers stay in the signed JSON
    assert document["policy"]["created_at"] and document["jobs"]["identity"]["method"] == "identity"

    page = api.get(f"/v1/reports/{done['report_id']}/html", headers=tenant.headers("read")).text
    visible = page.split("<script", 1)[0]
    assert "Forget accuracy within 5.0 points of the retrained model" in visible and expected in visible
    assert "subject-4711 &lt;b&gt;" in visible and "DSR-2026-0142" in visible and "Zoë" in visible
    assert "the original model (control)" in visible and "the identity method (control)" in visible
    # no raw numbers or JSON for the reader: rounded metrics, params as "key: value"
    assert "94.9861" not in visible and "0.2785" not in visible and '{"' not in visible
    assert "<td>epochs: 1; " in visible or "epochs: 1" in visible
    assert reports.verify_html(page.encode(), public_key(api, tenant)).ok

    lines = [text for _, text in report_lines(document)]
    assert "1. Forget accuracy within 5.0 points of the retrained model" in lines
    assert f"   - the unlearned model: {expected}" in lines
    assert any(line.startswith("Data subject reference") and "subject-4711 <b>" in line for line in lines)
    assert any(line.startswith("Ticket reference") and "DSR-2026-0142" in line for line in lines)

    # Personal data stays out of the audit trail: it records which references were given, not their values.
    with sessions() as session:
        rows = session.query(AuditEvent).filter(AuditEvent.tenant_id == tenant.id).all()
    trail = json.dumps([row.details for row in rows], ensure_ascii=False)
    assert "subject-4711" not in trail and "DSR-2026-0142" not in trail and "Zoë" not in trail
    created = next(
        row for row in rows if row.action == "deletion_request.create" and row.resource_id == done["id"]
    )
    assert created.details["references"] == ["subject_reference", "ticket_reference", "requested_by"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject_reference", "line\nbreak"),
        ("subject_reference", "nul\x00"),
        ("ticket_reference", "bell\x07"),
        ("ticket_reference", "rtl\u202eoverride"),
        ("requested_by", "x" * 201),
        ("requested_by", ""),
        ("requested_by", " padded"),
        ("subject_reference", 42),
    ],
)
def test_reference_fields_are_validated(api: TestClient, world: dict, field: str, value: object) -> None:
    tenant = world["tenant"]
    policy = publish(api, tenant, "refs", POLICY_RULES)
    response = api.post(
        "/v1/deletion-requests",
        json=request_body(world, policy, **{field: value}),
        headers=tenant.headers("submit"),
    )
    assert_problem(response, 422, "validation-error")
    assert "x" * 201 not in response.text and "\u202e" not in response.text  # the input is not echoed


def test_version_1_reports_still_verify_and_render(api: TestClient, world: dict, sessions, migrated) -> None:
    """Reports issued before controls existed keep verifying, and their HTML keeps its exact rendering."""
    from app.services.compliance.report_html_v1 import render_html_v1
    from app.services.compliance.report_pdf import render_pdf

    tenant = world["tenant"]
    done = issued_request(api, world, sessions, migrated, POLICY_RULES)
    document = json.loads(api.get(f"/v1/reports/{done['report_id']}", headers=tenant.headers("read")).content)
    old = {k: v for k, v in document.items() if k not in ("signature", "controls", "verdict_reason")}
    old["format"] = reports.FORMAT_V1
    old["verdicts"] = [
        {**{k: v for k, v in verdict.items() if k not in ("statement", "finding", "meaning", "margin")},
         "comparison": "|20 - 18| = 2 <= 5"}
        for verdict in old["verdicts"]
    ]  # fmt: skip
    key = signing.signing_key(migrated)
    signed = reports.sign_document(old, key)
    assert reports.verify_json(signed, key.public).ok
    page = reports.render_html(signed)
    assert page == render_html_v1(signed) and "|20 - 18| = 2 &lt;= 5" in page
    assert reports.verify_html(page.encode(), key.public).ok
    assert render_pdf(signed).startswith(b"%PDF-")


# ------------------------------------------------------------------------------------------ dry run
def check(api: TestClient, tenant, body: dict, status: int = 200) -> dict:
    response = api.post("/v1/policies/check", json=body, headers=tenant.headers("submit"))
    assert response.status_code == status, response.text
    return response.json()


def codes(result: dict) -> list[tuple[str, int | None]]:
    return [(w["code"], w["rule_index"]) for w in result["warnings"]]


def test_publishing_a_vacuous_policy_warns(api: TestClient, tenant) -> None:
    vacuous = [{"metric": "TA", "max_drop_from_original": 2}, {"metric": "UA", "min": 0}]
    published = publish(api, tenant, "vacuous", vacuous)
    assert [(w["code"], w["rule_index"]) for w in published["warnings"]] == [
        ("holds-for-original", 0),
        ("always-satisfied", 1),
        ("vacuous-policy", None),
    ]
    read = api.get(f"/v1/policies/{published['id']}", headers=tenant.headers("read")).json()
    assert read["warnings"] == published["warnings"]
    separating = publish(api, tenant, "separating", POLICY_RULES)["warnings"]
    assert [(w["code"], w["rule_index"]) for w in separating] == [("holds-for-original", 1)]
    assert "utility rule" in separating[0]["detail"]


def test_dry_run_flags_a_vacuous_policy_and_accepts_a_separating_one(api: TestClient, tenant) -> None:
    # By construction, without evidence: every rule holds for the original whatever it measures.
    static = check(api, tenant, {"rules": [{"metric": "TA", "max_drop_from_original": 1}]})
    assert static["separates"] is False and static["control"] is None
    assert codes(static)[-1] == ("vacuous-policy", None) and static["summary"].startswith("Vacuous")
    # Without evidence a forgetting rule is not decided.
    unknown = check(api, tenant, {"rules": LOOSE_RULES})
    assert unknown["separates"] is None and unknown["warnings"] == []

    metrics = {"original": ORIGINAL_METRICS, "retrain": RETRAIN_METRICS}
    loose = check(api, tenant, {"rules": LOOSE_RULES, "metrics": metrics})
    assert loose["separates"] is False and loose["control"]["outcome"] == "pass"
    assert codes(loose) == [("control-passes", 0), ("vacuous-policy", None)]
    assert loose["control"]["rules"][0]["finding"] == (
        "2.00 vs 18.00 for the retrained model, gap 16.00 points, margin 4.00 → pass"
    )
    tight = check(
        api, tenant, {"rules": [*LOOSE_RULES[:0], *POLICY_RULES[:2]], "metrics": metrics}
    )  # MIA-Efficacy within 5 of the retrain, TA drop at most 2
    assert tight["separates"] is True and tight["control"]["outcome"] == "fail"
    assert [r["passed"] for r in tight["control"]["rules"]] == [False, True]
    assert tight["summary"] == "Separating: the untouched model fails rule 1, so a pass will mean something."
    # An audit rule needs the identity control's audit: missing, the check cannot decide.
    audit_rule = check(api, tenant, {"rules": [AUDIT_RULE], "metrics": metrics})
    assert audit_rule["separates"] is None and audit_rule["control"]["rules"][0]["passed"] is None
    caught = check(
        api, tenant, {"rules": [AUDIT_RULE], "metrics": {**metrics, "audit": AUDIT_IDENTITY_METRICS}}
    )
    assert caught["separates"] is True


def test_dry_run_on_a_requests_controls_and_on_jobs(
    api: TestClient, world: dict, sessions, migrated, other_tenant
) -> None:
    from app.models import AuditEvent

    tenant = world["tenant"]
    done = issued_request(api, world, sessions, migrated, POLICY_RULES)
    jobs = {role: entry["job_id"] for role, entry in done["jobs"].items()}
    by_request = check(api, tenant, {"rules": LOOSE_RULES, "deletion_request_id": done["id"]})
    assert by_request["separates"] is False and by_request["control"]["evidence"] == "deletion_request"
    assert by_request["control"]["jobs"] == {"original": jobs["original"], "retrain": jobs["retrain"]}
    # On given inputs: the stored evaluation of the model on the forget set (and the pair's retrain).
    inputs = {"model_id": world["model"]["id"], "forget_set_id": world["forget_set"]["id"]}
    by_inputs = check(api, tenant, {"rules": POLICY_RULES, **inputs})
    assert by_inputs["separates"] is True and by_inputs["control"]["evidence"] == "inputs"
    assert by_inputs["control"]["jobs"] == by_request["control"]["jobs"]
    fresh = api.post(
        "/v1/forget-sets",
        json={"dataset_id": world["dataset"]["id"], "spec": {"kind": "indices", "indices": [2, 3]}},
        headers=tenant.headers("submit"),
    ).json()
    not_evaluated = {"rules": POLICY_RULES, **inputs, "forget_set_id": fresh["id"]}
    assert_problem(
        api.post("/v1/policies/check", json=not_evaluated, headers=tenant.headers("submit")),
        409,
        "control-not-evaluated",
    )
    policy = publish(api, tenant, "to-check", POLICY_RULES)
    by_jobs = check(
        api,
        tenant,
        {"policy_id": policy["id"], "original_job_id": jobs["original"], "retrain_job_id": jobs["retrain"]},
    )
    assert by_jobs["separates"] is True and by_jobs["policy"]["version"] == 1
    # The identity control's unlearn job measures the untouched model too.
    identity = {"original_job_id": jobs["identity"], "retrain_job_id": jobs["retrain"]}
    assert check(api, tenant, {"rules": POLICY_RULES, **identity})["separates"] is True
    with sessions() as session:
        row = session.query(AuditEvent).filter(AuditEvent.resource_id == by_jobs["id"]).one()
        assert row.action == "policy.check" and row.details["separates"] is True

    wrong = {"rules": POLICY_RULES, "original_job_id": jobs["unlearn"]}
    assert_problem(
        api.post("/v1/policies/check", json=wrong, headers=tenant.headers("submit")), 422, "wrong-control-job"
    )
    swapped = {"rules": POLICY_RULES, "original_job_id": jobs["original"], "retrain_job_id": jobs["original"]}
    assert_problem(
        api.post("/v1/policies/check", json=swapped, headers=tenant.headers("submit")),
        422,
        "wrong-control-job",
    )
    running = api.post(
        "/v1/deletion-requests", json=request_body(world, policy, seed=99), headers=tenant.headers("submit")
    ).json()
    unfinished = {"rules": POLICY_RULES, "original_job_id": running["jobs"]["identity"]["job_id"]}
    assert_problem(
        api.post("/v1/policies/check", json=unfinished, headers=tenant.headers("submit")),
        409,
        "control-not-evaluated",
    )
    for foreign in (
        {"rules": POLICY_RULES, **inputs},
        {"rules": POLICY_RULES, "deletion_request_id": done["id"]},
        {"rules": POLICY_RULES, "original_job_id": jobs["original"]},
        {"policy_id": policy["id"]},
    ):
        body = assert_problem(
            api.post("/v1/policies/check", json=foreign, headers=other_tenant.headers("admin")), 404
        )
        assert body["code"].endswith("-not-found")
    assert_problem(
        api.post("/v1/policies/check", json={"rules": POLICY_RULES}, headers=tenant.headers("read")),
        403,
        "insufficient-scope",
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"rules": POLICY_RULES, "policy_id": str(uuid.uuid4())},
        {"rules": []},
        {"rules": POLICY_RULES, "metrics": {"original": {}}, "deletion_request_id": str(uuid.uuid4())},
        {"rules": POLICY_RULES, "retrain_job_id": str(uuid.uuid4())},
        {"rules": POLICY_RULES, "model_id": str(uuid.uuid4())},
        {
            "rules": POLICY_RULES,
            "model_id": str(uuid.uuid4()),
            "forget_set_id": str(uuid.uuid4()),
            "metrics": {"original": {}},
        },
        {"rules": POLICY_RULES, "metrics": {"original": {"bad name!": 1.0}}},
        {"rules": POLICY_RULES, "metrics": {"original": {"UA": "high"}}},
        '{"rules": [{"metric": "UA", "min": 1}], "metrics": {"original": {"UA": 1e400}}}',  # infinity
        {"rules": POLICY_RULES, "metrics": {"retrain": {"UA": 1.0}}},
        {"rules": POLICY_RULES, "metrics": {"original": {}, "shadow": {}}},
        {"rules": [{"metric": "UA"}]},
    ],
)
def test_dry_run_rejects_bad_input_as_problems(api: TestClient, tenant, body: dict | str) -> None:
    headers = {**tenant.headers("submit"), "Content-Type": "application/json"}
    content = body if isinstance(body, str) else json.dumps(body)
    response = api.post("/v1/policies/check", content=content, headers=headers)
    assert_problem(response, 422, "validation-error")
