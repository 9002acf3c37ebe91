"""Train and evaluate many models of one architecture at once (shadow models, retrain populations).

Design. ``K`` models of the same architecture are held as stacked ``[K, *shape]`` tensors (parameters,
SGD momentum buffers, and buffers such as BatchNorm running statistics), as ``torch.func.stack_module_state``
builds them. One training step runs all ``K`` forwards as one batched computation, takes the gradient of
the SUM of the ``K`` losses with plain autograd (the models share no parameters, so that is every model's
own gradient), and applies all ``K`` SGD updates with a few ``torch._foreach_*`` ops and a per-model
learning-rate column. Per step there is a fixed number of kernels and Python work, independent of ``K``.

Batched forwards (each returns ``[K, W, *output]`` for a ``[K, W, *sample]`` batch):

* ``mlp``: hand-written batched matmuls in feature-major layout (``h^T = W @ x^T`` with ``baddbmm``), so
  weight gradients come out contiguous. ``vmap``'s ``linear`` rule produces them transposed, and the strided
  SGD update on those dominated the step on CPU.
* ``small_cnn``: hand-written "models as channel groups" layout ``[W, K*C, H, W]``: each conv is one
  grouped conv (``groups=K``, what vmap's rule also does), each BatchNorm ONE native ``F.batch_norm`` over
  ``K*C`` channels (= per-model, per-channel statistics and running stats, fused affine; vmap's BatchNorm
  rule splits off the affine and permutes layouts), max-pool and ReLU act per channel anyway, and the head
  is a ``baddbmm``. On CUDA the layout is channels_last.
* every other architecture (resnet18, the regressors, future ones): ``torch.func.vmap`` over
  ``functional_call`` of a weightless (``meta``) copy of the module, ``randomness="different"``, with its
  BatchNorms swapped for :class:`_VmapBatchNorm`, which computes training-mode statistics with plain
  two-pass tensor ops: gradients through vmap's batching of the native BatchNorm lost precision in fp32
  (measured on saturated images, resnet18: errors of 1e-2 in a conv weight's gradient where plain
  autograd stays within 1e-6 of a float64 reference; vmap in float64 agreed, so it is rounding, not a
  wrong formula).

Measured on this project's shared 2-core CPU (``bench/vmap_shadows.py --threads 1``, 16x16 images, batch
64, crop+flip; noisy): a 768-128-10 MLP trains 1.3-1.5x faster than K sequential ``fit`` calls at K = 16-64;
a 16/32-channel small_cnn is 0.4-0.8x as fast, because one model's activations stay in cache while K models'
stream through DRAM on every elementwise pass (the anchor-style plain vmap loop is just as slow there, and
without augmentation the hand-batched small_cnn is ~1.9x the plain vmap loop at K = 64). The target is a
GPU, where the stacked batch fills the device; the CUDA path (bf16 autocast, channels_last) has not been
measured yet.

Equivalence with :func:`workers.engine.training.fit`. Model ``k`` is initialised exactly as the engine does
(``torch.manual_seed(seeds[k]); build_model(...)``) and draws every epoch's sample order (and crop/flip
offsets, via the same :func:`~workers.engine.training.plan_epoch`) from its own
``torch.Generator().manual_seed(seeds[k])`` in the same order as ``train_epochs``; its batches follow
:func:`~workers.engine.training.batch_bounds` (a trailing single sample is skipped) and its learning rate
:func:`~workers.engine.training.learning_rate` with its own global step and step count. The update is
torch's SGD: ``buf = momentum * buf + (g + wd * p)``, ``p -= lr * buf``, weight decay on every parameter. So
for models without dropout the result equals ``fit(model, inputs[subset], labels[subset], recipe,
seed=seed, ...)`` up to float rounding: the batched kernels sum in another order and the SGD terms are
rounded slightly differently, which on CPU leaves differences of ~1e-8 (MLP) to ~5e-7 (small_cnn with
BatchNorm) absolute after two epochs (tests: ``atol`` 1e-5 and 1e-4). Over long runs, and on
ill-conditioned data (images with large exactly-constant regions: max-pool ties route gradients by rounding
noise), such differences grow exactly as they do between two thread counts or devices for ``fit`` itself
(measured: a 1e-7 change of the initial weights moves ``fit``'s two-epoch result by 1e-1 there). So
"equivalent" means: the same computation up to rounding, i.e. statistically the same model, not
bit-identical weights.

Subsets of different sizes. All models step together; model ``k`` has ``len(batch_bounds(n_k, batch))``
steps per epoch and an epoch of the vectorised run as many steps as its longest member. Batches are padded
to a common width ``W`` with per-sample weights (1 real sample, 0 padding):

* a step where every model has a full batch runs the plain path (mean loss, unweighted statistics);
* a step where some model has a shorter (trailing) batch uses the weighted mean loss and weighted
  BatchNorm statistics (:func:`_batch_norm_train`: batch statistics and the running-stat update over the
  real samples only), so padding changes neither gradients nor statistics;
* a model whose epoch is already over is idle: its learning rate is 0 and its momentum buffers and
  BatchNorm buffers (running stats, ``num_batches_tracked``) are restored after the step, so it is not
  updated at all, exactly as if it had not taken part in the step.

Dropout draws different masks per model (``randomness="different"`` under vmap; one ``F.dropout`` over the
stacked activations in the MLP) from the global torch RNG, seeded with the chunk's first seed. The masks
therefore differ from the ones ``fit`` draws for the same seed: dropout models are statistically equivalent
to sequentially trained ones, not identical, and depend on how the models are chunked.

Speed-run recipes (issue 20). Nesterov momentum, label smoothing, lookahead and the whitening initialisation
are not batched: a recipe that uses any of them (:data:`SEQUENTIAL_ONLY`) is trained by calling ``fit`` once
per model, so its models equal the engine's bit for bit on CPU. On a GPU the speed-run network at batch 1024
fills the device on its own, which is where the batched step earned its keep for small models; the warm-up
schedule and the ``translate`` padding are batched like the other schedules and crops.

Deviations from ``train_epochs``: no epoch checkpoints and no resume inside a vectorised run (the caller
stores the finished models; a cancelled run starts again), no per-epoch history or ``EngineHooks``
(``progress(done_steps, total_steps)`` is called after every vectorised step instead), a single segment
(no relabelling or custom losses), and divergence is checked per model on its epoch loss.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, check_weights, state_to_numpy
from workers.engine.architectures.mlp import MLP
from workers.engine.architectures.small_cnn import POOL_FACTOR, ConvBlock, SmallCNN
from workers.engine.errors import InvalidInputError
from workers.engine.methods.params import TrainRecipe
from workers.engine.task_types import TaskType
from workers.engine.training import (
    IMAGE_TENSOR_DIMS,
    LOSSES,
    batch_bounds,
    crop_and_flip,
    crop_padding,
    fit,
    learning_rate,
    plan_epoch,
)

Progress = Callable[[int, int], None]
StateDict = dict[str, np.ndarray]
Tensors = dict[str, torch.Tensor]
DEFAULT_PREDICT_BATCH_SIZE = 1024
# BatchNorm in training mode needs two samples per batch to estimate a variance (torch raises otherwise).
MIN_BATCH_NORM_SAMPLES = 2
CPU = torch.device("cpu")
# Whether mlp and small_cnn use their hand-written batched forwards (tests switch it off to check vmap's).
HAND_BATCHED = True
# Recipe features the batched step does not implement: recipes that use one train their models one after
# another with ``fit`` (see ``train_models``). The warm-up schedule and ``translate`` are batched.
SEQUENTIAL_ONLY = frozenset({"nesterov", "label_smoothing", "lookahead_steps", "whiten"})


# ------------------------------------------------------------------------------------------- BatchNorm
def _batch_norm_train(
    values: torch.Tensor,
    sample_weights: torch.Tensor | None,
    counts: torch.Tensor | None,
    bn: _BatchNorm,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    factor: float | torch.Tensor,
) -> torch.Tensor:
    """Training-mode BatchNorm of ``values`` ``[N, C, ...]`` written with plain (two-pass) tensor ops; the
    running stats are updated in place with ``factor`` as the momentum.

    With ``sample_weights`` (broadcasting against ``values``; 1 real, 0 padding) and ``counts`` (real values
    per channel, ``[C]``, or for all channels, a scalar) the statistics cover only the real entries; a channel
    without real values (an idle model, whose update is discarded) is normalised over all its values so that
    it stays finite."""
    data = values.float()  # statistics in fp32 even under autocast, as cuDNN's BatchNorm
    channels = data.shape[1]
    channel_shape = [1, channels] + [1] * (data.dim() - 2)
    reduce_dims = [0, *range(2, data.dim())]
    total = float(data.numel() // channels)
    if sample_weights is None or counts is None:
        mean = data.mean(reduce_dims)
        centered = data - mean.view(channel_shape)
        variance = centered.square().mean(reduce_dims)
        count: float | torch.Tensor = total
    else:
        empty = counts == 0
        sample_weights = sample_weights + empty.to(data.dtype).view(-1, *([1] * (data.dim() - 2)))
        count = torch.where(empty, total, counts)
        mean = (data * sample_weights).sum(reduce_dims) / count
        centered = data - mean.view(channel_shape)
        variance = (centered.square() * sample_weights).sum(reduce_dims) / count
    output = centered * torch.rsqrt(variance + bn.eps).view(channel_shape)
    if weight is not None and bias is not None:
        output = output * weight.view(channel_shape) + bias.view(channel_shape)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            if isinstance(count, torch.Tensor):
                unbiased = variance * count / (count - 1.0).clamp(min=1.0)
            else:
                unbiased = variance * count / max(count - 1.0, 1.0)
            running_mean.mul_(1.0 - factor).add_(mean * factor)
            running_var.mul_(1.0 - factor).add_(unbiased * factor)
    return output.to(values.dtype)


def _momentum_factor(bn: _BatchNorm, batches_tracked: torch.Tensor | None) -> float | torch.Tensor:
    """The running-stat factor nn.BatchNorm uses after incrementing ``num_batches_tracked``."""
    if bn.momentum is not None:
        return bn.momentum
    assert batches_tracked is not None  # momentum=None (cumulative average) requires tracking
    return 1.0 / batches_tracked.float()


class _SampleWeights:
    """Per-sample weights of the batch being run, set around each vmapped forward (None: all real)."""

    def __init__(self) -> None:
        self.current: torch.Tensor | None = None


class _VmapBatchNorm(_BatchNorm):
    """Stands in for a BatchNorm of the vmap path (same parameters and buffers). In training mode it uses
    :func:`_batch_norm_train` (inside vmap: one model's ``[W, C, ...]`` batch, ``[W]`` weights from
    ``weights.current`` when set) instead of the native op: vmap's batching rule for the native BatchNorm
    BACKWARD loses precision in fp32 (measured on saturated images: gradient errors of 1e-2 where plain
    autograd is within 1e-6 of a float64 reference). Eval mode is the native op (forward only)."""

    def __init__(self, source: _BatchNorm, weights: _SampleWeights) -> None:
        super().__init__(
            source.num_features,
            source.eps,
            source.momentum,
            source.affine,
            source.track_running_stats,
            device="meta",
        )
        self.sample_weights = weights

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        tracked = self.num_batches_tracked if self.track_running_stats else None
        if tracked is not None:
            tracked.add_(1)
        weights = self.sample_weights.current
        sample_weights = None if weights is None else weights.view(-1, *([1] * (input.dim() - 1)))
        count = None if weights is None else weights.sum() * math.prod(input.shape[2:])
        return _batch_norm_train(
            input,
            sample_weights,
            count,
            self,
            self.weight,
            self.bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            _momentum_factor(self, tracked),
        )


def _weightless_copy(model: nn.Module, weights: _SampleWeights | None) -> nn.Module:
    """A ``meta`` copy of ``model`` for ``functional_call``; with ``weights``, its BatchNorms are
    :class:`_VmapBatchNorm`."""
    base = copy.deepcopy(model).to("meta")
    if weights is None:
        return base
    for name, module in list(base.named_modules()):
        if isinstance(module, _BatchNorm):
            parent_name, _, child_name = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child_name, _VmapBatchNorm(module, weights))
    return base


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(module, _BatchNorm) for module in model.modules())


# -------------------------------------------------------------------------------------- batched forwards
class BatchedForward(Protocol):
    def __call__(
        self, params: Tensors, buffers: Tensors, batch: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Training-mode outputs ``[K, W, *output]`` of the ``K`` models on their batches ``[K, W, ...]``;
        ``weights`` ``[K, W]`` (1 real, 0 padding) or None when every sample is real. Updates the stacked
        buffers (running statistics) in place."""
        ...


