"""Torch-free catalog entries for torchvision and timm models, built by name from the library's own code.

Users train these in their own code and upload ``safetensors.torch.save_file(model.state_dict(), ...)`` as
is: the engine builds the library's model unwrapped, so its state_dict keys are the library's keys.

Each entry's config is a closed pydantic model (``extra='forbid'``): only the constructor arguments listed
there reach the library, so no user value can name a file, a URL or pretrained weights (``pretrained`` is
always False; timm's ``checkpoint_path`` and ``pretrained_cfg_overlay`` are never passed).

The shape/key table of a (model, config) pair comes from the library itself: the model is built on torch's
``meta`` device (no memory, no initialisation cost) and its ``state_dict()`` read off. The API process never
imports torch, so there the table is computed once in a short-lived torch subprocess
(``python -m workers.engine.architectures.shape_table``) and cached — in memory and as a JSON file keyed by a
hash of the library versions, the model name and the config — so upload checks stay torch-free and execute
no user code: the subprocess reads only a validated config, never the uploaded bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.errors import InvalidInputError, ShapeTableUnavailable

# Library code builds the model: these are the distributions whose versions can change its state_dict.
LIBRARY_DISTRIBUTIONS = ("torch", "torchvision", "timm")
SHAPE_TABLE_DIR_ENV = "LETHE_SHAPE_TABLE_DIR"
# Importing torch + timm and building on the meta device takes a few seconds; a minute is a broken install.
SHAPE_TABLE_TIMEOUT_S = 120.0
# Helper processes one API process runs at once: each new (architecture, config) costs one torch start-up,
# so a burst of distinct configs queues here instead of forking a torch per request.
MAX_CONCURRENT_HELPERS = 2
TIMM_MODELS_ENV = "LETHE_TIMM_MODELS"
REPO_ROOT = Path(__file__).resolve().parents[3]

ShapeDict = dict[str, tuple[tuple[int, ...], str]]

NumClasses = Annotated[int, Field(ge=2, le=10_000, description="Number of output classes.")]
InChannels = Annotated[int, Field(ge=1, le=64, description="Channels of the input images.")]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
StageWidths = Annotated[list[Annotated[int, Field(ge=1, le=2048)]], Field(min_length=4, max_length=4)]
StageDepths = Annotated[list[Annotated[int, Field(ge=1, le=32)]], Field(min_length=4, max_length=4)]


# ------------------------------------------------------------------------------------------ torchvision
class TorchvisionResNetConfig(BaseModel):
    """torchvision ``resnetNN(weights=None, num_classes=..., zero_init_residual=...)``. ``cifar_stem`` swaps
    ``conv1`` for a 3x3 stride-1 conv and ``maxpool`` for an identity, as the OPTML reference's CIFAR
    ResNets (optml.md §1.1): same state_dict keys, ``conv1.weight`` becomes [64, C, 3, 3]. ``in_channels``
    other than 3 also replaces ``conv1`` (same kernel as the stem in use)."""

    model_config = ConfigDict(extra="forbid")

    num_classes: NumClasses = 10
    in_channels: InChannels = 3
    cifar_stem: bool = Field(default=False, description="3x3 stride-1 first conv and no max-pool (CIFAR).")
    zero_init_residual: bool = Field(default=False, description="torchvision's zero_init_residual.")


class TorchvisionVGGConfig(BaseModel):
    """torchvision ``vgg16_bn(weights=None, num_classes=..., dropout=...)``: 3-channel inputs, any side of
    at least 32 (five max-pools, then an adaptive 7x7 average pool)."""

    model_config = ConfigDict(extra="forbid")

    num_classes: NumClasses = 10
    dropout: Dropout = 0.5


class TorchvisionMobileNetConfig(BaseModel):
    """torchvision ``mobilenet_v3_small(weights=None, num_classes=..., width_mult=..., dropout=...,
    reduced_tail=...)``: 3-channel inputs."""

    model_config = ConfigDict(extra="forbid")

    num_classes: NumClasses = 10
    width_mult: float = Field(default=1.0, gt=0.0, le=4.0, allow_inf_nan=False)
    dropout: Dropout = 0.2
    reduced_tail: bool = False


class TorchvisionViTConfig(BaseModel):
    """torchvision ``vit_b_16(weights=None, num_classes=..., image_size=..., dropout=...,
    attention_dropout=...)``: 3-channel square inputs of exactly ``image_size`` (a multiple of 16)."""

    model_config = ConfigDict(extra="forbid")

    num_classes: NumClasses = 10
    image_size: int = Field(default=224, ge=16, le=1024, multiple_of=16)
    dropout: Dropout = 0.0
    attention_dropout: Dropout = 0.0


# ------------------------------------------------------------------------------------------------- timm
class TimmConfig(BaseModel):
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=..., drop_rate=...)``."""

    model_config = ConfigDict(extra="forbid")

    num_classes: NumClasses = 10
    in_channels: InChannels = 3
    drop_rate: Dropout = 0.0

    def timm_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_chans": self.in_channels, "drop_rate": self.drop_rate}


class TimmResNetConfig(TimmConfig):
    """timm ``resnet18``; ``channels`` are the four stages' widths (timm's ``channels`` argument)."""

    channels: StageWidths = Field(default_factory=lambda: [64, 128, 256, 512])

    def timm_kwargs(self) -> dict[str, Any]:
        return {**super().timm_kwargs(), "channels": tuple(self.channels)}


