"""A deletion request end to end with real workers, driven by the Python client and then by the CLI:
forget set from a file → unlearn + retrain + evaluation of the original + the identity control → the reaper
issues a signed report → fetch it (JSON and HTML) and verify it offline. A loose policy, which the untouched
model passes too, gives ``inconclusive`` whatever the method; a tight one gives ``pass`` to a method that
forgets a class while both controls fail it. No audit (it would train shadow models): the audit path is
covered in tests/app/api/test_compliance.py with results written directly."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.client import LetheClient, read_indices
from app.services.compliance import reports, signing
from tests.workers.test_job_flow import train_original

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Loose: bounds so wide that the untouched original meets every one of them.
RULES = [
    {"metric": "MIA-Efficacy", "relative_to": "retrain", "max_abs_gap": 100},
    {"metric": "TA", "max_drop_from_original": 100},
    {"metric": "RA", "min": 0},
]
# Tight: on a one-class forget set the retrained model misclassifies the whole class (UA 100) while the
# original gets it right (UA 6 in the last run), so the original fails the gap rule; rl forgetting the class
# passes it (UA 100, test accuracy 0.6 points above the original's).
TIGHT_RULES = [
    {"metric": "UA", "relative_to": "retrain", "max_abs_gap": 10},
    {"metric": "TA", "max_drop_from_original": 5},
]
TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def setup(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    tenant, dataset, train = train_original(live_api, sessions, migrated)
    return {"tenant": tenant, "dataset": dataset, "model": train["output_model_id"]}


def test_client_drives_a_deletion_request_end_to_end(live_api: TestClient, setup: dict, tmp_path) -> None:
    tenant = setup["tenant"]
    client = LetheClient(str(live_api.base_url), tenant.admin, http=live_api)
    policy = client.create_policy("e2e", RULES, description="loose bounds: the flow, not the method")
    indices_file = tmp_path / "forget.npy"
    np.save(indices_file, np.arange(0, 300, 3, dtype=np.int64))
    indices = read_indices(indices_file)
    forget_set = client.forget_set_from_indices(setup["dataset"]["id"], indices, "e2e forget")
    body = {
        "model_id": setup["model"],
        "forget_set_id": forget_set["id"],
        "method": "ft",
        "params": {"epochs": 1, "batch_size": 64},
        "seed": 5,
        "policy_id": str(policy.id),
    }
    submitted = client.submit_deletion_request(body, idempotency_key="e2e-1")
    assert client.submit_deletion_request(body, idempotency_key="e2e-1").id == submitted.id
    seen: list[float] = []
    done = client.follow_deletion_request(
        str(submitted.id),
        on_update=lambda r: seen.append(r.progress.fraction),
        poll_seconds=0.2,
        timeout_s=TIMEOUT_S,
    )
    assert done.status.value == "issued", done.error
    # The loose policy does not separate a model that forgot nothing: never a pass.
    assert done.verdict == "inconclusive" and seen[-1] == 1.0 and 0.0 < max(seen[:-1], default=0.5) < 1.0
    data = client.report_bytes(str(done.report_id))
    public = signing.load_public_key(client.signing_key().pem.encode())
    result = reports.verify_json(data, public)
    assert result.ok, result.reason
    document = json.loads(data)
    unlearn_job = client.get(f"/v1/jobs/{done.jobs['unlearn']['job_id']}")
    output = client.get(f"/v1/models/{unlearn_job['output_model_id']}")
    assert document["inputs"]["output_model"]["sha256"] == output["sha256"]
    assert document["inputs"]["forget_set"]["size"] == len(indices)
    assert document["jobs"]["unlearn"]["environment"]["device"] == "cpu"
    assert document["jobs"]["retrain"]["seed"] == 5 and "TA" in document["jobs"]["original"]["metrics"]
    assert reports.verify_html(client.report_bytes(str(done.report_id), "html"), public).ok
    assert all(control["outcome"] == "pass" for control in document["controls"].values())
    assert "does not separate" in document["verdict_reason"]
    # the identity control really ran the no-op: its metrics are the original's
    identity, original = document["jobs"]["identity"], document["jobs"]["original"]
    assert identity["method"] == "identity" and identity["status"] == "succeeded"
    for metric in ("UA", "RA", "TA"):
        assert identity["metrics"][metric]["value"] == pytest.approx(original["metrics"][metric]["value"])

    # Re-issued: the same bytes but for issued_at and the signature.
    again = client.reissue_report(str(done.id))
    second = client.report_bytes(str(again.id))
    first_doc, second_doc = json.loads(data), json.loads(second)
    for doc in (first_doc, second_doc):
        doc.pop("issued_at"), doc.pop("signature")
    assert signing.canonical_json(first_doc) == signing.canonical_json(second_doc)
    assert [r.id for r in client.reports(str(done.id))] == [done.report_id, again.id]


def test_cli_submits_from_a_csv_follows_and_verifies(
    live_api: TestClient, setup: dict, tmp_path, monkeypatch
) -> None:
    import app.cli as cli_module

    tenant = setup["tenant"]
    client = LetheClient(str(live_api.base_url), tenant.admin, http=live_api)
    client.create_policy("e2e-cli", RULES)
    monkeypatch.setattr(cli_module, "_client", lambda url, api_key: client)
    forget_file = tmp_path / "forget.csv"
    forget_file.write_text("index\n" + "\n".join(str(i) for i in range(0, 300, 3)) + "\n")
    pem = tmp_path / "public.pem"
    pem.write_text(client.signing_key().pem)
    out = tmp_path / "reports"
    args = [
        "deletion-request", "submit", "--model", setup["model"], "--method", "ga",
        "--params", json.dumps({"epochs": 1, "lr": 1e-4, "batch_size": 64}), "--policy", "e2e-cli@1",
        "--forget-file", str(forget_file), "--seed", "5", "--out", str(out), "--public-key", str(pem),
        "--ticket-reference", "DSR-CLI-1", "--requested-by", "privacy office",
    ]  # fmt: skip
    result = CliRunner().invoke(cli_module.cli, args)
    assert result.exit_code == 0, result.output
    assert "verdict inconclusive" in result.output and "does not separate" in result.output
    saved = sorted(p.name for p in out.iterdir())
    assert [name.rsplit(".", 1)[1] for name in saved] == ["html", "json", "pdf"]
    assert (out / saved[2]).read_bytes().startswith(b"%PDF-")
    report_file = out / saved[1]
    ok = CliRunner().invoke(cli_module.cli, ["verify-report", str(report_file), "--public-key", str(pem)])
    assert ok.exit_code == 0, ok.output
    document = json.loads(report_file.read_bytes())
    # Same indices, model and seed as the first test: its retrain and evaluation are reused (content hash).
    assert document["deletion_request"]["ticket_reference"] == "DSR-CLI-1"
    assert document["deletion_request"]["requested_by"] == "privacy office"
    assert document["method"]["name"] == "ga" and document["jobs"]["retrain"]["reused_cached_result"] is True
    assert document["jobs"]["original"]["reused_cached_result"] is True
    assert uuid.UUID(document["deletion_request"]["id"])


def test_tight_policy_passes_a_real_method_and_no_control(live_api: TestClient, setup: dict) -> None:
    tenant = setup["tenant"]
    client = LetheClient(str(live_api.base_url), tenant.admin, http=live_api)
    policy = client.create_policy("e2e-tight", TIGHT_RULES)
    forget_set = client.post(
        "/v1/forget-sets", {"dataset_id": setup["dataset"]["id"], "spec": {"kind": "class", "class": 3}}
    )
    references = {"subject_reference": "subj-0042", "ticket_reference": "DSR-7", "requested_by": "dpo"}
    body = {
        "model_id": setup["model"],
        "forget_set_id": forget_set["id"],
        "method": "rl",
        "params": {"epochs": 2, "batch_size": 64},
        "seed": 5,
        "policy_id": str(policy.id),
        **references,
    }
    # The dry run on the published policy, before any request: nothing holds by construction but the
    # utility rule, and without evidence the gap rule is not decided yet.
    dry = client.post("/v1/policies/check", {"policy_id": str(policy.id)})
    assert dry["separates"] is None and [w["code"] for w in dry["warnings"]] == ["holds-for-original"]
    done = client.follow_deletion_request(
        str(client.submit_deletion_request(body).id), poll_seconds=0.2, timeout_s=TIMEOUT_S
    )
    assert done.status.value == "issued", done.error
    document = json.loads(client.report_bytes(str(done.report_id)))
    unlearned = {v["metric"]: v for v in document["verdicts"]}
    assert done.verdict == "pass", (document["verdict_reason"], [v["finding"] for v in document["verdicts"]])
    assert unlearned["UA"]["passed"] and unlearned["TA"]["passed"]
    for control in document["controls"].values():
        assert control["outcome"] == "fail" and control["verdicts"][0]["passed"] is False
    assert {k: document["deletion_request"][k] for k in references} == references
    # Now measured, the same policy separates: the request's own controls fail the gap rule.
    measured = client.post(
        "/v1/policies/check", {"policy_id": str(policy.id), "deletion_request_id": str(done.id)}
    )
    assert measured["separates"] is True and measured["control"]["rules"][0]["passed"] is False


def test_recovery_rules_run_recovery_audits_of_the_method_and_the_identity_control(
    live_api: TestClient, setup: dict
) -> None:
    """The recovery stage with real workers: once rl, the retrain and the identity control have succeeded,
    the reaper adds and publishes the recovery audits of rl's output and of the identity output; the report
    carries their table and the 4-bit survival line, and the identity control fails the recovery rules."""
    tenant = setup["tenant"]
    client = LetheClient(str(live_api.base_url), tenant.admin, http=live_api)
    rules = [
        *TIGHT_RULES,
        # after 10 Adam steps on 16 forget samples, forget accuracy at most 50 points above the retrain's
        {"metric": "relearn.forget_subset.step_10.gap_to_control", "max": 50},
        {"metric": "transform.int4.gap_to_control", "max": 10},
    ]
    policy = client.create_policy("e2e-recovery", rules)
    forget_set = client.post(
        "/v1/forget-sets", {"dataset_id": setup["dataset"]["id"], "spec": {"kind": "class", "class": 3}}
    )
    body = {
        "model_id": setup["model"],
        "forget_set_id": forget_set["id"],
        "method": "rl",
        "params": {"epochs": 2, "batch_size": 64},
        "seed": 5,
        "policy_id": str(policy.id),
        "recovery": {"relearn_steps": [10], "sparsities": [0.5], "relearn_samples": 16},
    }
    done = client.follow_deletion_request(
        str(client.submit_deletion_request(body).id), poll_seconds=0.2, timeout_s=TIMEOUT_S
    )
    assert done.status.value == "issued", done.error
    assert {"recovery", "recovery_identity"} <= set(done.jobs)
    document = json.loads(client.report_bytes(str(done.report_id)))
    audits = {role: document["jobs"][role] for role in ("recovery", "recovery_identity")}
    assert all(job["kind"] == "recovery" and job["status"] == "succeeded" for job in audits.values())
    assert (
        audits["recovery"]["params"]["retrain_model_id"]
        == audits["recovery_identity"]["params"]["retrain_model_id"]
    )
    identity = document["controls"]["identity"]
    assert [v["passed"] for v in identity["verdicts"][2:]] == [False, False], [
        v["finding"] for v in identity["verdicts"]
    ]
    section = document["recovery"]["models"]
    assert section["identity"]["survives_4bit_quantization"] is False
    line = reports.recovery_lines(document)[0]
    assert line.startswith("Forgetting survives 4-bit quantization: ")
    assert line.endswith("with the control: the identity control, which forgot nothing: no).")
    unlearned = [v["finding"] for v in document["verdicts"]]
    assert done.verdict == "pass", (document["verdict_reason"], unlearned, reports.recovery_lines(document))
    assert section["unlearned"]["survives_4bit_quantization"] is True
    # The dry run on given jobs takes the identity output's recovery audit as the control's, not rl's.
    jobs = {role: entry["job_id"] for role, entry in done.jobs.items()}
    given = {"original_job_id": jobs["identity"], "retrain_job_id": jobs["retrain"]}
    check = client.post(
        "/v1/policies/check",
        {"policy_id": str(policy.id), **given, "recovery_job_id": jobs["recovery_identity"]},
    )
    assert check["separates"] is True and [r["passed"] for r in check["control"]["rules"]][2:] == [
        False,
        False,
    ]
    wrong = live_api.post(
        "/v1/policies/check",
        json={"policy_id": str(policy.id), **given, "recovery_job_id": jobs["recovery"]},
        headers=tenant.headers("submit"),
    )
    assert wrong.status_code == 422 and wrong.json()["code"] == "wrong-control-job"
