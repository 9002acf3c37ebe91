"""Torch-free catalog of model architectures.

Each :class:`ArchitectureSpec` carries a pydantic config model, a pure-Python function that lists every
``state_dict`` entry (parameters *and* buffers) the built model will have, and the import path of the torch
builder. The API process uses the first two to validate uploads without importing torch; the worker calls
:func:`workers.engine.architectures.build.build_model`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.engine.architectures.library import (
    TIMM_MODELS_ENV,
    TimmConfig,
    TimmConvNeXtConfig,
    TimmResNetConfig,
    TimmViTConfig,
    TorchvisionMobileNetConfig,
    TorchvisionResNetConfig,
    TorchvisionVGGConfig,
    TorchvisionViTConfig,
    image_input_check,
    library_state_shapes,
)
from workers.engine.diffusion.job_params import GENERATOR, TEACHER, OneStepGeneratorConfig
from workers.engine.diffusion.params import DiffusionModelConfig
from workers.engine.diffusion.shapes import unet_param_shapes
from workers.engine.errors import InvalidInputError
from workers.engine.registry import Registry
from workers.engine.task_types import TaskType

FLOAT32 = "F32"
INT64 = "I64"

# (shape, safetensors dtype string) for every state_dict key.
ShapeDict = dict[str, tuple[tuple[int, ...], str]]

# Refuse configs whose model would not fit comfortably on one accelerator (1e8 float32 = 400 MB of weights,
# several GB once gradients, momentum and activations are added).
MAX_PARAMETER_COUNT = 100_000_000
MAX_CLASSES = 10_000
MAX_CHANNELS = 64
CONV_KERNEL_SIZE = 3
RESNET18_BLOCKS_PER_STAGE = (2, 2, 2, 2)
RESNET18_STAGE_STRIDES = (1, 2, 2, 2)
RESNET18_STAGE_WIDTH_FACTORS = (1, 2, 4, 8)


@dataclass(frozen=True)
class ArchitectureSpec:
    """A registered architecture.

    ``param_shapes(config)`` maps every ``state_dict`` key to ``(shape, dtype)`` with dtype a safetensors
    dtype string. ``builder`` is ``"module:function"`` of a torch ``build(config) -> nn.Module``.
    ``check_input(config, input_shape, num_classes)`` raises :class:`InvalidInputError` when a dataset with
    that per-sample shape and class count cannot be fed to a model built from ``config``.
    ``dataset_task_types`` are the dataset tasks it trains on when they differ from ``task_types`` (a
    generative model learns from a classification dataset). ``builder_args`` follow the config in the
    builder's call; ``max_parameters`` is the parameter budget (see :data:`MAX_PARAMETER_COUNT`).
    """

    name: str
    description: str
    task_types: tuple[TaskType, ...]
    config_model: type[BaseModel]
    param_shapes: Callable[[Any], ShapeDict]
    builder: str
    check_input: Callable[[Any, tuple[int, ...], int], None] | None = None
    dataset_task_types: tuple[TaskType, ...] | None = None
    builder_args: tuple[str, ...] = ()  # extra positional arguments of the builder (a library model's name)
    max_parameters: int = MAX_PARAMETER_COUNT

    @property
    def task(self) -> TaskType:
        """The model's own task type (the first listed)."""
        return self.task_types[0]

    def supports_dataset(self, task: str) -> bool:
        """Whether a dataset of task type ``task`` can train or be scored by this architecture."""
        return task in {t.value for t in (self.dataset_task_types or self.task_types)}

    def parse_config(self, config: BaseModel | Mapping[str, Any]) -> Any:
        """Validate a raw config (or pass through a validated one) and enforce the parameter budget."""
        if isinstance(config, self.config_model):
            parsed = config
        else:
            try:
                parsed = self.config_model.model_validate(config)
            except ValidationError as error:
                raise InvalidInputError(f"invalid {self.name} config: {_summarise(error)}") from None
        count = parameter_count(self.param_shapes(parsed))
        if count > self.max_parameters:
            raise InvalidInputError(
                f"{self.name} config has {count:,} parameters; the limit is {self.max_parameters:,}"
            )
        return parsed

    def expected_state(self, config: BaseModel | Mapping[str, Any]) -> ShapeDict:
        return self.param_shapes(self.parse_config(config))