class _VmapForward:
    """Any architecture: ``vmap`` over ``functional_call`` of a weightless copy of the module."""

    def __init__(self, template: nn.Module) -> None:
        self.sample_weights = _SampleWeights()
        maskable = self.sample_weights if _has_batch_norm(template) else None
        self.base = _weightless_copy(template, maskable).train()
        self.plain = vmap(self._plain, randomness="different")
        self.weighted = vmap(self._weighted, randomness="different")

    def _plain(self, params: Tensors, buffers: Tensors, batch: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, functional_call(self.base, (params, buffers), (batch,)))

    def _weighted(
        self, params: Tensors, buffers: Tensors, batch: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        self.sample_weights.current = weights  # read by the _VmapBatchNorm layers
        try:
            return self._plain(params, buffers, batch)
        finally:
            self.sample_weights.current = None

    def __call__(
        self, params: Tensors, buffers: Tensors, batch: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        if weights is None:
            return cast(torch.Tensor, self.plain(params, buffers, batch))
        return cast(torch.Tensor, self.weighted(params, buffers, batch, weights))


class _MLPForward:
    """``mlp`` as batched matmuls in feature-major layout (see the module docstring)."""

    def __init__(self, template: MLP) -> None:
        self.layers = [f"layers.{index}" for index in range(len(template.layers))]
        self.dropout = float(template.dropout.p)

    def __call__(
        self, params: Tensors, buffers: Tensors, batch: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        count, width = batch.shape[:2]
        hidden = batch.reshape(count, width, -1).transpose(1, 2)  # [K, features, W]
        for layer in self.layers:
            hidden = torch.baddbmm(params[f"{layer}.bias"].unsqueeze(2), params[f"{layer}.weight"], hidden)
            hidden = hidden.relu()
            if self.dropout > 0:
                hidden = F.dropout(hidden, self.dropout, training=True)
        logits = torch.baddbmm(params["head.bias"].unsqueeze(2), params["head.weight"], hidden)
        return logits.transpose(1, 2)


class _SmallCNNForward:
    """``small_cnn`` with the models as channel groups, ``[W, K*C, H, W]`` (see the module docstring)."""

    def __init__(self, template: SmallCNN) -> None:
        self.blocks = _conv_blocks(template)

    @staticmethod
    def supports(template: SmallCNN) -> bool:
        """The layout assumptions: bias-free stride-1 convs with numeric padding, affine BatchNorms that
        track running stats with a fixed momentum (then 2x2 max-pools, as the module always has)."""
        return all(
            conv.bias is None
            and conv.stride == (1, 1)
            and isinstance(conv.padding, tuple)
            and bn.affine
            and bn.track_running_stats
            and bn.momentum is not None
            for _, conv, bn in _conv_blocks(template)
        )

    def __call__(
        self, params: Tensors, buffers: Tensors, batch: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        count, width = batch.shape[:2]
        hidden = batch.transpose(0, 1).reshape(width, count * batch.shape[2], *batch.shape[3:])
        if hidden.is_cuda:
            hidden = hidden.contiguous(memory_format=torch.channels_last)
        for prefix, conv, bn in self.blocks:
            kernel = params[f"{prefix}.conv.weight"]
            padding = cast(tuple[int, int], conv.padding)  # numeric: checked in supports()
            hidden = F.conv2d(hidden, kernel.reshape(-1, *kernel.shape[2:]), padding=padding, groups=count)
            hidden = self._batch_norm(hidden, params, buffers, f"{prefix}.bn", bn, weights)
            hidden = F.max_pool2d(hidden.relu(), POOL_FACTOR)
        features = hidden.mean(dim=(2, 3)).view(width, count, -1).permute(1, 2, 0)  # [K, C, W]
        logits = torch.baddbmm(params["head.bias"].unsqueeze(2), params["head.weight"], features)
        return logits.transpose(1, 2)

    @staticmethod
    def _batch_norm(
        hidden: torch.Tensor,
        params: Tensors,
        buffers: Tensors,
        prefix: str,
        bn: _BatchNorm,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        # Flat [K*C] views of the stacked [K, C] tensors: the native op updates the running stats in place.
        weight, bias = params[f"{prefix}.weight"].reshape(-1), params[f"{prefix}.bias"].reshape(-1)
        running_mean = buffers[f"{prefix}.running_mean"].view(-1)
        running_var = buffers[f"{prefix}.running_var"].view(-1)
        buffers[f"{prefix}.num_batches_tracked"].add_(1)
        factor = _momentum_factor(bn, None)
        if weights is None:
            return F.batch_norm(hidden, running_mean, running_var, weight, bias, True, float(factor), bn.eps)
        channels = hidden.shape[1] // weights.shape[0]
        # Sample b's weight in model k's channels: [W, K] -> [W, K*C].
        per_value = weights.t().repeat_interleave(channels, dim=1)
        counts = weights.sum(dim=1).repeat_interleave(channels) * math.prod(hidden.shape[2:])
        return _batch_norm_train(
            hidden,
            per_value.view(*per_value.shape, *([1] * (hidden.dim() - 2))),
            counts,
            bn,
            weight,
            bias,
            running_mean,
            running_var,
            factor,
        )


def _conv_blocks(template: SmallCNN) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    blocks = [cast(ConvBlock, block) for block in template.blocks]
    return [(f"blocks.{index}", block.conv, block.bn) for index, block in enumerate(blocks)]


def _batched_forward(template: nn.Module) -> BatchedForward:
    """The fastest batched forward for ``template``'s EXACT class (subclasses such as the regressors
    change ``forward``, so they take the generic vmap path)."""
    if HAND_BATCHED and type(template) is MLP:
        return _MLPForward(template)
    if HAND_BATCHED and type(template) is SmallCNN and _SmallCNNForward.supports(template):
        return _SmallCNNForward(template)
    return _VmapForward(template)


# ------------------------------------------------------------------------------------------ stacked models
class _StackedModels:
    """K models as contiguous stacked ``[K, *shape]`` parameters and buffers."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        self.count = len(models)
        self.state_keys = list(models[0].state_dict().keys())
        params, buffers = stack_module_state(list(models))
        self.params = {name: value.detach().to(device).contiguous() for name, value in params.items()}
        self.buffers = {name: value.detach().to(device).contiguous() for name, value in buffers.items()}

    def leaves(self) -> Tensors:
        """The parameters as fresh autograd leaves sharing their storage, so ``autograd.grad`` returns
        exactly their gradients and the in-place update needs no graph bookkeeping."""
        return {name: value.detach().requires_grad_(True) for name, value in self.params.items()}

    def to_numpy(self) -> list[StateDict]:
        """Each model's state dict as CPU numpy arrays, in ``state_dict`` order (as ``state_to_numpy``)."""
        stacks = {
            name: value.detach().to(CPU).contiguous().numpy()
            for name, value in {**self.params, **self.buffers}.items()
        }
        # ``np.array`` rather than ``[index].copy()``: slicing a 1-D stack (BatchNorm's 0-d
        # ``num_batches_tracked``) yields a numpy scalar, which safetensors cannot save.
        return [{key: np.array(stacks[key][index]) for key in self.state_keys} for index in range(self.count)]


# ---------------------------------------------------------------------------------------- epoch planning
@dataclass
class _ChunkPlan:
    subsets: list[torch.Tensor]  # CPU int64 indices into the full inputs
    bounds: list[list[tuple[int, int]]]  # each model's batch_bounds
    width: int  # samples per model and step (the widest batch)
    steps: int  # vectorised steps per epoch (the most batches)

    @property
    def count(self) -> int:
        return len(self.subsets)


def _chunk_plan(subsets: Sequence[torch.Tensor], batch_size: int) -> _ChunkPlan:
    bounds = [batch_bounds(int(subset.shape[0]), batch_size) for subset in subsets]
    width = max(end - start for model_bounds in bounds for start, end in model_bounds)
    return _ChunkPlan(list(subsets), bounds, width, max(len(model_bounds) for model_bounds in bounds))


@dataclass
class _EpochBatches:
    """Every step of one vectorised epoch as ``[step, model, slot]`` tables on the device."""

    rows: torch.Tensor  # [S, K, W] int64 indices into the full inputs (padding repeats real samples)
    weights: torch.Tensor  # [S, K, W] float: 1 real sample, 0 padding
    counts: torch.Tensor  # [S, K] float: real samples per model and step (0: idle)
    lrs: torch.Tensor  # [S, K] float: each model's learning rate (0 when idle)
    row_offsets: torch.Tensor | None  # [S, K, W] crop offsets and flips when augmenting
    col_offsets: torch.Tensor | None
    flips: torch.Tensor | None
    ragged: list[bool]  # per step: some active model has fewer than W samples
    idle: list[torch.Tensor | None]  # per step: indices of the models whose epoch is already over, or None


def _plan_epoch_batches(
    plan: _ChunkPlan,
    recipe: TrainRecipe,
    epoch: int,
    padding: int | None,
    generators: Sequence[torch.Generator],
    device: torch.device,
) -> _EpochBatches:
    """Draw every model's epoch order (and augmentation) exactly as ``train_epochs`` does, then lay the
    batches out as ``[step, model, slot]`` tables, each shipped to the device in one copy."""
    steps, width, batch_size = plan.steps, plan.width, recipe.batch_size
    # Slot j of step s is position s * batch_size + j of the model's epoch order: batches start every
    # batch_size samples, and width never exceeds batch_size.
    positions = torch.arange(steps).view(steps, 1) * batch_size + torch.arange(width).view(1, width)
    rows, weights, lrs = [], [], []
    row_offsets, col_offsets, flips = [], [], []
    for subset, bounds, generator in zip(plan.subsets, plan.bounds, generators, strict=True):
        epoch_plan = plan_epoch(int(subset.shape[0]), padding, generator, CPU)
        used = bounds[-1][1]  # samples this epoch (a trailing single sample is skipped)
        # Padding slots wrap around to real samples: finite, varied inputs that carry weight 0.
        wrapped = positions % used
        rows.append(subset[epoch_plan.order[wrapped]])
        weights.append(positions < used)
        if epoch_plan.augmentation is not None:
            row_offsets.append(epoch_plan.augmentation.row_offsets[wrapped])
            col_offsets.append(epoch_plan.augmentation.col_offsets[wrapped])
            flips.append(epoch_plan.augmentation.flips[wrapped])
        model_steps = len(bounds)
        total_steps = recipe.epochs * model_steps
        lrs.append(
            [
                learning_rate(recipe, epoch, epoch * model_steps + step, total_steps)
                if step < model_steps
                else 0.0
                for step in range(steps)
            ]
        )
    weight_table = torch.stack(weights, dim=1)
    counts = weight_table.sum(dim=2)
    active = counts > 0
    ragged = (active & (counts < width)).any(dim=1).tolist()
    idle = [torch.nonzero(~row).flatten() for row in active]

    def ship(parts: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.stack(parts, dim=1).to(device) if parts else None

    return _EpochBatches(
        rows=torch.stack(rows, dim=1).to(device),
        weights=weight_table.to(device=device, dtype=torch.float32),
        counts=counts.to(device=device, dtype=torch.float32),
        lrs=torch.tensor(lrs, dtype=torch.float32).T.contiguous().to(device),
        row_offsets=ship(row_offsets),
        col_offsets=ship(col_offsets),
        flips=ship(flips),
        ragged=[bool(flag) for flag in ragged],
        idle=[indices.to(device) if indices.numel() else None for indices in idle],
    )


# ------------------------------------------------------------------------------------------------ training
def _per_sample_loss(task: TaskType) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # Every entry of LOSSES is a torch.nn.functional loss, and those take ``reduction``.
    loss = functools.partial(cast(Any, LOSSES[task]), reduction="none")
    return cast(Callable[[torch.Tensor, torch.Tensor], torch.Tensor], loss)


def _check_inputs(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subsets: Sequence[np.ndarray],
    seeds: Sequence[int],
    chunk_size: int | None,
    task: TaskType,
    minimum: int,
) -> list[torch.Tensor]:
    """Validate everything a user can get wrong; return the subsets as CPU int64 tensors."""
    if len(seeds) != len(subsets):
        raise InvalidInputError(f"got {len(subsets)} subsets but {len(seeds)} seeds; pass one seed per model")
    if chunk_size is not None and chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be at least 1, got {chunk_size}")
    if task not in LOSSES:
        raise InvalidInputError(f"vectorised training does not support the {task} task")
    if inputs.shape[0] != labels.shape[0]:
        raise InvalidInputError(f"inputs hold {inputs.shape[0]} samples but labels hold {labels.shape[0]}")
    if inputs.device != labels.device:
        raise InvalidInputError(f"inputs are on {inputs.device} but labels on {labels.device}")
    sample_count = int(inputs.shape[0])
    checked = []
    for index, subset in enumerate(subsets):
        array = np.asarray(subset)
        if array.ndim != 1 or (array.size > 0 and array.dtype.kind not in "iu"):
            raise InvalidInputError(
                f"subset {index} must be a 1-D array of integer sample indices, got dtype {array.dtype} "
                f"and shape {list(array.shape)}"
            )
        if array.size < minimum:
            reason = " (BatchNorm needs two samples per batch)" if minimum > 1 else ""
            raise InvalidInputError(
                f"subset {index} has {array.size} samples; training needs at least {minimum}{reason}"
            )
        if int(array.min()) < 0 or int(array.max()) >= sample_count:
            raise InvalidInputError(
                f"subset {index} has indices outside [0, {sample_count}) "
                f"(min {int(array.min())}, max {int(array.max())})"
            )
        checked.append(torch.from_numpy(array.astype(np.int64)))
    return checked


def _chunks(count: int, chunk_size: int | None) -> list[range]:
    size = max(count, 1) if chunk_size is None else chunk_size
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _vmap_layout(batch: torch.Tensor, count: int, channels_last: bool) -> torch.Tensor:
    """``[K*W, ...]`` -> ``[K, W, ...]``. With ``channels_last`` the images are stored as ``[W, H, Wd, K, C]``
    so that vmap's conv rule, which folds the model dim into the channels, gets ``[W, K*C, H, Wd]`` in
    channels_last order without a copy."""
    shaped = batch.view(count, -1, *batch.shape[1:])
    if not channels_last:
        return shaped
    return shaped.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)


def train_models(
    architecture: str,
    arch_config: BaseModel | Mapping[str, Any],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subsets: Sequence[np.ndarray],
    recipe: TrainRecipe,
    seeds: Sequence[int],
    *,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    task: TaskType = TaskType.classification,
) -> list[StateDict]:
    """Train ``len(subsets)`` models of ``architecture`` at once; model ``k`` on ``inputs[subsets[k]]``.

    Model ``k`` starts from ``torch.manual_seed(seeds[k]); build_model(architecture, arch_config)`` and is
    trained with ``recipe`` (SGD, LR schedule, batch size, epochs, augmentation) as ``fit`` with
    ``seed=seeds[k]`` would (see the module docstring for the tolerance and for dropout). ``inputs`` and
    ``labels`` are the whole dataset, already on the training device; ``subsets`` are 1-D integer indices
    into them and may differ in size. ``chunk_size`` trains at most that many models at a time (a memory
    bound; default: all at once). ``progress(done_steps, total_steps)`` is called after every vectorised step,
    counted over all chunks; whatever it raises propagates and stops training. Overwrites the global torch
    RNG state (as the engine's seeded initialisation does). Returns one CPU numpy state dict per model, in
    ``subsets`` order and in the format of ``state_to_numpy`` (``load_weights`` accepts it). Raises
    :class:`InvalidInputError` for unusable inputs and when a model's training diverges (non-finite loss).
    Recipes with a speed-run feature the batched step lacks (:data:`SEQUENTIAL_ONLY`) train the models one
    after another with ``fit`` instead, exactly as ``fit`` (``chunk_size`` then plays no part).
    """
    spec = ARCHITECTURES.get(architecture)
    config = spec.parse_config(arch_config)
    # BatchNorm layers show in the state as running statistics; no need to build a model to find them.
    has_batch_norm = any(key.endswith(".running_mean") for key in spec.param_shapes(config))
    minimum = MIN_BATCH_NORM_SAMPLES if has_batch_norm else 1
    checked = _check_inputs(inputs, labels, subsets, seeds, chunk_size, task, minimum)
    if not checked:
        return []
    if any(name in SEQUENTIAL_ONLY for name in recipe.loop_extensions()):
        return _train_sequentially(
            architecture, config, inputs, labels, checked, recipe, seeds, progress, task
        )
    padding = crop_padding(recipe, inputs)
    chunks = _chunks(len(checked), chunk_size)
    plans = [_chunk_plan([checked[index] for index in chunk], recipe.batch_size) for chunk in chunks]
    total_steps = sum(recipe.epochs * plan.steps for plan in plans)
    done = 0
    states: list[StateDict] = []
    for chunk, plan in zip(chunks, plans, strict=True):
        chunk_seeds = [int(seeds[index]) for index in chunk]
        trainer = _ChunkTrainer(architecture, config, chunk_seeds, plan, recipe, task, inputs.device)
        for _ in trainer.run(inputs, labels, padding):
            done += 1
            if progress is not None:
                progress(done, total_steps)
        states.extend(trainer.models.to_numpy())
    return states


class _StepHooks:
    """``EngineHooks`` of one sequential ``fit``: its steps, offset by the models before it, reported as
    ``progress(done, total)``; epoch checkpoints are dropped (the caller stores the finished models)."""

    def __init__(self, progress: Progress | None, before: int, total: int) -> None:
        self.report, self.before, self.total = progress, before, total

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        if self.report is not None and not info.get("epoch_end"):
            self.report(self.before + step, self.total)

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        return None


def _train_sequentially(
    architecture: str,
    config: Any,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subsets: Sequence[torch.Tensor],
    recipe: TrainRecipe,
    seeds: Sequence[int],
    progress: Progress | None,
    task: TaskType,
) -> list[StateDict]:
    """The fallback for recipes the batched step does not implement (:data:`SEQUENTIAL_ONLY`): one ``fit``
    per model, initialised as the engine does, so each model is exactly (bit for bit on CPU) the one a train
    or retrain job on that subset with that seed produces."""
    steps = [recipe.epochs * len(batch_bounds(int(subset.shape[0]), recipe.batch_size)) for subset in subsets]
    states: list[StateDict] = []
    for subset, seed, before in zip(subsets, seeds, np.cumsum([0, *steps[:-1]]).tolist(), strict=True):
        torch.manual_seed(int(seed))  # the engine's initialisation
        model = build_model(architecture, config).to(inputs.device)
        rows = subset.to(inputs.device)
        hooks = _StepHooks(progress, int(before), sum(steps))
        fit(model, inputs[rows], labels[rows], recipe, seed=int(seed), phase="shadow", hooks=hooks, task=task)
        states.append(state_to_numpy(model))
    return states


def _is_expanded(tensor: torch.Tensor) -> bool:
    return any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape, strict=True))


class _ChunkTrainer:
    """One vectorised training run over the models of a chunk."""

    def __init__(
        self,
        architecture: str,
        config: Any,
        seeds: Sequence[int],
        plan: _ChunkPlan,
        recipe: TrainRecipe,
        task: TaskType,
        device: torch.device,
    ) -> None:
        self.seeds, self.plan, self.recipe, self.device = list(seeds), plan, recipe, device
        models = []
        for seed in seeds:
            torch.manual_seed(seed)  # the engine's initialisation
            models.append(build_model(architecture, config))
        self.models = _StackedModels(models, device)
        self.momentum = {name: torch.zeros_like(value) for name, value in self.models.params.items()}
        self.forward = _batched_forward(models[0])
        self.vmapped = isinstance(self.forward, _VmapForward)
        self.per_sample_loss = _per_sample_loss(task)
        self.on_cuda = device.type == "cuda"

    def _losses(
        self, batch: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[Tensors, torch.Tensor]:
        """(parameter leaves, ``[K]`` per-model losses): the mean loss over each model's batch, or with
        ``weights`` the weighted mean over its real samples."""
        leaves = self.models.leaves()
        count, width = targets.shape[:2]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.on_cuda):
            outputs = self.forward(leaves, self.models.buffers, batch, weights)
        per_sample = self.per_sample_loss(
            outputs.float().reshape(count * width, *outputs.shape[2:]),
            targets.reshape(count * width, *targets.shape[2:]),
        ).view(count, width)
        if weights is None:
            return leaves, per_sample.mean(dim=1)
        return leaves, (per_sample * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def run(self, inputs: torch.Tensor, labels: torch.Tensor, padding: int | None) -> Iterator[None]:
        """Train every epoch, yielding after each vectorised step."""
        count, recipe, models = self.plan.count, self.recipe, self.models
        generators = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        torch.manual_seed(self.seeds[0])  # dropout masks (drawn per model, see the module docstring)
        channels_last = self.vmapped and self.on_cuda and inputs.dim() == IMAGE_TENSOR_DIMS
        for epoch in range(recipe.epochs):
            batches = _plan_epoch_batches(self.plan, recipe, epoch, padding, generators, self.device)
            loss_sums = torch.zeros(count, device=self.device)  # on device: no per-step host sync
            for step in range(self.plan.steps):
                rows = batches.rows[step].reshape(-1)
                batch = inputs[rows]
                if padding is not None:
                    assert batches.row_offsets is not None and batches.col_offsets is not None
                    assert batches.flips is not None
                    batch = crop_and_flip(
                        batch,
                        batches.row_offsets[step].reshape(-1),
                        batches.col_offsets[step].reshape(-1),
                        batches.flips[step].reshape(-1),
                        padding,
                    )
                batch = _vmap_layout(batch, count, channels_last)
                targets = labels[rows].view(count, -1, *labels.shape[1:])
                idle = batches.idle[step]
                # The idle models' rows of every buffer, to put back after the step.
                saved = None if idle is None else self._rows(models.buffers.values(), idle)
                weights = batches.weights[step] if batches.ragged[step] else None
                leaves, losses = self._losses(batch, targets, weights)
                # The models share nothing, so the gradient of the sum is each model's own gradient.
                grads = torch.autograd.grad(losses.sum(), list(leaves.values()), materialize_grads=True)
                self._sgd_step(list(grads), batches.lrs[step], idle)
                if idle is not None and saved is not None:
                    self._put_rows(models.buffers.values(), idle, saved)
                # Idle models' losses are computed on padding: count them with weight 0, NaN or not.
                active = batches.counts[step] > 0
                loss_sums += torch.where(active, losses.detach() * batches.counts[step], 0.0)
                yield
            self._check_finite(loss_sums, epoch)

    @staticmethod
    def _rows(stacks: Iterable[torch.Tensor], models: torch.Tensor) -> list[torch.Tensor]:
        return [stack.index_select(0, models) for stack in stacks]

    @staticmethod
    @torch.no_grad()
    def _put_rows(stacks: Iterable[torch.Tensor], models: torch.Tensor, rows: list[torch.Tensor]) -> None:
        for stack, saved in zip(stacks, rows, strict=True):
            stack.index_copy_(0, models, saved)

    @torch.no_grad()
    def _sgd_step(self, grads: list[torch.Tensor], lrs: torch.Tensor, idle: torch.Tensor | None) -> None:
        """torch.optim.SGD (no dampening, no nesterov) on all models at once, each with its own LR:
        ``buf = momentum * buf + (g + wd * p)``, ``p -= lr * buf``. Computed in place in the gradient
        tensors, which then become the momentum buffers: no model-sized allocation per step (on CPU the
        stacked models do not fit in cache and every pass goes to DRAM). The ``idle`` models keep their
        momentum buffers; their LR is 0, so their weights stay as they are."""
        recipe = self.recipe
        params = list(self.models.params.values())
        old_momentum = list(self.momentum.values())
        # In-place needs gradients that own every element (an expanded zero gradient would not).
        buffers = [grad.clone() if _is_expanded(grad) else grad for grad in grads]
        if recipe.weight_decay != 0:
            torch._foreach_add_(buffers, params, alpha=recipe.weight_decay)
        if recipe.momentum != 0:
            torch._foreach_add_(buffers, old_momentum, alpha=recipe.momentum)
        if idle is not None:
            self._put_rows(buffers, idle, self._rows(old_momentum, idle))
        self.momentum = dict(zip(self.momentum, buffers, strict=True))
        rates = [lrs.view(-1, *([1] * (param.dim() - 1))) for param in params]
        torch._foreach_addcmul_(params, buffers, rates, value=-1.0)

    def _check_finite(self, loss_sums: torch.Tensor, epoch: int) -> None:
        sums = loss_sums.to(CPU).tolist()  # the one host sync per epoch
        broken = [seed for seed, total in zip(self.seeds, sums, strict=True) if not math.isfinite(total)]
        if broken:
            raise InvalidInputError(
                f"vectorised training diverged in epoch {epoch + 1} (non-finite loss) for the models with "
                f"seeds {broken}; lower the learning rate"
            )


# ---------------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_models(
    architecture: str,
    arch_config: BaseModel | Mapping[str, Any],
    states: Sequence[Mapping[str, np.ndarray]],
    inputs: torch.Tensor,
    *,
    batch_size: int = DEFAULT_PREDICT_BATCH_SIZE,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Eval-mode outputs of every model in ``states`` on ``inputs`` (already on the device to run on): a
    float64 array of shape ``(K, N, *output)``, i.e. ``(K, N, C)`` logits for classifiers. Computed in fp32
    (no autocast, as ``predict_logits``) with one ``vmap`` over the models (``chunk_size`` at a time) per
    batch of ``batch_size`` samples. Raises :class:`InvalidInputError` for weights that do not fit."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    if chunk_size is not None and chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be at least 1, got {chunk_size}")
    spec = ARCHITECTURES.get(architecture)
    config = spec.parse_config(arch_config)
    expected = spec.param_shapes(config)
    template = build_model(architecture, config)
    parameter_names = {name for name, _ in template.named_parameters()}
    base = _weightless_copy(template, None).eval()
    channels_last = inputs.device.type == "cuda" and inputs.dim() == IMAGE_TENSOR_DIMS

    def forward(params: Tensors, buffers: Tensors, batch: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, functional_call(base, (params, buffers), (batch,)))

    batched = vmap(forward, in_dims=(0, 0, None))  # the samples are shared by all models
    outputs: list[np.ndarray] = []
    for chunk in _chunks(len(states), chunk_size):
        checked = [check_weights(states[index], expected) for index in chunk]
        stacked = {
            key: torch.stack([torch.from_numpy(state[key]) for state in checked]).to(inputs.device)
            for key in expected
        }
        params = {name: value for name, value in stacked.items() if name in parameter_names}
        buffers = {name: value for name, value in stacked.items() if name not in parameter_names}
        parts = []
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size]
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            parts.append(batched(params, buffers, batch).float().to(CPU))
        outputs.append(torch.cat(parts, dim=1).numpy().astype(np.float64))
    if not outputs:  # no models: the output shape still follows the architecture
        sample_output = template.eval()(inputs[:1].to(CPU).float())
        return np.zeros((0, inputs.shape[0], *sample_output.shape[1:]), dtype=np.float64)
    return np.concatenate(outputs, axis=0)
