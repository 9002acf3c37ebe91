"""Validated parameters of the regression-only unlearning methods (pydantic only, torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from workers.engine.methods.params import (
    INHERIT_AUGMENT,
    INHERIT_BATCH_SIZE,
    REFERENCE_BATCH_SIZE,
    Epochs,
    Inherited,
    InheritedAugment,
    InheritedBatchSize,
    LearningRate,
    PresetParams,
    TrainRecipe,
    preset_field,
)
from workers.engine.methods.params_distillation import resolve_adam_batches


class GaussianFinetuneParams(PresetParams):
    """Parameters of ``gaussian_ft`` ("Gaussian amnesiac" fine-tuning, Deep Regression Unlearning;
    blindspot_sfd.md §1.4). Reference values (AgeDB notebook cells 26-28): 1 epoch, Adam lr 1e-3, batch 256,
    L1 (its STS-B notebook: 5 epochs, MSE), no augmentation: the 'reference' preset. The 'lethe' preset
    (default) inherits batch size and augmentation from the original model's recipe; the optimiser stays
    Adam."""

    epochs: Epochs = 1
    lr: LearningRate = Field(default=1e-3, description="Adam learning rate (constant).")
    batch_size: InheritedBatchSize = preset_field(
        INHERIT_BATCH_SIZE, lethe=None, reference=REFERENCE_BATCH_SIZE
    )
    loss: Literal["l1", "mse"] = Field(
        default="l1", description="Fine-tuning loss: 'l1' (the reference's AgeDB run) or 'mse' (STS-B)."
    )
    augment: InheritedAugment = preset_field(INHERIT_AUGMENT, lethe=None, reference=False)

    def resolve(self, original: TrainRecipe | None) -> Inherited:
        return resolve_adam_batches(original, self.augment, batch_size=self.batch_size)
