"""Job kinds registered by tests (one entry each, no edits elsewhere): ``copy_model`` with its own engine run,
``score_model`` on the engine's shared run. ``registered()`` adds them for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from workers.engine.errors import InvalidInputError
from workers.engine.execute import EngineRequest, EngineResult
from workers.engine.hooks import EngineHooks
from workers.engine.job_kinds import JOB_KINDS, JobKindSpec, Presence
from workers.engine.task_types import TaskType

COPIED_METRIC = "copied_tensors"
ON_MODEL_FORBIDDEN = ("dataset_id", "architecture", "arch_config", "forget_set_id")


def copy_model(request: EngineRequest, hooks: EngineHooks | None = None) -> EngineResult:
    """The output model is a copy of the input, with one constant metric."""
    if request.weights is None:
        raise InvalidInputError("a copy_model request needs the input model's weights")
    if hooks is not None:
        hooks.progress("copy", 1, 1, {})
    return EngineResult(
        weights={name: array.copy() for name, array in request.weights.items()},
        metrics={COPIED_METRIC: float(len(request.weights))},
        details={"kind": request.kind},
        timings={"total_s": 0.0},
        masks=request.masks,
    )


COPY_MODEL = JobKindSpec(
    name="copy_model",
    description="Copy a model (a kind registered by a test).",
    required=("model_id",),
    forbidden=ON_MODEL_FORBIDDEN,
    task_types=(TaskType.classification, TaskType.regression),
    run=copy_model,
    produces=frozenset({"model"}),
    starts_from_weights=True,
    engine_forget_set=Presence.forbidden,
)
# Reuses the engine's shared run (the method / evaluation run) with fields of its own: it scores a model
# without a forget set and produces nothing but metrics.
SCORE_MODEL = JobKindSpec(
    name="score_model",
    description="Score a model on its dataset's splits (a kind registered by a test).",
    required=("model_id",),
    forbidden=ON_MODEL_FORBIDDEN,
    task_types=(TaskType.classification, TaskType.regression),
    run="workers.engine.execute:run_method_request",
    starts_from_weights=True,
    engine_forget_set=Presence.forbidden,
)
TEST_KINDS = (COPY_MODEL, SCORE_MODEL)


@contextmanager
def registered() -> Iterator[None]:
    for spec in TEST_KINDS:
        JOB_KINDS.register(spec)
    try:
        yield
    finally:
        for spec in TEST_KINDS:
            JOB_KINDS.unregister(spec.name)
