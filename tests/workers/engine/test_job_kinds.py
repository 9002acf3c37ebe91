"""The job-kind registry: one entry per kind, read by the API and the worker instead of kind-name branches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.models import Job, JobKind
from app.models.job import KIND_COLUMN_LENGTH
from tests.workers.engine.kind_branches import Branch, find_branches
from tests.workers.engine.trivial_kinds import COPIED_METRIC, COPY_MODEL, registered
from workers.engine.datasets import ArrayDataset
from workers.engine.errors import InvalidInputError
from workers.engine.execute import EngineRequest, execute
from workers.engine.hooks import RecordingHooks
from workers.engine.job_kinds import JOB_KINDS, job_kind
from workers.engine.job_kinds.spec import KIND_NAME_MAX_LENGTH

REPO_ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("app", "workers")
# The registry and its entries: a kind's own rules (its check, its run) are where they belong.
ENTRY_MODULES = ("workers/engine/job_kinds/",)
# Kind branches known to remain, each with why (none: the generative engine reads its kind's entry too).
KNOWN_REMAINING: dict[str, str] = {}
DIGITS_MLP = {"input_shape": [1, 8, 8], "hidden": [128]}


def _kind_names() -> frozenset[str]:
    return frozenset(JOB_KINDS.names()) | {kind.value for kind in JobKind}


def _branches(root: Path) -> list[Branch]:
    found: dict[tuple[str, int], Branch] = {}
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(ENTRY_MODULES) or relative in KNOWN_REMAINING:
                continue
            for branch in find_branches(path.read_text(), relative, _kind_names()):
                found.setdefault((branch.path, branch.line), branch)
    return list(found.values())


def test_every_builtin_kind_has_one_entry_and_fits_the_column() -> None:
    """app.models.JobKind names the built-in kinds for code; the registry holds them (and may hold more)."""
    assert {kind.value for kind in JobKind} <= set(JOB_KINDS.names())
    for kind in JobKind:
        assert job_kind(kind).name == kind.value
    assert Job.__table__.c.kind.type.length == KIND_COLUMN_LENGTH == KIND_NAME_MAX_LENGTH
    assert all(len(name) <= KIND_NAME_MAX_LENGTH for name in JOB_KINDS.names())


@pytest.mark.parametrize("name", ["", "a" * (KIND_NAME_MAX_LENGTH + 1), "two words", "kind;drop"])
def test_a_kind_name_that_would_not_fit_is_refused_at_registration(name: str) -> None:
    with pytest.raises(ValueError, match="job kind name"):
        replace(COPY_MODEL, name=name)


def test_no_branch_on_a_job_kind_outside_the_registry_entries() -> None:
    branches = _branches(REPO_ROOT)
    assert not branches, "branches on a job kind (read the kind's JobKindSpec instead):\n" + "\n".join(
        map(str, branches)
    )
    for path in KNOWN_REMAINING:
        assert (REPO_ROOT / path).exists(), f"{path} is gone: drop it from KNOWN_REMAINING"


BRANCHES = [
    'if request.kind == "evaluate":\n    pass',
    "if body.kind is JobKind.audit:\n    pass",
    "x = kind in (JobKind.prune, JobKind.worst_case_search)",
    'KINDS_X = ("evaluate", "worst_case_search")\nok = request.kind not in KINDS_X',
    "query = select(Job).where(Job.kind.in_([JobKind.retrain, JobKind.unlearn]))",
    'TABLE = {JobKind.prune: "prune"}',
    "CACHEABLE = frozenset({JobKind.retrain, JobKind.evaluate})",
    "expected = _KIND_METHOD.get(kind)",
    "name = REQUEST_JOB_KINDS[request.kind]",
    "match job.kind:\n    case _:\n        pass",
    'recipe = r if job.kind in ("train", "retrain") else None',
]
NOT_BRANCHES = [
    'if forget_set.kind != "class":\n    pass',
    'ok = array.dtype.kind not in "iu"',
    "job = JobCreate(kind=JobKind.unlearn, method=name)",
    "spec = method_spec(JobKind.unlearn, name, task)",
    'if kind in ("gap_retrain", "drop"):\n    pass',
    "label = _LABEL[kind]",
    "spec = JOB_KINDS.get(kind)",
    'if "model" in job_kind(job.kind).produces:\n    pass',
    "for kind in JobKind:\n    pass",
]


@pytest.mark.parametrize("source", BRANCHES)
def test_the_scan_finds_branches_on_kinds(source: str) -> None:
    assert list(find_branches(source, "snippet.py", _kind_names())), source


@pytest.mark.parametrize("source", NOT_BRANCHES)
def test_the_scan_leaves_other_kinds_and_job_creation_alone(source: str) -> None:
    assert not list(find_branches(source, "snippet.py", _kind_names())), source


# ------------------------------------------------------------------------- a new kind is one entry
@pytest.fixture
def test_kinds() -> Iterator[None]:
    with registered():
        yield


def _request(
    dataset: ArrayDataset, kind: str, weights: dict[str, np.ndarray] | None, **extra: Any
) -> EngineRequest:
    fields: dict[str, Any] = {"method": None, **extra}
    return EngineRequest(
        kind=kind,
        params={},
        seed=0,
        device="cpu",
        dataset=dataset,
        architecture="mlp",
        arch_config=DIGITS_MLP,
        weights=weights,
        **fields,
    )


def test_a_trivial_kind_runs_through_execute(
    test_kinds: None, digits: ArrayDataset, original_digits_model: Any
) -> None:
    weights = original_digits_model.weights
    hooks = RecordingHooks()
    result = execute(_request(digits, "copy_model", weights), hooks)
    assert result.metrics == {COPIED_METRIC: float(len(weights))}
    assert result.weights is not None and set(result.weights) == set(weights)
    assert all(np.array_equal(result.weights[k], weights[k]) for k in weights)
    assert [call[0] for call in hooks.progress_calls] == ["copy"]


def test_a_kind_on_the_shared_run_follows_its_fields(
    test_kinds: None, digits: ArrayDataset, original_digits_model: Any
) -> None:
    result = execute(_request(digits, "score_model", original_digits_model.weights))
    assert result.weights is None and result.masks is None  # produces no model
    assert set(result.metrics) == {"train_accuracy", "test_accuracy", "max_class_fraction"}
    assert result.metrics == original_digits_model.metrics  # the same weights, the same evaluation
    assert result.details["kind"] == "score_model"
    with pytest.raises(InvalidInputError, match="takes no forget set"):
        execute(_request(digits, "score_model", original_digits_model.weights, forget_class=3))
    with pytest.raises(InvalidInputError, match="needs the input model's weights"):
        execute(_request(digits, "score_model", None))
    with pytest.raises(InvalidInputError, match="take no method"):
        execute(_request(digits, "score_model", original_digits_model.weights, method="ft"))


def test_an_unknown_kind_is_an_invalid_request(digits: ArrayDataset) -> None:
    with pytest.raises(InvalidInputError, match="unknown job kind 'copy_model'"):
        execute(_request(digits, "copy_model", None))
