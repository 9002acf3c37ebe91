"""``iu``: influence unlearning, as Unlearn-Sparse ``wfisher`` computes it (optml.md §2.6).

One shot, no optimiser; the model is in eval mode throughout. With the cross-entropy loss l:

1. G_f = sum_{D_f} grad l_i and G_r = sum_{D_r} grad l_i over **all** parameters (flattened);
2. v = (G_f - (n_f / n_r) G_r) / n with n = n_f + n_r;
3. k ~ F^-1 v, then theta <- theta + alpha * k.

With ``step='line_search'`` (the 'lethe' preset) alpha is the largest of alpha_max * 2^-j whose retain-subset
accuracy stays within a margin of the original's (the trials are in ``details.line_search``; the step used is
``params.alpha``, the start ``params.alpha_max``); ``step='fixed'`` (the reference) applies alpha as given.

``hvp='reference'`` computes k with the reference's "WoodFisher" loop over the first N + 2 retain samples at
batch size 1: k = v, o = g_1, then for every later sample gradient g, t = o.g, k -= (k.g / (N + t)) o,
o -= (t / (N + t)) o. Because o is only ever rescaled it stays parallel to the first sample's gradient g_1,
so the "inverse Fisher" is a rank-1 correction along g_1: k = v - c g_1 for a scalar c, and IU is in effect
one scaled step of ascent on the forget loss and descent on the retain loss. Lethe reproduces this
degenerate product on purpose (it is what published IU numbers mean).

``hvp='cg'`` / ``'lissa'`` (Lethe additions) solve (F + lambda I) k = v with a real curvature F of the mean
retain loss, applied as matrix-vector products through forward-mode (jvp) and reverse-mode (vjp) autodiff,
never materialised: the empirical Fisher (1/m) sum_i g_i g_i^T (``curvature='fisher'``; J_l^T J_l v with
J_l the Jacobian of the per-sample losses) or the Gauss-Newton matrix (1/m) J^T H_softmax J (``'ggn'``).
Near a minimum of the full loss G_f ~ -G_r, so v ~ -G_r / n_r (minus the mean retain gradient) and alpha = 1
is the Newton step of the influence function. Defaults and deviations: see ``IUParams``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vjp

from workers.engine.errors import InvalidInputError
from workers.engine.methods.base import MethodContext, MethodOutput
from workers.engine.methods.distillation import StepProgress
from workers.engine.methods.params_distillation import IU_NEWTON_ALPHA, IU_REFERENCE_ALPHA, IUParams

LISSA_SEED_OFFSET = 3_000_017
LINE_SEARCH_SEED_OFFSET = 4_000_037
POWER_ITERATIONS = 20
# Auto LiSSA scale = this margin x the power-iteration estimate of the largest eigenvalue of F + lambda I
# (the estimate is from below, and minibatch curvatures fluctuate around F).
LISSA_SCALE_MARGIN = 1.5
Vector = torch.Tensor  # a flat float32 vector over all parameters, in ``model.parameters()`` order


def _parameters(model: nn.Module) -> list[torch.Tensor]:
    return list(model.parameters())


def flatten(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> Vector:
    return torch.cat([tensor.reshape(-1) for tensor in tensors])


def unflatten(vector: Vector, like: list[torch.Tensor]) -> list[torch.Tensor]:
    pieces = torch.split(vector, [tensor.numel() for tensor in like])
    return [piece.view_as(tensor) for piece, tensor in zip(pieces, like, strict=True)]


def _noop(info: dict[str, Any]) -> None:
    return None


def summed_gradient(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    on_batch: Callable[[dict[str, Any]], None] = _noop,
) -> tuple[Vector, float]:
    """(sum_i grad l_i flattened over all parameters, summed loss) in the model's current mode."""
    parameters = _parameters(model)
    total = torch.zeros(sum(p.numel() for p in parameters), device=inputs.device)
    loss_sum = 0.0
    for start in range(0, inputs.shape[0], batch_size):
        loss = F.cross_entropy(
            model(inputs[start : start + batch_size]), labels[start : start + batch_size], reduction="sum"
        )
        total += flatten(torch.autograd.grad(loss, parameters))
        loss_sum += float(loss.item())
        on_batch({"summed": min(start + batch_size, inputs.shape[0]), "of": inputs.shape[0]})
    return total, loss_sum


def influence_direction(
    forget_gradient: Vector, retain_gradient: Vector, n_forget: int, n_retain: int
) -> Vector:
    """v = (G_f - (n_f / n_r) G_r) / n."""
    return (forget_gradient - (n_forget / n_retain) * retain_gradient) / (n_forget + n_retain)


