"""worst_case_search on real data (scikit-learn digits, the session's trained MLP).

Quick settings: the 'lethe' preset (normalised step on w, theta_lr 1e-3, batch size inherited from the
original's recipe when the request carries it, else 256) with fewer iterations and epochs. The presets' own
values are exercised by the tests that name them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.workers.engine.conftest import DIGITS_RECIPE
from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, load_weights
from workers.engine.datasets import ArrayDataset
from workers.engine.errors import InvalidInputError, JobCancelled
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.hooks import RecordingHooks
from workers.engine.masks import apply_masks, masks_to_device
from workers.engine.methods.base import DeviceSplits, MethodContext
from workers.engine.search.params import WorstCaseSearchParams
from workers.engine.search.worst_case import _Search, run, search_warnings, sign_gradients
from workers.engine.task_types import TaskType

SEARCH_PARAMS: dict[str, Any] = {"outer_iterations": 5, "lower_epochs": 2, "batch_size": 64}
REFERENCE_VALUES: dict[str, Any] = {
    "outer_iterations": 10,
    "lower_epochs": 10,
    "theta_lr": 0.01,
    "w_lr": 0.01,
    "w_step": "fixed",
    "gamma": 0.0,
    "upper_pass": "train",
    "batch_size": 256,
    "augment": True,
}
FT_PARAMS: dict[str, Any] = {"epochs": 5, "batch_size": 64, "lr": 0.01, "augment": False}
RANDOM_SETS = 4
SEARCH_METRICS = {
    "upper_objective_initial",
    "upper_objective_final",
    "selected_items",
    "selected_samples",
    "overlap_with_initial",
    "objective_initial_set",
    "objective_final_set",
}
STUCK_WARNING = "overlaps its random start"


def _request(digits: ArrayDataset, original: EngineResult, **overrides: Any) -> EngineRequest:
    fields: dict[str, Any] = {
        "kind": "worst_case_search",
        "method": "worst_case_search",
        "params": SEARCH_PARAMS,
        "seed": 0,
        "device": "cpu",
        "dataset": digits,
        "architecture": original.details["architecture"],
        "arch_config": original.details["arch_config"],
        "weights": original.weights,
    }
    fields.update(overrides)
    return EngineRequest(**fields)


def _mean_losses(digits: ArrayDataset, result: EngineResult, index_sets: list[np.ndarray]) -> list[float]:
    """Mean cross-entropy of ``result``'s model on each set of training indices (eval mode)."""
    assert result.weights is not None
    config = ARCHITECTURES.get(result.details["architecture"]).parse_config(result.details["arch_config"])
    model = build_model(result.details["architecture"], config)
    load_weights(model, result.weights, ARCHITECTURES.get("mlp").param_shapes(config))
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(
            model(torch.from_numpy(digits.x_train)), torch.from_numpy(digits.y_train), reduction="none"
        ).numpy()
    return [float(losses[indices].mean()) for indices in index_sets]


@pytest.fixture(scope="module")
def hardest(digits: ArrayDataset, original_digits_model: EngineResult) -> EngineResult:
    return execute(_request(digits, original_digits_model, original_recipe=DIGITS_RECIPE))


@pytest.fixture(scope="module")
def easiest(digits: ArrayDataset, original_digits_model: EngineResult) -> EngineResult:
    return execute(_request(digits, original_digits_model, params={**SEARCH_PARAMS, "mode": "easiest"}))


