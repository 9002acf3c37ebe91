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
     Jacobian in w, so the implicit gradient vanishes (optml.md §5.2).

* Read-off: the top-m items of the final continuous ``w^T`` in BOTH modes. Ties (entries clipped at 0 or
  1) go to the lower last-iteration loss for "hardest", the higher for "easiest", then the lower index. The
  reference's ``--mode re_optm`` also reads off the top-m of its ascended w. Its evaluation-time
  ``--reverse`` (the bottom-m of a descent run) is not offered.
* With ``evaluate_selection`` (default), one more lower-level solve runs at the binary indicator of the
  selected items. It gives ``upper_objective_final``, the objective of the SELECTED forget set, which
  compares directly with ``upper_objective_initial = F(w^0)``. ``F(w^0)`` comes from iteration 1's lower
  solve at ``w^0``, before any update.

What is recorded:

* ``objective_history[t-1] = F(w^(t-1))``, computed in iteration t from the solve at ``w^(t-1)``.
* The progress hook gets ``("search", t, T, {"upper_objective": F(w^(t-1)), "epoch_end": True, ...})`` after
  every outer iteration. Per-step progress goes under ``"search.lower"`` (one global step count over all
  solves) and ``"search.upper"`` (per batch). A hook may raise ``JobCancelled``.
* Pruning masks are enforced after every lower-level step.
* The model is restored to theta_o at the end. The search produces a forget set, not a model.
* Lower-level epoch checkpoints are not forwarded: the search cannot resume mid-way.

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
from workers.engine.search.params import WorstCaseSearchParams
from workers.engine.search.projection import project_capped_simplex
from workers.engine.tasks import TaskType
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

__all__ = ["SearchOutput", "read_off", "run"]

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
        self.recipe = TrainRecipe(
            epochs=params.lower_epochs,
            batch_size=params.batch_size,
            lr=params.theta_lr,
            momentum=0.0,
            weight_decay=0.0,
            schedule="constant",
            milestones=[],
            augment=params.augment,
        )
        self.solves = params.outer_iterations + (1 if params.evaluate_selection else 0)
        self.lower_steps_done = 0
        self.lower_steps_total = (
            self.solves * params.lower_epochs * len(batch_bounds(self.n_train, params.batch_size))
        )
        self.samples_per_lower_epoch = 0
        self.augment_applied = False

    # ----------------------------------------------------------------------------------------- lower level
    def lower_solve(self, w: np.ndarray, iteration: int) -> FitResult:
        """K epochs of sign-SGD from theta_o on the (1 - w)-weighted loss; leaves theta_u in the model."""
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
            seed=_derived_seed(self.context.seed, LOWER_STREAM, iteration),
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
        size = UPPER_BATCH_SIZE if self.params.upper_pass == "eval" else self.params.batch_size
        bounds = [(start, min(start + size, self.n_train)) for start in range(0, self.n_train, size)]
        if self.params.upper_pass == "train" and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
            # BatchNorm cannot normalise one sample in train mode: merge it into the previous batch.
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
        return bounds

    @torch.no_grad()
    def sample_losses(self, iteration: int) -> np.ndarray:
        """The per-sample loss of every training sample under the current model (float64)."""
        train_mode = self.params.upper_pass == "train"
        self.model.train(train_mode)
        on_cuda = self.device.type == "cuda"
        channels_last = on_cuda and self.x.dim() == IMAGE_TENSOR_DIMS
        if train_mode:
            augment = augmentation_applies(self.recipe, self.x)
            padding = min(self.x.shape[-2:]) // CROP_PADDING_DIVISOR if augment else None
            generator = torch.Generator().manual_seed(
                _derived_seed(self.context.seed, UPPER_STREAM, iteration)
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
            w = project_capped_simplex(w + direction * params.w_lr * gradient, self.m)
            top = read_off(w, self.m, losses, params.mode)
            record = {
                "iteration": iteration,
                "upper_objective": value,  # F(w^(t-1)): the w this iteration's lower solve used
                "lower_loss": solve.history[-1]["loss"],
                "mean_item_loss": float(losses.mean()),
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
            indicator = np.zeros(self.items)
            indicator[selected] = 1.0
            self.lower_solve(indicator, params.outer_iterations + 1)
            final_losses = self.item_losses(self.sample_losses(params.outer_iterations + 1))
            final_objective = self.objective(indicator, final_losses)
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
        metrics = {
            "upper_objective_initial": objectives[0],
            "upper_objective_final": final_objective,
            "selected_items": float(self.m),
            "selected_samples": float(forget_indices.size),
        }
        details = {
            "granularity": params.granularity,
            "mode": params.mode,
            "m": self.m,
            "items": self.items,
            "objective_history": objectives,
            "upper_objective_final_source": final_source,
            "overlap_with_initial": float(np.intersect1d(selected, initial_top).size / self.m),
            "selected_classes": selected.tolist() if self.class_wise else None,
            "augment_applied": self.augment_applied,
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


def _sign_gradients(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
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
    handles = _sign_gradients(context.model)
    try:
        return search.run()
    finally:
        for handle in handles:
            handle.remove()
        context.model.load_state_dict(search.theta_o)  # the input weights, whatever happened
