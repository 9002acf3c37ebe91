"""Flags for degenerate unlearning results: collapse of utility, over-forgetting, a single-class model."""

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
    return flags
