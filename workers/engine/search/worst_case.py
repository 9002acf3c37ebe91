"""``worst_case_search``: the bi-level worst-case forget-set search of Unlearn-WorstCase ("Challenging
Forgets", ECCV'24; optml.md §5), data-wise and class-wise.

The problem: ``min_{w in C} F(w) = sum_i w_i loss(theta_u(w); z_i) + gamma ||w||^2``. Here
``C = {w in [0,1]^N : sum w = m}`` and ``theta_u(w)`` is the lower-level unlearner trained on the loss
weighted by ``1 - w``. An item is a training sample (``granularity="data"``) or a class (``"class"``). The
algorithm, as the reference implements it:

* ``w^0`` is the indicator of a random m-subset drawn with the request's seed (or uniform ``m/N``).
* Each outer iteration ``t = 1..T`` runs these steps:

  1. Restart theta from theta_o (the input weights).
  2. Run K epochs of sign-SGD, ``theta <- theta - beta * sign(grad)`` (no momentum, no weight decay),
     over the whole training split. The minibatch loss is ``mean_B (1 - w_i) loss_i`` (data-wise) or
     ``mean_B (1 - w_{y_i}) loss_i`` (class-wise), plus ``alpha_t ||theta||_1`` for the l1-sparse lower
     level. The reference sums over the batch; under sign-SGD the scale makes no difference. The mean
     gives alpha the meaning it has in the l1_sparse method.
  3. Make one pass over the training split for the per-sample CE. By default this is eval mode without
     augmentation; ``upper_pass="train"`` is the reference's train-mode, augmented pass. Per class, the
     mean CE of the class's training samples is used.
  4. Record ``F(w^(t-1))``, take the partial gradient ``g = loss + 2 gamma w`` and step
     ``w^t = Proj_C(w^(t-1) -+ eta g)``: ``-`` for "hardest", ``+`` for "easiest". Sign-SGD has zero
     Jacobian in w, so the implicit gradient vanishes (optml.md §5.2). ``eta`` is ``w_lr`` (``w_step=
     "fixed"``, the reference) or ``w_lr / mean_i |g_i|`` (``"normalized"``, the 'lethe' preset): with the
     fixed step an item's w moves by w_lr times its loss, which for the reference's w_lr 0.01 and losses
     below 1 never adds up to the 1 an item needs to enter or leave the top-m in T = 10 iterations.

* Read-off: the top-m items of the final continuous ``w^T`` in BOTH modes. Ties (entries clipped at 0 or
  1) go to the lower last-iteration loss for "hardest", the higher for "easiest", then the lower index. The
  reference's ``--mode re_optm`` also reads off the top-m of its ascended w. Its evaluation-time
  ``--reverse`` (the bottom-m of a descent run) is not offered.
* With ``evaluate_selection`` (default), one more lower-level solve runs at the binary indicator of the
  selected items, with iteration 1's draws. It gives ``objective_final_set`` (also
  ``upper_objective_final``), the objective of the SELECTED forget set, not of the last iterate. With a
  random start, ``w^0`` is the start's indicator, so iteration 1's ``F(w^0)`` is ``objective_initial_set``
  (also ``upper_objective_initial``): the two read-off sets are evaluated by the same procedure with the
  same draws, and a selection that did not move re-evaluates to exactly the start's value. The last
  iterate's objective, in contrast, moves with the lower level's draws even when the set does not (issue
  15: "76.5 -> 60.1" at a 100 % overlap).
* ``overlap_with_initial``: the fraction of the selected items that were in the random start. ``warnings``
  says so when it exceeds 90 % (the selection is close to a random set), and when the selected set's
  re-evaluated objective is no better than the start's. A 'uniform' start is no set: both are then null.

What is recorded:

* ``objective_history[t-1] = F(w^(t-1))``, computed in iteration t from the solve at ``w^(t-1)``.
* The progress hook gets ``("search", t, T, {"upper_objective": F(w^(t-1)), "epoch_end": True, ...})`` after
  every outer iteration. Per-step progress goes under ``"search.lower"`` (one global step count over all
  solves) and ``"search.upper"`` (per batch). A hook may raise ``JobCancelled``.
* Pruning masks are enforced after every lower-level step.
* The model is restored to theta_o at the end. The search produces a forget set, not a model.
* Lower-level epoch checkpoints are not forwarded: the search cannot resume mid-way.

The lower level's batch size and augmentation are the original model's (its recipe) unless given, as the
unlearning methods' 'lethe' preset inherits them (``details.inherited`` records the values and sources).

Cost: ``(T + 1) K`` lower epochs (``T K`` without the final solve) plus ``T (+1)`` forward passes over
the training split. One forward pass is counted as 1/3 of a training epoch (forward + backward ~ 3
forwards). ``cost_vs_retrain`` divides these epoch-equivalents by the original recipe's epochs when the
request carries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks
from workers.engine.methods.base import MethodContext, MethodOutput
from workers.engine.methods.l1_sparse import l1_norm
from workers.engine.methods.params import TrainRecipe
from workers.engine.search.params import (
    FALLBACK_AUGMENT,
    REFERENCE_BATCH_SIZE,
    STUCK_OVERLAP,
    WorstCaseSearchParams,
)
from workers.engine.search.projection import project_capped_simplex
from workers.engine.task_types import TaskType
from workers.engine.training import (
    CROP_PADDING_DIVISOR,
    IMAGE_TENSOR_DIMS,
    FitResult,
    Segment,
    augmentation_applies,
    batch_bounds,
    plan_epoch,
    train_epochs,
)

__all__ = ["SearchOutput", "read_off", "run", "search_warnings", "sign_gradients"]

SEARCH_PHASE = "search"
LOWER_PHASE = "search.lower"
UPPER_PHASE = "search.upper"
UPPER_BATCH_SIZE = 1024
# One forward pass over the data costs about a third of a training epoch (backward ~ 2 forwards).
FORWARD_PASS_EPOCH_EQUIVALENT = 1.0 / 3.0
# Seed streams derived from the request's seed: lower-level solves and train-mode upper passes.
LOWER_STREAM, UPPER_STREAM = 0, 1

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PER_SAMPLE_LOSSES: dict[TaskType, PerSampleLoss] = {
    TaskType.classification: lambda outputs, labels: F.cross_entropy(outputs, labels, reduction="none"),
}


@dataclass
class SearchOutput(MethodOutput):
    """A method output that also carries flat metrics and numpy arrays for the engine's result."""

    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _derived_seed(seed: int, stream: int, iteration: int) -> int:
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, stream, iteration])
    return int(state.generate_state(1, dtype=np.uint32)[0])