def parameter_count(shapes: ShapeDict) -> int:
    return sum(math.prod(shape) for shape, _ in shapes.values())


def _summarise(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "config"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


NumClasses = Annotated[int, Field(ge=2, le=MAX_CLASSES, description="Number of output classes.")]
InChannels = Annotated[int, Field(ge=1, le=MAX_CHANNELS, description="Channels of the input images.")]


def _require_classes(name: str, config_classes: int, num_classes: int) -> None:
    if config_classes != num_classes:
        raise InvalidInputError(
            f"{name} config has num_classes={config_classes} but the dataset has {num_classes} classes"
        )


def _batch_norm_entries(prefix: str, channels: int) -> ShapeDict:
    vector = ((channels,), FLOAT32)
    return {
        f"{prefix}.weight": vector,
        f"{prefix}.bias": vector,
        f"{prefix}.running_mean": vector,
        f"{prefix}.running_var": vector,
        f"{prefix}.num_batches_tracked": ((), INT64),
    }


def _linear_entries(prefix: str, in_features: int, out_features: int) -> ShapeDict:
    return {
        f"{prefix}.weight": ((out_features, in_features), FLOAT32),
        f"{prefix}.bias": ((out_features,), FLOAT32),
    }


def _conv_entry(prefix: str, in_channels: int, out_channels: int, kernel: int) -> ShapeDict:
    return {f"{prefix}.weight": ((out_channels, in_channels, kernel, kernel), FLOAT32)}


# --------------------------------------------------------------------------------------------------- mlp
class MLPConfig(BaseModel):
    """Fully connected ReLU network; inputs of any shape are flattened first."""

    model_config = ConfigDict(extra="forbid")

    input_shape: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        min_length=1, max_length=3, description="Per-sample input shape, e.g. [1, 8, 8] or [64]."
    )
    hidden: list[Annotated[int, Field(ge=1, le=16_384)]] = Field(
        default=[128], max_length=16, description="Width of each hidden layer (may be empty: a linear model)."
    )
    num_classes: NumClasses = 10
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="Dropout after every hidden ReLU."
    )

    @property
    def in_features(self) -> int:
        return math.prod(self.input_shape)


def mlp_param_shapes(config: MLPConfig) -> ShapeDict:
    shapes: ShapeDict = {}
    widths = [config.in_features, *config.hidden]
    for index, (fan_in, fan_out) in enumerate(pairwise(widths)):
        shapes.update(_linear_entries(f"layers.{index}", fan_in, fan_out))
    shapes.update(_linear_entries("head", widths[-1], config.num_classes))
    return shapes


def mlp_check_input(config: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    if math.prod(input_shape) != config.in_features:
        raise InvalidInputError(
            f"mlp expects {config.in_features} input features (input_shape={config.input_shape}) "
            f"but dataset samples have shape {list(input_shape)}"
        )
    _require_classes("mlp", config.num_classes, num_classes)


# --------------------------------------------------------------------------------------------- small_cnn
class SmallCNNConfig(BaseModel):
    """Stack of conv3x3-BN-ReLU-maxpool(2) blocks, global average pool, linear head."""

    model_config = ConfigDict(extra="forbid")

    in_channels: InChannels = 3
    image_size: int = Field(default=32, ge=4, le=512, description="Height = width of the square inputs.")
    channels: list[Annotated[int, Field(ge=1, le=2048)]] = Field(
        default=[32, 64], min_length=1, max_length=6, description="Output channels of each conv block."
    )
    num_classes: NumClasses = 10

    @model_validator(mode="after")
    def _each_block_can_pool(self) -> SmallCNNConfig:
        # Every block halves the spatial size, so the image must survive len(channels) halvings.
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.channels)} pooling blocks "
                f"(needs at least {2 ** len(self.channels)})"
            )
        return self


