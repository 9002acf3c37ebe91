"""Torch implementation of ``speedrun_cnn`` (layout and deviations: ``SpeedrunCNNConfig``,
``speedrun_cnn_param_shapes``), written from the published description of the CIFAR-10 speed runs.

The first layer is a fixed 2x2 conv. Until the training recipe's ``whiten`` initialises it from data
(:meth:`SpeedrunCNN.initialise_from_data`) it holds the whitening of white data: every patch value and its
negation, so a model trained without ``whiten`` still has a working first layer.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.architectures import (
    CONV_KERNEL_SIZE,
    WHITEN_FILTERS_PER_PATCH_VALUE,
    WHITEN_KERNEL_SIZE,
    SpeedrunCNNConfig,
)

POOL_FACTOR = 2
# BatchNorm running statistics follow the batch at 0.4 (the published 0.6 in the other convention).
BATCH_NORM_MOMENTUM = 0.4
# The published whitening uses the first 5,000 training images, with eps = 5e-4 on unit-variance data;
# here eps is relative to the mean eigenvalue, which is the same there and scale-free elsewhere.
WHITEN_SAMPLE_LIMIT = 5000
WHITEN_RELATIVE_EPS = 5e-4
# Images per chunk while accumulating the patch covariance (bounds the float64 unfold's memory).
WHITEN_CHUNK = 256


class Whitening(nn.Module):
    """A 2x2 conv (padding 0) whose filters are a buffer (fixed: never trained) and whose bias trains."""

    weight: torch.Tensor

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        patch_size = in_channels * WHITEN_KERNEL_SIZE**2
        width = WHITEN_FILTERS_PER_PATCH_VALUE * patch_size
        self.bias = nn.Parameter(torch.zeros(width))
        identity = torch.eye(patch_size)
        filters = torch.cat([identity, -identity]).view(width, in_channels, WHITEN_KERNEL_SIZE, -1)
        self.register_buffer("weight", filters)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inputs, self.weight, self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Filters = the eigenvectors of the covariance of ``images``' 2x2 patches divided by the square root
        of their eigenvalues (+ eps), each with its negation; bias = what centres the patches. Computed in
        float64 from the first :data:`WHITEN_SAMPLE_LIMIT` images in the given order (no randomness)."""
        sample = images[:WHITEN_SAMPLE_LIMIT]
        patch_size = self.weight[0].numel()
        total = torch.zeros(patch_size, dtype=torch.float64, device=images.device)
        products = torch.zeros(patch_size, patch_size, dtype=torch.float64, device=images.device)
        count = 0
        for start in range(0, sample.shape[0], WHITEN_CHUNK):
            chunk = sample[start : start + WHITEN_CHUNK].double()
            # unfold orders each patch as (channel, row, column): the layout of a conv filter.
            patches = F.unfold(chunk, WHITEN_KERNEL_SIZE).transpose(1, 2).reshape(-1, patch_size)
            total += patches.sum(dim=0)
            products += patches.T @ patches
            count += patches.shape[0]
        mean = total / count
        covariance = (products - count * torch.outer(mean, mean)) / max(count - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.cpu())
        eps = WHITEN_RELATIVE_EPS * float(eigenvalues.mean().clamp(min=torch.finfo(torch.float64).tiny))
        filters = (eigenvectors / (eigenvalues.clamp(min=0.0) + eps).sqrt()).T.to(images.device)
        filters = torch.cat([filters, -filters])
        self.weight.copy_(filters.view_as(self.weight).to(self.weight.dtype))
        self.bias.copy_((-(filters @ mean)).to(self.bias.dtype))


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    # No conv bias: the BatchNorm shift after it makes one redundant.
    return nn.Conv2d(in_channels, out_channels, CONV_KERNEL_SIZE, padding=CONV_KERNEL_SIZE // 2, bias=False)


class SpeedrunBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=BATCH_NORM_MOMENTUM)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=BATCH_NORM_MOMENTUM)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.bn1(F.max_pool2d(self.conv1(inputs), POOL_FACTOR)))
        return F.gelu(self.bn2(self.conv2(hidden)))


class SpeedrunCNN(nn.Module):
    def __init__(self, config: SpeedrunCNNConfig) -> None:
        super().__init__()
        self.whiten = Whitening(config.in_channels)
        widths = [config.whiten_width, *config.widths]
        self.blocks = nn.Sequential(*(SpeedrunBlock(fan_in, fan_out) for fan_in, fan_out in pairwise(widths)))
        self.head = nn.Linear(widths[-1], config.num_classes, bias=False)
        self.head_scale = config.head_scale
        self.tta_flip = config.tta_flip
        self.activation_layers = [f"blocks.{index}" for index in range(len(self.blocks))]

    def initialise_from_data(self, inputs: torch.Tensor) -> None:
        """The data-dependent initialisation the recipe's ``whiten`` asks for (see :meth:`Whitening.fit`)."""
        self.whiten.fit(inputs)

    def _single_view(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.blocks(F.gelu(self.whiten(inputs)))
        return self.head(features.amax(dim=(2, 3))) * self.head_scale

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits; in eval mode with ``tta_flip`` the mean of the input's and its mirror's (the activation
        hooks keep the first pass: the input's own)."""
        logits = self._single_view(inputs)
        if self.tta_flip and not self.training:
            logits = 0.5 * (logits + self._single_view(inputs.flip(-1)))
        return logits


def build(config: SpeedrunCNNConfig) -> nn.Module:
    return SpeedrunCNN(config)
