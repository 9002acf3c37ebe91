"""Weight transforms of a recovery audit, each applied to a COPY of a state dict.

Which tensors: the weight matrices and kernels (floating-point tensors of two or more dimensions: linear
and convolution weights). Biases, normalisation parameters and buffers stay at full precision, as
post-training quantization of deployed models leaves them (they are a negligible share of the bytes).

- ``int8`` / ``int4``: symmetric per-output-channel round-to-nearest. For channel c (index 0 of the
  tensor) the scale is s_c = max|w_c| / L with L = 127 (int8) or 7 (4-bit: the 15 levels -7..7), and
  w' = s_c * clamp(round(w / s_c), -L, L). No value is clipped (|w| / s_c <= L), so |w - w'| <= s_c / 2.
- ``nf4``: a 16-value codebook of standard-normal quantiles scaled per block of :data:`NF4_BLOCK`
  consecutive weights (the tensor flattened) by the block's absmax a_b: w' = a_b * q(w / a_b) with q the
  nearest codebook value. The codebook (:func:`nf4_codebook`): with Phi^-1 the N(0, 1) quantile function and
  delta = 1 - (1/32 + 1/30) / 2, the 9 non-negative values Phi^-1(p) for p evenly spaced from 0.5 to delta
  (0.5 gives an exact 0), divided by their maximum, and the 7 negative values Phi^-1(p) for p evenly spaced
  from 1 - delta to 0.5 without its last point, divided by their largest magnitude: 16 values in [-1, 1]
  with -1, 0 and 1 among them. Normally distributed weights then fill the 16 bins about equally, which is why
  it beats a uniform grid at 4 bits. |w - w'| <= a_b * g / 2 with g the largest gap between neighbouring
  codebook values.
- ``prune``: global unstructured magnitude pruning: the round(s * N) weights of smallest magnitude among
  all N transformed weights are set to 0 (ties by position), so the achieved sparsity is exactly
  round(s * N) / N when no weight was zero before (more when some were).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import torch

StateDict = dict[str, torch.Tensor]
MATRIX_DIMS = 2
INT8_LEVELS = 127
INT4_LEVELS = 7
NF4_BLOCK = 64
NF4_POSITIVE = 9  # 0 and eight positive values
NF4_NEGATIVE = 7
# QLoRA's offset: the extreme quantile sits between the 1/32 and 1/30 tail probabilities, so it is finite.
NF4_DELTA = 1.0 - 0.5 * (1.0 / 32.0 + 1.0 / 30.0)


def transformed_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The weights every transform acts on: floating-point tensors with at least two dimensions."""
    return [
        name for name, tensor in state.items() if tensor.is_floating_point() and tensor.dim() >= MATRIX_DIMS
    ]


