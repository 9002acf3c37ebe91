"""The engine's single entry point: run one job request through its kind's entry.

``execute`` looks the request's kind up in the job-kind registry (``workers.engine.job_kinds``) and calls
the entry's run function. ``run_method_request``, the run of every kind that runs a registered method on one
model or evaluates it (train, retrain, unlearn, prune, worst_case_search, evaluate; on generative models
sample too), validates the request from the entry's fields (user mistakes become :class:`InvalidInputError`
with a readable message), builds the model, runs the method while timing it alone (RTE, optml.md §3.2),
evaluates the result in eval mode without augmentation, and returns CPU numpy weights plus flat metrics.
Given the same request and seed on CPU, the metrics are bit-identical.

Every evaluation reports ``max_class_fraction`` (percent of test predictions in the most predicted class,
for the collapse guardrail) and, whenever the model has sparsity masks, ``sparsity`` (percent of exactly-zero
entries among the prunable and masked weights, read from the weights, not the masks). A ``prune`` request
starts from the input weights, takes no forget set and returns the new masks.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from workers.engine.architectures import ARCHITECTURES, ArchitectureSpec
from workers.engine.architectures.build import build_model, load_weights, state_to_numpy
from workers.engine.audit.store import ShadowStore
from workers.engine.datasets import ArrayDataset
from workers.engine.device_inputs import device_inputs
from workers.engine.devices import resolve_device
from workers.engine.errors import InvalidInputError, UnknownEntryError
from workers.engine.hooks import ArtifactCache, EngineHooks, NullHooks
from workers.engine.imports import import_by_path
from workers.engine.job_kinds import JobKindSpec, MethodUse, Presence, job_kind
from workers.engine.masks import apply_masks, masks_to_device, masks_to_numpy, weight_sparsity
from workers.engine.methods import METHODS, MethodSpec, relearn
from workers.engine.methods.base import DeviceSplits, MethodContext, MethodOutput
from workers.engine.methods.params import TrainRecipe
from workers.engine.metrics import (
    MIA_FEATURES,
    PERCENT,
    accuracy,
    forgetting_report,
    per_class_accuracy,
    predictions,
    retain_indices,
    select_members,
    softmax,
    used_test_indices,
)
from workers.engine.metrics import regression as regression_metrics
from workers.engine.metrics.attacks import ATTACKERS, MIN_PER_CLASS_FITTED, population_attack
from workers.engine.metrics.mia import MemberSelection
from workers.engine.metrics.nonmembers import select_nonmembers
from workers.engine.search.worst_case import SearchOutput
from workers.engine.task_types import TaskType
from workers.engine.training import IMAGE_TENSOR_DIMS, reproducible, synchronize

__all__ = ["EngineHooks", "EngineRequest", "EngineResult", "execute", "resolve_device", "run_method_request"]

# A job-kind registry name (workers.engine.job_kinds.JOB_KINDS).
JobKindName = str
EVALUATE_PHASE = "evaluate"
EVAL_BATCH_SIZE = 1024
# The reference's MIA member set: the first |D_test| retain samples (optml.md §3.1); the seed only matters
# for "random" selection.
MIA_MEMBER_SELECTION: MemberSelection = "first"
MIA_SELECTION_SEED = 0
# Population attacks in every evaluation with a forget set: bootstrap replicates (about 1 s in all on a CPU)
# and the score whose threshold attack gives the flat ``mia_*`` metrics.
POPULATION_ATTACK_BOOTSTRAP = 100
HEADLINE_POPULATION_SCORE = "logit_confidence"


@dataclass
class EngineRequest:
    kind: JobKindName  # what the entry's fields say about the request: JOB_KINDS.get(kind)
    method: str | None  # "train" / "retrain" / an unlearning method / "prune"; None for evaluate
    params: dict[str, Any]  # raw; validated with the method's params_model
    seed: int
    device: str  # "auto" | "cpu" | "cuda"
    dataset: ArrayDataset
    architecture: str  # for train: the arch to build; otherwise the input model's arch
    arch_config: dict[str, Any]
    weights: dict[str, np.ndarray] | None = None  # the input (original) model for unlearn/prune/evaluate
    forget_indices: np.ndarray | None = None  # sorted unique int64 indices into the TRAIN split
    forget_class: int | None = None  # class-wise forgetting: TA and the MIA exclude this test class
    original_recipe: dict[str, Any] | None = None  # the original model's TrainRecipe, for retrain
    resume: bytes | None = None  # last epoch checkpoint of a previous attempt
    masks: dict[str, np.ndarray] | None = None  # sparsity masks of a pruned input model (nonzero = kept)
    # Bytes reusable across jobs (generative evaluation: the metric classifier), and the dataset's content
    # hash that keys them.
    cache: ArtifactCache | None = None
    dataset_sha256: str | None = None
    # The forget set's kind (indices | class | random: an audit redraws random ones) and where audit shadow
    # models are read and written (kinds whose entry ``uses_shadow_store``).
    forget_kind: str | None = None
    shadow_store: ShadowStore | None = None
    # Further models a kind reads besides its input model, by role (entries with ``control_models``: a
    # recovery audit's original and retrain control), loaded by the worker from the params' model ids.
    controls: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass
class EngineResult:
    weights: dict[str, np.ndarray] | None  # output model state (CPU numpy float32/int64); None for evaluate
    metrics: dict[str, float]
    details: dict[str, Any]
    timings: dict[str, float]
    environment: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, np.ndarray] | None = None  # the output model's sparsity masks (uint8), None if dense
    # Array outputs of methods that produce data rather than a model. worst_case_search: forget_indices
    # (int64, sorted train indices), scores (float64, final w per item), objective_history (float64).
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # PNG images by name (generative jobs: "samples", a classes x samples grid).
    pngs: dict[str, bytes] = field(default_factory=dict)
    # The output model's architecture and config where they differ from the input's (SFD turns a
    # unet_ddpm teacher into a unet_one_step generator); None: the request's.
    architecture: str | None = None
    arch_config: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------- validation
@dataclass
class _Plan:
    method: MethodSpec | None
    params: BaseModel | None
    architecture: ArchitectureSpec
    arch_config: Any
    forget_indices: np.ndarray | None
    original_recipe: TrainRecipe | None


def _validation_message(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'params'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )


def _resolve_method(
    request: EngineRequest, kind: JobKindSpec, task: TaskType
) -> tuple[MethodSpec | None, BaseModel | None]:
    if kind.method_use is not MethodUse.named:
        if request.method is not None:
            raise InvalidInputError(f"{kind.name} requests take no method")
        return None, None
    # The library names the method of train / retrain / unlearn requests itself; fixed ones are defaults.
    method = request.method if request.method is not None else kind.fixed_method
    if method is None:
        raise InvalidInputError(f"a {request.kind} request needs a method")
    spec = METHODS.get(method)
    if spec.job_kind != kind.method_kind:
        raise InvalidInputError(
            f"method {spec.name!r} is a {spec.job_kind} method, not a {request.kind} method"
        )
    if task not in spec.task_types:
        raise InvalidInputError(f"method {spec.name!r} does not support {task.value} tasks")
    try:
        params = spec.params_model.model_validate(request.params or {})
    except ValidationError as error:
        raise InvalidInputError(f"invalid parameters for {spec.name}: {_validation_message(error)}") from None
    return spec, params


def _resolve_forget_set(request: EngineRequest, dataset: ArrayDataset) -> np.ndarray | None:
    if request.forget_class is not None and not 0 <= request.forget_class < dataset.num_classes:
        raise InvalidInputError(f"forget_class {request.forget_class} is not a class of this dataset")
    if request.forget_indices is None:
        if request.forget_class is None:
            return None
        # Class-wise forgetting given only by its class: forget every training sample of it.
        indices = np.flatnonzero(dataset.y_train == request.forget_class).astype(np.int64)
    else:
        raw = np.asarray(request.forget_indices)
        if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
            raise InvalidInputError("forget_indices must be a 1-D array of integer indices")
        indices = raw.astype(np.int64)
    if indices.size == 0:
        raise InvalidInputError("the forget set is empty")
    if np.any(np.diff(indices) <= 0):
        raise InvalidInputError("forget_indices must be sorted ascending without duplicates")
    if indices[0] < 0 or indices[-1] >= dataset.n_train:
        raise InvalidInputError(f"forget_indices must lie in [0, {dataset.n_train}) (the training split)")
    if indices.size == dataset.n_train:
        raise InvalidInputError("the forget set covers the whole training split; nothing would be retained")
    return indices


def _validate(request: EngineRequest, kind: JobKindSpec) -> _Plan:
    dataset = request.dataset.validate()
    if dataset.task not in kind.task_types:
        raise InvalidInputError(f"{kind.name} requests do not support {dataset.task.value} tasks")
    method, params = _resolve_method(request, kind, dataset.task)
    architecture = ARCHITECTURES.get(request.architecture)
    if dataset.task not in architecture.task_types:
        raise InvalidInputError(
            f"architecture {architecture.name!r} does not support {dataset.task.value} tasks"
        )
    arch_config = architecture.parse_config(request.arch_config)
    if architecture.check_input is not None:
        architecture.check_input(arch_config, dataset.input_shape, dataset.num_classes)
    if kind.starts_from_weights and request.weights is None:
        raise InvalidInputError(f"a {request.kind} request needs the input model's weights")
    # Model modifiers (pruning) and the forget-set search have no forget set; their evaluation reports
    # train/test accuracy only (for the search: of the input model, which it leaves unchanged).
    if kind.engine_forget_set is Presence.forbidden and (
        request.forget_indices is not None or request.forget_class is not None
    ):
        raise InvalidInputError(f"a {request.kind} request takes no forget set")
    forget_indices = _resolve_forget_set(request, dataset)
    if kind.engine_forget_set is Presence.required and forget_indices is None:
        raise InvalidInputError(
            f"a {request.kind} request needs a forget set (forget_indices or forget_class)"
        )
    original_recipe = None
    if request.original_recipe is not None:
        try:
            original_recipe = TrainRecipe.model_validate(request.original_recipe)
        except ValidationError as error:
            raise InvalidInputError(f"invalid original_recipe: {_validation_message(error)}") from None
    return _Plan(method, params, architecture, arch_config, forget_indices, original_recipe)


# ------------------------------------------------------------------------------------------- evaluation
class EvaluationProgress:
    """Counts evaluation steps (prediction batches, then one per MIA attack) against a single total."""

    def __init__(self, hooks: EngineHooks, total: int) -> None:
        self.hooks, self.total, self.step = hooks, total, 0

    def advance(self, info: dict[str, Any]) -> None:
        self.step += 1
        self.hooks.progress(EVALUATE_PHASE, self.step, self.total, info)


def prediction_batches(sample_count: int, batch_size: int = EVAL_BATCH_SIZE) -> int:
    return math.ceil(sample_count / batch_size)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    progress: EvaluationProgress | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> np.ndarray:
    """Eval-mode fp32 logits in batches (fp32 even on CUDA: MIA features need precise confidences)."""
    model.eval()
    channels_last = inputs.device.type == "cuda" and inputs.dim() == IMAGE_TENSOR_DIMS
    outputs = []
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start : start + batch_size]
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        outputs.append(model(batch).float().cpu())
        if progress is not None:
            progress.advance({"predicted": min(start + batch_size, inputs.shape[0]), "of": inputs.shape[0]})
    return torch.cat(outputs).numpy().astype(np.float64)


def max_class_fraction(probabilities: np.ndarray) -> float:
    """Percent of samples predicted as the single most predicted class (100: the model predicts one class,
    the collapse the guardrails look for). Ties in a row go to the lowest class index, as ``argmax``."""
    if probabilities.shape[0] == 0:
        return 0.0
    counts = np.bincount(predictions(probabilities), minlength=probabilities.shape[1])
    return float(PERCENT * counts.max() / probabilities.shape[0])


def evaluate_classification(
    model: nn.Module,
    splits: DeviceSplits,
    dataset: ArrayDataset,
    forget_indices: np.ndarray | None,
    forget_class: int | None,
    hooks: EngineHooks,
) -> tuple[dict[str, float], dict[str, Any]]:
    # The reference's MIA features, then the population attacks (one step).
    attacks = len(MIA_FEATURES) + 1 if forget_indices is not None else 0
    progress = EvaluationProgress(
        hooks, prediction_batches(dataset.n_train) + prediction_batches(dataset.n_test) + attacks
    )
    train_probabilities = softmax(predict_logits(model, splits.x_train, progress))
    test_probabilities = softmax(predict_logits(model, splits.x_test, progress))
    metrics = {
        "train_accuracy": accuracy(train_probabilities, dataset.y_train),
        "test_accuracy": accuracy(test_probabilities, dataset.y_test),
        "max_class_fraction": max_class_fraction(test_probabilities),
    }
    per_class = {
        "train": per_class_accuracy(train_probabilities, dataset.y_train, dataset.num_classes),
        "test": per_class_accuracy(test_probabilities, dataset.y_test, dataset.num_classes),
    }
    counts = {"n_train": dataset.n_train, "n_test": dataset.n_test}
    if forget_indices is not None:
        report = forgetting_report(
            train_probabilities,
            dataset.y_train,
            forget_indices,
            test_probabilities,
            dataset.y_test,
            forget_class,
            member_selection=MIA_MEMBER_SELECTION,
            seed=MIA_SELECTION_SEED,
            on_feature_done=lambda name: progress.advance({"mia_feature": name}),
        )
        metrics.update(report)
        metrics["forget_accuracy"] = PERCENT - report["UA"]
        retained = retain_indices(dataset.n_train, forget_indices)
        used_test = used_test_indices(dataset.y_test, forget_class)
        per_class["forget"] = per_class_accuracy(
            train_probabilities[forget_indices], dataset.y_train[forget_indices], dataset.num_classes
        )
        per_class["retain"] = per_class_accuracy(
            train_probabilities[retained], dataset.y_train[retained], dataset.num_classes
        )
        nonmembers = select_nonmembers(
            dataset.y_train[forget_indices], dataset.y_test, forget_class, MIA_SELECTION_SEED
        )
        if nonmembers.indices is None:
            population: dict[str, Any] = {"attacks": {}, "reason": nonmembers.reason}
        else:
            population = _population_attacks(
                train_probabilities[forget_indices],
                dataset.y_train[forget_indices],
                test_probabilities[nonmembers.indices],
                dataset.y_test[nonmembers.indices],
            )
            metrics.update(_population_headline(population))
        population["nonmembers"] = nonmembers.summary()
        progress.advance({"attacks": "population"})
        attacks_details = {"population": population}
        members = select_members(retained.size, used_test.size, MIA_MEMBER_SELECTION, MIA_SELECTION_SEED)
        counts.update(
            n_forget=int(forget_indices.size),
            n_retain=int(retained.size),
            n_test_used=int(used_test.size),
            n_mia_members=int(members.size),
        )
        return metrics, {"per_class_accuracy": per_class, "counts": counts, "attacks": attacks_details}
    return metrics, {"per_class_accuracy": per_class, "counts": counts}


def _population_attacks(
    member_probabilities: np.ndarray,
    member_labels: np.ndarray,
    nonmember_probabilities: np.ndarray,
    nonmember_labels: np.ndarray,
) -> dict[str, Any]:
    """Every population attack (peers.md §3.1) with the forget set as members and test samples of the same
    label distribution as non-members (``workers.engine.metrics.nonmembers``): ROC, AUC, balanced accuracy
    and TPR at low FPR with bootstrap intervals over examples (independent here: one model). Fitted
    attackers need a few samples of each side; below that only the threshold attacker runs."""
    enough = min(member_labels.size, nonmember_labels.size) >= 2 * MIN_PER_CLASS_FITTED
    return population_attack(
        member_probabilities,
        member_labels,
        nonmember_probabilities,
        nonmember_labels,
        attackers=ATTACKERS if enough else ("threshold",),
        n_bootstrap=POPULATION_ATTACK_BOOTSTRAP,
        seed=MIA_SELECTION_SEED,
    )


def _population_headline(population: dict[str, Any]) -> dict[str, float]:
    """Flat metrics of the headline population attack: a threshold on the logit-scaled confidence."""
    report = population["attacks"][HEADLINE_POPULATION_SCORE]["threshold"]
    headline = {
        "mia_auc": float(report["auc"]["value"]),
        "mia_balanced_accuracy": float(report["balanced_accuracy"]["value"]),
    }
    for alpha, entry in report["tpr_at_fpr"].items():
        if entry["value"] is not None:
            headline[f"mia_tpr_at_{format(float(alpha) * PERCENT, 'g').replace('.', '_')}pct_fpr"] = float(
                entry["value"]
            )
    return headline


def evaluate_regression(
    model: nn.Module,
    splits: DeviceSplits,
    dataset: ArrayDataset,
    forget_indices: np.ndarray | None,
    forget_class: int | None,
    hooks: EngineHooks,
    original: nn.Module | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Deep Regression Unlearning's metrics (blindspot_sfd.md §1.6; ``workers.engine.metrics.regression``).

    Always ``train_mae/mse`` and ``test_mae/mse``. With a forget set: ``forget_*`` and ``retain_*`` on the
    train split; when the forget set is a target range (detected from the targets, however it was
    specified), ``forget_test_*`` / ``retain_test_*`` on the test samples inside / outside that range (the
    reference's forget-test and retain-test subsets); the membership attack (``MIA-Efficacy``,
    ``mia.forget``, ``mia.train``, ``mia.test``); and, given the ``original`` model (retrain and unlearn
    jobs), the relearning time ``relearn_steps`` (+ ``relearn_capped``, ``relearn_threshold``) on a copy of
    ``model``, from which the comparison forms AIN. The forget set's evaluation data for relearning is the
    reference's forget-val: the in-range test samples for a target range, else the forget samples
    themselves. The forget-set predictions go to ``details["forget_predictions"]`` for W1 at comparison
    time. Deviation from the reference: no train-time augmentation inside any metric (§1.3 quirk).
    """
    has_forget = forget_indices is not None
    progress = EvaluationProgress(
        hooks,
        prediction_batches(dataset.n_train) + prediction_batches(dataset.n_test) + (2 if has_forget else 0),
    )
    train_predictions = predict_logits(model, splits.x_train, progress)
    test_predictions = predict_logits(model, splits.x_test, progress)
    metrics = {
        **regression_metrics.error_metrics("train", train_predictions, dataset.y_train),
        **regression_metrics.error_metrics("test", test_predictions, dataset.y_test),
    }
    details: dict[str, Any] = {"counts": {"n_train": dataset.n_train, "n_test": dataset.n_test}}
    if forget_indices is None:
        return metrics, details
    retained = retain_indices(dataset.n_train, forget_indices)
    metrics.update(
        regression_metrics.error_metrics(
            "forget", train_predictions[forget_indices], dataset.y_train[forget_indices]
        )
    )
    metrics.update(
        regression_metrics.error_metrics("retain", train_predictions[retained], dataset.y_train[retained])
    )
    bounds = regression_metrics.target_range(dataset.y_train, forget_indices)
    forget_eval_inputs, forget_eval_targets = (
        splits.x_train[splits.forget_indices],
        splits.y_train[splits.forget_indices],
    )
    counts = details["counts"]
    if bounds is not None:
        inside = regression_metrics.in_range(dataset.y_test, bounds)
        details["forget_range"] = [None if np.isinf(bound) else bound for bound in bounds]
        counts.update(n_forget_test=int(inside.sum()), n_retain_test=int((~inside).sum()))
        if inside.any():
            metrics.update(
                regression_metrics.error_metrics(
                    "forget_test", test_predictions[inside], dataset.y_test[inside]
                )
            )
            in_range_test = torch.from_numpy(np.flatnonzero(inside)).to(splits.x_test.device)
            forget_eval_inputs, forget_eval_targets = (
                splits.x_test[in_range_test],
                splits.y_test[in_range_test],
            )
        if (~inside).any():
            metrics.update(
                regression_metrics.error_metrics(
                    "retain_test", test_predictions[~inside], dataset.y_test[~inside]
                )
            )
    member_count = min(retained.size, dataset.n_test)
    members = retained[:member_count]
    train_losses = regression_metrics.l1_losses(train_predictions, dataset.y_train)
    test_losses = regression_metrics.l1_losses(test_predictions, dataset.y_test)
    attack = regression_metrics.regression_mia(
        train_losses[members],
        test_losses,
        {"forget": train_losses[forget_indices], "train": train_losses, "test": test_losses},
    )
    metrics.update({f"mia.{name}": value for name, value in attack.items()})
    metrics["MIA-Efficacy"] = PERCENT - attack["forget"]
    progress.advance({"mia": "l1"})
    if original is not None:
        threshold = relearn.relearn_threshold(
            relearn.mean_loss(original, forget_eval_inputs, forget_eval_targets)
        )
        outcome = relearn.relearn_steps(
            model, splits.x_train, splits.y_train, forget_eval_inputs, forget_eval_targets, threshold
        )
        metrics.update(
            relearn_steps=float(outcome.steps),
            relearn_capped=float(outcome.capped),
            relearn_threshold=outcome.threshold,
        )
        details["relearn"] = {
            "initial_loss": outcome.initial_loss,
            "final_loss": outcome.final_loss,
            "step_cap": outcome.step_cap,
            "lr": relearn.RELEARN_LR,
            "batch_size": relearn.RELEARN_BATCH_SIZE,
            "alpha": relearn.RELEARN_ALPHA,
            "eval_set": "forget_test" if bounds is not None and counts.get("n_forget_test") else "forget",
        }
    progress.advance({"relearn": original is not None})
    details[regression_metrics.FORGET_PREDICTIONS_KEY] = regression_metrics.prediction_sample(
        train_predictions[forget_indices]
    )
    counts.update(
        n_forget=int(forget_indices.size), n_retain=int(retained.size), n_mia_members=int(member_count)
    )
    return metrics, details