class _ForwardedProgress:
    """Hooks for one lower-level solve. Progress goes to the search's hooks as a global step count, and
    epoch checkpoints are dropped (a search restarts from theta_o every iteration and cannot resume)."""

    def __init__(self, hooks: EngineHooks, offset: int, total: int, info: dict[str, Any]) -> None:
        self.hooks, self.offset, self.total, self.info = hooks, offset, total, info

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        forwarded = {**self.info, **info}
        # Lower epochs are not job events: only outer iterations are (the runner logs every epoch_end).
        if forwarded.pop("epoch_end", False):
            forwarded["lower_epoch_end"] = True
        self.hooks.progress(LOWER_PHASE, self.offset + step, self.total, forwarded)

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        return None


def read_off(w: np.ndarray, m: int, item_losses: np.ndarray, mode: str) -> np.ndarray:
    """The sorted indices of the top-m entries of ``w``. Ties go to the lower loss ("hardest") or the
    higher loss ("easiest"), then to the lower index."""
    tie_break = item_losses if mode == "hardest" else -item_losses
    order = np.lexsort((np.arange(w.shape[0]), tie_break, -w))
    return np.sort(order[:m]).astype(np.int64)


def _inherit(params: WorstCaseSearchParams, original: TrainRecipe | None) -> dict[str, dict[str, Any]]:
    """batch_size and augment of the lower level: given, else the original's, else the fallback; with the
    source of each, as the unlearning methods record theirs (details.inherited)."""
    fallbacks = {"batch_size": REFERENCE_BATCH_SIZE, "augment": FALLBACK_AUGMENT}
    resolved: dict[str, dict[str, Any]] = {}
    for name, fallback in fallbacks.items():
        given = getattr(params, name)
        if given is not None:
            resolved[name] = {"value": given, "source": "params"}
        elif original is not None:
            resolved[name] = {"value": getattr(original, name), "source": "original"}
        else:
            resolved[name] = {"value": fallback, "source": "fallback: the original model's recipe is unknown"}
    return resolved


