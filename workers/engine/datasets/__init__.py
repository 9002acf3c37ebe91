"""Torch-free dataset catalog: numpy-only builders keyed by name and task type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.datasets.diabetes import DiabetesConfig, build_diabetes
from workers.engine.datasets.digits import DigitsConfig, build_digits
from workers.engine.datasets.poisoned import PoisonedConfig, build_poisoned
from workers.engine.datasets.procedural import ProceduralConfig, build_procedural
from workers.engine.datasets.procedural_regression import (
    ProceduralRegressionConfig,
    build_procedural_regression,
)
from workers.engine.errors import InvalidInputError
from workers.engine.registry import Registry
from workers.engine.task_types import TaskType


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    task_type: TaskType
    config_model: type[BaseModel]
    build: Callable[[Any], ArrayDataset]

    def parse_config(self, config: BaseModel | Mapping[str, Any]) -> Any:
        if isinstance(config, self.config_model):
            return config
        try:
            return self.config_model.model_validate(config)
        except ValidationError as error:
            details = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'config'}: {item['msg']}"
                for item in error.errors(include_url=False)
            )
            raise InvalidInputError(f"invalid {self.name} dataset config: {details}") from None


def build_dataset(name: str, config: BaseModel | Mapping[str, Any] | None = None) -> ArrayDataset:
    spec = DATASETS.get(name)
    return spec.build(spec.parse_config(config or {}))


DATASETS: Registry[DatasetSpec] = Registry("dataset")

DATASETS.register(
    DatasetSpec(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), stratified split.",
        task_type=TaskType.classification,
        config_model=DigitsConfig,
        build=build_digits,
    )
)
DATASETS.register(
    DatasetSpec(
        name="procedural",
        description="Generated class-prototype images with label noise; sized like CIFAR by default config.",
        task_type=TaskType.classification,
        config_model=ProceduralConfig,
        build=build_procedural,
    )
)

DATASETS.register(
    DatasetSpec(
        name="gaussian_poisoned",
        description=(
            "The poisoning canary: digits with a known fraction of training points whose inputs carry"
            " Gaussian noise and whose labels are random other classes; forget exactly them (campaign"
            ' forget set {"canary": true}) to measure whether unlearning removed their influence.'
        ),
        task_type=TaskType.classification,
        config_model=PoisonedConfig,
        build=build_poisoned,
    )
)
DATASETS.register(
    DatasetSpec(
        name="diabetes",
        description=(
            "scikit-learn's diabetes data (442 patients, 10 standardised features, disease progression "
            "target 25..346), random split: tabular regression."
        ),
        task_type=TaskType.regression,
        config_model=DiabetesConfig,
        build=build_diabetes,
    )
)
DATASETS.register(
    DatasetSpec(
        name="procedural_regression",
        description=(
            "Generated images whose continuous target (0..100 by default, noisy on train) sets the blend of "
            "an identity prototype with a shared pattern: image regression, forget by target range."
        ),
        task_type=TaskType.regression,
        config_model=ProceduralRegressionConfig,
        build=build_procedural_regression,
    )
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetSpec",
    "DiabetesConfig",
    "DigitsConfig",
    "PoisonedConfig",
    "ProceduralConfig",
    "ProceduralRegressionConfig",
    "build_dataset",
]