Evaluator = Callable[
    [nn.Module, DeviceSplits, ArrayDataset, np.ndarray | None, int | None, EngineHooks],
    tuple[dict[str, float], dict[str, Any]],
]
EVALUATORS: dict[TaskType, Evaluator] = {
    TaskType.classification: evaluate_classification,
    TaskType.regression: evaluate_regression,
}


def _relearning_reference(
    request: EngineRequest, kind: JobKindSpec, plan: _Plan, device: torch.device
) -> nn.Module | None:
    """The original model f_o (the request's input weights) for AIN's threshold, when the job has one: a
    regression job of a kind that ``measures_relearning`` (retrain, unlearn) with a forget set. Built
    without touching the global RNG."""
    if (
        request.dataset.task is not TaskType.regression
        or not kind.measures_relearning
        or request.weights is None
        or plan.forget_indices is None
    ):
        return None
    with torch.random.fork_rng(devices=[]):
        original = build_model(plan.architecture.name, plan.arch_config)
    load_weights(original, request.weights, plan.architecture.param_shapes(plan.arch_config))
    return original.to(device).eval()


# -------------------------------------------------------------------------------------------- execution
def _device_splits(
    dataset: ArrayDataset, forget_indices: np.ndarray | None, device: torch.device
) -> DeviceSplits:
    forget = forget_indices if forget_indices is not None else np.zeros(0, dtype=np.int64)
    return DeviceSplits(
        # uint8 pixels are scaled and the dataset's normalisation applied on the device (device_inputs).
        x_train=device_inputs(dataset, dataset.x_train, device),
        y_train=torch.from_numpy(dataset.y_train).to(device),
        x_test=device_inputs(dataset, dataset.x_test, device),
        y_test=torch.from_numpy(dataset.y_test).to(device),
        forget_indices=torch.from_numpy(forget).to(device),
        retain_indices=torch.from_numpy(retain_indices(dataset.n_train, forget)).to(device),
    )


