"""What a job kind is, in one torch-free entry (:class:`JobKindSpec`).

The API reads an entry to validate a submission (inputs required and forbidden, the method it runs, its
params model, the task types it supports, its own checks), to key the result cache and to count quotas;
the worker reads it to run the job (``run``, resolved only there, so torch stays out of the API) and to store
what it produces. Entries are registered in ``workers.engine.job_kinds`` (one per kind, see ``entries.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from workers.engine.diffusion.job_params import GENERATIVE_ARCHITECTURES
from workers.engine.imports import import_by_path
from workers.engine.methods import DEFAULT_METHODS
from workers.engine.task_types import TaskType

if TYPE_CHECKING:
    from workers.engine.execute import EngineRequest, EngineResult
    from workers.engine.hooks import EngineHooks

# The submission fields that name a job's inputs (JobCreate's fields of the same names).
Input = Literal["dataset_id", "model_id", "forget_set_id", "architecture", "arch_config"]
# What a succeeded job stores besides its metrics: an output model, a searched forget set, generated samples
# (npz), or an audit's per-example report arrays.
Output = Literal["model", "forget_set", "samples", "report"]
# The part a kind's rows play in a forget set's comparison: the gold-standard reference (retrain), the
# original model's own evaluation, or a method under test.
ComparisonRole = Literal["reference", "original", "method"]

# The longest kind name: ``jobs.kind`` is a VARCHAR of this length (kinds are validated against the registry,
# not a database enum, so a new kind needs no migration).
KIND_NAME_MAX_LENGTH = 20

EngineRun = Callable[["EngineRequest", "EngineHooks | None"], "EngineResult"]


class MethodUse(StrEnum):
    """How a kind relates to the method registry (``workers.engine.methods.METHODS``)."""

    # Runs no method: naming one is refused.
    none = "none"
    # Runs one method of ``method_kind``: its fixed one, its task type's default, or the one named.
    named = "named"
    # ``params.method`` names the method the job is about (audit); the body's ``method`` is refused.
    in_params = "in_params"


class Presence(StrEnum):
    required = "required"
    optional = "optional"
    forbidden = "forbidden"


class SubmissionRefused(ValueError):
    """A kind's own check refusing a submission; the API answers 422 with ``code``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message, self.code = message, code


# What a kind's check reads of the stored inputs (the API's rows satisfy these; nothing here imports them).
class ModelFacts(Protocol):
    @property
    def architecture(self) -> str: ...

    @property
    def train_recipe(self) -> dict[str, Any] | None: ...


class ForgetSetFacts(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def forget_class(self) -> int | None: ...


class DatasetFacts(Protocol):
    @property
    def task(self) -> str: ...


@dataclass(frozen=True)
class SubmissionContext:
    """A submission after its inputs were read and its params validated, for the kind's ``check``."""

    task: TaskType  # the model's task type (for train: the architecture's)
    params: dict[str, Any]  # the validated params, as they will be stored
    parsed: BaseModel | None  # the same, parsed (None for a kind without params)
    model: ModelFacts | None
    forget_set: ForgetSetFacts | None
    dataset: DatasetFacts | None


SubmissionCheck = Callable[[SubmissionContext], None]


@dataclass(frozen=True)
class JobKindSpec:
    """One job kind. Only ``check`` and ``run`` hold code; every other field is data the API and the worker
    read instead of testing the kind's name."""

    name: str
    description: str
    # Submission inputs: the required ones, and the forbidden ones in the order they are checked (the first
    # one present is named in the refusal). Any other input is optional.
    required: tuple[Input, ...]
    forbidden: tuple[Input, ...]
    task_types: tuple[TaskType, ...]
    # The engine part: ``"module:function"`` taking (EngineRequest, hooks) and returning an EngineResult,
    # imported only when a worker runs the job (a callable is accepted too, for tests).
    run: str | EngineRun
    method_use: MethodUse = MethodUse.none
    method_kind: str | None = None  # the MethodSpec.job_kind of the methods it runs
    fixed_method: str | None = None  # the one method it runs (prune, worst_case_search)
    # Params of a kind without a named method, by the model's task type (absent: the kind takes no params).
    params_models: Mapping[TaskType, type[BaseModel]] = field(default_factory=dict)
    params_label: str | None = None  # how refusals name its params ("invalid params for <label>")
    method_refusal: str | None = None  # the refusal of a named method (default: "<kind> jobs take no method")
    check: SubmissionCheck | None = None  # the kind's own checks, after the generic ones
    # Result cache: whether identical inputs give the same result (the tenant's earlier job is reused), and
    # whether the seed is one of those inputs.
    cacheable: bool = False
    cache_by_seed: bool = False
    # Trains with the input model's recipe when params.recipe is absent: that recipe counts against the
    # epochs/steps ceilings and keys the cache.
    inherits_recipe: bool = False
    produces: frozenset[Output] = frozenset()
    records_recipe: bool = False  # its output model records the recipe it was trained with
    comparison_role: ComparisonRole | None = None
    uses_shadow_store: bool = False  # reads and writes the tenant's audit shadow models
    # Engine requests: whether the model starts from the input weights (else a seeded initialisation),
    # whether a forget set must / may / must not come with the request (the library is looser than the API:
    # it evaluates without a forget set), and whether a regression result measures relearning time against
    # the input (original) model.
    starts_from_weights: bool = False
    # The diffusion engine's run of this kind on a generative model (``"module:function"`` taking a
    # ``workers.engine.diffusion.jobs.GenerativeRequest``); None: generative models do not run this kind.
    generative_run: str | None = None
    engine_forget_set: Presence = Presence.optional
    measures_relearning: bool = False
    # Models the job reads besides its input model: role -> the params field holding the model's id. The API
    # resolves absent ones at submission (app.services.jobs.controls: the input model's original and that
    # original's retrain on the forget set) and stores them in the params; the worker loads their weights
    # into EngineRequest.controls[role].
    control_models: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > KIND_NAME_MAX_LENGTH or not self.name.isidentifier():
            raise ValueError(
                f"job kind name {self.name!r}: an identifier of at most {KIND_NAME_MAX_LENGTH} characters"
            )

    def params_model(self, task: TaskType) -> type[BaseModel] | None:
        return self.params_models.get(task)

    def default_method(self, task: TaskType | None) -> str | None:
        """The method a job of this kind runs when it names none (None: it must name one, or runs none)."""
        if self.method_use is not MethodUse.named:
            return None
        if self.fixed_method is not None or task is None:
            return self.fixed_method
        return DEFAULT_METHODS.get((self.method_kind, task))  # type: ignore[arg-type]

    def supports(self, task: TaskType) -> bool:
        return task in self.task_types

    def task_refusal(self, task: TaskType) -> str:
        """Why a model of ``task`` cannot run this kind (for the API's task-mismatch answer)."""
        if self.task_types == (TaskType.generative,):
            architectures = ", ".join(GENERATIVE_ARCHITECTURES)
            return f"{self.name} jobs need a generative model ({architectures}); this one is {task.value}"
        supported = " and ".join(t.value for t in self.task_types)
        return f"{self.name} jobs support {supported} models, not {task.value} ones"

    def resolve_run(self) -> EngineRun:
        run: EngineRun = import_by_path(self.run) if isinstance(self.run, str) else self.run
        return run