class _Search:
    def __init__(self, context: MethodContext, params: WorstCaseSearchParams) -> None:
        self.context, self.params = context, params
        self.model = context.model
        self.x, self.y = context.data.x_train, context.data.y_train
        self.device = self.x.device
        self.n_train = int(self.x.shape[0])
        self.per_sample_loss = PER_SAMPLE_LOSSES[context.task]
        self.class_wise = params.granularity == "class"
        if self.class_wise:
            self.class_counts = torch.bincount(self.y, minlength=context.num_classes).to(torch.float64)
            if bool((self.class_counts == 0).any()):
                missing = torch.nonzero(self.class_counts == 0).flatten().tolist()
                raise InvalidInputError(
                    f"class-wise search needs every class in the training split; missing: {missing[:10]}"
                )
        self.items = context.num_classes if self.class_wise else self.n_train
        try:
            self.m = params.item_count(self.items)
        except ValueError as error:
            raise InvalidInputError(f"worst_case_search: {error}") from None
        self.theta_o = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        self.inherited = _inherit(params, context.original_recipe)
        self.recipe = TrainRecipe(
            epochs=params.lower_epochs,
            batch_size=self.inherited["batch_size"]["value"],
            lr=params.theta_lr,
            momentum=0.0,
            weight_decay=0.0,
            schedule="constant",
            milestones=[],
            augment=self.inherited["augment"]["value"],
        )
        self.solves = params.outer_iterations + (1 if params.evaluate_selection else 0)
        self.lower_steps_done = 0
        self.lower_steps_total = (
            self.solves * params.lower_epochs * len(batch_bounds(self.n_train, self.recipe.batch_size))
        )
        self.samples_per_lower_epoch = 0
        self.augment_applied = False

    # ----------------------------------------------------------------------------------------- lower level
    def lower_solve(self, w: np.ndarray, iteration: int, seed_iteration: int | None = None) -> FitResult:
        """K epochs of sign-SGD from theta_o on the (1 - w)-weighted loss; leaves theta_u in the model.
        ``seed_iteration`` (default ``iteration``) picks the batch order and augmentation draws."""
        self.model.load_state_dict(self.theta_o)
        weights = torch.as_tensor(1.0 - w, dtype=torch.float32, device=self.device)
        sample_weights = weights[self.y] if self.class_wise else weights
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        labels, per_sample_loss, params = self.y, self.per_sample_loss, self.params

        def weighted_loss(outputs: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
            # The segment's "labels" are sample indices, so the loss can look up each sample's weight.
            loss = (sample_weights[indices] * per_sample_loss(outputs, labels[indices])).mean()
            alpha = params.l1_alpha(epoch)
            return loss if alpha == 0.0 else loss + alpha * l1_norm(parameters)

        hooks = self.context.hooks
        forwarded = None
        if hooks is not None:
            forwarded = _ForwardedProgress(
                hooks, self.lower_steps_done, self.lower_steps_total, {"outer_iteration": iteration}
            )
        indices = torch.arange(self.n_train, device=self.device)
        result = train_epochs(
            self.model,
            [Segment(self.x, indices, loss=weighted_loss, name="train")],
            self.recipe,
            seed=_derived_seed(
                self.context.seed, LOWER_STREAM, iteration if seed_iteration is None else seed_iteration
            ),
            phase=LOWER_PHASE,
            hooks=forwarded,
            task=self.context.task,
            after_step=lambda _optimizer: self.context.enforce_constraints(),
        )
        self.lower_steps_done += self.recipe.epochs * result.steps_per_epoch
        self.samples_per_lower_epoch = result.samples_per_epoch
        self.augment_applied = result.augment_applied
        return result

    # ----------------------------------------------------------------------------------------- upper level
    def _upper_batches(self) -> list[tuple[int, int]]:
        size = UPPER_BATCH_SIZE if self.params.upper_pass == "eval" else self.recipe.batch_size
        bounds = [(start, min(start + size, self.n_train)) for start in range(0, self.n_train, size)]
        if self.params.upper_pass == "train" and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
            # BatchNorm cannot normalise one sample in train mode: merge it into the previous batch.
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
        return bounds

    @torch.no_grad()
    def sample_losses(self, iteration: int, seed_iteration: int | None = None) -> np.ndarray:
        """The per-sample loss of every training sample under the current model (float64).
        ``seed_iteration`` (default ``iteration``) picks the train-mode pass's order and augmentation."""
        train_mode = self.params.upper_pass == "train"
        self.model.train(train_mode)
        on_cuda = self.device.type == "cuda"
        channels_last = on_cuda and self.x.dim() == IMAGE_TENSOR_DIMS
        if train_mode:
            augment = augmentation_applies(self.recipe, self.x)
            padding = min(self.x.shape[-2:]) // CROP_PADDING_DIVISOR if augment else None
            generator = torch.Generator().manual_seed(
                _derived_seed(
                    self.context.seed, UPPER_STREAM, iteration if seed_iteration is None else seed_iteration
                )
            )
            plan = plan_epoch(self.n_train, padding, generator, self.device)
            order, augmentation = plan.order, plan.augmentation
        else:
            order, augmentation = torch.arange(self.n_train, device=self.device), None
        losses = torch.empty(self.n_train, dtype=torch.float32, device=self.device)
        bounds = self._upper_batches()
        hooks = self.context.hooks
        for batch_number, (start, end) in enumerate(bounds, start=1):
            indices = order[start:end]
            batch = self.x[indices]
            if augmentation is not None:
                batch = augmentation.apply(batch, start, end)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            # Train mode follows the training loop (bf16 autocast on CUDA); eval mode stays fp32 as the
            # engine's evaluation, for precise losses.
            with torch.autocast(
                device_type=self.device.type, dtype=torch.bfloat16, enabled=on_cuda and train_mode
            ):
                outputs = self.model(batch)
            losses[indices] = self.per_sample_loss(outputs.float(), self.y[indices])
            if hooks is not None:
                hooks.progress(UPPER_PHASE, batch_number, len(bounds), {"outer_iteration": iteration})
        values = losses.double().cpu().numpy()
        if not np.all(np.isfinite(values)):
            raise InvalidInputError(
                "worst_case_search: the lower-level model produced non-finite losses; lower theta_lr"
            )
        return values

    def item_losses(self, sample_losses: np.ndarray) -> np.ndarray:
        """Per item: the sample's loss, or the mean loss of the class's training samples."""
        if not self.class_wise:
            return sample_losses
        labels = self.y.cpu().numpy()
        sums = np.bincount(labels, weights=sample_losses, minlength=self.items)
        return sums / self.class_counts.cpu().numpy()

    def objective(self, w: np.ndarray, losses: np.ndarray) -> float:
        return float(w @ losses + self.params.gamma * (w @ w))

    def set_objective(self, items: np.ndarray, iteration: int) -> float:
        """F at the indicator of ``items``: a lower-level solve there, then the upper pass. It uses the draws
        of iteration 1's solve at w^0 (batch order, augmentation, train-mode upper pass), so that two sets'
        objectives differ by the sets alone, not by the draws: a read-off that is the random start
        re-evaluates to exactly F(w^0). ``iteration`` only labels the progress reports."""
        indicator = np.zeros(self.items)
        indicator[items] = 1.0
        self.lower_solve(indicator, iteration, seed_iteration=1)
        return self.objective(indicator, self.item_losses(self.sample_losses(iteration, seed_iteration=1)))

    def step_size(self, gradient: np.ndarray) -> float:
        """eta for this iteration: w_lr, or w_lr / mean |g| for the 'normalized' step (a step-size rule:
        the objective is unchanged, only how far one iteration goes along its gradient)."""
        if self.params.w_step == "fixed":
            return self.params.w_lr
        scale = float(np.abs(gradient).mean())
        # An all-zero gradient moves nothing whatever the step; avoid dividing by zero.
        return self.params.w_lr / scale if scale > 0.0 else self.params.w_lr

    # ------------------------------------------------------------------------------------------ the search
    def initial_w(self, rng: np.random.Generator) -> np.ndarray:
        if self.params.init == "uniform":
            return np.full(self.items, self.m / self.items)
        w = np.zeros(self.items)
        w[rng.choice(self.items, size=self.m, replace=False)] = 1.0
        return w

    def run(self) -> SearchOutput:
        params, hooks = self.params, self.context.hooks
        rng = np.random.default_rng(self.context.seed)
        w = self.initial_w(rng)
        initial_w = w.copy()
        initial_top = read_off(initial_w, self.m, np.zeros(self.items), params.mode)
        direction = -1.0 if params.mode == "hardest" else 1.0
        objectives: list[float] = []
        history: list[dict[str, float]] = []
        losses = np.zeros(self.items)
        for iteration in range(1, params.outer_iterations + 1):
            started = time.perf_counter()
            solve = self.lower_solve(w, iteration)
            losses = self.item_losses(self.sample_losses(iteration))
            value = self.objective(w, losses)
            objectives.append(value)
            gradient = losses + 2.0 * params.gamma * w
            step = self.step_size(gradient)
            w = project_capped_simplex(w + direction * step * gradient, self.m)
            top = read_off(w, self.m, losses, params.mode)
            record = {
                "iteration": iteration,
                "upper_objective": value,  # F(w^(t-1)): the w this iteration's lower solve used
                "lower_loss": solve.history[-1]["loss"],
                "mean_item_loss": float(losses.mean()),
                "w_step_size": step,
                "w_min": float(w.min()),
                "w_max": float(w.max()),
                "w_fractional": int(np.count_nonzero((w > 0.0) & (w < 1.0))),
                "overlap_with_initial": float(np.intersect1d(top, initial_top).size / self.m),
                "seconds": time.perf_counter() - started,
            }
            history.append(record)
            if hooks is not None:
                hooks.progress(
                    SEARCH_PHASE, iteration, params.outer_iterations, {**record, "epoch_end": True}
                )
        selected = read_off(w, self.m, losses, params.mode)
        final_objective = objectives[-1]
        final_source = "last_iterate"
        if params.evaluate_selection:
            final_objective = self.set_objective(selected, params.outer_iterations + 1)
            final_source = "selected_set"
            if hooks is not None:
                hooks.progress(
                    SEARCH_PHASE,
                    params.outer_iterations,
                    params.outer_iterations,
                    {"upper_objective_final": final_objective, "final": True, "epoch_end": True},
                )
        self.model.load_state_dict(self.theta_o)  # the search leaves the input model unchanged
        self.model.eval()
        return self.output(w, selected, initial_top, objectives, history, final_objective, final_source)

    def output(
        self,
        w: np.ndarray,
        selected: np.ndarray,
        initial_top: np.ndarray,
        objectives: list[float],
        history: list[dict[str, float]],
        final_objective: float,
        final_source: str,
    ) -> SearchOutput:
        params = self.params
        if self.class_wise:
            labels = self.y.cpu().numpy()
            forget_indices = np.flatnonzero(np.isin(labels, selected)).astype(np.int64)
        else:
            forget_indices = selected
        lower_epochs = self.solves * params.lower_epochs
        upper_passes = self.solves
        epoch_equivalents = lower_epochs + upper_passes * FORWARD_PASS_EPOCH_EQUIVALENT
        original = self.context.original_recipe
        cost = {
            "lower_epochs": lower_epochs,
            "lower_steps": self.lower_steps_done,
            "upper_passes": upper_passes,
            "sample_forward_passes": lower_epochs * self.samples_per_lower_epoch
            + upper_passes * self.n_train,
            "forward_pass_epoch_equivalent": FORWARD_PASS_EPOCH_EQUIVALENT,
            "epoch_equivalents": epoch_equivalents,
            "original_recipe_epochs": original.epochs if original is not None else None,
            "cost_vs_retrain": epoch_equivalents / original.epochs if original is not None else None,
        }
        # A 'uniform' start is no set: there is nothing to overlap or to re-evaluate at the start.
        random_start = params.init == "random"
        overlap = float(np.intersect1d(selected, initial_top).size / self.m) if random_start else None
        # w^0 is the random set's indicator, so F(w^0) (iteration 1's solve) is that set's objective.
        initial_set = objectives[0] if random_start else None
        final_set = final_objective if final_source == "selected_set" else None
        metrics = {
            "upper_objective_initial": objectives[0],
            "upper_objective_final": final_objective,
            "selected_items": float(self.m),
            "selected_samples": float(forget_indices.size),
        }
        for name, value in (
            ("overlap_with_initial", overlap),
            ("objective_initial_set", initial_set),
            ("objective_final_set", final_set),
        ):
            if value is not None:
                metrics[name] = value
        details = {
            "granularity": params.granularity,
            "mode": params.mode,
            "m": self.m,
            "items": self.items,
            "objective_history": objectives,
            "upper_objective_final_source": final_source,
            "overlap_with_initial": overlap,
            "objective_initial_set": initial_set,
            "objective_final_set": final_set,
            "warnings": search_warnings(params, overlap, initial_set, final_set),
            "selected_classes": selected.tolist() if self.class_wise else None,
            "augment_applied": self.augment_applied,
            "inherited": self.inherited,
            "cost": cost,
        }
        return SearchOutput(
            model=self.model,
            resolved_params=params.model_dump(mode="json"),
            history=history,
            details=details,
            metrics=metrics,
            arrays={
                "forget_indices": forget_indices,
                "scores": w.astype(np.float64),
                "objective_history": np.asarray(objectives, dtype=np.float64),
            },
        )


def search_warnings(
    params: WorstCaseSearchParams,
    overlap: float | None,
    initial_set: float | None,
    final_set: float | None,
) -> list[str]:
    """What the result must say when the search did not do its job: the selection stayed at its random
    start, or the selected set is no worse (by the search's own re-evaluated objective) than that start."""
    warnings: list[str] = []
    if overlap is not None and overlap > STUCK_OVERLAP:
        hint = (
            "use w_step 'normalized' (the 'lethe' preset) or a larger w_lr"
            if params.w_step == "fixed"
            else "raise w_lr or outer_iterations"
        )
        warnings.append(
            f"the selected set overlaps its random start by {overlap:.0%} (more than {STUCK_OVERLAP:.0%}): w "
            f"barely moved, so this forget set is close to a random one, not a searched one; {hint}"
        )
    if initial_set is not None and final_set is not None:
        better = final_set < initial_set if params.mode == "hardest" else final_set > initial_set
        if not better:
            wanted, claim = ("lower", "harder") if params.mode == "hardest" else ("higher", "easier")
            warnings.append(
                f"the selected set's re-evaluated upper objective ({final_set:.4g}) is not {wanted} than the "
                f"random start's ({initial_set:.4g}): by the search's own measure it is no {claim} to "
                "unlearn than a random set"
            )
    return warnings


def sign_gradients(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Replace every accumulated gradient by its sign: SGD (no momentum/decay) then makes sign-SGD steps."""

    def to_sign(parameter: torch.Tensor) -> None:
        assert parameter.grad is not None
        parameter.grad.sign_()

    return [
        parameter.register_post_accumulate_grad_hook(to_sign)
        for parameter in model.parameters()
        if parameter.requires_grad
    ]


def run(context: MethodContext) -> SearchOutput:
    params = context.params
    assert isinstance(params, WorstCaseSearchParams)
    if context.task not in PER_SAMPLE_LOSSES:
        raise InvalidInputError(f"worst_case_search does not support {context.task.value} tasks")
    search = _Search(context, params)
    handles = sign_gradients(context.model)
    try:
        return search.run()
    finally:
        for handle in handles:
            handle.remove()
        context.model.load_state_dict(search.theta_o)  # the input weights, whatever happened