def _environment(device: torch.device, deterministic: bool) -> dict[str, Any]:
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    return {
        "device": device.type,
        "device_name": device_name,
        # Index among the devices this process sees (the worker's CUDA_VISIBLE_DEVICES; the job runner records
        # the host index beside it as worker_gpu).
        "device_index": (device.index if device.index is not None else torch.cuda.current_device())
        if device.type == "cuda"
        else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "deterministic": deterministic,
        "autocast": "bfloat16" if device.type == "cuda" else None,
    }


def _execute_generative(
    request: EngineRequest, kind: JobKindSpec, hooks: EngineHooks | None, started: float
) -> EngineResult:
    from workers.engine.diffusion.jobs import GenerativeRequest

    if kind.generative_run is None:
        raise InvalidInputError(f"generative models do not run {kind.name} requests")
    device = torch.device(resolve_device(request.device))
    result = import_by_path(kind.generative_run)(
        GenerativeRequest(
            kind=kind,
            method=request.method,
            params=request.params,
            seed=request.seed,
            device=device.type,
            dataset=request.dataset,
            architecture=request.architecture,
            arch_config=request.arch_config,
            weights=request.weights,
            forget_indices=request.forget_indices,
            forget_class=request.forget_class,
            original_recipe=request.original_recipe,
            resume=request.resume,
            hooks=hooks,
            cache=request.cache,
            dataset_sha256=request.dataset_sha256,
            controls=request.controls,
        )
    )
    details = {
        **result.details,
        "kind": request.kind,
        "method": result.details.get("method", request.method),
        "architecture": request.architecture,
        "arch_config": result.arch_config if result.arch_config is not None else request.arch_config,
        "seed": request.seed,
        "forget_class": request.forget_class,
    }
    return EngineResult(
        weights=result.weights,
        metrics=result.metrics,
        details=details,
        timings={
            "method_s": result.method_seconds,
            "eval_s": result.eval_seconds,
            "total_s": time.perf_counter() - started,
            **result.timings,
            **(
                {"seconds_per_sample": float(details["seconds_per_sample"])}
                if "seconds_per_sample" in details
                else {}
            ),
        },
        environment=_environment(device, device.type == "cpu"),
        arrays=result.arrays,
        pngs=result.pngs,
        architecture=result.architecture,
        arch_config=result.arch_config,
    )


