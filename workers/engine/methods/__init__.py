"""Torch-free catalog of training and unlearning methods.

A method is a parameter model plus the import path of its torch implementation. Adding one means writing
one implementation module (``run(context) -> MethodOutput``, see ``workers.engine.methods.base``) and
registering it here. The job kind decides the starting point: ``train`` and ``retrain`` start from a seeded
random initialisation, ``unlearn`` methods start from the original model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from workers.engine.methods.params import FinetuneParams, RetrainParams, TrainParams, TrainRecipe
from workers.engine.registry import Registry
from workers.engine.tasks import TaskType

JobKind = Literal["train", "retrain", "unlearn"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    job_kind: JobKind
    description: str
    task_types: tuple[TaskType, ...]
    params_model: type[BaseModel]
    impl: str


METHODS: Registry[MethodSpec] = Registry("method")

METHODS.register(
    MethodSpec(
        name="train",
        job_kind="train",
        description="Train the original model from a seeded random initialisation on the full training set.",
        task_types=(TaskType.classification,),
        params_model=TrainParams,
        impl="workers.engine.methods.training_methods:run_train",
    )
)
METHODS.register(
    MethodSpec(
        name="retrain",
        job_kind="retrain",
        description=(
            "Exact unlearning (the gold standard): train from a seeded random initialisation on the retain "
            "set with the original model's recipe."
        ),
        task_types=(TaskType.classification,),
        params_model=RetrainParams,
        impl="workers.engine.methods.training_methods:run_retrain",
    )
)
METHODS.register(
    MethodSpec(
        name="ft",
        job_kind="unlearn",
        description="Fine-tune (FT): keep training the original model on the retain set only (reference FT).",
        task_types=(TaskType.classification,),
        params_model=FinetuneParams,
        impl="workers.engine.methods.finetune:run",
    )
)

__all__ = [
    "METHODS",
    "FinetuneParams",
    "JobKind",
    "MethodSpec",
    "RetrainParams",
    "TrainParams",
    "TrainRecipe",
]
