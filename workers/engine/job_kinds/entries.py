"""The job kinds, one entry each (torch-free; registered in ``workers.engine.job_kinds``).

Each kind's own rules live in its entry's ``check``; everything the API and the worker do for every kind
(reading the inputs, resolving the method, validating params, the task type, the cache, quotas, storing
outputs) reads the entry's fields.
"""

from __future__ import annotations

from workers.engine.audit.params import AUDITABLE_JOB_KINDS, AuditParams
from workers.engine.diffusion.job_params import TEACHER, GenerativeEvaluation, SampleJobParams
from workers.engine.job_kinds.spec import (
    Input,
    JobKindSpec,
    MethodUse,
    Presence,
    SubmissionContext,
    SubmissionRefused,
)
from workers.engine.methods import METHODS
from workers.engine.recovery.params import (
    ORIGINAL_FIELD,
    RETRAIN_FIELD,
    GenerativeRecoveryParams,
    RecoveryParams,
)
from workers.engine.task_types import TaskType

# The engine run of every kind that runs a registered method (or evaluates) on one model.
METHOD_RUN = "workers.engine.execute:run_method_request"
ALL_TASKS = (TaskType.classification, TaskType.regression, TaskType.generative)
DISCRIMINATIVE = (TaskType.classification, TaskType.regression)
# Inputs of the kinds that work on a model and a forget set, and of those that work on a model and its
# training data.
ON_FORGET_SET_REQUIRED: tuple[Input, ...] = ("model_id", "forget_set_id")
ON_FORGET_SET_FORBIDDEN: tuple[Input, ...] = ("dataset_id", "architecture", "arch_config")
ON_MODEL_FORBIDDEN: tuple[Input, ...] = ("dataset_id", "architecture", "arch_config", "forget_set_id")


def _needs_teacher(kind: str, context: SubmissionContext) -> None:
    """Generative retrain and unlearn start from a multi-step teacher."""
    assert context.model is not None
    if context.task is TaskType.generative and context.model.architecture != TEACHER:
        raise SubmissionRefused(
            f"{kind} starts from a multi-step teacher ({TEACHER}); this model is"
            f" {context.model.architecture}",
            code="task-mismatch",
        )


def _check_retrain(context: SubmissionContext) -> None:
    _needs_teacher("retrain", context)
    assert context.model is not None
    if context.params.get("recipe") is None and context.model.train_recipe is None:
        what = "teacher" if context.task is TaskType.generative else "model"
        suffix = "" if context.task is TaskType.generative else " for the retrain"
        raise SubmissionRefused(
            f"this {what} has no recorded training recipe (it was uploaded): pass params.recipe{suffix}",
            code="missing-recipe",
        )


def _check_unlearn(context: SubmissionContext) -> None:
    _needs_teacher("unlearn", context)
    forget_set = context.forget_set
    if context.task is not TaskType.generative or forget_set is None:
        return
    # Generative unlearning forgets the forget set's class; params that name another one are a mistake.
    given = context.params.get("forget_class")
    if given is not None and given != forget_set.forget_class:
        raise SubmissionRefused(
            f"params.forget_class {given} differs from the forget set's class {forget_set.forget_class}",
            code="invalid-params",
        )
    if context.params.get("override_class") == forget_set.forget_class:
        raise SubmissionRefused(
            f"params.override_class must differ from the forgotten class {forget_set.forget_class}",
            code="invalid-params",
        )


def _check_audit(context: SubmissionContext) -> None:
    # Generative models are refused before (the kind's task types); classifiers and regressors are audited
    # alike (regression scores: workers/engine/metrics/regression_scores.py), so the audited method is what
    # must fit the model's task.
    assert isinstance(context.parsed, AuditParams)
    assert context.model is not None and context.forget_set is not None
    params = context.parsed
    task = TaskType(context.dataset.task) if context.dataset is not None else context.task
    method = METHODS.get(params.method)
    if task not in method.task_types:
        auditable = [m.name for m in METHODS if task in m.task_types and m.job_kind in AUDITABLE_JOB_KINDS]
        raise SubmissionRefused(
            f"method '{method.name}' does not support {task.value} models; audit one of {auditable}",
            code="task-mismatch",
        )
    if params.recipe is None and context.model.train_recipe is None:
        raise SubmissionRefused(
            "this model has no recorded training recipe (it was uploaded): pass params.recipe, the recipe"
            " every shadow model is trained with",
            code="missing-recipe",
        )
    if params.forget_sets_per_shadow > 1 and context.forget_set.kind != "random":
        raise SubmissionRefused(
            "params.forget_sets_per_shadow > 1 redraws random forget sets of the same size: it needs a random"
            f" forget set, this one is '{context.forget_set.kind}'",
            code="invalid-params",
        )