def execute(request: EngineRequest, hooks: EngineHooks | None = None) -> EngineResult:
    """Run ``request`` with its kind's entry; ``hooks`` receives progress (may raise JobCancelled) and epoch
    checkpoints."""
    try:
        kind = job_kind(request.kind)
    except UnknownEntryError as error:
        raise InvalidInputError(str(error)) from None
    return kind.resolve_run()(request, hooks)


def run_method_request(request: EngineRequest, hooks: EngineHooks | None = None) -> EngineResult:
    """The run of the kinds that run a registered method on one model, or evaluate it."""
    started = time.perf_counter()
    kind = job_kind(request.kind)
    if TaskType.generative in ARCHITECTURES.get(request.architecture).task_types:
        return _execute_generative(request, kind, hooks, started)
    if not any(task is not TaskType.generative for task in kind.task_types):
        raise InvalidInputError(f"{request.kind} requests need a generative model")
    plan = _validate(request, kind)
    dataset = request.dataset
    device = torch.device(resolve_device(request.device))
    progress = hooks or NullHooks()
    with reproducible(device) as deterministic:
        torch.manual_seed(request.seed)  # the random initialisation of train/retrain
        model = build_model(plan.architecture.name, plan.arch_config)
        if kind.starts_from_weights:
            assert request.weights is not None
            load_weights(model, request.weights, plan.architecture.param_shapes(plan.arch_config))
        model.to(device)
        masks = masks_to_device(request.masks, model, device) if request.masks is not None else None
        # A pruned model stays pruned: retrain starts from a masked initialisation (the reference's
        # sparse retrain), and loaded weights are re-masked in case the checkpoint drifted.
        apply_masks(model, masks)
        splits = _device_splits(dataset, plan.forget_indices, device)

        output: MethodOutput | None = None
        method_seconds = 0.0
        if plan.method is not None:
            assert plan.params is not None
            implementation = import_by_path(plan.method.impl)
            context = MethodContext(
                model=model,
                params=plan.params,
                data=splits,
                seed=request.seed,
                phase=plan.method.name,
                hooks=hooks,
                task=dataset.task,
                num_classes=dataset.num_classes,
                resume=request.resume,
                original_recipe=plan.original_recipe,
                masks=masks,
            )
            synchronize(device)
            method_started = time.perf_counter()
            output = implementation(context)
            synchronize(device)
            method_seconds = time.perf_counter() - method_started
            model = output.model
            if output.masks is not None:
                masks = output.masks

        evaluation_started = time.perf_counter()
        if dataset.task is TaskType.regression:
            metrics, details = evaluate_regression(
                model,
                splits,
                dataset,
                plan.forget_indices,
                request.forget_class,
                progress,
                original=_relearning_reference(request, kind, plan, device),
            )
        else:
            metrics, details = EVALUATORS[dataset.task](
                model, splits, dataset, plan.forget_indices, request.forget_class, progress
            )
        if masks is not None:
            metrics["sparsity"] = PERCENT * weight_sparsity(model, masks)
        if isinstance(output, SearchOutput):
            metrics.update(output.metrics)
        evaluation_seconds = time.perf_counter() - evaluation_started
        # Kinds that produce no model (evaluate, the search) return no weights or masks.
        produces_model = "model" in kind.produces
        weights = state_to_numpy(model) if produces_model else None

    details.update(
        kind=request.kind,
        method=plan.method.name if plan.method is not None else None,
        architecture=plan.architecture.name,
        arch_config=plan.arch_config.model_dump(mode="json"),
        seed=request.seed,
        forget_class=request.forget_class,
        mia_member_selection=MIA_MEMBER_SELECTION,
    )
    if output is not None:
        details.update(params=output.resolved_params, history=output.history, **output.details)
    return EngineResult(
        weights=weights,
        metrics=metrics,
        details=details,
        timings={
            "method_s": method_seconds,
            "eval_s": evaluation_seconds,
            "total_s": time.perf_counter() - started,
        },
        environment=_environment(device, deterministic),
        masks=masks_to_numpy(masks) if produces_model else None,
        arrays=dict(output.arrays) if isinstance(output, SearchOutput) else {},
    )
