"""Torch implementations of the scalar-head regressors (``mlp_regressor``, ``small_cnn_regressor``,
``resnet18_regressor``).

Same modules and state_dict layout as the classifiers with a one-output head; ``forward`` returns the
prediction with the output axis squeezed, shape (N,), so the regression losses take it directly. Their
``activation_layers`` (see :mod:`workers.engine.architectures.activations`) are the classifiers', except
``resnet18_regressor``: the stem's output and every one of the 8 BasicBlocks' outputs (9 tensors, 4-D), as
the Deep Regression Unlearning reference's ResNet18 returns them (blindspot_sfd.md §1.2), rather than the
classifier's 4 stage outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.architectures import (
    MLPRegressorConfig,
    ResNet18RegressorConfig,
    SmallCNNRegressorConfig,
)
from workers.engine.architectures.mlp import MLP
from workers.engine.architectures.resnet import ResNet18
from workers.engine.architectures.small_cnn import SmallCNN


class MLPRegressor(MLP):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs).squeeze(-1)


class SmallCNNRegressor(SmallCNN):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs).squeeze(-1)


class ResNet18Regressor(ResNet18):
    def __init__(self, config: ResNet18RegressorConfig) -> None:
        super().__init__(config)
        self.activation_layers = [
            "stem",
            *(
                f"layer{stage}.{index}"
                for stage, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1)
                for index in range(len(layer))
            ),
        ]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs).squeeze(-1)


def build_mlp(config: MLPRegressorConfig) -> nn.Module:
    return MLPRegressor(config)


def build_small_cnn(config: SmallCNNRegressorConfig) -> nn.Module:
    return SmallCNNRegressor(config)


def build_resnet18(config: ResNet18RegressorConfig) -> nn.Module:
    return ResNet18Regressor(config)
