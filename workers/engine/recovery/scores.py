"""Recovery figures against the retrain control (pure numbers: torch-free).

Every figure reads one forget-set metric m (classification: forget accuracy in %; regression: forget MAE)
through its *knowledge* direction: k = m for accuracy, k = -m for an error, so that more k means the model
knows more about the forget set.

- **Gap** G = k(original) - k(retrain): what there is to recover. Below ``min_gap`` the scores are null.
- **Recovery** of a model under a transform or after k relearning steps: r = max(0, k(after) - k(before)).
- **Excess recovery** e = max(0, r(audited) - r(control)): recovery beyond what the retrain, which never saw
  the forget set, shows under the same transform or the same relearning.
- **Transform score** S(t) = 1 - min(1, e(t) / G): 1 = no recovery beyond the control, 0 = at least the
  whole original-retrain gap came back beyond it.
- **Quantization score** Q = min of S over int8, int4 and nf4; **pruning score** P = min over the
  sparsities (reported, not part of the robustness).
- **Relearning score** of a source = 1 - mean over the grid's k > 0 of min(1, e(k) / G) (the area between
  the two recovery curves, normalised: fast recovery costs more than late recovery); R = min over sources.
- **Robustness** = 2QR / (Q + R), the harmonic mean (0 when either is 0), as in OpenUnlearning's
  meta-evaluation (peers.md S1) but with both terms measured against the retrain control.
- **Steps to recover**: the first grid step at which k has come ``recover_fraction`` of the way from the
  retrain's k before relearning to the original's; null when not reached within the grid. The ratio
  audited / control generalises regression AIN (< 1: the forgetting comes back faster than knowledge is
  learned from scratch). When only the audited model recovers, the ratio is an upper bound (the control's
  count is taken as the grid's last step) and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Direction:
    """How a metric reads as knowledge (+1: higher = knows more; -1: lower = knows more)."""

    metric: str
    sign: float

    def knowledge(self, value: float) -> float:
        return self.sign * value


def recovery(direction: Direction, before: float, after: float) -> float:
    return max(0.0, direction.knowledge(after) - direction.knowledge(before))


def excess_recovery(
    direction: Direction, audited: tuple[float, float], control: tuple[float, float]
) -> float:
    """Recovery of the audited model (before, after) beyond the control's."""
    return max(0.0, recovery(direction, *audited) - recovery(direction, *control))


def gap(direction: Direction, original: float, retrain: float) -> float:
    return direction.knowledge(original) - direction.knowledge(retrain)


def score(excess: float, gap_value: float) -> float:
    return 1.0 - min(1.0, excess / gap_value)


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def curve_score(
    direction: Direction, audited: Sequence[float], control: Sequence[float], gap_value: float
) -> float:
    """1 - mean over the steps after the first of min(1, e(k) / G); curves start at step 0."""
    penalties = [
        min(1.0, excess_recovery(direction, (audited[0], a), (control[0], c)) / gap_value)
        for a, c in zip(audited[1:], control[1:], strict=True)
    ]
    return 1.0 - sum(penalties) / len(penalties) if penalties else 1.0


def steps_to_recover(
    direction: Direction, steps: Sequence[int], values: Sequence[float], threshold: float
) -> int | None:
    for step, value in zip(steps, values, strict=True):
        if direction.knowledge(value) >= direction.knowledge(threshold):
            return step
    return None


def recovery_threshold(original: float, retrain_before: float, fraction: float) -> float:
    return retrain_before + fraction * (original - retrain_before)


def steps_ratio(audited: int | None, control: int | None, last_step: int) -> dict[str, Any]:
    """audited / control steps to recover, with what kind of number it is."""
    if audited is None:
        return {"value": None, "bound": None, "reason": f"not recovered within {last_step} steps"}
    if control is None:
        # The control never got there: its count is at least the grid's end, so the ratio is at most this.
        return {"value": audited / max(last_step, 1), "bound": "upper", "reason": None}
    if control == 0:
        return {"value": None, "bound": None, "reason": "the control starts above the threshold"}
    return {"value": audited / control, "bound": None, "reason": None}