@dataclass
class WoodFisherResult:
    k: Vector
    first_gradient: Vector  # g_1: the reference's correction k - v is parallel to it
    samples: int


def woodfisher_reference(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    v: Vector,
    n_constant: int,
    on_sample: Callable[[dict[str, Any]], None] = _noop,
) -> WoodFisherResult:
    """The reference's loop over the first ``n_constant + 2`` samples (fewer if there are fewer)."""
    parameters = _parameters(model)
    k = v.clone()
    first: Vector | None = None
    o: Vector | None = None
    count = min(n_constant + 2, inputs.shape[0])
    for index in range(count):
        loss = F.cross_entropy(model(inputs[index : index + 1]), labels[index : index + 1])
        gradient = flatten(torch.autograd.grad(loss, parameters))
        if o is None:
            first, o = gradient.clone(), gradient.clone()
        else:
            t = torch.dot(o, gradient)
            k -= (torch.dot(k, gradient) / (n_constant + t)) * o
            o -= (t / (n_constant + t)) * o
        on_sample({"woodfisher_sample": index + 1, "of": count})
    assert first is not None
    return WoodFisherResult(k=k, first_gradient=first, samples=count)


class CurvatureOperator:
    """x -> (F + damping I) x for F the empirical Fisher or the Gauss-Newton matrix of the mean CE loss on
    (inputs, labels), evaluated with the model's current (eval-mode) weights and buffers."""

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        kind: str,
        damping: float,
        batch_size: int,
    ) -> None:
        self.model, self.inputs, self.labels = model, inputs, labels
        self.kind, self.damping, self.batch_size = kind, damping, batch_size
        self.names = [name for name, _ in model.named_parameters()]
        self.like = [parameter.detach() for parameter in model.parameters()]
        self.primals = dict(zip(self.names, self.like, strict=True))
        self.buffers = {name: buffer.detach() for name, buffer in model.named_buffers()}

    def _outputs(self, batch: torch.Tensor, batch_labels: torch.Tensor) -> Callable[..., torch.Tensor]:
        def function(parameters: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = functional_call(self.model, (parameters, self.buffers), (batch,))
            if self.kind == "fisher":
                return F.cross_entropy(logits, batch_labels, reduction="none")
            return logits

        return function

    def curvature_product(self, vector: Vector, batch: torch.Tensor, batch_labels: torch.Tensor) -> Vector:
        """sum over the batch's samples of F_i x (not yet divided by the sample count)."""
        function = self._outputs(batch, batch_labels)
        tangent = dict(zip(self.names, unflatten(vector, self.like), strict=True))
        with warnings.catch_warnings():
            # torch's forward-mode AD loads its jvp decompositions through torch.jit.script on first use,
            # which warns that jit.script is deprecated: torch-internal noise, nothing to act on here.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            forward = jvp(function, (self.primals,), (tangent,))
        outputs, directional = forward[0], forward[1]
        if self.kind == "fisher":
            middle = directional  # per-sample g_i . x
        else:
            probabilities = F.softmax(outputs, dim=1)
            middle = probabilities * directional - probabilities * (
                (probabilities * directional).sum(dim=1, keepdim=True)
            )
        pullback = vjp(function, self.primals)[1]
        (cotangent,) = pullback(middle.detach())
        return flatten([cotangent[name] for name in self.names])

    def fisher(self, vector: Vector, rows: torch.Tensor | None = None) -> Vector:
        """F x over all samples (or the given rows), without damping."""
        inputs = self.inputs if rows is None else self.inputs[rows]
        labels = self.labels if rows is None else self.labels[rows]
        total = torch.zeros_like(vector)
        for start in range(0, inputs.shape[0], self.batch_size):
            end = start + self.batch_size
            total += self.curvature_product(vector, inputs[start:end], labels[start:end])
        return total / inputs.shape[0]

    def __call__(self, vector: Vector, rows: torch.Tensor | None = None) -> Vector:
        return self.fisher(vector, rows) + self.damping * vector


@dataclass
class SolveResult:
    k: Vector
    iterations: int
    relative_residual: float  # ||A k - v|| / ||v|| from the solver's own recurrence (CG) or a final check


def conjugate_gradient(
    apply: Callable[[Vector], Vector],
    target: Vector,
    iterations: int,
    tolerance: float,
    on_iteration: Callable[[dict[str, Any]], None] = _noop,
) -> SolveResult:
    """Solve A k = target for symmetric positive definite A given as a product (float64 recurrences)."""
    dtype = target.dtype
    b = target.double()
    k = torch.zeros_like(b)
    residual = b.clone()
    direction = residual.clone()
    squared = torch.dot(residual, residual)
    target_norm = math.sqrt(squared.item())
    if target_norm == 0.0:
        return SolveResult(k.to(dtype), 0, 0.0)
    used = 0
    for used in range(1, iterations + 1):
        product = apply(direction.to(dtype)).double()
        step = squared / torch.dot(direction, product)
        k += step * direction
        residual -= step * product
        new_squared = torch.dot(residual, residual)
        relative = math.sqrt(new_squared.item()) / target_norm
        on_iteration({"cg_iteration": used, "relative_residual": relative})
        if not math.isfinite(relative):
            raise InvalidInputError("iu: conjugate gradient diverged; increase damping")
        if relative <= tolerance:
            break
        direction = residual + (new_squared / squared) * direction
        squared = new_squared
    return SolveResult(k.to(dtype), used, math.sqrt(torch.dot(residual, residual).item()) / target_norm)


def largest_eigenvalue(
    apply: Callable[[Vector], Vector],
    size: int,
    device: torch.device,
    seed: int,
    iterations: int = POWER_ITERATIONS,
    on_iteration: Callable[[dict[str, Any]], None] = _noop,
) -> float:
    """Power-iteration estimate of the largest eigenvalue of the symmetric PSD operator ``apply``."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(size, generator=generator).to(device)
    vector /= vector.norm()
    estimate = 0.0
    for iteration in range(1, iterations + 1):
        product = apply(vector)
        estimate = float(torch.dot(vector, product).item())
        norm = product.norm()
        on_iteration({"power_iteration": iteration, "eigenvalue": estimate})
        if float(norm.item()) == 0.0:
            return 0.0
        vector = product / norm
    return estimate


def lissa(
    operator: CurvatureOperator,
    target: Vector,
    iterations: int,
    scale: float,
    batch_size: int,
    seed: int,
    on_iteration: Callable[[dict[str, Any]], None] = _noop,
) -> SolveResult:
    """LiSSA (Agarwal et al.): h <- v + h - (F_B + lambda I) h / s on seeded minibatches B; k = h / s."""
    generator = torch.Generator().manual_seed(seed)
    count = operator.inputs.shape[0]
    h = target.clone()
    for iteration in range(1, iterations + 1):
        rows = torch.randperm(count, generator=generator)[:batch_size].to(target.device)
        h = target + h - operator(h, rows) / scale
        norm = float(h.norm().item())
        on_iteration({"lissa_iteration": iteration})
        if not math.isfinite(norm):
            raise InvalidInputError("iu: the LiSSA recursion diverged; increase lissa_scale")
    k = h / scale
    residual = float((operator(k) - target).norm().item()) / max(float(target.norm().item()), 1e-30)
    return SolveResult(k, iterations, residual)


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, IUParams)
    model = context.model
    model.eval()
    forget_inputs, forget_labels = context.data.forget()
    retain_inputs, retain_labels = context.data.retain()
    n_forget, n_retain = forget_inputs.shape[0], retain_inputs.shape[0]
    alpha = params.alpha
    if alpha is None:
        alpha = IU_REFERENCE_ALPHA if params.hvp == "reference" else IU_NEWTON_ALPHA

    gradient_steps = math.ceil(n_forget / params.batch_size) + math.ceil(n_retain / params.batch_size)
    curvature_count = min(params.curvature_samples, n_retain)
    if params.hvp == "reference":
        solver_steps = min(params.woodfisher_samples + 2, n_retain)
    elif params.hvp == "cg":
        solver_steps = params.cg_iterations
    else:
        solver_steps = params.lissa_iterations + (POWER_ITERATIONS if params.lissa_scale is None else 0)
    search_steps = params.line_search_halvings + 1 if params.step == "line_search" else 0
    progress = StepProgress(context.hooks, context.phase, gradient_steps + solver_steps + search_steps)

    forget_gradient, forget_loss = summed_gradient(
        model, forget_inputs, forget_labels, params.batch_size, progress.step
    )
    retain_gradient, retain_loss = summed_gradient(
        model, retain_inputs, retain_labels, params.batch_size, progress.step
    )
    v = influence_direction(forget_gradient, retain_gradient, n_forget, n_retain)

    details: dict[str, Any] = {"hvp": params.hvp}
    if params.hvp == "reference":
        wood = woodfisher_reference(
            model, retain_inputs, retain_labels, v, params.woodfisher_samples, progress.step
        )
        k = wood.k
        details["woodfisher_samples_used"] = wood.samples
    else:
        operator = CurvatureOperator(
            model,
            retain_inputs[:curvature_count],
            retain_labels[:curvature_count],
            params.curvature,
            params.damping,
            params.batch_size,
        )
        if params.hvp == "cg":
            solved = conjugate_gradient(operator, v, params.cg_iterations, params.cg_tolerance, progress.step)
        else:
            scale = params.lissa_scale
            if scale is None:
                top = largest_eigenvalue(
                    operator,
                    v.numel(),
                    v.device,
                    context.seed + LISSA_SEED_OFFSET,
                    on_iteration=progress.step,
                )
                scale = LISSA_SCALE_MARGIN * top
                details["lissa_scale"] = scale
            solved = lissa(
                operator,
                v,
                params.lissa_iterations,
                scale,
                params.batch_size,
                context.seed + LISSA_SEED_OFFSET,
                progress.step,
            )
        k = solved.k
        details.update(
            curvature_samples_used=curvature_count,
            solver_iterations=solved.iterations,
            solver_relative_residual=solved.relative_residual,
        )
    if not bool(torch.isfinite(k).all()):
        raise InvalidInputError("iu: the update is not finite; increase damping or lower alpha")

    step = alpha
    if params.step == "line_search":
        search = line_search(context, params, k, alpha, retain_inputs, retain_labels, progress.step)
        step = search.chosen
        details["line_search"] = search.as_details()
    apply_step(model, k, step)
    context.enforce_constraints()

    record = {"epoch": 1, "loss": retain_loss / n_retain, "forget_loss": forget_loss / n_forget, "lr": step}
    progress.done = progress.total
    progress.epoch_end(record)
    details.update(v_norm=float(v.norm().item()), k_norm=float(k.norm().item()))
    return MethodOutput(
        model=model,
        resolved_params={**params.model_dump(mode="json"), "alpha": step, "alpha_max": alpha},
        history=[record],
        details=details,
    )


@torch.no_grad()
def apply_step(model: nn.Module, k: Vector, step: float) -> None:
    """theta <- theta + step * k over all parameters."""
    parameters = _parameters(model)
    for parameter, delta in zip(parameters, unflatten(step * k, parameters), strict=True):
        parameter.add_(delta)


@torch.no_grad()
def subset_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Percent of ``inputs`` the model (in its current mode) classifies correctly."""
    correct = 0
    for start in range(0, inputs.shape[0], batch_size):
        logits = model(inputs[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum().item())
    return 100.0 * correct / max(inputs.shape[0], 1)


@dataclass
class LineSearch:
    base_accuracy: float
    margin: float
    samples: int
    trials: list[dict[str, float]]
    chosen: float  # 0.0 when no step kept the accuracy within the margin

    def as_details(self) -> dict[str, Any]:
        return {
            "check_samples": self.samples,
            "base_accuracy": self.base_accuracy,
            "margin": self.margin,
            "trials": self.trials,
            "chosen_alpha": self.chosen,
            "accepted": self.chosen > 0.0,
        }


def line_search(
    context: MethodContext,
    params: IUParams,
    k: Vector,
    alpha: float,
    retain_inputs: torch.Tensor,
    retain_labels: torch.Tensor,
    on_trial: Callable[[dict[str, Any]], None] = _noop,
) -> LineSearch:
    """Try alpha, alpha / 2, ... on a copy of the weights and return the first step whose accuracy on a
    seeded retain subset is within the margin of the unmodified model's; the model is left unchanged.
    Pruning masks are applied to every trial, as they will be to the final step."""
    model = context.model
    count = min(params.line_search_samples, retain_inputs.shape[0])
    generator = torch.Generator().manual_seed(context.seed + LINE_SEARCH_SEED_OFFSET)
    rows = torch.randperm(retain_inputs.shape[0], generator=generator)[:count].to(retain_inputs.device)
    inputs, labels = retain_inputs[rows], retain_labels[rows]
    saved = [parameter.detach().clone() for parameter in _parameters(model)]
    base = subset_accuracy(model, inputs, labels, params.batch_size)
    trials: list[dict[str, float]] = []
    chosen = 0.0
    try:
        for halving in range(params.line_search_halvings + 1):
            candidate = alpha * 0.5**halving
            apply_step(model, k, candidate)
            context.enforce_constraints()
            accuracy = subset_accuracy(model, inputs, labels, params.batch_size)
            with torch.no_grad():
                for parameter, value in zip(_parameters(model), saved, strict=True):
                    parameter.copy_(value)
            trials.append({"alpha": candidate, "check_accuracy": accuracy})
            on_trial({"line_search_alpha": candidate, "check_accuracy": accuracy})
            if accuracy >= base - params.line_search_margin:
                chosen = candidate
                break
    finally:
        with torch.no_grad():
            for parameter, value in zip(_parameters(model), saved, strict=True):
                parameter.copy_(value)
    return LineSearch(base, params.line_search_margin, count, trials, chosen)
