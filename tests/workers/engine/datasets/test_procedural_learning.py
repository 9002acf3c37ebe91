"""The procedural dataset's promise: a small CNN learns the clean signal quickly."""

from __future__ import annotations

from workers.engine.datasets import build_dataset
from workers.engine.execute import EngineRequest, execute

CLASSES = 4
CHANCE_ACCURACY = 100.0 / CLASSES


def test_small_cnn_learns_procedural_images_well_above_chance() -> None:
    dataset = build_dataset(
        "procedural",
        {"n_train": 400, "n_test": 200, "image_size": 16, "num_classes": CLASSES, "label_noise": 0.0},
    )
    recipe = {"epochs": 8, "batch_size": 32, "lr": 0.05, "schedule": "cosine", "augment": False}
    config = {"in_channels": 3, "image_size": 16, "channels": [8, 16], "num_classes": CLASSES}
    result = execute(
        EngineRequest("train", "train", {"recipe": recipe}, 0, "cpu", dataset, "small_cnn", config)
    )
    assert result.metrics["test_accuracy"] > 80.0 > 3 * CHANCE_ACCURACY
