"""Versioned policies: publishing a name again adds its next version; versions never change.

Also what a policy's rules mean: each rule in plain language, its evaluation for one model (the unlearned
one or a control) with rounded numbers and a margin, the verdict with controls, and the rules an untouched
model meets whatever it measures (``lint``)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.problems import NotFound
from app.core.security import Principal
from app.models import Policy, Tenant
from app.schemas.compliance import (
    METRIC_STAGES,
    PolicyCreate,
    PolicyOut,
    PolicyRule,
    PolicyWarning,
    metric_stage,
)
from app.services.compliance import audit
from app.services.compliance.signing import canonical_json


def policy_digest(name: str, version: int, rules: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical_json({"name": name, "version": version, "rules": rules})).hexdigest()


def create_policy(
    session: Session, principal: Principal, body: PolicyCreate, request_id: str | None
) -> Policy:
    # Number versions under the tenant row lock (the one the audit chain takes; SQLite's writers are
    # serialised by BEGIN IMMEDIATE anyway), so two publishers of one name cannot both take version n.
    session.execute(select(Tenant.id).where(Tenant.id == principal.tenant_id).with_for_update(key_share=True))
    latest = session.scalar(
        select(func.max(Policy.version)).where(
            Policy.tenant_id == principal.tenant_id, Policy.name == body.name
        )
    )
    version = (latest or 0) + 1
    rules = [rule.model_dump(mode="json", exclude_none=True) for rule in body.rules]
    policy = Policy(
        tenant_id=principal.tenant_id,
        name=body.name,
        version=version,
        description=body.description,
        rules=rules,
        sha256=policy_digest(body.name, version, rules),
    )
    session.add(policy)
    session.flush()
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="policy.create",
        resource_type="policy",
        resource_id=str(policy.id),
        request_id=request_id,
        details={"name": policy.name, "version": version, "sha256": policy.sha256},
    )
    return policy


def get_policy(session: Session, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> Policy:
    policy = session.get(Policy, policy_id)
    if policy is None or policy.tenant_id != tenant_id:
        raise NotFound(f"policy {policy_id} not found", code="policy-not-found")
    return policy


def find_policy(session: Session, tenant_id: uuid.UUID, name: str, version: int | None) -> Policy:
    query = select(Policy).where(Policy.tenant_id == tenant_id, Policy.name == name)
    if version is not None:
        query = query.where(Policy.version == version)
    policy = session.scalar(query.order_by(Policy.version.desc()).limit(1))
    if policy is None:
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"policy '{name}'{suffix} not found", code="policy-not-found")
    return policy


# ------------------------------------------------------------------------------------------ rules in words
@dataclass(frozen=True)
class MetricInfo:
    """How a metric reads in a report: a label, its unit, the decimals worth showing and, when known, the
    range every value lies in (what lets a bound be recognised as always satisfied)."""

    label: str
    unit: str = ""
    decimals: int = 3
    low: float | None = None
    high: float | None = None


def _percent(label: str) -> MetricInfo:
    return MetricInfo(label, unit=" points", decimals=2, low=0.0, high=100.0)


def _fraction(label: str) -> MetricInfo:
    return MetricInfo(label, decimals=3, low=0.0, high=1.0)


METRICS: dict[str, MetricInfo] = {
    "UA": _percent("Unlearning accuracy (UA, 100 minus the accuracy on the forget set)"),
    "forget_accuracy": _percent("Forget accuracy"),
    "RA": _percent("Retain accuracy (RA)"),
    "TA": _percent("Test accuracy (TA)"),
    "MIA-Efficacy": _percent("MIA-Efficacy (forget examples a membership attack takes for non-members)"),
    "mia_auc": _fraction("Membership-attack AUC on the forget set"),
    "mia_balanced_accuracy": _fraction("Membership-attack balanced accuracy"),
    "ulira_auc": _fraction("U-LiRA AUC (0.5: indistinguishable from retraining)"),
    "ulira_accuracy": _fraction("U-LiRA accuracy"),
    "ulira_tpr_at_1pct_fpr": _fraction("U-LiRA true-positive rate at 1 % false positives"),
    "kaggle_score": MetricInfo("Kaggle unlearning score", decimals=3),
    "kaggle_forgetting_quality": MetricInfo("Kaggle forgetting quality", decimals=3),
}
_STATISTIC = {
    "value": "",
    "ci_low": "lower end of the interval of ",
    "ci_high": "upper end of the interval of ",
}
MEANINGS = {
    "gap_retrain": (
        "The unlearned model must behave like a model retrained without the forgotten data (the gold"
        " standard) on this metric."
    ),
    "gap_original": "The unlearned model must stay this close to the original model on this metric.",
    "drop": "Utility: unlearning may cost at most this much of the original model's performance.",
    "bound": "The measured value must lie within a fixed bound.",
}


# Recovery-audit metrics carry their transform or relearning source and step in the name
# (workers.engine.recovery.job.summarise): one pattern per family, labelled from its parts.
RELEARN_SOURCES = {
    "forget_subset": "a subset of the forget set",
    "retain_neighbours": "retained samples nearest the forget set",
    "unrelated": "unrelated retained samples",
}
TRANSFORMS = {
    "int8": "int8 quantization",
    "int4": "4-bit round-to-nearest quantization",
    "nf4": "NF4-style 4-bit quantization",
}


def _transform_words(name: str) -> str:
    if name.startswith("prune_"):
        return f"magnitude pruning to {name.removeprefix('prune_').replace('_', '.')} % sparsity"
    return TRANSFORMS.get(name, name)


def _relearn_words(source: str, steps: str) -> str:
    return f"{steps} relearning steps on {RELEARN_SOURCES.get(source, source)}"


# Gaps are knowledge differences: forget accuracy points, or for regression minus the forget MAE, so neither
# a unit nor a range is claimed (the same rule name serves both tasks).
_GAP = " (above the retrained model's after the same {what}; accuracy points, regression: MAE)"
_NO_RECOVERY = " (1: no recovery beyond retraining)"
METRIC_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], MetricInfo]]] = [
    (
        re.compile(r"relearn\.(\w+)\.step_(\d+)\.gap_to_control"),
        lambda m: MetricInfo(
            f"Forget-set knowledge after {_relearn_words(m[1], m[2])}" + _GAP.format(what="steps"),
            decimals=2,
        ),
    ),
    (
        re.compile(r"transform\.(\w+)\.gap_to_control"),
        lambda m: MetricInfo(
            f"Forget-set knowledge after {_transform_words(m[1])}" + _GAP.format(what="transform"),
            decimals=2,
        ),
    ),
    (
        re.compile(r"transform\.(\w+)\.excess_recovery"),
        lambda m: MetricInfo(
            f"Forget-set knowledge regained under {_transform_words(m[1])} beyond the retrained model's"
            " (accuracy points, regression: MAE)",
            decimals=2,
        ),
    ),
    (
        re.compile(r"transform\.(\w+)\.score"),
        lambda m: _fraction(f"Recovery score under {_transform_words(m[1])}" + _NO_RECOVERY),
    ),
    (
        re.compile(r"relearn\.(\w+)\.score"),
        lambda m: _fraction(f"Relearning score on {RELEARN_SOURCES.get(m[1], m[1])}" + _NO_RECOVERY),
    ),
    (
        re.compile(r"relearn\.(\w+)\.steps_ratio"),
        lambda m: MetricInfo(
            f"Steps to recover on {RELEARN_SOURCES.get(m[1], m[1])}, unlearned ÷ retrained model", decimals=2
        ),
    ),
    (
        re.compile(r"recovery_(robustness|quantization_score|pruning_score|relearning_score)"),
        lambda m: _fraction(f"Recovery {m[1].replace('_score', '').replace('_', ' ')} score" + _NO_RECOVERY),
    ),
]


def metric_info(metric: str) -> MetricInfo:
    if metric in METRICS:
        return METRICS[metric]
    for pattern, info in METRIC_PATTERNS:
        match = pattern.fullmatch(metric)
        if match is not None:
            return info(match)
    return MetricInfo(metric, decimals=4)


def _fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _limit(value: float) -> str:
    """A threshold as the policy writes it (shortest round-trip form): 5 → "5.0", 0.25 → "0.25"."""
    return repr(float(value))


def rule_kind(rule: PolicyRule) -> str:
    if rule.max_abs_gap is not None:
        return "gap_retrain" if rule.relative_to == "retrain" else "gap_original"
    if rule.max_drop_from_original is not None:
        return "drop"
    return "bound"


def rule_statement(rule: PolicyRule) -> str:
    """The rule in plain language, e.g. "Forget accuracy within 5.0 points of the retrained model"."""
    info = metric_info(rule.metric)
    # Capitalise only our own words: a metric id ("custom_score") keeps its case.
    prefix = _STATISTIC[rule.use]
    subject = prefix[:1].upper() + prefix[1:] + info.label if prefix else info.label
    kind = rule_kind(rule)
    if kind in ("gap_retrain", "gap_original"):
        assert rule.max_abs_gap is not None
        reference = "the retrained model" if kind == "gap_retrain" else "the original model"
        return f"{subject} within {_limit(rule.max_abs_gap)}{info.unit} of {reference}"
    if kind == "drop":
        assert rule.max_drop_from_original is not None
        return f"{subject} at most {_limit(rule.max_drop_from_original)}{info.unit} below the original model"
    if rule.min is not None and rule.max is not None:
        return f"{subject} between {_limit(rule.min)} and {_limit(rule.max)}"
    if rule.max is not None:
        return f"{subject} at most {_limit(rule.max)}"
    assert rule.min is not None
    return f"{subject} at least {_limit(rule.min)}"


# ------------------------------------------------------------------------------------------ evaluation
Table = dict[str, dict[str, float | None]]  # metric -> {value, ci_low, ci_high}


def _statistic(table: Table | None, metric: str, use: str) -> float | None:
    entry = (table or {}).get(metric)
    return None if entry is None else entry.get(use)


def evaluate_rule(
    index: int,
    rule: PolicyRule,
    tables: dict[str, Table],
    subject: str = "unlearn",
    stage_subjects: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One rule's verdict for the model whose metrics are ``tables[subject]`` (those of its further stages,
    audit and recovery, in ``tables[stage_subjects[stage]]``, by default the stage's own name), with the exact
    numbers compared and a rounded, plain-language ``finding``. ``passed`` is None when a number the rule
    needs is missing."""
    stages = {stage: stage for stage in METRIC_STAGES} | dict(stage_subjects or {})
    stage = metric_stage(rule.metric)
    source = subject if stage is None else stages[stage]
    observed = _statistic(tables.get(source), rule.metric, rule.use)
    info = metric_info(rule.metric)
    kind = rule_kind(rule)
    verdict: dict[str, Any] = {
        "index": index,
        "rule": rule.model_dump(mode="json", exclude_none=True),
        "metric": rule.metric,
        "source": source,
        "statistic": rule.use,
        "observed": observed,
        "statement": rule_statement(rule),
        "meaning": MEANINGS[kind],
    }

    def number(value: float) -> str:
        return _fixed(value, info.decimals)

    def missing(what: str) -> dict[str, Any]:
        return {**verdict, "passed": None, "margin": None, "finding": f"not measured: {what} → no verdict"}

    if observed is None:
        return missing(f"{rule.metric} ({rule.use})" if rule.use != "value" else rule.metric)
    if kind in ("gap_retrain", "gap_original", "drop"):
        role = rule.relative_to if kind != "drop" else "original"
        assert role is not None
        limit = rule.max_abs_gap if kind != "drop" else rule.max_drop_from_original
        assert limit is not None
        reference = _statistic(tables.get(role), rule.metric, "value")
        verdict.update(reference_role=role, reference=reference, limit=limit)
        noun = "the retrained model" if role == "retrain" else "the original model"
        if reference is None:
            return missing(f"{rule.metric} of {noun}")
        if kind == "drop":
            computed = reference - observed
            quantity = "drop"
            change = (
                f"drop {number(computed)}{info.unit}"
                if computed >= 0
                else f"no drop ({number(-computed)}{info.unit} higher)"
            )
        else:
            computed = abs(observed - reference)
            quantity = "abs_gap"
            change = f"gap {number(computed)}{info.unit}"
        margin = limit - computed
        passed = computed <= limit
        finding = f"{number(observed)} vs {number(reference)} for {noun}, {change}"
    else:
        computed, quantity = observed, "value"
        margins = [m for m in (_minus(rule.max, observed), _minus(observed, rule.min)) if m is not None]
        margin = min(margins)
        passed = margin >= 0
        verdict["limit"] = {"max": rule.max, "min": rule.min}
        finding = number(observed)
    result = "pass" if passed else "fail"
    return {
        **verdict,
        "quantity": quantity,
        "computed": computed,
        "margin": margin,
        "passed": passed,
        "finding": f"{finding}, margin {number(margin)} → {result}",
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


Outcome = Literal["pass", "fail", "inconclusive"]


def rules_outcome(verdicts: list[dict[str, Any]]) -> Outcome:
    """pass | fail | inconclusive of one model under a policy, without controls."""
    if any(v["passed"] is False for v in verdicts):
        return "fail"
    if any(v["passed"] is None for v in verdicts):
        return "inconclusive"
    return "pass"


def _indices(verdicts: list[dict[str, Any]], passed: bool | None) -> str:
    """Rules numbered from 1, as the renderings show them."""
    return ", ".join(str(v["index"] + 1) for v in verdicts if v["passed"] is passed)


def verdict_with_controls(
    verdicts: list[dict[str, Any]], controls: dict[str, list[dict[str, Any]]], labels: dict[str, str]
) -> tuple[Outcome, str]:
    """(verdict, reason). Fail when the unlearned model fails a rule; pass only when it passes every rule and
    every control fails at least one, since a policy an untouched model passes cannot show forgetting;
    inconclusive otherwise (a number missing, a control passing or not shown to fail)."""
    own = rules_outcome(verdicts)
    if own == "fail":
        return "fail", f"The unlearned model fails rule {_indices(verdicts, False)}."
    if own == "inconclusive":
        return "inconclusive", f"Rule {_indices(verdicts, None)} could not be evaluated: a number is missing."
    if not controls:
        return "inconclusive", "No control was evaluated, so the policy was not shown to separate them."
    passing = [role for role, vs in controls.items() if rules_outcome(vs) == "pass"]
    if passing:
        names = " and ".join(labels.get(role, role) for role in passing)
        return "inconclusive", (
            f"The unlearned model passes every rule, but so does {names}: this policy does not separate a"
            " model that forgot nothing, so passing it shows nothing about forgetting."
        )
    undecided = [role for role, vs in controls.items() if rules_outcome(vs) != "fail"]
    if undecided:
        names = " and ".join(labels.get(role, role) for role in undecided)
        return "inconclusive", (
            f"The unlearned model passes every rule, but {names} could not be evaluated on the rules it"
            " might fail, so the policy was not shown to separate a model that forgot nothing."
        )
    caught = "; ".join(
        f"{labels.get(role, role)} fails rule {_indices(vs, False)}" for role, vs in controls.items()
    )
    return "pass", f"The unlearned model passes every rule and every control fails at least one ({caught})."


# ------------------------------------------------------------------------------------------ vacuity
def lint(rules: list[PolicyRule]) -> list[PolicyWarning]:
    """Rules the untouched original meets whatever it measures, and ``vacuous-policy`` when all are such."""
    warnings: list[PolicyWarning] = []
    flagged: set[int] = set()
    for index, rule in enumerate(rules):
        detail = _trivial(rule)
        if detail is not None:
            code, text = detail
            warnings.append(PolicyWarning(code=code, rule_index=index, detail=text))
            flagged.add(index)
    if rules and len(flagged) == len(rules):
        warnings.append(
            PolicyWarning(
                code="vacuous-policy",
                detail=(
                    "every rule holds for the untouched original model, so no request under this policy can"
                    " pass (each would be inconclusive): add a rule on forgetting that the original fails,"
                    " e.g. a gap to the retrained model on UA or MIA-Efficacy, or an audit bound"
                ),
            )
        )
    return warnings


def _trivial(rule: PolicyRule) -> tuple[Literal["holds-for-original", "always-satisfied"], str] | None:
    info = metric_info(rule.metric)
    kind = rule_kind(rule)
    if kind == "gap_original":
        return "holds-for-original", "the original's gap to itself is 0, within any tolerance"
    if kind == "drop" and (rule.max_drop_from_original or 0.0) >= 0:
        return "holds-for-original", (
            "the original drops 0 from itself: a utility rule, which cannot show forgetting on its own"
        )
    if info.low is None or info.high is None:
        return None
    if kind == "gap_retrain" and (rule.max_abs_gap or 0.0) >= info.high - info.low:
        return "always-satisfied", (
            f"{rule.metric} lies in [{_limit(info.low)}, {_limit(info.high)}]: no two values are more than"
            f" {_limit(info.high - info.low)} apart"
        )
    if (
        kind == "bound"
        and (rule.min is None or rule.min <= info.low)
        and (rule.max is None or rule.max >= info.high)
    ):
        return "always-satisfied", (
            f"{rule.metric} lies in [{_limit(info.low)}, {_limit(info.high)}], which the bounds cover"
        )
    return None


def policy_out(policy: Policy) -> PolicyOut:
    out = PolicyOut.model_validate(policy)
    out.warnings = lint([PolicyRule.model_validate(rule) for rule in policy.rules])
    return out