def test_result_shape(
    hardest: EngineResult, digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    m = round(0.1 * digits.n_train)
    assert hardest.weights is None and hardest.masks is None
    assert set(hardest.metrics) >= SEARCH_METRICS
    assert hardest.metrics["selected_items"] == hardest.metrics["selected_samples"] == m
    # The search leaves the input model untouched: its accuracy is the original's.
    assert hardest.metrics["train_accuracy"] == original_digits_model.metrics["train_accuracy"]
    assert hardest.metrics["test_accuracy"] == original_digits_model.metrics["test_accuracy"]

    indices, scores, history = (
        hardest.arrays[key] for key in ("forget_indices", "scores", "objective_history")
    )
    assert indices.dtype == np.int64 and indices.shape == (m,)
    assert np.all(np.diff(indices) > 0) and indices[0] >= 0 and indices[-1] < digits.n_train
    assert scores.dtype == np.float64 and scores.shape == (digits.n_train,)
    assert np.all((scores >= 0) & (scores <= 1)) and scores.sum() == pytest.approx(m, abs=1e-9)
    # The read-off is the top-m of the final scores.
    assert scores[indices].min() >= np.delete(scores, indices).max()
    assert history.dtype == np.float64 and history.shape == (SEARCH_PARAMS["outer_iterations"],)
    assert history[0] == hardest.metrics["upper_objective_initial"]

    details = hardest.details
    assert details["kind"] == "worst_case_search" and details["method"] == "worst_case_search"
    assert (details["granularity"], details["mode"], details["m"], details["items"]) == (
        "data",
        "hardest",
        m,
        digits.n_train,
    )
    # The resolved params: the preset's values where the request gave none.
    assert details["params"]["preset"] == "lethe" and details["params"]["w_step"] == "normalized"
    assert details["params"]["batch_size"] == 64 and details["params"]["w_lr"] == 0.2
    assert details["inherited"]["batch_size"] == {"value": 64, "source": "params"}
    assert details["inherited"]["augment"] == {"value": False, "source": "original"}
    assert details["warnings"] == []
    assert details["overlap_with_initial"] == hardest.metrics["overlap_with_initial"]
    assert details["objective_final_set"] == hardest.metrics["objective_final_set"]
    assert details["objective_history"] == history.tolist()
    assert [record["iteration"] for record in details["history"]] == [1, 2, 3, 4, 5]
    assert details["upper_objective_final_source"] == "selected_set"


def test_cost_accounting(hardest: EngineResult, easiest: EngineResult) -> None:
    iterations, epochs = SEARCH_PARAMS["outer_iterations"], SEARCH_PARAMS["lower_epochs"]
    cost = hardest.details["cost"]
    # T solves plus the final solve at the selected set, each K epochs, plus one forward pass per solve.
    assert cost["lower_epochs"] == (iterations + 1) * epochs
    assert cost["upper_passes"] == iterations + 1
    assert cost["epoch_equivalents"] == pytest.approx((iterations + 1) * (epochs + 1 / 3))
    assert cost["cost_vs_retrain"] == pytest.approx(cost["epoch_equivalents"] / 20)
    assert easiest.details["cost"]["cost_vs_retrain"] is None  # no original recipe in the request


def test_the_upper_objective_decreases(hardest: EngineResult) -> None:
    history = hardest.arrays["objective_history"]
    assert history[-1] < history[0]
    assert hardest.metrics["upper_objective_final"] < hardest.metrics["upper_objective_initial"]
    assert hardest.metrics["objective_final_set"] < hardest.metrics["objective_initial_set"]
    assert hardest.details["overlap_with_initial"] < 1.0  # the search did move away from the random set


def _random_start(seed: int, items: int, m: int) -> np.ndarray:
    """The search's random start for ``seed``, drawn the way the search draws it."""
    return np.sort(np.random.default_rng(seed).choice(items, size=m, replace=False))


def test_the_lethe_defaults_move_the_selection_on_digits(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    """Issue 15: with every default (the 'lethe' preset), the selection leaves its random start and the
    selected set's re-evaluated objective is far below the start's, without warnings."""
    result = execute(_request(digits, original_digits_model, params={}, original_recipe=DIGITS_RECIPE))
    details, metrics = result.details, result.metrics
    assert details["params"] == WorstCaseSearchParams().model_dump(mode="json")
    selected = result.arrays["forget_indices"]
    start = _random_start(0, digits.n_train, selected.size)
    overlap = np.intersect1d(selected, start).size / selected.size
    assert metrics["overlap_with_initial"] == details["overlap_with_initial"] == overlap
    assert overlap < 0.9
    assert metrics["objective_final_set"] < 0.5 * metrics["objective_initial_set"]
    assert details["warnings"] == []


def test_the_reference_preset_stays_at_its_random_start_and_says_so(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    """The reference code's defaults exactly (issue 15's finding): w moves by w_lr * loss ~ 1e-4 per
    iteration, the read-off is the random start, and its re-evaluated objective is exactly the start's,
    whatever the last iterate's (noisy) objective did."""
    result = execute(
        _request(digits, original_digits_model, params={"preset": "reference"}, original_recipe=DIGITS_RECIPE)
    )
    details, metrics = result.details, result.metrics
    resolved = details["params"]
    assert {name: resolved[name] for name in REFERENCE_VALUES} == REFERENCE_VALUES
    assert details["inherited"]["batch_size"] == {"value": 256, "source": "params"}
    selected = result.arrays["forget_indices"]
    assert np.array_equal(selected, _random_start(0, digits.n_train, selected.size))
    assert metrics["overlap_with_initial"] == 1.0
    # The same set under the same lower-level draws: the very same objective.
    assert metrics["objective_final_set"] == metrics["objective_initial_set"]
    assert metrics["objective_initial_set"] == result.arrays["objective_history"][0]
    assert any(STUCK_WARNING in warning and "normalized" in warning for warning in details["warnings"])
    assert any("is not lower than the random start" in warning for warning in details["warnings"])


def test_a_selection_that_barely_moves_is_flagged(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    params = {**SEARCH_PARAMS, "outer_iterations": 2, "lower_epochs": 1, "w_lr": 1e-6}
    result = execute(_request(digits, original_digits_model, params=params))
    assert result.metrics["overlap_with_initial"] > 0.9
    (warning, *_) = result.details["warnings"]
    assert STUCK_WARNING in warning and "raise w_lr" in warning


def test_easiest_mode_gives_the_opposite_ordering(
    hardest: EngineResult, easiest: EngineResult, digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    assert easiest.metrics["upper_objective_final"] > easiest.metrics["upper_objective_initial"]
    assert easiest.arrays["objective_history"][-1] > easiest.arrays["objective_history"][0]
    hard_set, easy_set = hardest.arrays["forget_indices"], easiest.arrays["forget_indices"]
    assert np.intersect1d(hard_set, easy_set).size < 0.5 * hard_set.size
    hard_loss, easy_loss = _mean_losses(digits, original_digits_model, [hard_set, easy_set])
    assert hard_loss < easy_loss


def test_the_worst_case_set_is_harder_to_unlearn_than_random_sets(
    hardest: EngineResult, digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    """The paper's effect: fine-tuning on the retain set leaves the model fitting the worst-case forget set
    better (lower loss) than random forget sets of the same size."""
    rng = np.random.default_rng(1)
    worst = hardest.arrays["forget_indices"]
    random_sets = [np.sort(rng.choice(digits.n_train, worst.size, replace=False)) for _ in range(RANDOM_SETS)]

    def unlearned_loss(forget: np.ndarray) -> float:
        result = execute(
            EngineRequest(
                kind="unlearn",
                method="ft",
                params=FT_PARAMS,
                seed=0,
                device="cpu",
                dataset=digits,
                architecture=original_digits_model.details["architecture"],
                arch_config=original_digits_model.details["arch_config"],
                weights=original_digits_model.weights,
                forget_indices=forget.astype(np.int64),
            )
        )
        return _mean_losses(digits, result, [forget])[0]

    worst_loss = unlearned_loss(worst)
    random_losses = [unlearned_loss(indices) for indices in random_sets]
    assert worst_loss < float(np.mean(random_losses))
    assert worst_loss < min(random_losses)


def test_class_wise_search_selects_whole_classes(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    params = {**SEARCH_PARAMS, "granularity": "class", "size": 2, "gamma": 1e-4}
    result = execute(_request(digits, original_digits_model, params=params))
    classes = result.details["selected_classes"]
    assert len(classes) == 2 and result.details["items"] == digits.num_classes
    expected = np.flatnonzero(np.isin(digits.y_train, classes))
    assert np.array_equal(result.arrays["forget_indices"], expected)
    assert result.metrics["selected_items"] == 2
    assert result.metrics["selected_samples"] == expected.size
    scores = result.arrays["scores"]
    assert scores.shape == (digits.num_classes,) and scores.sum() == pytest.approx(2.0, abs=1e-9)
    assert set(np.argsort(-scores, kind="stable")[:2]) == set(classes)


def test_determinism_with_a_fixed_seed(
    hardest: EngineResult, digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    again = execute(_request(digits, original_digits_model, original_recipe=DIGITS_RECIPE))
    for key, value in hardest.arrays.items():
        assert np.array_equal(again.arrays[key], value), key
    assert again.metrics == hardest.metrics
    other_seed = execute(_request(digits, original_digits_model, seed=1))
    assert not np.array_equal(other_seed.arrays["forget_indices"], hardest.arrays["forget_indices"])


def test_progress_reports_outer_iterations_and_drops_lower_checkpoints(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    hooks = RecordingHooks()
    execute(_request(digits, original_digits_model), hooks)
    outer = [call for call in hooks.progress_calls if call[0] == "search"]
    iterations = SEARCH_PARAMS["outer_iterations"]
    assert [(step, total) for _, step, total, _ in outer[:iterations]] == [
        (t, iterations) for t in range(1, 6)
    ]
    assert all(info["epoch_end"] and "upper_objective" in info for *_, info in outer[:iterations])
    assert outer[-1][3].get("final") is True and "upper_objective_final" in outer[-1][3]
    lower = [call for call in hooks.progress_calls if call[0] == "search.lower"]
    steps = [step for _, step, _, _ in lower]
    assert steps == sorted(steps) and steps[-1] == lower[-1][2]  # one global count, ending at its total
    assert not any(info.get("epoch_end") for *_, info in lower)  # only outer iterations are job events
    assert any(call[0] == "search.upper" for call in hooks.progress_calls)
    assert hooks.checkpoints == {}


@pytest.mark.parametrize("phase", ["search.lower", "search.upper", "search"])
def test_cancellation(digits: ArrayDataset, original_digits_model: EngineResult, phase: str) -> None:
    class CancelIn:
        def progress(self, current: str, step: int, total: int, info: dict[str, Any]) -> None:
            if current == phase and info.get("outer_iteration", info.get("iteration")) == 2:
                raise JobCancelled("cancel requested")

        def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
            raise AssertionError("the search forwards no checkpoints")

    with pytest.raises(JobCancelled):
        execute(_request(digits, original_digits_model), CancelIn())


@pytest.mark.parametrize(
    "overrides",
    [
        {"lower_level": "l1_sparse", "alpha": 1e-3},
        {"upper_pass": "train", "augment": False},
        {"init": "uniform", "evaluate_selection": False},
    ],
)
def test_variants_run(
    digits: ArrayDataset, original_digits_model: EngineResult, overrides: dict[str, Any]
) -> None:
    params = {**SEARCH_PARAMS, "outer_iterations": 2, "lower_epochs": 1, **overrides}
    result = execute(_request(digits, original_digits_model, params=params))
    m = round(0.1 * digits.n_train)
    assert result.arrays["forget_indices"].shape == (m,)
    assert result.arrays["scores"].sum() == pytest.approx(m, abs=1e-9)
    if not params.get("evaluate_selection", True):
        assert result.details["upper_objective_final_source"] == "last_iterate"
        assert result.metrics["upper_objective_final"] == result.arrays["objective_history"][-1]
        assert result.details["cost"]["lower_epochs"] == 2
        assert result.details["objective_final_set"] is None
    if params.get("init") == "uniform":
        # No random start: nothing to overlap with or to re-evaluate there.
        assert result.details["overlap_with_initial"] is None
        assert result.details["objective_initial_set"] is None
        assert "overlap_with_initial" not in result.metrics


def test_method_may_be_omitted(digits: ArrayDataset, original_digits_model: EngineResult) -> None:
    params = {**SEARCH_PARAMS, "outer_iterations": 1, "lower_epochs": 1}
    result = execute(_request(digits, original_digits_model, method=None, params=params))
    assert result.details["method"] == "worst_case_search"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"forget_indices": np.arange(5, dtype=np.int64)}, "takes no forget set"),
        ({"forget_class": 3}, "takes no forget set"),
        ({"weights": None}, "needs the input model's weights"),
        ({"method": "ft"}, "is a unlearn method"),
        ({"params": {"size": 10_000}}, "must be smaller"),
        ({"params": {"granularity": "class", "size": 10}}, "must be smaller"),
        ({"params": {"size": 3, "fraction": 0.1}}, "not both"),
        ({"params": {"w_lr": "nan"}}, "invalid parameters"),
    ],
)
def test_invalid_requests(
    digits: ArrayDataset, original_digits_model: EngineResult, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        execute(_request(digits, original_digits_model, **overrides))


def test_search_method_is_not_an_unlearning_method(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    with pytest.raises(InvalidInputError, match="is a search method"):
        execute(
            _request(
                digits,
                original_digits_model,
                kind="unlearn",
                forget_indices=np.arange(5, dtype=np.int64),
            )
        )


# ---------------------------------------------------------------------------------- inside the search
def _context(
    digits: ArrayDataset, original: EngineResult, params: dict[str, Any], hooks: Any, masks: Any = None
) -> MethodContext:
    config = ARCHITECTURES.get("mlp").parse_config(original.details["arch_config"])
    model = build_model("mlp", config)
    assert original.weights is not None
    load_weights(model, original.weights, ARCHITECTURES.get("mlp").param_shapes(config))
    empty = torch.zeros(0, dtype=torch.int64)
    splits = DeviceSplits(
        x_train=torch.from_numpy(digits.x_train),
        y_train=torch.from_numpy(digits.y_train),
        x_test=torch.from_numpy(digits.x_test),
        y_test=torch.from_numpy(digits.y_test),
        forget_indices=empty,
        retain_indices=torch.arange(digits.n_train),
    )
    device_masks = None if masks is None else masks_to_device(masks, model, torch.device("cpu"))
    apply_masks(model, device_masks)  # as execute does: a pruned input model is re-masked at load
    return MethodContext(
        model=model,
        params=WorstCaseSearchParams.model_validate(params),
        data=splits,
        seed=0,
        phase="worst_case_search",
        hooks=hooks,
        task=TaskType.classification,
        num_classes=digits.num_classes,
        masks=device_masks,
    )


def test_lower_level_is_sign_sgd_from_theta_o_under_masks(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    """At every upper pass, theta_u - theta_o is beta times an integer per entry (sign steps, restarted from
    theta_o each iteration, at most K * steps_per_epoch of them), and pruned weights stay at zero."""
    assert original_digits_model.weights is not None
    rng = np.random.default_rng(0)
    masks = {"layers.0.weight": (rng.random((128, 64)) < 0.5).astype(np.uint8)}
    theta_lr, steps = 1e-3, 2 * 23  # K = 2 epochs of 23 batches of 64
    original = {
        name: torch.from_numpy(value) * torch.from_numpy(masks.get(name, np.ones_like(value, np.uint8)))
        for name, value in original_digits_model.weights.items()
    }
    checked: list[int] = []

    class Inspect:
        model: torch.nn.Module

        def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
            if phase != "search.upper" or step != 1:
                return
            state = self.model.state_dict()
            weight = state["layers.0.weight"]
            assert torch.all(weight[torch.from_numpy(masks["layers.0.weight"]) == 0] == 0)
            for name, value in original.items():
                moves = (state[name].double() - value.double()) / theta_lr
                assert torch.allclose(moves, moves.round(), atol=1e-2), name
                assert moves.abs().max() <= steps + 1e-2
            checked.append(info["outer_iteration"])

        def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
            return None

    hooks = Inspect()
    params = {**SEARCH_PARAMS, "outer_iterations": 2, "theta_lr": theta_lr}
    context = _context(digits, original_digits_model, params, hooks, masks)
    hooks.model = context.model
    output = run(context)
    assert checked == [1, 2, 3]  # two iterations and the final solve
    # The search restores theta_o.
    for name, value in original.items():
        assert torch.equal(output.model.state_dict()[name], value)


def test_the_re_evaluated_objectives_are_those_of_the_read_off_sets(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    """objective_final_set is F of the selected set (not of the last iterate w^(T-1)), objective_initial_set
    F of the random start; both match an independent evaluation of each set by a fresh search."""
    params = {**SEARCH_PARAMS, "outer_iterations": 3, "lower_epochs": 1}
    output = run(_context(digits, original_digits_model, params, None))
    selected = output.arrays["forget_indices"]
    start = _random_start(0, digits.n_train, selected.size)
    assert 0 < np.intersect1d(selected, start).size < selected.size

    context = _context(digits, original_digits_model, params, None)
    assert isinstance(context.params, WorstCaseSearchParams)
    fresh = _Search(context, context.params)
    handles = sign_gradients(context.model)
    try:
        final_set, initial_set = fresh.set_objective(selected, 1), fresh.set_objective(start, 1)
    finally:
        for handle in handles:
            handle.remove()
    assert output.details["objective_final_set"] == output.metrics["upper_objective_final"] == final_set
    assert output.details["objective_initial_set"] == initial_set == output.details["objective_history"][0]
    assert final_set != output.details["objective_history"][-1]  # the last iterate's is another number
    assert final_set < initial_set


def test_search_warnings() -> None:
    lethe, easiest = WorstCaseSearchParams(), WorstCaseSearchParams(mode="easiest")
    assert search_warnings(lethe, 0.9, 10.0, 5.0) == []  # 90 % is not "more than 90 %"
    (stuck,) = search_warnings(lethe, 0.91, 10.0, 5.0)
    assert "overlaps its random start by 91%" in stuck and "raise w_lr" in stuck
    (stuck,) = search_warnings(WorstCaseSearchParams(preset="reference"), 0.95, 10.0, 5.0)
    assert "use w_step 'normalized'" in stuck
    (no_better,) = search_warnings(lethe, 0.5, 10.0, 10.0)
    assert "(10) is not lower than the random start's (10)" in no_better and "no harder" in no_better
    assert search_warnings(easiest, 0.5, 10.0, 12.0) == []
    assert "is not higher" in search_warnings(easiest, 0.5, 10.0, 8.0)[0]
    assert "no easier to unlearn" in search_warnings(easiest, 0.5, 10.0, 8.0)[0]
    assert search_warnings(lethe, None, None, 5.0) == []  # a uniform start has no set to compare with


def test_cancelled_search_restores_the_input_weights(
    digits: ArrayDataset, original_digits_model: EngineResult
) -> None:
    class CancelLate:
        def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
            if phase == "search.lower" and step == 30:
                raise JobCancelled("stop")

        def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
            return None

    context = _context(digits, original_digits_model, SEARCH_PARAMS, CancelLate())
    before = {name: value.clone() for name, value in context.model.state_dict().items()}
    with pytest.raises(JobCancelled):
        run(context)
    after = context.model.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    # The sign hooks were removed: a plain backward leaves raw (non-sign) gradients.
    context.model.zero_grad()
    context.model(torch.from_numpy(digits.x_train[:8])).sum().backward()
    gradient = next(context.model.parameters()).grad
    assert gradient is not None and not torch.all(torch.isin(gradient.abs(), torch.tensor([0.0, 1.0])))
