"""Torch implementations of the scalar-head regressors (``mlp_regressor``, ``small_cnn_regressor``,
``resnet18_regressor``).

Same modules and state_dict layout as the classifiers with a one-output head; ``forward`` returns the
prediction with the output axis squeezed, shape (N,), so the regression losses take it directly.
``forward_with_activations`` returns ``(prediction, activations)`` as every architecture does:

* ``mlp_regressor`` / ``small_cnn_regressor``: as ``mlp`` / ``small_cnn`` (hidden layers; conv blocks);
* ``resnet18_regressor``: the stem's output and every one of the 8 BasicBlocks' outputs (9 tensors, 4-D),
  as the Deep Regression Unlearning reference's ResNet18 returns them (blindspot_sfd.md §1.2), rather than
  the classifier's 4 stage outputs.
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
    def forward_with_activations(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        output, activations = super().forward_with_activations(inputs)
        return output.squeeze(-1), activations


class SmallCNNRegressor(SmallCNN):
    def forward_with_activations(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        output, activations = super().forward_with_activations(inputs)
        return output.squeeze(-1), activations


class ResNet18Regressor(ResNet18):
    def activation_names(self) -> list[str]:
        """The stem, then ``layerS.B`` for every BasicBlock in order (9 names)."""
        blocks = [
            f"layer{stage}.{index}"
            for stage, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1)
            for index in range(len(layer))
        ]
        return ["stem", *blocks]

    def forward_with_activations(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = torch.relu(self.bn1(self.conv1(inputs)))
        activations = [out]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                out = block(out)
                activations.append(out)
        return self.fc(out.mean(dim=(2, 3))).squeeze(-1), activations


def build_mlp(config: MLPRegressorConfig) -> nn.Module:
    return MLPRegressor(config)


def build_small_cnn(config: SmallCNNRegressorConfig) -> nn.Module:
    return SmallCNNRegressor(config)


def build_resnet18(config: ResNet18RegressorConfig) -> nn.Module:
    return ResNet18Regressor(config)
