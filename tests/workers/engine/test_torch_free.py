"""The API process imports the catalog; it must never pull in torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

CATALOG_IMPORT = (
    "import workers.engine, workers.engine.architectures, workers.engine.datasets, workers.engine.methods, "
    "workers.engine.metrics; import sys; assert 'torch' not in sys.modules"
)
# Everything else the API may touch: params, errors, registry, hooks, plus real use of the catalog.
CATALOG_USE = """
import sys
import numpy as np
import workers.engine.errors, workers.engine.registry, workers.engine.task_types, workers.engine.hooks
import workers.engine.methods.params, workers.engine.imports, workers.engine.diffusion.job_params
from workers.engine.architectures import ARCHITECTURES
from workers.engine.datasets import build_dataset
from workers.engine.methods import METHODS
from workers.engine.metrics import accuracy, forgetting_report
from workers.engine.metrics.regression import comparison_metrics, target_range
configs = {"mlp": {"input_shape": [4]}, "small_cnn": {}, "resnet18": {}}
configs.update({f"{name}_regressor": config for name, config in configs.items()})
configs["speedrun_cnn"] = {}
configs.update({"unet_ddpm": {}, "unet_one_step": {"t_init": 440}})
for spec in ARCHITECTURES:
    spec.config_model.model_json_schema()
    if spec.name in configs:  # torchvision / timm tables: LIBRARY_TABLE below
        assert spec.expected_state(configs[spec.name])
for spec in METHODS:
    spec.params_model.model_json_schema()
    spec.params_model.model_validate({})
dataset = build_dataset("procedural", {"n_train": 50, "n_test": 20, "image_size": 8})
probabilities = np.eye(10)[dataset.y_train]
forgetting_report(probabilities, dataset.y_train, np.arange(5), np.eye(10)[dataset.y_test], dataset.y_test)
regression = build_dataset("diabetes")
target_range(regression.y_train, np.flatnonzero(regression.y_train <= 100))
comparison_metrics({}, {"forget_predictions": [1.0]}, {}, {"forget_predictions": [2.0]})
assert 'torch' not in sys.modules, 'torch was imported'
"""


# A library model's table in the API process: computed by the torch helper process, cached as a file, and
# torch never enters this process. The second run reads the file cache.
LIBRARY_TABLE = """
import sys
from workers.engine.architectures import ARCHITECTURES
table = ARCHITECTURES.get("torchvision.resnet18").expected_state({"num_classes": 10, "cifar_stem": True})
assert table["conv1.weight"] == ((64, 3, 3, 3), "F32"), table["conv1.weight"]
assert table["bn1.num_batches_tracked"] == ((), "I64")
assert 'torch' not in sys.modules, 'torch was imported'
"""


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def test_catalog_imports_do_not_import_torch() -> None:
    completed = _run(CATALOG_IMPORT)
    assert completed.returncode == 0, completed.stderr


def test_catalog_use_does_not_import_torch() -> None:
    completed = _run(CATALOG_USE)
    assert completed.returncode == 0, completed.stderr


def test_the_check_itself_detects_torch() -> None:
    completed = _run("import workers.engine.training; import sys; assert 'torch' not in sys.modules")
    assert completed.returncode != 0


def test_library_shape_tables_reach_the_api_without_torch(tmp_path: Path) -> None:
    env = {"LETHE_SHAPE_TABLE_DIR": str(tmp_path)}
    completed = _run(LIBRARY_TABLE, env)
    assert completed.returncode == 0, completed.stderr
    assert len(list(tmp_path.glob("*.json"))) == 1
    again = _run(LIBRARY_TABLE, env)  # from the file cache
    assert again.returncode == 0, again.stderr
