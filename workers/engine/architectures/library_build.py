"""Torch side of the torchvision / timm entries: build the library's own model, unwrapped.

No wrapper module: the returned model is the library's class, so ``model.state_dict()`` has exactly the keys
the user's ``model.state_dict()`` had. Each builder also sets ``activation_layers`` (a plain attribute, not
part of the state_dict): the module paths whose outputs the blindspot method's attention transfer reads.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from workers.engine.architectures.library import (
    TimmConfig,
    TorchvisionMobileNetConfig,
    TorchvisionResNetConfig,
    TorchvisionVGGConfig,
    TorchvisionViTConfig,
)

# Belt and braces beside pretrained=False: timm never reaches for the hub from a worker.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESNET_STAGES = ["layer1", "layer2", "layer3", "layer4"]
IMAGENET_STEM_KERNEL, IMAGENET_STEM_STRIDE, IMAGENET_STEM_PADDING = 7, 2, 3
CIFAR_STEM_KERNEL = 3


def _with_layers(model: nn.Module, layers: list[str]) -> nn.Module:
    # A plain attribute (nn.Module stores non-tensor values as such), invisible to state_dict.
    object.__setattr__(model, "activation_layers", layers)
    return model


def _torchvision(name: str) -> Any:
    # Imported on use: the API's shape-table helper then loads only the library it needs.
    import torchvision.models

    return getattr(torchvision.models, name)


def build_torchvision_resnet(config: TorchvisionResNetConfig, name: str) -> nn.Module:
    model = _torchvision(name)(
        weights=None, num_classes=config.num_classes, zero_init_residual=config.zero_init_residual
    )
    if config.cifar_stem or config.in_channels != 3:
        kernel, stride, padding = (
            (CIFAR_STEM_KERNEL, 1, 1)
            if config.cifar_stem
            else (IMAGENET_STEM_KERNEL, IMAGENET_STEM_STRIDE, IMAGENET_STEM_PADDING)
        )
        width = model.conv1.out_channels
        conv = nn.Conv2d(config.in_channels, width, kernel, stride=stride, padding=padding, bias=False)
        # torchvision's own ResNet initialisation of its convs (kaiming normal, fan_out, relu).
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = conv
    if config.cifar_stem:
        model.maxpool = nn.Identity()
    return _with_layers(model, list(RESNET_STAGES))


def build_torchvision_vgg(config: TorchvisionVGGConfig, name: str) -> nn.Module:
    model = _torchvision(name)(weights=None, num_classes=config.num_classes, dropout=config.dropout)
    pools = [
        f"features.{index}" for index, module in enumerate(model.features) if isinstance(module, nn.MaxPool2d)
    ]
    return _with_layers(model, pools)


def build_torchvision_mobilenet(config: TorchvisionMobileNetConfig, name: str) -> nn.Module:
    model = _torchvision(name)(
        weights=None,
        num_classes=config.num_classes,
        width_mult=config.width_mult,
        dropout=config.dropout,
        reduced_tail=config.reduced_tail,
    )
    return _with_layers(model, [f"features.{index}" for index in range(len(model.features))])


def build_torchvision_vit(config: TorchvisionViTConfig, name: str) -> nn.Module:
    model = _torchvision(name)(
        weights=None,
        num_classes=config.num_classes,
        image_size=config.image_size,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
    )
    layers = [f"encoder.layers.{child}" for child, _ in model.encoder.layers.named_children()]
    return _with_layers(model, layers)


def _timm_layers(model: nn.Module) -> list[str]:
    """The stage outputs of timm's common families (ResNets: layerN; ConvNeXt and friends: stages.N;
    ViTs: blocks.N); other families expose none (blindspot then matches outputs only)."""
    children = dict(model.named_children())
    if all(stage in children for stage in RESNET_STAGES):
        return list(RESNET_STAGES)
    for container in ("stages", "blocks"):
        stages = children.get(container)
        if isinstance(stages, nn.Sequential):
            return [f"{container}.{index}" for index in range(len(stages))]
    return []


def build_timm(config: TimmConfig, name: str) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = config.timm_kwargs()
    model = timm.create_model(name, pretrained=False, **kwargs)
    return _with_layers(model, _timm_layers(model))
