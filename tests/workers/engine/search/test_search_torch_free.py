"""The search's catalog side (package, params, projection) must not pull in torch: the API imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]

CODE = """
import sys
import numpy as np
import workers.engine.search
from workers.engine.search.params import WorstCaseSearchParams
from workers.engine.search.projection import project_capped_simplex
from workers.engine.methods import METHODS
WorstCaseSearchParams.model_validate({}).item_count(100)
METHODS.get("worst_case_search").params_model.model_json_schema()
assert abs(project_capped_simplex(np.arange(5.0), 2.5).sum() - 2.5) < 1e-12
assert 'torch' not in sys.modules, 'torch was imported'
"""


def test_search_catalog_does_not_import_torch() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", CODE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
