"""Flags for degenerate unlearning results: collapse of utility, over-forgetting, a single-class model.

Classification rows use RA / TA / UA / MIA-Efficacy (percent); regression rows the MAEs (retain and test
error rising over the original's, forget error overshooting the retrain's, both relative); generative rows
the retained classes' conditional accuracy (a fraction) falling below the teacher's."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Guardrails(BaseModel):
    """Margins, in percentage points, beyond which an unlearning result is flagged as degenerate."""

    model_config = ConfigDict(extra="forbid")

    max_ra_drop: float = Field(5.0, ge=0, le=100, allow_inf_nan=False, description="RA below the original's.")
    max_ta_drop: float = Field(5.0, ge=0, le=100, allow_inf_nan=False, description="TA below the original's.")
    max_ua_overshoot: float = Field(
        10.0, ge=0, le=100, allow_inf_nan=False, description="UA above the retrain's (over-forgetting)."
    )
    max_mia_overshoot: float = Field(
        10.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="MIA-Efficacy above the retrain's (over-forgetting).",
    )
    max_mae_rise_percent: float = Field(
        20.0,
        ge=0,
        le=1e4,
        allow_inf_nan=False,
        description="Regression: retain or test MAE above the original's by more than this percent.",
    )
    max_forget_mae_overshoot_percent: float = Field(
        50.0,
        ge=0,
        le=1e4,
        allow_inf_nan=False,
        description="Regression: forget MAE above the retrain's by more than this percent (over-forgetting).",
    )
    max_retain_accuracy_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Generative: retained classes' conditional accuracy (a fraction) below the teacher's.",
    )
    single_class_fraction: float = Field(
        90.0,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="Percent of test predictions in one class at which the model counts as predicting "
        "one class.",
    )


def guardrail_flags(
    metrics: dict[str, float],
    original: dict[str, float] | None,
    retrain: dict[str, float] | None,
    rails: Guardrails,
) -> list[str]:
    """The names of the rules a result breaks (empty when it looks sane)."""
    flags: list[str] = []
    if original:
        if "RA" in metrics and "RA" in original and metrics["RA"] < original["RA"] - rails.max_ra_drop:
            flags.append("ra-collapse")
        if "TA" in metrics and "TA" in original and metrics["TA"] < original["TA"] - rails.max_ta_drop:
            flags.append("ta-collapse")
    if retrain:
        if "UA" in metrics and "UA" in retrain and metrics["UA"] > retrain["UA"] + rails.max_ua_overshoot:
            flags.append("ua-overshoot")
        mia = "MIA-Efficacy"
        if mia in metrics and mia in retrain and metrics[mia] > retrain[mia] + rails.max_mia_overshoot:
            flags.append("mia-overshoot")
    if metrics.get("max_class_fraction", 0.0) >= rails.single_class_fraction:
        flags.append("single-class")
    flags += _regression_flags(metrics, original, retrain, rails)
    if original and _above(metrics, original, "retain_accuracy", rails.max_retain_accuracy_drop):
        flags.append("retain-accuracy-collapse")
    return flags


def _above(low: dict[str, float], high: dict[str, float], key: str, margin: float) -> bool:
    """Whether ``high[key]`` exceeds ``low[key]`` by more than ``margin`` (both present)."""
    return key in low and key in high and high[key] > low[key] + margin


def _regression_flags(
    metrics: dict[str, float],
    original: dict[str, float] | None,
    retrain: dict[str, float] | None,
    rails: Guardrails,
) -> list[str]:
    flags: list[str] = []
    rise = rails.max_mae_rise_percent / 100.0
    for key, flag in (("retain_mae", "retain-mae-rise"), ("test_mae", "test-mae-rise")):
        if original and key in original and _above(original, metrics, key, rise * original[key]):
            flags.append(flag)
    overshoot = rails.max_forget_mae_overshoot_percent / 100.0
    if (
        retrain
        and "forget_mae" in retrain
        and _above(retrain, metrics, "forget_mae", overshoot * retrain["forget_mae"])
    ):
        flags.append("forget-mae-overshoot")
    return flags
