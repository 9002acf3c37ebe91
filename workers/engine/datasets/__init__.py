"""Torch-free dataset catalog: numpy-only builders keyed by name and task type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.datasets.digits import DigitsConfig, build_digits
from workers.engine.datasets.procedural import ProceduralConfig, build_procedural
from workers.engine.errors import InvalidInputError
from workers.engine.registry import Registry
from workers.engine.tasks import TaskType


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

__all__ = ["DATASETS", "ArrayDataset", "DatasetSpec", "DigitsConfig", "ProceduralConfig", "build_dataset"]
