"""A small class-conditional conv U-Net predicting epsilon (after the reference's ``Conditional_Model``).

Kept from the reference (blindspot_sfd.md §2.1): sinusoidal timestep embedding of the integer t through a
two-layer MLP; a class embedding plus a null class through its own MLP; both concatenated and projected
into every residual block (GroupNorm, SiLU, conv, + embedding, GroupNorm, SiLU, dropout, conv, skip);
skip connections concatenated on the way up with one extra block per level; self-attention in the middle.
Scaled down through :class:`DiffusionModelConfig` (widths, levels, blocks); works for any image size
divisible by 2 ** (levels - 1), e.g. 8x8 digits with two levels, 16x16 / 32x32 procedural images with
three or four.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.diffusion.params import DiffusionModelConfig

# The embedding MLPs are 4x the base width, as in the reference (temb_ch = cemb_ch = 4 * ch).
EMBEDDING_WIDTH_FACTOR = 4
# The reference's sinusoid period base (Transformer / DDPM).
SINUSOID_MAX_PERIOD = 10_000.0
GROUP_NORM_EPS = 1e-6


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's sinusoidal embedding of (possibly fractional) timesteps, shape (N, dim)."""
    half = dim // 2
    scale = math.log(SINUSOID_MAX_PERIOD) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    angles = t.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, channels), num_channels=channels, eps=GROUP_NORM_EPS)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding_proj = nn.Linear(embedding_dim, out_channels)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding_proj(F.silu(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the spatial positions (the reference's AttnBlock)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * channels**-0.5, dim=-1)
        attended = torch.einsum("bij,bcj->bci", weights, v).reshape(batch, channels, height, width)
        return x + self.proj_out(attended)


class UNet(nn.Module):
    """epsilon_theta(x_t, t, c) for labels c in [0, num_classes]; label ``num_classes`` is the null class."""

    def __init__(self, config: DiffusionModelConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        embed = EMBEDDING_WIDTH_FACTOR * ch
        groups = config.norm_groups
        self.null_class = config.num_classes
        self.time_mlp = nn.Sequential(nn.Linear(ch, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.class_embedding = nn.Embedding(config.num_classes + 1, ch)
        self.class_mlp = nn.Sequential(nn.Linear(ch, embed), nn.SiLU(), nn.Linear(embed, embed))
        block_embedding = 2 * embed  # [temb, cemb] concatenated, as the reference
        self.conv_in = nn.Conv2d(config.image_channels, ch, 3, padding=1)

        widths = [ch * mult for mult in config.channel_mults]
        skip_channels = [ch]
        current = ch
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(ResBlock(current, width, block_embedding, config.dropout, groups))
                current = width
                skip_channels.append(current)
            self.down_blocks.append(blocks)
            if level < len(widths) - 1:
                self.downsamplers.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
                skip_channels.append(current)

        self.mid_block1 = ResBlock(current, current, block_embedding, config.dropout, groups)
        self.mid_attention: nn.Module = (
            AttentionBlock(current, groups) if config.mid_attention else nn.Identity()
        )
        self.mid_block2 = ResBlock(current, current, block_embedding, config.dropout, groups)

        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level + 1):
                skip = skip_channels.pop()
                blocks.append(
                    ResBlock(current + skip, widths[level], block_embedding, config.dropout, groups)
                )
                current = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamplers.append(nn.Conv2d(current, current, 3, padding=1))
        self.norm_out = _norm(current, groups)
        self.conv_out = nn.Conv2d(current, config.image_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        cemb = self.class_mlp(self.class_embedding(labels))
        embedding = torch.cat([temb, cemb], dim=1)

        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for block in cast(nn.ModuleList, blocks):
                h = block(h, embedding)
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)

        h = self.mid_block2(self.mid_attention(self.mid_block1(h, embedding)), embedding)

        for index, blocks in enumerate(self.up_blocks):
            for block in cast(nn.ModuleList, blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), embedding)
            if index < len(self.upsamplers):
                h = self.upsamplers[index](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def guided_eps(
    model: UNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Classifier-free guidance in the reference's form (1 + w) eps(x, c) - w eps(x, null); w = 0 is one
    plain conditional call, w > 0 one batched call over [c, null]."""
    if guidance_scale == 0.0:
        result: torch.Tensor = model(x, t, labels)
        return result
    null = torch.full_like(labels, model.config.num_classes)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    conditional, unconditional = both.chunk(2)
    return (1.0 + guidance_scale) * conditional - guidance_scale * unconditional


def build(config: DiffusionModelConfig) -> UNet:
    """Architecture-registry builder (``"workers.engine.diffusion.unet:build"``)."""
    return UNet(config)