class TimmConvNeXtConfig(TimmConfig):
    """timm ``convnext_atto``; ``dims`` and ``depths`` override the four stages' widths and block counts."""

    dims: StageWidths = Field(default_factory=lambda: [40, 80, 160, 320])
    depths: StageDepths = Field(default_factory=lambda: [2, 2, 6, 2])

    def timm_kwargs(self) -> dict[str, Any]:
        return {**super().timm_kwargs(), "dims": tuple(self.dims), "depths": tuple(self.depths)}


class TimmViTConfig(TimmConfig):
    """timm ``vit_tiny_patch16_224``; square inputs of exactly ``image_size`` (a multiple of
    ``patch_size``)."""

    image_size: int = Field(default=224, ge=4, le=1024)
    patch_size: int = Field(default=16, ge=1, le=64)
    depth: int = Field(default=12, ge=1, le=48)
    embed_dim: int = Field(default=192, ge=8, le=4096)
    num_heads: int = Field(default=3, ge=1, le=64)

    @model_validator(mode="after")
    def _consistent(self) -> TimmViTConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        return self

    def timm_kwargs(self) -> dict[str, Any]:
        return {
            **super().timm_kwargs(),
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
        }


# ------------------------------------------------------------------------------------ input requirements
def image_input_check(
    name: str, *, channels: Callable[[Any], int], min_side: int = 1, exact_side: str | None = None
) -> Callable[[Any, tuple[int, ...], int], None]:
    """A ``check_input`` for image classifiers: [C, H, W] with C from the config, sides at least
    ``min_side`` or exactly the config's ``exact_side`` field, and the config's class count."""

    def check(config: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
        expected_channels = channels(config)
        if len(input_shape) != 3 or input_shape[0] != expected_channels:
            raise InvalidInputError(
                f"{name} expects images of shape [{expected_channels}, H, W] but dataset samples have shape "
                f"{list(input_shape)}"
            )
        if exact_side is not None:
            side = int(getattr(config, exact_side))
            if tuple(input_shape[1:]) != (side, side):
                raise InvalidInputError(
                    f"{name} expects {side}x{side} images ({exact_side}={side}) but dataset samples have "
                    f"shape {list(input_shape)}"
                )
        elif min(input_shape[1:]) < min_side:
            raise InvalidInputError(
                f"{name} needs images of at least {min_side}x{min_side}; dataset samples have shape "
                f"{list(input_shape)}"
            )
        if config.num_classes != num_classes:
            raise InvalidInputError(
                f"{name} config has num_classes={config.num_classes} but the dataset has {num_classes} "
                "classes"
            )

    return check


# ------------------------------------------------------------------------------------------ shape tables
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that build these models (read from metadata: no import)."""
    versions = {}
    for distribution in LIBRARY_DISTRIBUTIONS:
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = "absent"
    return versions


def _cache_dir() -> Path:
    configured = os.environ.get(SHAPE_TABLE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "lethe" / "shape-tables"


def _table_key(architecture: str, config: BaseModel) -> str:
    identity = {
        "architecture": architecture,
        "config": config.model_dump(mode="json"),
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _decode(table: dict[str, Any]) -> ShapeDict:
    return {key: (tuple(int(n) for n in shape), str(dtype)) for key, (shape, dtype) in table.items()}


def _encode(table: ShapeDict) -> dict[str, Any]:
    return {key: [list(shape), dtype] for key, (shape, dtype) in table.items()}


_MEMORY: dict[str, ShapeDict] = {}
_LOCK = threading.Lock()
_HELPERS = threading.BoundedSemaphore(MAX_CONCURRENT_HELPERS)


def library_state_shapes(architecture: str, config: BaseModel) -> ShapeDict:
    """The state_dict table of ``architecture`` built from ``config``: memory, then the file cache, then
    computed (in this process when torch is already loaded — a worker —, else in a torch subprocess)."""
    key = _table_key(architecture, config)
    with _LOCK:
        cached = _MEMORY.get(key)
    if cached is not None:
        return cached
    path = _cache_dir() / f"{key}.json"
    table: ShapeDict | None = None
    try:
        table = _decode(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        table = None  # absent or unreadable: compute it again
    if table is None:
        table = _compute(architecture, config, in_process="torch" in sys.modules)
        _write_atomically(path, json.dumps(_encode(table)))
    with _LOCK:
        _MEMORY[key] = table
    return table


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            handle.write(text)
        os.replace(handle.name, path)
    except OSError:
        pass  # a read-only home only costs recomputation


def _compute(architecture: str, config: BaseModel, *, in_process: bool) -> ShapeDict:
    if in_process:
        from workers.engine.architectures.shape_table import compute_table

        return compute_table(architecture, config.model_dump(mode="json"))
    request = json.dumps({"architecture": architecture, "config": config.model_dump(mode="json")})
    # The child reads only this validated request; HF_HUB_OFFLINE keeps timm from reaching for a hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    try:
        with _HELPERS:
            completed = subprocess.run(
                [sys.executable, "-m", "workers.engine.architectures.shape_table"],
                input=request,
                capture_output=True,
                text=True,
                timeout=SHAPE_TABLE_TIMEOUT_S,
                cwd=REPO_ROOT,
                env=env,
                check=False,
            )
    except subprocess.TimeoutExpired as exc:
        raise ShapeTableUnavailable(f"computing the {architecture} shape table timed out") from exc
    except OSError as exc:
        raise ShapeTableUnavailable(f"the {architecture} shape-table helper could not start: {exc}") from exc
    try:
        answer = json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ShapeTableUnavailable(
            f"the {architecture} shape-table helper failed (exit {completed.returncode}): "
            f"{completed.stderr.strip()[-500:]}"
        ) from None
    if "error" in answer:
        raise InvalidInputError(f"{architecture}: {answer['error']}")
    return _decode(answer["table"])
