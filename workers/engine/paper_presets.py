"""Paper-scale presets: the settings of a published experiment, one named entry each (torch-free).

A paper preset bundles what a reproduction needs besides the data: the architecture and its config, the
original model's training recipe, the retrain oracle's params, each method's params (their ``preset:
"reference"`` values, plus the experiment's own where the paper sets one), and the forget sets. Jobs select
the training part by name (``params.recipe = {"base": "<preset>"}``, with any field given beside it
overriding it); campaigns select the whole bundle (``paper_preset: "<preset>"`` fills the methods, forget
sets and retrain params the body leaves out). ``GET /v1/paper-presets`` lists them; the README has the table.

Values come from the reference notes (/work/shared/reference/optml.md, blindspot_sfd.md) and are checked
against the methods' own reference tables by tests/workers/engine/test_paper_presets.py. The data itself is
the operator's (``POST /v1/datasets/data-root``, format ``cifar10``): nothing is downloaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from workers.engine.registry import Registry

REFERENCE = {"preset": "reference"}
# The OPTML repos' CIFAR-10 original: 182 epochs of SGD lr 0.1, momentum 0.9, wd 5e-4, batch 256, x0.1 at
# epochs 91 and 136, crop + flip (optml.md §1.3) - TrainRecipe's defaults, spelled out here so that the preset
# does not move if a default ever does.
OPTML_CIFAR10_RECIPE: dict[str, Any] = {
    "epochs": 182,
    "batch_size": 256,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "multistep",
    "milestones": [0.5, 0.75],  # fractions of the epochs: 91 and 136 of 182
    "gamma": 0.1,
    "augment": True,
    "optimizer": "sgd",
}
# Lethe's CIFAR ResNet-18 is the OPTML network (3x3 stem, no max-pool, width 64).
CIFAR_RESNET18 = {"in_channels": 3, "num_classes": 10, "width": 64}
RANDOM_10_PERCENT = {"kind": "random", "fraction": 0.1, "seed": 0}


@dataclass(frozen=True)
class PaperPreset:
    name: str
    paper: str  # the publication and the code it was checked against
    description: str
    dataset: dict[str, Any]  # how to register the data (a data_root format and its options)
    architecture: str
    arch_config: dict[str, Any]
    train_recipe: dict[str, Any]
    retrain_params: dict[str, Any]
    methods: dict[str, dict[str, Any]]  # method name -> its params
    forget_sets: list[dict[str, Any]]  # campaign forget-set entries (spec or worst_case)
    # Where Lethe cannot follow the experiment exactly (stated, never silent).
    deviations: list[str] = field(default_factory=list)

    def campaign_fields(self) -> dict[str, Any]:
        """The campaign body fields this preset fills (copies: a caller may edit them)."""
        return {
            "methods": [{"method": name, "params": dict(params)} for name, params in self.methods.items()],
            "forget_sets": copy.deepcopy(self.forget_sets),
            "retrain_params": dict(self.retrain_params),
        }


# The POST /v1/datasets/data-root body for torchvision's on-disk CIFAR-10 (the operator's copy).
CIFAR10_DATA_ROOT = {"source": "data_root", "format": "cifar10", "path": "cifar-10-batches-py"}
OPTML_DEVIATIONS = [
    "The original keeps the best checkpoint on a 5,000-image validation split; Lethe trains on what the "
    "dataset's train split holds and returns the final weights.",
    "FF, IU and l1_sparse's alpha are tuned per run in the papers (README '${alpha}'); the reference presets "
    "hold the values the reference notes document.",
]

PAPER_PRESETS: Registry[PaperPreset] = Registry("paper preset")
for _preset in (
    PaperPreset(
        name="optml-cifar10-resnet18",
        paper="Jia et al., Model Sparsity Can Simplify Machine Unlearning (NeurIPS 2023), Unlearn-Sparse",
        description="CIFAR-10 ResNet-18, 10 % random forgetting (4,500 of 45,000): retrain 160 epochs, FT, "
        "GA, IU, l1-sparse at the README's settings.",
        dataset=CIFAR10_DATA_ROOT,
        architecture="resnet18",
        arch_config=CIFAR_RESNET18,
        train_recipe=OPTML_CIFAR10_RECIPE,
        retrain_params=REFERENCE,
        methods={name: dict(REFERENCE) for name in ("ft", "ga", "iu", "l1_sparse")},
        forget_sets=[{"spec": RANDOM_10_PERCENT, "name": "random-10pct"}],
        deviations=OPTML_DEVIATIONS,
    ),
    PaperPreset(
        name="salun-cifar10-resnet18",
        paper="Fan et al., SalUn (ICLR 2024), Unlearn-Saliency Classification",
        description="CIFAR-10 ResNet-18, random forgetting of 10 % and 50 %: retrain, FT, RL, GA, IU, "
        "l1-sparse and SalUn at their reference settings (the paper's Table 1).",
        dataset=CIFAR10_DATA_ROOT,
        architecture="resnet18",
        arch_config=CIFAR_RESNET18,
        train_recipe=OPTML_CIFAR10_RECIPE,
        retrain_params=REFERENCE,
        methods={name: dict(REFERENCE) for name in ("ft", "rl", "ga", "iu", "l1_sparse", "salun")},
        forget_sets=[
            {"spec": RANDOM_10_PERCENT, "name": "random-10pct"},
            {"spec": {"kind": "random", "fraction": 0.5, "seed": 0}, "name": "random-50pct"},
        ],
        deviations=OPTML_DEVIATIONS,
    ),
    PaperPreset(
        name="worstcase-cifar10-resnet18",
        paper="Fan et al., Challenging Forgets: the worst-case forget set (ECCV 2024), Unlearn-WorstCase",
        description="CIFAR-10 ResNet-18: a searched 10 % worst-case forget set beside a random one, FT, RL, "
        "GA, l1-sparse at their reference settings.",
        dataset=CIFAR10_DATA_ROOT,
        architecture="resnet18",
        arch_config=CIFAR_RESNET18,
        train_recipe=OPTML_CIFAR10_RECIPE,
        retrain_params=REFERENCE,
        methods={name: dict(REFERENCE) for name in ("ft", "rl", "ga", "l1_sparse")},
        forget_sets=[
            {"worst_case": {"preset": "reference", "fraction": 0.1}, "name": "worst-case-10pct"},
            {"spec": RANDOM_10_PERCENT, "name": "random-10pct"},
        ],
        deviations=[
            *OPTML_DEVIATIONS,
            "The search runs on the original model's training data as the worst_case_search job defines it "
            "(README 'Worst-case forget sets').",
        ],
    ),
):
    PAPER_PRESETS.register(_preset)


def paper_recipe_bases() -> dict[str, dict[str, Any]]:
    """The presets' training recipes by preset name (``TrainRecipe``'s ``base`` values)."""
    return {preset.name: dict(preset.train_recipe) for preset in PAPER_PRESETS}


__all__ = ["PAPER_PRESETS", "PaperPreset", "paper_recipe_bases"]
