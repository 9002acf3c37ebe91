"""Compliance reports: built from a finished deletion request, signed, stored once, exported as JSON/HTML.

Document (``format: lethe.compliance-report/3``), every key sorted, canonical JSON
(app.services.compliance.signing):

* ``deletion_request``: id, name, tenant, created_at and the requester's references (``subject_reference``,
  ``ticket_reference``, ``requested_by``; null when not given); ``policy``: id, name, version, sha256,
  description, created_at, rules;
* ``inputs``: dataset, model (with its mask hash), forget set and output model, each identified by SHA-256;
* ``method``: name, resolved params, seed; ``jobs``: per role (``ROLES``: unlearn, retrain, the controls,
  audits, recovery audits) the job's id, kind, seed, params, status, code version, environment (device,
  torch/numpy/sklearn/python versions), timings and start/end times, and every metric as ``{value,
  ci_low, ci_high}`` (the interval when the job recorded one: ``<name>_ci_low``/``<name>_ci_high``
  metrics, or the population attack's bootstrap);
* ``verdicts``: one per policy rule with the exact numbers compared (``observed``, ``reference``,
  ``computed``, ``margin``) and, for people, the rule in words (``statement``, ``meaning``) and a rounded
  ``finding`` ("94.99 vs 95.26 for the retrained model, gap 0.28 points, margin 4.72 → pass");
* ``controls``: the same rules applied to models that forgot nothing (``original``: the original's
  evaluation; ``identity``: the no-op method run like the unlearning; audit metrics from ``audit_identity``,
  recovery metrics from ``recovery_identity``), each with its ``outcome``;
* ``recovery`` (new in version 3; null when no rule needed a recovery audit): per audited model
  (``unlearned``; ``identity``, the identity control's output, which stands for the original too) the
  recovery table read from the audit's signed metric rows (per transform: change, the retrain's change,
  distance above the equally transformed retrain, excess recovery, score; per relearning source: steps to
  recover, the retrain's, the gap to the retrain along the step grid, score; the scores) and
  ``survives_4bit_quantization``: true when after int4 and after nf4 the model is at most
  ``SURVIVAL_FRACTION`` of the original-retrain gap above the equally quantized retrain, null when that gap
  is below the audit's ``min_gap``;
* ``verdict``: fail when the unlearned model fails a rule; pass only when it passes every rule and every
  control fails at least one; inconclusive otherwise (a number missing, or a control passing too: the policy
  does not separate an untouched model); ``verdict_reason`` says which, in words;
* ``issued_at`` and ``issuer``; ``signature``: {algorithm, key_id, value} over the canonical JSON of the
  document without ``signature``.

Everything but ``issued_at`` and ``signature`` is a function of stored, immutable rows (finished jobs, their
metrics, content hashes), so re-issuing a request's report gives the same bytes apart from those two.
The HTML export is rendered deterministically from the document and embeds it, so it verifies too.
Version-1 documents (before controls) still verify, and render with the frozen version-1 renderer; version-2
documents (before the recovery section) carry no ``recovery`` key, for which the renderer adds nothing, so
their pages are what they were.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session

from app.core.problems import Conflict
from app.models import ComplianceReport, Dataset, DeletionRequest, ForgetSet, Job, Model, Policy
from app.models.base import utcnow
from app.schemas.compliance import STAGE_AUDIT, STAGE_RECOVERY, PolicyRule
from app.services.compliance.policies import evaluate_rule, metric_info, rules_outcome, verdict_with_controls
from app.services.compliance.report_html_v1 import render_html_v1
from app.services.compliance.signing import ALGORITHM, SigningKey, canonical_json, key_id, verify
from app.services.jobs.results import metrics_for

FORMAT = "lethe.compliance-report/3"
FORMAT_V2 = "lethe.compliance-report/2"  # no recovery section; still verified and rendered as it was
FORMAT_V1 = "lethe.compliance-report/1"  # no controls; still verified and rendered as it was
FORMATS = (FORMAT_V1, FORMAT_V2, FORMAT)
ROLES = (
    "unlearn",
    "retrain",
    "original",
    "identity",
    "audit",
    "audit_identity",
    "recovery",
    "recovery_identity",
)
# A control is a model that forgot nothing, judged by the same rules as the unlearned model: (role of the job
# with its metrics, role of the audit of it, role of its recovery audit, how the report names it, what it is).
# The identity method returns the original's weights, so the identity control's audits measure both.
CONTROLS: dict[str, tuple[str, str, str, str, str]] = {
    "original": (
        "original",
        "audit_identity",
        "recovery_identity",
        "the original model (control)",
        "The model before unlearning, evaluated on the same forget set: what doing nothing measures.",
    ),
    "identity": (
        "identity",
        "audit_identity",
        "recovery_identity",
        "the identity method (control)",
        "A registered no-op unlearning method that returns the original weights, run with the request's"
        " seed and device exactly like the unlearning.",
    ),
}
# The recovery section: (role of the recovery audit, how the report names the audited model).
RECOVERY_MODELS: dict[str, tuple[str, str]] = {
    "unlearned": ("recovery", "the unlearned model"),
    "identity": ("recovery_identity", "the identity control"),
}
FOUR_BIT = ("int4", "nf4")
# Forgetting survives a transform when, after it, the model is at most this fraction of the original-retrain
# gap above the equally transformed retrain on the forget set.
SURVIVAL_FRACTION = 0.1
# The population attack whose AUC and balanced accuracy are the flat mia_* metrics (workers.engine.execute).
HEADLINE_POPULATION = ("logit_confidence", "threshold")
_POPULATION_METRICS = {"mia_auc": "auc", "mia_balanced_accuracy": "balanced_accuracy"}
_CI_SUFFIXES = ("_ci_low", "_ci_high")
DATA_ELEMENT_ID = "lethe-report"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _clean(value: Any) -> Any:
    """JSON-able with finite numbers only (non-finite become null: canonical JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _population_intervals(job: Job) -> dict[str, dict[str, Any]]:
    population = ((job.result or {}).get("attacks") or {}).get("population") or {}
    attacks = population.get("attacks", population)
    score, attacker = HEADLINE_POPULATION
    report = (attacks.get(score) or {}).get(attacker) or {}
    out = {}
    for metric, key in _POPULATION_METRICS.items():
        entry = report.get(key)
        if isinstance(entry, dict):
            out[metric] = entry
    return out


def metric_table(job: Job, values: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """Every metric of a job as {value, ci_low, ci_high}; interval metrics fold into their base metric."""
    return values_table(values, _population_intervals(job))


def values_table(
    values: dict[str, float], intervals: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, float | None]]:
    """{metric: value} as {metric: {value, ci_low, ci_high}}, from ``<metric>_ci_low/_ci_high`` entries or,
    failing those, ``intervals`` (a population attack's bootstrap)."""
    intervals = intervals or {}
    table: dict[str, dict[str, float | None]] = {}
    for name in sorted(values):
        if name.endswith(_CI_SUFFIXES) and name.rsplit("_ci_", 1)[0] in values:
            continue
        entry: dict[str, float | None] = {
            "value": _number(values[name]),
            "ci_low": _number(values.get(f"{name}_ci_low")),
            "ci_high": _number(values.get(f"{name}_ci_high")),
        }
        if entry["ci_low"] is None and name in intervals:
            entry["ci_low"] = _number(intervals[name].get("ci_low"))
            entry["ci_high"] = _number(intervals[name].get("ci_high"))
        table[name] = entry
    return table


def _job_section(job: Job, values: dict[str, float], reused: bool) -> dict[str, Any]:
    return _clean(
        {
            "id": str(job.id),
            "kind": job.kind,
            "method": job.method,
            "status": job.status.value,
            "seed": job.seed,
            "params": job.params,
            "device_requested": job.device_requested,
            "reused_cached_result": reused,
            "code_version": job.code_version,
            "environment": job.environment or {},
            "timings": job.timings or {},
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "attempt": job.attempt,
            "metrics": metric_table(job, values),
        }
    )


def _require(row: Any, what: str) -> Any:
    if row is None:
        raise Conflict(
            f"the {what} this report names no longer exists: the report cannot be rebuilt",
            code="report-inputs-missing",
        )
    return row


def build_document(session: Session, request: DeletionRequest, issued_at: datetime) -> dict[str, Any]:
    """The unsigned document; deterministic in the stored rows except for ``issued_at``."""
    policy = _require(session.get(Policy, request.policy_id), "policy")
    model = _require(session.get(Model, request.model_id), "model")
    forget_set = _require(session.get(ForgetSet, request.forget_set_id), "forget set")
    dataset = _require(session.get(Dataset, forget_set.dataset_id), "dataset")
    jobs: dict[str, Job] = {}
    reused: dict[str, bool] = {}
    for role in ROLES:
        entry = request.jobs.get(role)
        if entry:
            jobs[role] = _require(session.get(Job, uuid.UUID(entry["job_id"])), f"{role} job")
            reused[role] = bool(entry.get("reused"))
    values = metrics_for(session, [j.id for j in jobs.values()])
    sections = {role: _job_section(job, values.get(job.id, {}), reused[role]) for role, job in jobs.items()}
    tables = {role: section["metrics"] for role, section in sections.items()}
    unlearn = jobs["unlearn"]
    output = session.get(Model, unlearn.output_model_id) if unlearn.output_model_id else None
    rules = [PolicyRule.model_validate(r) for r in policy.rules]
    verdicts = [evaluate_rule(i, rule, tables) for i, rule in enumerate(rules)]
    controls: dict[str, dict[str, Any]] = {}
    for name, (role, audit_role, recovery_role, label, description) in CONTROLS.items():
        if role not in jobs:  # requests made before the identity control existed have only the original
            continue
        stages = {STAGE_AUDIT: audit_role, STAGE_RECOVERY: recovery_role}
        control_verdicts = [
            evaluate_rule(i, rule, tables, subject=role, stage_subjects=stages)
            for i, rule in enumerate(rules)
        ]
        controls[name] = {
            "label": label,
            "description": description,
            "job_role": role,
            "audit_role": audit_role if audit_role in jobs else None,
            "recovery_role": recovery_role if recovery_role in jobs else None,
            "outcome": rules_outcome(control_verdicts),
            "verdicts": control_verdicts,
        }
    verdict, reason = verdict_with_controls(
        verdicts,
        {name: control["verdicts"] for name, control in controls.items()},
        {name: control["label"] for name, control in controls.items()},
    )
    document = {
        "format": FORMAT,
        "issued_at": _iso(issued_at),
        "issuer": {"service": "lethe", "code_version": unlearn.code_version},
        "deletion_request": {
            "id": str(request.id),
            "name": request.name,
            "tenant_id": str(request.tenant_id),
            "created_at": _iso(request.created_at),
            "subject_reference": request.subject_reference,
            "ticket_reference": request.ticket_reference,
            "requested_by": request.requested_by,
        },
        "policy": {
            "id": str(policy.id),
            "name": policy.name,
            "version": policy.version,
            "sha256": policy.sha256,
            "description": policy.description,
            "created_at": _iso(policy.created_at),
            "rules": policy.rules,
        },
        "inputs": {
            "dataset": {
                "id": str(dataset.id),
                "name": dataset.name,
                "sha256": dataset.sha256,
                "source": dataset.source,
                "builtin": dataset.builtin,
                "config": dataset.config,
                "n_train": dataset.n_train,
                "n_test": dataset.n_test,
            },
            "model": {
                "id": str(model.id),
                "name": model.name,
                "sha256": model.sha256,
                "mask_sha256": model.mask_sha256,
                "architecture": model.architecture,
                "arch_config": model.arch_config,
                "seed": model.seed,
                "train_recipe": model.train_recipe,
            },
            "forget_set": {
                "id": str(forget_set.id),
                "name": forget_set.name,
                "sha256": forget_set.sha256,
                "kind": forget_set.kind,
                "size": forget_set.size,
                "forget_class": forget_set.forget_class,
            },
            "output_model": None
            if output is None
            else {"id": str(output.id), "sha256": output.sha256, "mask_sha256": output.mask_sha256},
        },
        "method": {
            "name": request.method,
            "params": unlearn.params,
            "seed": unlearn.seed,
            "device": (unlearn.environment or {}).get("device"),
        },
        "jobs": sections,
        "verdicts": verdicts,
        "controls": controls,
        "recovery": recovery_section(tables),
        "verdict": verdict,
        "verdict_reason": reason,
    }
    return _clean(document)


# ------------------------------------------------------------------------------------------ recovery
def _value_of(table: dict[str, dict[str, float | None]], metric: str) -> float | None:
    return (table.get(metric) or {}).get("value")


def _names(table: dict[str, dict[str, float | None]], prefix: str, suffix: str) -> list[str]:
    """The middle parts of ``<prefix><name><suffix>`` metric names, in the table's (sorted) order."""
    return [m[len(prefix) : -len(suffix)] for m in table if m.startswith(prefix) and m.endswith(suffix)]


def _recovery_model(table: dict[str, dict[str, float | None]], label: str) -> dict[str, Any]:
    """One recovery audit as the report shows it, read from its metric rows (the signed numbers)."""
    regression = "forget_mae" in table
    gap = _value_of(table, "recovery_gap")
    transforms: list[dict[str, Any]] = [
        {
            "name": name,
            **{
                key: _value_of(table, f"transform.{name}.{key}")
                for key in ("delta", "control_delta", "excess_recovery", "gap_to_control", "score")
            },
        }
        for name in _names(table, "transform.", ".excess_recovery")
    ]
    relearning = []
    for source in _names(table, "relearn.", ".score") or _names(table, "relearn.", ".steps_to_recover"):
        prefix = f"relearn.{source}."
        steps = sorted(int(k) for k in _names(table, f"{prefix}step_", ".gap_to_control"))
        relearning.append(
            {
                "source": source,
                "steps_to_recover": _value_of(table, f"{prefix}steps_to_recover"),
                "control_steps_to_recover": _value_of(table, f"{prefix}control_steps_to_recover"),
                "steps_ratio": _value_of(table, f"{prefix}steps_ratio"),
                "score": _value_of(table, f"{prefix}score"),
                "gap_to_control": [
                    {"step": k, "value": _value_of(table, f"{prefix}step_{k}.gap_to_control")} for k in steps
                ],
            }
        )
    scores = {
        name: _value_of(table, f"recovery_{name}")
        for name in ("quantization_score", "pruning_score", "relearning_score", "robustness")
    }
    four_bit = [row for row in transforms if row["name"] in FOUR_BIT]
    # No verdict on survival when the original and the retrain hardly differ (the audit's scores are null
    # then: there was nothing to remove) or no 4-bit transform ran.
    usable = gap is not None and scores["quantization_score"] is not None and bool(four_bit)
    tolerance = SURVIVAL_FRACTION * gap if usable and gap is not None else None
    above: list[float | None] = [row["gap_to_control"] for row in four_bit]
    survives: bool | None = None
    if tolerance is not None and all(value is not None for value in above):
        survives = all(value <= tolerance for value in above if value is not None)
    return {
        "label": label,
        "metric": "forget_mae" if regression else "forget_accuracy",
        "unit": "MAE units" if regression else "points",
        "original_retrain_gap": gap,
        "survival_tolerance": tolerance,
        "survives_4bit_quantization": survives,
        "transforms": transforms,
        "relearning": relearning,
        "scores": scores,
    }


def recovery_section(tables: dict[str, dict[str, dict[str, float | None]]]) -> dict[str, Any] | None:
    """The recovery audits' figures per audited model, and whether forgetting survives 4-bit quantization
    (null when the request ran no recovery audit)."""
    models = {
        name: _recovery_model(tables[role], label)
        for name, (role, label) in RECOVERY_MODELS.items()
        if role in tables
    }
    if not models:
        return None
    return {
        "models": models,
        "survival_definition": (
            "Forgetting survives 4-bit quantization when, after int4 and after nf4 quantization, the model's"
            " forget-set knowledge (forget accuracy; regression: minus the forget MAE) is at most"
            f" {SURVIVAL_FRACTION:g} of the original-retrain gap above the equally quantized retrained"
            " model's."
        ),
    }


def _yes_no(value: bool | None) -> str:
    return "yes" if value is True else "no" if value is False else "not measured"


def recovery_lines(doc: dict[str, Any]) -> list[str]:
    """The recovery section in words: the headline line, then one sentence per audited model (shared by the
    HTML and PDF renderings)."""
    section = doc.get("recovery")
    if not section:
        return []
    models = section["models"]
    unlearned, identity = models.get("unlearned"), models.get("identity")
    survives = (unlearned or {}).get("survives_4bit_quantization")
    head = f"Forgetting survives 4-bit quantization: {_yes_no(survives)}"
    if identity is not None:
        control = _yes_no(identity["survives_4bit_quantization"])
        head += f" (with the control: {identity['label']}, which forgot nothing: {control})"
    lines = [head + "."]
    for _, model in in_role_order(models, tuple(RECOVERY_MODELS)):
        four_bit = [row for row in model["transforms"] if row["name"] in FOUR_BIT]
        unit = model["unit"]
        if model["survives_4bit_quantization"] is None:
            gap = model["original_retrain_gap"]
            why = (
                f"the original and the retrained model differ by only {_fixed2(gap)} {unit}"
                if gap is not None
                else "no gap was measured"
            )
            lines.append(f"{model['label'][0].upper()}{model['label'][1:]}: not decided ({why}).")
            continue
        above = " / ".join(_fixed2(row["gap_to_control"]) for row in four_bit)
        moved = " / ".join(_signed(row["delta"]) for row in four_bit)
        control = " / ".join(_signed(row["control_delta"]) for row in four_bit)
        names = " / ".join(row["name"] for row in four_bit)
        lines.append(
            f"{model['label'][0].upper()}{model['label'][1:]}: after {names} quantization its forget-set"
            f" knowledge is {above} {unit} above the equally quantized retrained model's (tolerance"
            f" {_fixed2(model['survival_tolerance'])} {unit}, {SURVIVAL_FRACTION:g} of the original-retrain"
            f" gap of {_fixed2(model['original_retrain_gap'])} {unit}); quantization moved its"
            f" {model['metric'].replace('_', ' ')} by {moved},"
            f" the retrained model's by {control}."
        )
    return lines


def _fixed2(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def recovery_table(model: dict[str, Any]) -> list[list[str]]:
    """One audited model's rows: header, then per transform and per relearning source the figures (shared by
    the HTML and PDF renderings)."""
    rows = [["Recovery attack", "Change", "Retrain's change", "Above retrain after", "Excess", "Score"]]
    for row in model["transforms"]:
        rows.append(
            [
                row["name"],
                _signed(row["delta"]),
                _signed(row["control_delta"]),
                _fixed2(row["gap_to_control"]),
                _fixed2(row["excess_recovery"]),
                _score(row["score"]),
            ]
        )
    for row in model["relearning"]:
        curve = ", ".join(f"{p['step']}: {_fixed2(p['value'])}" for p in row["gap_to_control"])
        ratio = row["steps_ratio"]
        rows.append(
            [
                f"relearn {row['source']}",
                f"steps to recover {plain_value(row['steps_to_recover'])}",
                f"retrain: {plain_value(row['control_steps_to_recover'])}",
                curve,
                "—" if ratio is None else f"ratio {ratio:.2f}",
                _score(row["score"]),
            ]
        )
    scores = model["scores"]
    rows.append(
        [
            "scores",
            f"quantization {_score(scores['quantization_score'])}",
            f"pruning {_score(scores['pruning_score'])}",
            f"relearning {_score(scores['relearning_score'])}",
            "",
            f"robustness {_score(scores['robustness'])}",
        ]
    )
    return rows


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def sign_document(document: dict[str, Any], key: SigningKey) -> bytes:
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    signature = {"algorithm": ALGORITHM, "key_id": key.key_id, "value": key.sign(canonical_json(unsigned))}
    return canonical_json({**unsigned, "signature": signature})


def issue(session: Session, request: DeletionRequest, key: SigningKey) -> ComplianceReport:
    """Build, sign and add (not commit) a report row for a request whose jobs all succeeded."""
    issued_at = utcnow()
    document = build_document(session, request, issued_at)
    signed = sign_document(document, key)
    report = ComplianceReport(
        tenant_id=request.tenant_id,
        deletion_request_id=request.id,
        issued_at=issued_at,
        verdict=document["verdict"],
        document=signed.decode("utf-8"),
        sha256=hashlib.sha256(signed).hexdigest(),
        key_id=key.key_id,
        algorithm=ALGORITHM,
    )
    session.add(report)
    session.flush()
    return report


# ------------------------------------------------------------------------------------------ verification
@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str
    document: dict[str, Any] | None = None


def verify_json(data: bytes, public: Ed25519PublicKey) -> Verification:
    """A report file is valid when it is exactly the canonical JSON of a document whose signature verifies
    with ``public`` over the canonical JSON of the document without its signature."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Verification(False, f"not a JSON document: {exc}")
    if not isinstance(document, dict) or document.get("format") not in FORMATS:
        return Verification(False, f"not a {' or '.join(FORMATS)} document")
    try:
        canonical = canonical_json(document)
    except ValueError as exc:
        return Verification(False, f"not canonical JSON: {exc}")
    if canonical != data:
        return Verification(False, "the bytes are not the canonical encoding of the document (altered?)")
    return _verify_signature(document, public)


def _verify_signature(document: dict[str, Any], public: Ed25519PublicKey) -> Verification:
    signature = document.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        return Verification(False, "the document has no signature")
    if signature.get("algorithm") != ALGORITHM:
        return Verification(False, f"unsupported signature algorithm {signature.get('algorithm')!r}")
    if signature.get("key_id") != key_id(public):
        return Verification(
            False,
            f"signed with key {signature.get('key_id')}, but the public key given is {key_id(public)}",
        )
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    if not verify(public, canonical_json(unsigned), signature["value"]):
        return Verification(False, "the signature does not match the document (altered?)")
    return Verification(
        True, f"signature valid (key {signature['key_id']}), verdict {document.get('verdict')}", document
    )


_EMBEDDED = re.compile(rf'<script type="application/json" id="{DATA_ELEMENT_ID}">(.*?)</script>', re.DOTALL)


def verify_html(data: bytes, public: Ed25519PublicKey) -> Verification:
    """The HTML export embeds the signed document; it is valid when that document verifies and the page is
    byte for byte the rendering of it (so the visible text cannot be changed either)."""
    text = data.decode("utf-8", errors="replace")
    match = _EMBEDDED.search(text)
    if match is None:
        return Verification(False, "no embedded report in this HTML file")
    try:
        document = json.loads(match.group(1))
    except json.JSONDecodeError as exc:
        return Verification(False, f"the embedded report is not JSON: {exc}")
    if not isinstance(document, dict) or document.get("format") not in FORMATS:
        return Verification(False, f"the embedded report is not a {' or '.join(FORMATS)} document")
    result = _verify_signature(document, public)
    if not result.ok:
        return result
    if render_html(canonical_json(document)).encode("utf-8") != data:
        return Verification(False, "the HTML differs from the rendering of the signed report (altered?)")
    return result


def verify_file(data: bytes, public: Ed25519PublicKey) -> Verification:
    if data.lstrip()[:1] == b"<":
        return verify_html(data, public)
    return verify_json(data, public)


# ------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;
color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid
#d6dae3}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #d6dae3;
padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f3f5f9}code{font-size:.85rem;
word-break:break-all}.pass{color:#14722f;font-weight:600}.fail{color:#b3261e;font-weight:600}
.inconclusive{color:#8a5a00;font-weight:600}.verdict{font-size:1.3rem;padding:.6rem 1rem;border-radius:.4rem;
background:#f3f5f9;display:inline-block}.num{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:2rem;font-size:.8rem;color:#5b6475}.meaning{font-size:.8rem;color:#5b6475;margin-top:.2rem}.control{color:#5b6475}
.reason{max-width:60rem}
""".strip()


def plain_value(value: Any) -> str:
    """A value as a reader sees it: nested params flattened to ``key: value`` pairs, not JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        if not value:
            return "none"
        return "; ".join(f"{k}: {plain_value(v)}" for k, v in _flatten(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(plain_value(v) for v in value) + "]"
    return str(value)


def _flatten(value: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested params as dotted keys (``recipe.lr``), so a reader never has to match braces."""
    pairs: list[tuple[str, Any]] = []
    for key, item in sorted(value.items()):
        if isinstance(item, dict) and item:
            pairs += _flatten(item, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", item))
    return pairs


def in_role_order(mapping: dict[str, Any], order: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Sections in reading order (canonical JSON sorts keys alphabetically): known roles first."""
    known = [(key, mapping[key]) for key in order if key in mapping]
    return known + [(key, value) for key, value in mapping.items() if key not in order]


def metric_text(metric: str, value: float | None) -> str:
    """A metric's value rounded to the decimals worth showing (its exact value stays in the JSON)."""
    if value is None:
        return "—"
    return f"{value:.{metric_info(metric).decimals}f}"


def _e(value: Any) -> str:
    return html.escape(plain_value(value))


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)


def result_label(passed: Any) -> str:
    return "pass" if passed is True else "fail" if passed is False else "no verdict"


def _verdict_class(passed: Any) -> str:
    return "pass" if passed is True else "fail" if passed is False else "inconclusive"


def summary_fields(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report's header rows (shared by the HTML and PDF renderings)."""
    request = doc["deletion_request"]
    policy = doc["policy"]
    return [
        ("Deletion request", request["id"]),
        ("Name", request.get("name")),
        ("Data subject reference", request.get("subject_reference")),
        ("Ticket reference", request.get("ticket_reference")),
        ("Requested by", request.get("requested_by")),
        ("Requested at", request["created_at"]),
        ("Issued at", doc["issued_at"]),
        ("Policy", f"{policy['name']} version {policy['version']} ({policy['id']})"),
        ("Policy description", policy.get("description")),
        ("Policy SHA-256", policy["sha256"]),
        ("Method", doc["method"]["name"]),
        ("Method params", doc["method"]["params"]),
        ("Seed", doc["method"]["seed"]),
        ("Device", doc["method"].get("device")),
    ]


def job_fields(job: dict[str, Any]) -> list[tuple[str, Any]]:
    """One job's rows (shared by the HTML and PDF renderings); its metrics follow as a table."""
    env = job.get("environment") or {}
    timings = {k: f"{v:.2f} s" for k, v in (job.get("timings") or {}).items() if isinstance(v, int | float)}
    return [
        ("Job", job["id"]),
        ("Kind / method", f"{job['kind']} / {job.get('method') or '—'}"),
        ("Seed", job["seed"]),
        ("Reused cached result", job["reused_cached_result"]),
        ("Params", job["params"]),
        ("Code version", job["code_version"]),
        ("Device", f"{env.get('device')} ({env.get('device_name') or 'no name recorded'})"),
        ("Libraries", {k: env[k] for k in ("python", "torch", "cuda", "numpy", "sklearn") if env.get(k)}),
        ("Timings", timings),
        ("Started / finished", f"{job.get('started_at')} / {job.get('finished_at')}"),
    ]


def rule_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rule: its statement and meaning, the unlearned model's finding, then each control's (shared by the
    HTML and PDF renderings)."""
    controls = in_role_order(doc.get("controls") or {}, tuple(CONTROLS))
    rows = []
    for verdict in doc["verdicts"]:
        index = verdict["index"]
        findings = [("the unlearned model", verdict["finding"], verdict["passed"])]
        for _, control in controls:
            theirs = control["verdicts"][index]
            findings.append((control["label"], theirs["finding"], theirs["passed"]))
        rows.append(
            {
                "index": index,
                "statement": verdict["statement"],
                "meaning": verdict["meaning"],
                "findings": findings,
            }
        )
    return rows


def control_summary(doc: dict[str, Any]) -> list[str]:
    """One line per control: what it is and how it fared under the policy."""
    lines = []
    for _, control in in_role_order(doc.get("controls") or {}, tuple(CONTROLS)):
        outcome = {"pass": "passes every rule", "fail": "fails", "inconclusive": "is not decided"}
        failed = [f"{v['index'] + 1}" for v in control["verdicts"] if v["passed"] is False]
        where = f" (rule {', '.join(failed)})" if failed else ""
        lines.append(
            f"{control['label'][0].upper()}{control['label'][1:]} {outcome[control['outcome']]}{where}."
            f" {control['description']}"
        )
    return lines


def render_html(canonical: bytes) -> str:
    """A self-contained page (inline CSS, no scripts or external assets) with the signed JSON embedded.
    Version-1 documents keep the rendering they were exported with (so their HTML still verifies)."""
    doc = json.loads(canonical)
    if doc.get("format") == FORMAT_V1:
        return render_html_v1(canonical)
    inputs = doc["inputs"]
    verdict = str(doc["verdict"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Compliance report {html.escape(doc['deletion_request']['id'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Lethe compliance report</h1>",
        f'<p class="verdict">Verdict: <span class="{html.escape(verdict)}">{html.escape(verdict.upper())}'
        "</span></p>",
        f'<p class="reason">{html.escape(doc["verdict_reason"])}</p>',
        "<table>",
        _rows(summary_fields(doc)),
        "</table>",
        "<h2>Policy rules, with the controls</h2>",
        "<p>Each rule is applied to the unlearned model and, unchanged, to controls that forgot nothing. A"
        " pass needs the unlearned model to pass every rule and every control to fail at least one.</p>",
        "<ul>",
        *(f"<li>{html.escape(line)}</li>" for line in control_summary(doc)),
        "</ul>",
        "<table><tr><th>#</th><th>Rule</th><th>Model</th><th>Measured</th><th>Result</th></tr>",
    ]
    for row in rule_rows(doc):
        span = len(row["findings"])
        for position, (who, finding, passed) in enumerate(row["findings"]):
            head = (
                f'<td rowspan="{span}">{row["index"] + 1}</td><td rowspan="{span}">'
                f"{html.escape(row['statement'])}"
                f'<div class="meaning">{html.escape(row["meaning"])}</div></td>'
                if position == 0
                else ""
            )
            # A control failing a rule is what a separating policy needs, so control rows are not coloured
            # as good or bad: only the unlearned model's result is.
            label = _verdict_class(passed) if position == 0 else "control"
            parts.append(
                f"<tr>{head}<td>{html.escape(who)}</td><td>{html.escape(finding)}</td>"
                f'<td class="{label}">{html.escape(result_label(passed))}</td></tr>'
            )
    closing = "</table>"  # of the rules' table
    if doc.get("recovery"):  # version 3 with recovery audits only: older documents render as they did
        parts.append(f"{closing}<h2>Recovery audits: does the forgetting survive?</h2>")
        closing = ""
        parts += [f"<p>{html.escape(line)}</p>" for line in recovery_lines(doc)]
        parts.append(f'<p class="meaning">{html.escape(doc["recovery"]["survival_definition"])}</p>')
        for _, model in in_role_order(doc["recovery"]["models"], tuple(RECOVERY_MODELS)):
            table = recovery_table(model)
            parts.append(f"<h3>{html.escape(model['label'])}</h3><table>")
            parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
            for row_cells in table[1:]:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row_cells) + "</tr>")
            parts.append("</table>")
    parts.append(f"{closing}<h2>Inputs</h2><table><tr><th>Input</th><th>SHA-256</th><th>Details</th></tr>")
    for name in ("dataset", "model", "forget_set", "output_model"):
        item = inputs.get(name)
        if item is None:
            parts.append(f"<tr><td>{name}</td><td>—</td><td>—</td></tr>")
            continue
        details = {k: v for k, v in item.items() if k != "sha256"}
        parts.append(
            f"<tr><td>{name}</td><td><code>{_e(item['sha256'])}</code></td><td>{_e(details)}</td></tr>"
        )
    parts.append("</table>")
    for role, job in in_role_order(doc["jobs"], ROLES):
        parts.append(f"<h2>Job: {html.escape(role)}</h2><table>")
        parts.append(_rows(job_fields(job)))
        parts.append('</table><table><tr><th>Metric</th><th class="num">Value</th>')
        parts.append('<th class="num">CI low</th><th class="num">CI high</th></tr>')
        for metric, entry in job["metrics"].items():
            cells = "".join(
                f'<td class="num">{html.escape(metric_text(metric, entry[k]))}</td>'
                for k in ("value", "ci_low", "ci_high")
            )
            parts.append(f"<tr><td>{html.escape(metric)}</td>{cells}</tr>")
        parts.append("</table>")
    signature = doc.get("signature") or {}
    embedded = canonical.decode("utf-8").replace("<", "\\u003c")
    parts += [
        "<footer>",
        "<p>Numbers on this page are rounded; the exact values are in the signed JSON embedded below.</p>",
        f"<p>Signed with {html.escape(str(signature.get('algorithm')))} key "
        f"<code>{html.escape(str(signature.get('key_id')))}</code>. Check with "
        "<code>lethe verify-report FILE</code>.</p>",
        "</footer>",
        f'<script type="application/json" id="{DATA_ELEMENT_ID}">{embedded}</script>',
        "</body></html>",
        "",
    ]
    return "\n".join(parts)