def copy_state(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def per_channel_scales(weight: torch.Tensor, levels: int) -> torch.Tensor:
    """s_c = max|w_c| / levels for every output channel c, shaped to broadcast against ``weight``."""
    absmax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return (absmax / levels).reshape(-1, *([1] * (weight.dim() - 1)))


def round_to_nearest(weight: torch.Tensor, levels: int) -> torch.Tensor:
    """Symmetric per-channel round-to-nearest with ``levels`` positive levels (dequantized, same dtype)."""
    work = weight.detach().double()
    scales = per_channel_scales(work, levels)
    # An all-zero channel has scale 0: it stays 0 (dividing would give NaN).
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    quantized = torch.clamp(torch.round(work / safe), -levels, levels) * scales
    return quantized.to(weight.dtype)


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4-style values, ascending (see the module docstring for the definition)."""
    normal = NormalDist()
    positive = [normal.inv_cdf(0.5 + (NF4_DELTA - 0.5) * i / (NF4_POSITIVE - 1)) for i in range(NF4_POSITIVE)]
    low = 1.0 - NF4_DELTA
    negative = [normal.inv_cdf(low + (0.5 - low) * i / NF4_NEGATIVE) for i in range(NF4_NEGATIVE)]
    top, bottom = max(positive), max(abs(v) for v in negative)
    values = [v / bottom for v in negative] + [max(v, 0.0) / top for v in positive]
    return torch.tensor(sorted(values), dtype=torch.float64)


def nf4_quantize(weight: torch.Tensor, block: int = NF4_BLOCK) -> torch.Tensor:
    """Blockwise absmax NF4-style quantization (dequantized, same shape and dtype)."""
    codebook = nf4_codebook()
    flat = weight.detach().double().reshape(-1)
    padding = (-flat.numel()) % block
    blocks = torch.cat([flat, flat.new_zeros(padding)]).reshape(-1, block)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normalised = blocks / safe
    nearest = (normalised.unsqueeze(-1) - codebook).abs().argmin(dim=-1)
    dequantized = (codebook[nearest] * absmax).reshape(-1)[: flat.numel()]
    return dequantized.reshape(weight.shape).to(weight.dtype)


def nf4_max_gap() -> float:
    return float(torch.diff(nf4_codebook()).max())


def _per_tensor(
    function: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[Mapping[str, torch.Tensor]], StateDict]:
    def apply(state: Mapping[str, torch.Tensor]) -> StateDict:
        out = copy_state(state)
        for name in transformed_names(state):
            out[name] = function(state[name])
        return out

    return apply


def magnitude_prune(state: Mapping[str, torch.Tensor], sparsity: float) -> StateDict:
    """A copy of ``state`` with the round(sparsity * N) smallest-magnitude transformed weights set to 0."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    out = copy_state(state)
    names = transformed_names(state)
    flat = torch.cat([out[name].reshape(-1).double().abs().cpu() for name in names])
    count = round(sparsity * flat.numel())
    if count == 0:
        return out
    # A stable sort breaks ties by position, so the same weights go on every run and device.
    order = torch.sort(flat, stable=True).indices[:count]
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order] = False
    offset = 0
    for name in names:
        size = out[name].numel()
        mask = keep[offset : offset + size].reshape(out[name].shape).to(out[name].device)
        out[name] = out[name] * mask.to(out[name].dtype)
        offset += size
    return out


def zero_fraction(state: Mapping[str, torch.Tensor]) -> float:
    """The fraction of exactly-zero entries among the transformed weights."""
    names = transformed_names(state)
    total = sum(state[name].numel() for name in names)
    zeros = sum(int((state[name] == 0).sum()) for name in names)
    return zeros / total if total else 0.0


@dataclass(frozen=True)
class Transform:
    """One named weight transform: ``apply`` returns a transformed copy; ``family`` groups them for the
    scores (quantization, pruning)."""

    name: str
    family: str
    description: str
    apply: Callable[[Mapping[str, torch.Tensor]], StateDict]


QUANTIZATION = "quantization"
PRUNING = "pruning"


def quantization_transforms() -> list[Transform]:
    return [
        Transform(
            "int8",
            QUANTIZATION,
            "int8 per-channel symmetric round-to-nearest",
            _per_tensor(lambda w: round_to_nearest(w, INT8_LEVELS)),
        ),
        Transform(
            "int4",
            QUANTIZATION,
            "4-bit per-channel symmetric round-to-nearest (levels -7..7)",
            _per_tensor(lambda w: round_to_nearest(w, INT4_LEVELS)),
        ),
        Transform(
            "nf4",
            QUANTIZATION,
            f"NF4-style 16-value normal-quantile codebook, absmax per block of {NF4_BLOCK}",
            _per_tensor(nf4_quantize),
        ),
    ]


def pruning_transform(sparsity: float) -> Transform:
    percent = format(100 * sparsity, "g").replace(".", "_")
    return Transform(
        f"prune_{percent}",
        PRUNING,
        f"global magnitude pruning to {100 * sparsity:g} % sparsity",
        lambda state: magnitude_prune(state, sparsity),
    )


def transforms_for(sparsities: list[float]) -> list[Transform]:
    return [*quantization_transforms(), *(pruning_transform(s) for s in sparsities)]


def is_finite(state: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


__all__ = [
    "INT4_LEVELS",
    "INT8_LEVELS",
    "NF4_BLOCK",
    "PRUNING",
    "QUANTIZATION",
    "Transform",
    "copy_state",
    "is_finite",
    "magnitude_prune",
    "nf4_codebook",
    "nf4_max_gap",
    "nf4_quantize",
    "per_channel_scales",
    "round_to_nearest",
    "transformed_names",
    "transforms_for",
    "zero_fraction",
]