def small_cnn_param_shapes(config: SmallCNNConfig) -> ShapeDict:
    shapes: ShapeDict = {}
    fan_in = config.in_channels
    for index, width in enumerate(config.channels):
        shapes.update(_conv_entry(f"blocks.{index}.conv", fan_in, width, CONV_KERNEL_SIZE))
        shapes.update(_batch_norm_entries(f"blocks.{index}.bn", width))
        fan_in = width
    shapes.update(_linear_entries("head", fan_in, config.num_classes))
    return shapes


def small_cnn_check_input(config: SmallCNNConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    expected = (config.in_channels, config.image_size, config.image_size)
    if tuple(input_shape) != expected:
        raise InvalidInputError(
            f"small_cnn expects inputs of shape {list(expected)} but dataset samples have shape "
            f"{list(input_shape)}"
        )
    _require_classes("small_cnn", config.num_classes, num_classes)


# ---------------------------------------------------------------------------------------------- resnet18
class ResNet18Config(BaseModel):
    """CIFAR-style ResNet-18 as in the reference code (optml.md §1.1): 3x3 stride-1 stem, no max-pool,
    BasicBlocks [2, 2, 2, 2] with widths width x (1, 2, 4, 8). Parameter names follow torchvision
    (conv1, bn1, layerN.M.*, downsample.0/1, fc) so reference checkpoints map across by name; the
    reference's in-model ``normalize`` buffers are not part of this model (deviation: input scaling is the
    dataset's job and the BN after the stem absorbs it)."""

    model_config = ConfigDict(extra="forbid")

    in_channels: InChannels = 3
    num_classes: NumClasses = 10
    width: int = Field(
        default=64, ge=1, le=256, description="Channels of the first stage (64 is the standard ResNet-18)."
    )


def resnet18_param_shapes(config: ResNet18Config) -> ShapeDict:
    shapes: ShapeDict = {}
    shapes.update(_conv_entry("conv1", config.in_channels, config.width, CONV_KERNEL_SIZE))
    shapes.update(_batch_norm_entries("bn1", config.width))
    fan_in = config.width
    stages = zip(RESNET18_BLOCKS_PER_STAGE, RESNET18_STAGE_STRIDES, RESNET18_STAGE_WIDTH_FACTORS, strict=True)
    for stage_index, (blocks, first_stride, factor) in enumerate(stages, start=1):
        width = config.width * factor
        for block_index in range(blocks):
            stride = first_stride if block_index == 0 else 1
            prefix = f"layer{stage_index}.{block_index}"
            shapes.update(_conv_entry(f"{prefix}.conv1", fan_in, width, CONV_KERNEL_SIZE))
            shapes.update(_batch_norm_entries(f"{prefix}.bn1", width))
            shapes.update(_conv_entry(f"{prefix}.conv2", width, width, CONV_KERNEL_SIZE))
            shapes.update(_batch_norm_entries(f"{prefix}.bn2", width))
            if stride != 1 or fan_in != width:
                shapes.update(_conv_entry(f"{prefix}.downsample.0", fan_in, width, 1))
                shapes.update(_batch_norm_entries(f"{prefix}.downsample.1", width))
            fan_in = width
    shapes.update(_linear_entries("fc", fan_in, config.num_classes))
    return shapes


def resnet18_check_input(config: ResNet18Config, input_shape: tuple[int, ...], num_classes: int) -> None:
    if len(input_shape) != 3 or input_shape[0] != config.in_channels:
        raise InvalidInputError(
            f"resnet18 expects images of shape [{config.in_channels}, H, W] but dataset samples have shape "
            f"{list(input_shape)}"
        )
    _require_classes("resnet18", config.num_classes, num_classes)


# ------------------------------------------------------------------------------------------ speedrun_cnn
# The fixed 2x2 whitening conv: for each of its 4 * C patch directions one filter and its negation.
WHITEN_KERNEL_SIZE = 2
WHITEN_FILTERS_PER_PATCH_VALUE = 2
DEFAULT_SPEEDRUN_WIDTHS = [64, 256, 256]


class SpeedrunCNNConfig(BaseModel):
    """The small fixed network of the published CIFAR-10 speed runs (Keller Jordan's airbench94, "94% on
    CIFAR-10 in 3.29 seconds on a single GPU"), written from that description: a fixed 2x2 conv (padding 0)
    whose filters the training recipe's ``whiten`` sets from the training patches' covariance (eigenvectors
    scaled by 1/sqrt(eigenvalue), each with its negation) and whose bias trains, GELU; then per width a block
    conv3x3 - maxpool 2 - BN - GELU - conv3x3 - BN - GELU; global max-pool; a bias-free linear head whose
    logits are multiplied by ``head_scale``; in eval mode the logits are averaged over the input and its
    horizontal mirror (test-time flip). Deviations: BatchNorm scales train (the published run freezes them;
    trainable scales keep every method that differentiates all parameters working), the convs keep torch's
    default initialisation (the published one starts half of each conv's channels as identity), BatchNorm
    eps is torch's 1e-5, and test-time augmentation is the flip only (no translations). Accepts any number
    of input channels and any image side that survives the poolings."""

    model_config = ConfigDict(extra="forbid")

    in_channels: InChannels = 3
    num_classes: NumClasses = 10
    widths: list[Annotated[int, Field(ge=1, le=2048)]] = Field(
        default_factory=lambda: list(DEFAULT_SPEEDRUN_WIDTHS),
        min_length=1,
        max_length=4,
        description="Channels of each conv block (each block halves the image side).",
    )
    head_scale: float = Field(
        default=1 / 9,
        gt=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="Multiplier of the linear head's logits (1/9 as published).",
    )
    tta_flip: bool = Field(
        default=True, description="Eval mode: average the logits of each image and its horizontal mirror."
    )

    @property
    def whiten_width(self) -> int:
        return WHITEN_FILTERS_PER_PATCH_VALUE * self.in_channels * WHITEN_KERNEL_SIZE**2

    def min_image_side(self) -> int:
        """The smallest side whose feature map keeps at least one pixel after every pooling."""
        return 2 ** len(self.widths) + WHITEN_KERNEL_SIZE - 1


def speedrun_cnn_param_shapes(config: SpeedrunCNNConfig) -> ShapeDict:
    patch = config.in_channels
    shapes: ShapeDict = {
        "whiten.bias": ((config.whiten_width,), FLOAT32),  # trained
        "whiten.weight": (  # a buffer: fixed after the data-dependent initialisation
            (config.whiten_width, patch, WHITEN_KERNEL_SIZE, WHITEN_KERNEL_SIZE),
            FLOAT32,
        ),
    }
    fan_in = config.whiten_width
    for index, width in enumerate(config.widths):
        shapes.update(_conv_entry(f"blocks.{index}.conv1", fan_in, width, CONV_KERNEL_SIZE))
        shapes.update(_batch_norm_entries(f"blocks.{index}.bn1", width))
        shapes.update(_conv_entry(f"blocks.{index}.conv2", width, width, CONV_KERNEL_SIZE))
        shapes.update(_batch_norm_entries(f"blocks.{index}.bn2", width))
        fan_in = width
    shapes["head.weight"] = ((config.num_classes, fan_in), FLOAT32)
    return shapes


def speedrun_cnn_check_input(
    config: SpeedrunCNNConfig, input_shape: tuple[int, ...], num_classes: int
) -> None:
    smallest = config.min_image_side()
    if len(input_shape) != 3 or input_shape[0] != config.in_channels or min(input_shape[1:]) < smallest:
        raise InvalidInputError(
            f"speedrun_cnn expects images of shape [{config.in_channels}, H, W] with H, W >= {smallest} "
            f"({len(config.widths)} pooling blocks) but dataset samples have shape {list(input_shape)}"
        )
    _require_classes("speedrun_cnn", config.num_classes, num_classes)


# ------------------------------------------------------------------------------------------ regressors
# Scalar-head variants for regression (blindspot_sfd.md §1.2: the reference models end in one output). They
# keep the classifiers' state_dict layout with a head of one output (``num_classes`` is fixed at 1, which
# is also what a regression dataset reports), and their modules return predictions of shape (N,).
RegressionOutputs = Annotated[
    int, Field(ge=1, le=1, description="Outputs of the scalar head: always 1 for regression.")
]


class MLPRegressorConfig(MLPConfig):
    """Fully connected ReLU network with one scalar output (inputs flattened first)."""

    num_classes: RegressionOutputs = 1


class SmallCNNRegressorConfig(SmallCNNConfig):
    """Conv3x3-BN-ReLU-maxpool(2) blocks, global average pool, one scalar output."""

    num_classes: RegressionOutputs = 1


class ResNet18RegressorConfig(ResNet18Config):
    """CIFAR-style ResNet-18 (as ``resnet18``) whose ``fc`` has one output, as the reference's torchvision
    ResNet18 with ``fc -> 1`` (blindspot_sfd.md §1.2; deviation: the CIFAR 3x3 stem instead of torchvision's
    7x7 stem + max-pool, so small images keep their resolution)."""

    num_classes: RegressionOutputs = 1


ARCHITECTURES: Registry[ArchitectureSpec] = Registry("architecture")

ARCHITECTURES.register(
    ArchitectureSpec(
        name="mlp",
        description="Fully connected ReLU network over flattened inputs (tabular data or tiny images).",
        task_types=(TaskType.classification,),
        config_model=MLPConfig,
        param_shapes=mlp_param_shapes,
        builder="workers.engine.architectures.mlp:build",
        check_input=mlp_check_input,
    )
)
ARCHITECTURES.register(
    ArchitectureSpec(
        name="small_cnn",
        description="Small conv-BN-ReLU-pool network with global average pooling, for quick image runs.",
        task_types=(TaskType.classification,),
        config_model=SmallCNNConfig,
        param_shapes=small_cnn_param_shapes,
        builder="workers.engine.architectures.small_cnn:build",
        check_input=small_cnn_check_input,
    )
)
ARCHITECTURES.register(
    ArchitectureSpec(
        name="resnet18",
        description="CIFAR-style ResNet-18 (3x3 stem, no max-pool), the reference unlearning model.",
        task_types=(TaskType.classification,),
        config_model=ResNet18Config,
        param_shapes=resnet18_param_shapes,
        builder="workers.engine.architectures.resnet:build",
        check_input=resnet18_check_input,
    )
)
ARCHITECTURES.register(
    ArchitectureSpec(
        name="speedrun_cnn",
        description=(
            "The CIFAR speed-run network (whitening 2x2 conv, conv-BN-GELU blocks with max-pooling, scaled "
            "linear head, test-time flip): retrains in seconds with the 'speedrun' recipe base."
        ),
        task_types=(TaskType.classification,),
        config_model=SpeedrunCNNConfig,
        param_shapes=speedrun_cnn_param_shapes,
        builder="workers.engine.architectures.speedrun:build",
        check_input=speedrun_cnn_check_input,
    )
)

ARCHITECTURES.register(
    ArchitectureSpec(
        name="mlp_regressor",
        description="Fully connected ReLU network with a scalar output (tabular regression).",
        task_types=(TaskType.regression,),
        config_model=MLPRegressorConfig,
        param_shapes=mlp_param_shapes,
        builder="workers.engine.architectures.regressors:build_mlp",
        check_input=mlp_check_input,
    )
)
ARCHITECTURES.register(
    ArchitectureSpec(
        name="small_cnn_regressor",
        description="Small conv-BN-ReLU-pool network with global average pooling and a scalar output.",
        task_types=(TaskType.regression,),
        config_model=SmallCNNRegressorConfig,
        param_shapes=small_cnn_param_shapes,
        builder="workers.engine.architectures.regressors:build_small_cnn",
        check_input=small_cnn_check_input,
    )
)
ARCHITECTURES.register(
    ArchitectureSpec(
        name="resnet18_regressor",
        description=(
            "CIFAR-style ResNet-18 with a scalar output; exposes the stem and all 8 BasicBlocks' outputs "
            "(the Deep Regression Unlearning reference's 9 attention layers)."
        ),
        task_types=(TaskType.regression,),
        config_model=ResNet18RegressorConfig,
        param_shapes=resnet18_param_shapes,
        builder="workers.engine.architectures.regressors:build_resnet18",
        check_input=resnet18_check_input,
    )
)


# ----------------------------------------------------------------------------------------- generative
def unet_check_input(config: DiffusionModelConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    expected = (config.image_channels, config.image_size, config.image_size)
    if tuple(input_shape) != expected:
        raise InvalidInputError(
            f"the U-Net generates images of shape {list(expected)} but dataset samples have shape "
            f"{list(input_shape)}"
        )
    _require_classes("the U-Net", config.num_classes, num_classes)


ARCHITECTURES.register(
    ArchitectureSpec(
        name=TEACHER,
        description=(
            "Class-conditional DDPM (epsilon-prediction U-Net with a null class for classifier-free guidance "
            "and its noise schedule): a multi-step generative teacher, trained on a classification image set."
        ),
        task_types=(TaskType.generative,),
        config_model=DiffusionModelConfig,
        param_shapes=unet_param_shapes,
        builder="workers.engine.diffusion.unet:build",
        check_input=unet_check_input,
        dataset_task_types=(TaskType.classification,),
    )
)
ARCHITECTURES.register(
    ArchitectureSpec(
        name=GENERATOR,
        description=(
            "One-step class-conditional generator from Score Forgetting Distillation: the teacher's U-Net "
            "evaluated once at t_init, G(z, c) = sigma_init * (z - eps(b_init z, t_init, c))."
        ),
        task_types=(TaskType.generative,),
        config_model=OneStepGeneratorConfig,
        param_shapes=unet_param_shapes,
        builder="workers.engine.diffusion.unet:build",
        check_input=unet_check_input,
        dataset_task_types=(TaskType.classification,),
    )
)


# ----------------------------------------------------------------------------- torchvision and timm models
def _library_shapes(architecture: str) -> Callable[[Any], ShapeDict]:
    def shapes(config: BaseModel) -> ShapeDict:
        return library_state_shapes(architecture, config)

    return shapes


def _first_channels(config: Any) -> int:
    return int(getattr(config, "in_channels", 3))


def _rgb(config: Any) -> int:
    return 3


# vgg16_bn's classifier alone (25088 -> 4096 -> 4096) holds 120 M parameters whatever the class count.
VGG_MAX_PARAMETERS = 150_000_000
# (registry name, library name, config model, builder, description, check_input, parameter budget)
_LIBRARY_ENTRIES: list[tuple[str, str, type[BaseModel], str, str, Callable[..., None], int]] = []
for _depth in (18, 34, 50):
    _LIBRARY_ENTRIES.append(
        (
            f"torchvision.resnet{_depth}",
            f"resnet{_depth}",
            TorchvisionResNetConfig,
            "build_torchvision_resnet",
            f"torchvision's ResNet-{_depth} (state_dict keys as torchvision's; cifar_stem: 3x3 stride-1 "
            "stem, no max-pool).",
            image_input_check(f"torchvision.resnet{_depth}", channels=_first_channels),
            MAX_PARAMETER_COUNT,
        )
    )
_LIBRARY_ENTRIES += [
    (
        "torchvision.vgg16_bn",
        "vgg16_bn",
        TorchvisionVGGConfig,
        "build_torchvision_vgg",
        "torchvision's VGG-16 with BatchNorm (3-channel images, sides >= 32).",
        image_input_check("torchvision.vgg16_bn", channels=_rgb, min_side=32),
        VGG_MAX_PARAMETERS,
    ),
    (
        "torchvision.mobilenet_v3_small",
        "mobilenet_v3_small",
        TorchvisionMobileNetConfig,
        "build_torchvision_mobilenet",
        "torchvision's MobileNetV3-Small (3-channel images).",
        image_input_check("torchvision.mobilenet_v3_small", channels=_rgb),
        MAX_PARAMETER_COUNT,
    ),
    (
        "torchvision.vit_b_16",
        "vit_b_16",
        TorchvisionViTConfig,
        "build_torchvision_vit",
        "torchvision's ViT-B/16 (3-channel square images of exactly image_size).",
        image_input_check("torchvision.vit_b_16", channels=_rgb, exact_side="image_size"),
        MAX_PARAMETER_COUNT,
    ),
    (
        "timm.resnet18",
        "resnet18",
        TimmResNetConfig,
        "build_timm",
        "timm's resnet18 (timm.create_model, pretrained=False; channels: the four stage widths).",
        image_input_check("timm.resnet18", channels=_first_channels),
        MAX_PARAMETER_COUNT,
    ),
    (
        "timm.convnext_atto",
        "convnext_atto",
        TimmConvNeXtConfig,
        "build_timm",
        "timm's convnext_atto (pretrained=False; dims and depths override the four stages; sides >= 32).",
        image_input_check("timm.convnext_atto", channels=_first_channels, min_side=32),
        MAX_PARAMETER_COUNT,
    ),
    (
        "timm.vit_tiny_patch16_224",
        "vit_tiny_patch16_224",
        TimmViTConfig,
        "build_timm",
        "timm's vit_tiny_patch16_224 (pretrained=False; square images of exactly image_size).",
        image_input_check("timm.vit_tiny_patch16_224", channels=_first_channels, exact_side="image_size"),
        MAX_PARAMETER_COUNT,
    ),
]
# Operator-allowed extra timm models (LETHE_TIMM_MODELS, comma-separated timm names): built with the
# generic config only (num_classes, in_channels, drop_rate), so users still pass no free-form kwargs.
for _extra in filter(None, (part.strip() for part in os.environ.get(TIMM_MODELS_ENV, "").split(","))):
    if not re.fullmatch(r"[a-z0-9_.]+", _extra) or f"timm.{_extra}" in {e[0] for e in _LIBRARY_ENTRIES}:
        continue
    _LIBRARY_ENTRIES.append(
        (
            f"timm.{_extra}",
            _extra,
            TimmConfig,
            "build_timm",
            f"timm's {_extra} (allowed by the operator; pretrained=False).",
            image_input_check(f"timm.{_extra}", channels=_first_channels),
            MAX_PARAMETER_COUNT,
        )
    )

for _name, _library_name, _config_model, _builder, _description, _check, _budget in _LIBRARY_ENTRIES:
    ARCHITECTURES.register(
        ArchitectureSpec(
            name=_name,
            description=_description,
            task_types=(TaskType.classification,),
            config_model=_config_model,
            param_shapes=_library_shapes(_name),
            builder=f"workers.engine.architectures.library_build:{_builder}",
            check_input=_check,
            builder_args=(_library_name,),
            max_parameters=_budget,
        )
    )

__all__ = [
    "ARCHITECTURES",
    "FLOAT32",
    "INT64",
    "MAX_PARAMETER_COUNT",
    "ArchitectureSpec",
    "MLPConfig",
    "MLPRegressorConfig",
    "ResNet18Config",
    "ResNet18RegressorConfig",
    "ShapeDict",
    "SmallCNNConfig",
    "SmallCNNRegressorConfig",
    "SpeedrunCNNConfig",
    "parameter_count",
]
