"""Torch-free list of every ``state_dict`` entry of :class:`workers.engine.diffusion.unet.UNet`.

The same ``{key: (shape, safetensors dtype)}`` format as ``workers.engine.architectures.ShapeDict``, so the
API's safetensors intake can validate uploaded teachers and generators without importing torch. Mirrors the
U-Net constructor exactly; a test compares both for several configs.
"""

from __future__ import annotations

from workers.engine.diffusion.params import DiffusionModelConfig

FLOAT32 = "F32"
EMBEDDING_WIDTH_FACTOR = 4  # as unet.EMBEDDING_WIDTH_FACTOR
KERNEL = 3
ATTENTION_PROJECTIONS = 3  # q, k, v in one 1x1 convolution

ShapeDict = dict[str, tuple[tuple[int, ...], str]]


def _linear(shapes: ShapeDict, prefix: str, out_features: int, in_features: int) -> None:
    shapes[f"{prefix}.weight"] = ((out_features, in_features), FLOAT32)
    shapes[f"{prefix}.bias"] = ((out_features,), FLOAT32)


def _conv(shapes: ShapeDict, prefix: str, out_channels: int, in_channels: int, kernel: int) -> None:
    shapes[f"{prefix}.weight"] = ((out_channels, in_channels, kernel, kernel), FLOAT32)
    shapes[f"{prefix}.bias"] = ((out_channels,), FLOAT32)


def _norm(shapes: ShapeDict, prefix: str, channels: int) -> None:
    shapes[f"{prefix}.weight"] = ((channels,), FLOAT32)
    shapes[f"{prefix}.bias"] = ((channels,), FLOAT32)


def _res_block(shapes: ShapeDict, prefix: str, in_channels: int, out_channels: int, embedding: int) -> None:
    _norm(shapes, f"{prefix}.norm1", in_channels)
    _conv(shapes, f"{prefix}.conv1", out_channels, in_channels, KERNEL)
    _linear(shapes, f"{prefix}.embedding_proj", out_channels, embedding)
    _norm(shapes, f"{prefix}.norm2", out_channels)
    _conv(shapes, f"{prefix}.conv2", out_channels, out_channels, KERNEL)
    if in_channels != out_channels:
        _conv(shapes, f"{prefix}.shortcut", out_channels, in_channels, 1)


def unet_param_shapes(config: DiffusionModelConfig) -> ShapeDict:
    ch = config.base_channels
    embed = EMBEDDING_WIDTH_FACTOR * ch
    block_embedding = 2 * embed
    shapes: ShapeDict = {}
    _linear(shapes, "time_mlp.0", embed, ch)
    _linear(shapes, "time_mlp.2", embed, embed)
    shapes["class_embedding.weight"] = ((config.num_classes + 1, ch), FLOAT32)
    _linear(shapes, "class_mlp.0", embed, ch)
    _linear(shapes, "class_mlp.2", embed, embed)
    _conv(shapes, "conv_in", ch, config.image_channels, KERNEL)

    widths = [ch * mult for mult in config.channel_mults]
    skips = [ch]
    current = ch
    for level, width in enumerate(widths):
        for block in range(config.blocks_per_level):
            _res_block(shapes, f"down_blocks.{level}.{block}", current, width, block_embedding)
            current = width
            skips.append(current)
        if level < len(widths) - 1:
            _conv(shapes, f"downsamplers.{level}", current, current, KERNEL)
            skips.append(current)
    _res_block(shapes, "mid_block1", current, current, block_embedding)
    if config.mid_attention:
        _norm(shapes, "mid_attention.norm", current)
        _conv(shapes, "mid_attention.qkv", ATTENTION_PROJECTIONS * current, current, 1)
        _conv(shapes, "mid_attention.proj_out", current, current, 1)
    _res_block(shapes, "mid_block2", current, current, block_embedding)
    for index, level in enumerate(reversed(range(len(widths)))):
        for block in range(config.blocks_per_level + 1):
            skip = skips.pop()
            _res_block(shapes, f"up_blocks.{index}.{block}", current + skip, widths[level], block_embedding)
            current = widths[level]
        if level > 0:
            _conv(shapes, f"upsamplers.{index}", current, current, KERNEL)
    _norm(shapes, "norm_out", current)
    _conv(shapes, "conv_out", config.image_channels, current, KERNEL)
    return shapes
