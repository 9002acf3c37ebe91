"""Validated parameters of the regression-only unlearning methods (pydantic only, torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.engine.methods.params import BatchSize, Epochs, LearningRate
from workers.engine.methods.params_distillation import Augment


class GaussianFinetuneParams(BaseModel):
    """Parameters of ``gaussian_ft`` ("Gaussian amnesiac" fine-tuning, Deep Regression Unlearning;
    blindspot_sfd.md §1.4). Reference values (AgeDB notebook cells 26-28): 1 epoch, Adam lr 1e-3, batch 256,
    L1 (its STS-B notebook: 5 epochs, MSE). No deviations in the defaults."""

    model_config = ConfigDict(extra="forbid")

    epochs: Epochs = 1
    lr: LearningRate = Field(default=1e-3, description="Adam learning rate (constant).")
    batch_size: BatchSize = 256
    loss: Literal["l1", "mse"] = Field(
        default="l1", description="Fine-tuning loss: 'l1' (the reference's AgeDB run) or 'mse' (STS-B)."
    )
    augment: Augment = False