TRAIN = JobKindSpec(
    name="train",
    description="Train a model of an architecture on a dataset from a seeded random initialisation.",
    required=("dataset_id", "architecture"),
    forbidden=("model_id", "forget_set_id"),
    task_types=ALL_TASKS,
    run=METHOD_RUN,
    method_use=MethodUse.named,
    method_kind="train",
    produces=frozenset({"model"}),
    records_recipe=True,
    generative_run="workers.engine.diffusion.jobs:run_method",
)
RETRAIN = JobKindSpec(
    name="retrain",
    description="The gold standard: train without the forget set, with the original model's recipe.",
    required=ON_FORGET_SET_REQUIRED,
    forbidden=ON_FORGET_SET_FORBIDDEN,
    task_types=ALL_TASKS,
    run=METHOD_RUN,
    method_use=MethodUse.named,
    method_kind="retrain",
    check=_check_retrain,
    cacheable=True,
    cache_by_seed=True,
    inherits_recipe=True,
    produces=frozenset({"model"}),
    records_recipe=True,
    comparison_role="reference",
    engine_forget_set=Presence.required,
    measures_relearning=True,
    generative_run="workers.engine.diffusion.jobs:run_method",
)
UNLEARN = JobKindSpec(
    name="unlearn",
    description="Run an unlearning method on a model and a forget set.",
    required=ON_FORGET_SET_REQUIRED,
    forbidden=ON_FORGET_SET_FORBIDDEN,
    task_types=ALL_TASKS,
    run=METHOD_RUN,
    method_use=MethodUse.named,
    method_kind="unlearn",
    check=_check_unlearn,
    produces=frozenset({"model"}),
    comparison_role="method",
    starts_from_weights=True,
    engine_forget_set=Presence.required,
    measures_relearning=True,
    generative_run="workers.engine.diffusion.jobs:run_method",
)
EVALUATE = JobKindSpec(
    name="evaluate",
    description="Evaluate a model on a forget set (the original model's row of a comparison).",
    required=ON_FORGET_SET_REQUIRED,
    forbidden=ON_FORGET_SET_FORBIDDEN,
    task_types=ALL_TASKS,
    run=METHOD_RUN,
    params_models={TaskType.generative: GenerativeEvaluation},
    cacheable=True,
    comparison_role="original",
    starts_from_weights=True,
    generative_run="workers.engine.diffusion.jobs:run_evaluate",
)
PRUNE = JobKindSpec(
    name="prune",
    description="Prune a model on its training data (a sparse model comes out; no forget set).",
    required=("model_id",),
    forbidden=ON_MODEL_FORBIDDEN,
    task_types=DISCRIMINATIVE,
    run=METHOD_RUN,
    method_use=MethodUse.named,
    method_kind="prune",
    fixed_method="prune",
    produces=frozenset({"model"}),
    starts_from_weights=True,
    engine_forget_set=Presence.forbidden,
)
WORST_CASE_SEARCH = JobKindSpec(
    name="worst_case_search",
    description="Search the model's training data for the forget set hardest to unlearn (one comes out).",
    required=("model_id",),
    forbidden=ON_MODEL_FORBIDDEN,
    task_types=DISCRIMINATIVE,
    run=METHOD_RUN,
    method_use=MethodUse.named,
    method_kind="search",
    fixed_method="worst_case_search",
    produces=frozenset({"forget_set"}),
    starts_from_weights=True,
    engine_forget_set=Presence.forbidden,
)
AUDIT = JobKindSpec(
    name="audit",
    description="Audit the method in params.method on shadow pipelines (U-LiRA, Kaggle, LiRA, RMIA).",
    required=ON_FORGET_SET_REQUIRED,
    forbidden=ON_FORGET_SET_FORBIDDEN,
    task_types=DISCRIMINATIVE,
    run="workers.engine.audit.job:run_audit_request",
    method_use=MethodUse.in_params,
    # Validated for every task type: a generative model's audit is refused for its task after its params.
    params_models=dict.fromkeys(ALL_TASKS, AuditParams),
    params_label="an audit",
    method_refusal="audit jobs name the audited method in params.method",
    check=_check_audit,
    inherits_recipe=True,
    produces=frozenset({"report"}),
    uses_shadow_store=True,
    starts_from_weights=True,
    engine_forget_set=Presence.required,
)
SAMPLE = JobKindSpec(
    name="sample",
    description="Draw images from a generative model: an npz of samples and a PNG grid.",
    required=("model_id",),
    forbidden=ON_MODEL_FORBIDDEN,
    task_types=(TaskType.generative,),
    run=METHOD_RUN,
    params_models={TaskType.generative: SampleJobParams},
    produces=frozenset({"samples"}),
    starts_from_weights=True,
    engine_forget_set=Presence.forbidden,
    generative_run="workers.engine.diffusion.jobs:run_sample",
)
RECOVERY = JobKindSpec(
    name="recovery",
    description="Recovery audit of an unlearned model: quantization, pruning and relearning applied to copies"
    " of it and of its retrain control, the forget-set metrics re-measured on both.",
    required=ON_FORGET_SET_REQUIRED,
    forbidden=ON_FORGET_SET_FORBIDDEN,
    # Generative models: the forget-class generation rate under the same transforms and denoising-loss
    # relearning, against the ddpm_retrain teacher (workers.engine.recovery.generative).
    task_types=ALL_TASKS,
    run="workers.engine.recovery.job:run_recovery_request",
    params_models={
        **dict.fromkeys(DISCRIMINATIVE, RecoveryParams),
        TaskType.generative: GenerativeRecoveryParams,
    },
    params_label="a recovery audit",
    starts_from_weights=True,
    engine_forget_set=Presence.required,
    control_models={"original": ORIGINAL_FIELD, "retrain": RETRAIN_FIELD},
    generative_run="workers.engine.recovery.generative:run_generative_recovery",
)

ENTRIES = (TRAIN, RETRAIN, UNLEARN, EVALUATE, PRUNE, WORST_CASE_SEARCH, AUDIT, SAMPLE, RECOVERY)
