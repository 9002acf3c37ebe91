"""Policy rules in plain language, their evaluation with rounded findings, the verdict with controls, and the
rules an untouched model meets whatever it measures (no database: the functions the report and the dry-run
share)."""

from __future__ import annotations

import pytest

from app.schemas.compliance import PolicyRule
from app.services.compliance.policies import (
    evaluate_rule,
    lint,
    rule_statement,
    rules_outcome,
    verdict_with_controls,
)


def table(**values: float) -> dict[str, dict[str, float | None]]:
    return {
        name.replace("_dash_", "-"): {"value": v, "ci_low": None, "ci_high": None}
        for name, v in values.items()
    }


def rule(**fields: object) -> PolicyRule:
    return PolicyRule.model_validate(fields)


def test_gap_rule_reads_in_words_with_rounded_numbers_and_margin() -> None:
    gap = rule(metric="forget_accuracy", relative_to="retrain", max_abs_gap=5)
    tables = {"unlearn": table(forget_accuracy=94.9861), "retrain": table(forget_accuracy=95.2646)}
    verdict = evaluate_rule(0, gap, tables)
    assert verdict["statement"] == "Forget accuracy within 5.0 points of the retrained model"
    assert verdict["finding"] == "94.99 vs 95.26 for the retrained model, gap 0.28 points, margin 4.72 → pass"
    assert verdict["passed"] is True and verdict["computed"] == pytest.approx(0.2785)
    assert verdict["margin"] == pytest.approx(4.7215) and verdict["meaning"].startswith("The unlearned model")


@pytest.mark.parametrize(
    ("fields", "tables", "statement", "finding", "passed"),
    [
        (
            {"metric": "TA", "max_drop_from_original": 2},
            {"unlearn": table(TA=89.123), "original": table(TA=91.5)},
            "Test accuracy (TA) at most 2.0 points below the original model",
            "89.12 vs 91.50 for the original model, drop 2.38 points, margin -0.38 → fail",
            False,
        ),
        (
            {"metric": "TA", "max_drop_from_original": 2},
            {"unlearn": table(TA=92.0), "original": table(TA=91.5)},
            "Test accuracy (TA) at most 2.0 points below the original model",
            "92.00 vs 91.50 for the original model, no drop (0.50 points higher), margin 2.50 → pass",
            True,
        ),
        (
            {"metric": "ulira_auc", "max": 0.6, "use": "ci_high"},
            {"audit": {"ulira_auc": {"value": 0.52, "ci_low": 0.47, "ci_high": 0.5812}}},
            "Upper end of the interval of U-LiRA AUC (0.5: indistinguishable from retraining) at most 0.6",
            "0.581, margin 0.019 → pass",
            True,
        ),
        (
            {"metric": "UA", "min": 1, "max": 50},
            {"unlearn": table(UA=60.0)},
            "Unlearning accuracy (UA, 100 minus the accuracy on the forget set) between 1.0 and 50.0",
            "60.00, margin -10.00 → fail",
            False,
        ),
        (
            {"metric": "custom_score", "min": 0.25},
            {"unlearn": table(custom_score=0.123456)},
            "custom_score at least 0.25",
            "0.1235, margin -0.1265 → fail",
            False,
        ),
        (
            {"metric": "MIA-Efficacy", "relative_to": "retrain", "max_abs_gap": 5},
            {"unlearn": table(MIA_dash_Efficacy=20.0)},
            "MIA-Efficacy (forget examples a membership attack takes for non-members) within 5.0 points of"
            " the retrained model",
            "not measured: MIA-Efficacy of the retrained model → no verdict",
            None,
        ),
    ],
)
def test_rule_kinds(fields: dict, tables: dict, statement: str, finding: str, passed: bool | None) -> None:
    verdict = evaluate_rule(3, rule(**fields), tables)
    assert (verdict["statement"], verdict["finding"], verdict["passed"]) == (statement, finding, passed)
    assert rule_statement(rule(**fields)) == statement


def test_a_control_is_judged_by_the_same_rules() -> None:
    rules = [
        rule(metric="UA", relative_to="retrain", max_abs_gap=10),
        rule(metric="TA", max_drop_from_original=2),
    ]
    tables = {
        "unlearn": table(UA=95.0, TA=90.5),
        "retrain": table(UA=100.0, TA=91.0),
        "original": table(UA=0.5, TA=91.5),
    }
    unlearned = [evaluate_rule(i, r, tables) for i, r in enumerate(rules)]
    control = [evaluate_rule(i, r, tables, subject="original") for i, r in enumerate(rules)]
    assert [v["passed"] for v in unlearned] == [True, True]
    assert [v["passed"] for v in control] == [False, True]  # the utility rule holds for it by construction
    assert (
        control[1]["finding"] == "91.50 vs 91.50 for the original model, drop 0.00 points, margin 2.00 → pass"
    )
    verdict, reason = verdict_with_controls(unlearned, {"original": control}, {"original": "the original"})
    assert verdict == "pass" and "the original fails rule 1" in reason


def test_verdict_is_inconclusive_when_a_control_passes_or_is_not_shown_to_fail() -> None:
    passing = [{"index": 0, "passed": True}, {"index": 1, "passed": True}]
    failing = [{"index": 0, "passed": False}, {"index": 1, "passed": True}]
    missing = [{"index": 0, "passed": None}, {"index": 1, "passed": True}]
    labels = {"original": "the original model", "identity": "the identity method"}
    verdict, reason = verdict_with_controls(passing, {"original": failing, "identity": passing}, labels)
    assert verdict == "inconclusive" and "so does the identity method" in reason
    assert "does not separate" in reason
    verdict, reason = verdict_with_controls(passing, {"original": missing}, labels)
    assert verdict == "inconclusive" and "could not be evaluated" in reason
    assert verdict_with_controls(passing, {}, labels)[0] == "inconclusive"
    assert verdict_with_controls(failing, {"original": failing}, labels) == (
        "fail",
        "The unlearned model fails rule 1.",
    )
    assert verdict_with_controls(missing, {"original": failing}, labels)[0] == "inconclusive"
    assert verdict_with_controls(passing, {"original": failing}, labels)[0] == "pass"
    assert rules_outcome(missing) == "inconclusive" and rules_outcome(failing) == "fail"


def test_lint_flags_rules_the_original_meets_whatever_it_measures() -> None:
    vacuous = [
        rule(metric="TA", max_drop_from_original=2),
        rule(metric="UA", min=0),
        rule(metric="MIA-Efficacy", relative_to="retrain", max_abs_gap=100),
        rule(metric="RA", relative_to="original", max_abs_gap=1),
        rule(metric="ulira_auc", max=1.0, use="ci_high"),
    ]
    warnings = lint(vacuous)
    assert [(w.code, w.rule_index) for w in warnings] == [
        ("holds-for-original", 0),
        ("always-satisfied", 1),
        ("always-satisfied", 2),
        ("holds-for-original", 3),
        ("always-satisfied", 4),
        ("vacuous-policy", None),
    ]
    separating = [
        rule(metric="TA", max_drop_from_original=2),  # a utility rule is fine beside a forgetting rule
        rule(metric="UA", min=50),
        rule(metric="MIA-Efficacy", relative_to="retrain", max_abs_gap=99.5),
        rule(metric="TA", max_drop_from_original=-1),  # demands an improvement: the original fails it
        rule(metric="unknown_metric", min=0),  # range unknown: nothing is claimed
    ]
    assert [(w.code, w.rule_index) for w in lint(separating)] == [("holds-for-original", 0)]
