"""Run a privacy audit: shadow pipelines, the audited method on each, and the per-example attacks.

Stages (each model is looked up in the shadow store first and only trained when missing):

1. ``base``: K models trained on the full training split with the recipe, seeds derived from the audit seed.
2. ``retrain`` (U-LiRA / Kaggle only): for each of F forget sets, K models trained on the training split
   without it.
3. ``pool`` (LiRA / RMIA only): K models on random halves of the pool (train + test), each example IN for
   exactly half of them (the LiRA reference's balanced split).
4. ``unlearned``: the audited method applied to every base model and forget set (K·F runs); ``retrain`` as
   the method trains from a seeded initialisation instead, with seeds distinct from stage 2's. Stages 1 and
   4 are skipped when only the released Kaggle protocol needs models.
5. ``unlearned_original`` (Kaggle, ``kaggle_protocol="released"``, the default): the audited method applied
   K times, with different seeds, to the job's original model and forget set, as the NeurIPS'23 released
   evaluation (which used N = 512; here N = K).
6. ``calibration`` (Kaggle, ``kaggle_calibration``): K more retrains on the first forget set with fresh seeds.
7. Predictions of every model on the pool, then the attacks:

   - **U-LiRA** (peers.md §3.3): per forget set, leave-one-pipeline-out per-example Gaussians over the
     unlearned vs the retrained pipelines; trials from all F forget sets are pooled. Perfect unlearning
     gives AUC 0.5 and accuracy 50 %.
   - **Kaggle ε score** (peers.md §3.5): released protocol: the K unlearning runs of stage 5 vs the K
     retrains of the first forget set; pipelines protocol: per forget set, the K pipelines' unlearned vs
     retrained models, averaged over forget sets. Always with N and the points cap ⌈ln(N - 1)⌉ next to the
     score, a warning when N < 128, and the calibration: the same score for retrain vs retrain (stage 6 vs
     stage 2) at the same N, the ceiling a perfect method reaches at this N (with small N it is far below 1).
   - **LiRA** (online / offline, each also with fixed variance; peers.md §3.2) and **RMIA offline**
     (peers.md §3.4) against two targets: the original model and the K unlearned models of the first
     forget set (pooled). Members: the first forget set's examples; non-members: the test samples from the
     members' distribution (issue 14 §3), recorded in ``details["nonmembers"]`` with rule, n and
     description: a class forget set takes the forgotten class's test samples, a regression target-range
     forget set the test samples in that range, any other set the test split unless its labels (targets)
     differ (``metrics/nonmembers.py``, ``metrics/regression_scores.py``). When no such samples exist, LiRA
     and RMIA report no figures, with the reason; U-LiRA and Kaggle are unaffected (they compare the same
     examples across models). RMIA's population is the test split with, for every shadow, only the points
     it did not train on; ``a`` is tuned on the pseudo-target's OUT test points (see ``metrics/rmia.py``).

Regression models (``mlp_regressor``, ``small_cnn_regressor``, ``resnet18_regressor``) run every attack the
same way, with regression scores in place of the classifier's (``metrics/regression_scores.py``, where the
choices are measured and justified; there is no reference for regression audits): φ = -sqrt(|ŷ - y| / s)
with s the training targets' mean absolute deviation, RMIA's Pr(x | θ) = exp(-|ŷ - y| / b_θ) (the Laplace
tail probability, b_θ the model's MAE on the test points it did not train on), and the Kaggle utility
ratios MAE_R / MAE_U instead of accuracy ratios.

Intervals: U-LiRA, LiRA and RMIA pool trials over models and examples, which are correlated within a
model and within an example, so their bootstrap intervals resample pipelines and examples (the two-way
cluster bootstrap of ``metrics/attacks.py``); each report's ``interval`` names the method and the number of
clusters. U-LiRA's pipeline cluster is the base model k (its F unlearned models share it); LiRA / RMIA's is
the target model. Per-example scores and their cluster ids go to the arrays artifact (``AuditResult.arrays``),
so every AUC can be recomputed from it.

Models are trained with :func:`workers.engine.vectorised.train_models` (K at once); the unlearning runs are
sequential (methods are arbitrary code). Every trained model is saved to the store as soon as its stage
finishes, so a retried audit resumes from what the previous attempt stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, load_weights, state_to_numpy
from workers.engine.audit.params import AuditParams
from workers.engine.audit.store import (
    ShadowRole,
    ShadowSpec,
    ShadowStore,
    Weights,
    indices_digest,
    weights_digest,
)
from workers.engine.datasets import ArrayDataset
from workers.engine.device_inputs import device_inputs
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.imports import import_by_path
from workers.engine.methods import METHODS, MethodSpec
from workers.engine.methods.base import DeviceSplits, MethodContext
from workers.engine.methods.params import TrainRecipe
from workers.engine.metrics import softmax
from workers.engine.metrics.attacks import TrialClusters, attack_report
from workers.engine.metrics.kaggle import (
    RELEASED_N_MODELS,
    SMALL_N_WARNING_BELOW,
    kaggle_score,
    relative_to_ceiling,
    small_n_warning,
)
from workers.engine.metrics.lira import lira_offline, lira_online, ulira_trials
from workers.engine.metrics.nonmembers import NonMembers, select_nonmembers
from workers.engine.metrics.regression_scores import (
    RELATIVE_SCALE_FLOOR,
    RegressionNonMembers,
    absolute_errors,
    laplace_scales,
    laplace_tail_probability,
    regression_nonmembers,
    regression_phi,
    target_scale,
)
from workers.engine.metrics.rmia import rmia_offline, tune_offline_a, tuning_population
from workers.engine.task_types import TaskType
from workers.engine.vectorised import predict_models, train_models

AUDIT_PHASE = "audit"
TRAINER = "vectorised/1"
UNLEARNER = "method/1"
SEED_MODULUS = 2**31 - 1
# The decision rule of a likelihood-ratio attack: member iff the log-ratio is positive.
LOG_RATIO_DECISION = 0.0
PERCENT = 100.0
ForgetKind = Literal["random", "class", "indices", "worst_case", "target_range"]
LIRA_VARIANTS: dict[str, tuple[bool, bool]] = {  # name -> (online, fixed_variance)
    "online": (True, False),
    "online_fixed": (True, True),
    "offline": (False, False),
    "offline_fixed": (False, True),
}
# The LiRA variant whose figures become flat metrics (the others are in the details).
HEADLINE_LIRA_VARIANT = "online_fixed"
KAGGLE_PROTOCOLS: dict[str, str] = {
    "released": (
        "N unlearning runs (different seeds) of the job's original model, trained once, vs N retrains "
        "without the forget set (the NeurIPS'23 released evaluation; N = shadows)"
    ),
    "pipelines": (
        "the unlearned models of N shadow pipelines (N different base models) vs their N retrains, "
        "averaged over forget sets"
    ),
}
# U-LiRA and Kaggle need no test non-members: they compare the same forget examples across models.
PAIRED_NONMEMBERS: dict[str, Any] = {
    "rule": "retrained_models",
    "n": None,
    "description": "the forget examples themselves under the retrained models (no test samples)",
    "reason": None,
}
KAGGLE_CALIBRATION = (
    "N retrains vs N further retrains with fresh seeds: the score of perfect unlearning at this N"
)


@dataclass
class AuditRequest:
    params: dict[str, Any]  # raw AuditParams
    seed: int
    device: str
    dataset: ArrayDataset
    dataset_sha256: str
    architecture: str
    arch_config: dict[str, Any]
    original_weights: Weights
    original_recipe: dict[str, Any] | None
    forget_indices: np.ndarray  # the job's forget set: sorted unique train indices
    forget_kind: ForgetKind = "indices"


@dataclass
class AuditResult:
    metrics: dict[str, float]
    details: dict[str, Any]
    timings: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Device and library versions, as every other job's environment (``execute._environment``).
    environment: dict[str, Any] = field(default_factory=dict)


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one model of the audit: a hash of the audit seed and the model's place in it."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_MODULUS


class AuditProgress:
    """Progress over all pipelines as one fraction: each model slot is one unit, predictions one, attacks
    one. Reports through the engine hooks (which may raise JobCancelled)."""

    def __init__(self, hooks: EngineHooks, total_units: int) -> None:
        self.hooks, self.total, self.done = hooks, total_units, 0.0
        self.stage = "start"
        self.counts: dict[str, dict[str, int]] = {}

    def report(self, info: dict[str, Any] | None = None) -> None:
        scale = 1000
        # One phase per stage: the job's event log then records every stage change.
        self.hooks.progress(
            f"{AUDIT_PHASE}/{self.stage}",
            round(self.done * scale),
            self.total * scale,
            {"stage": self.stage, "store": self.counts, **(info or {})},
        )

    def advance(self, units: float, info: dict[str, Any] | None = None) -> None:
        self.done = min(self.done + units, float(self.total))
        self.report(info)


@dataclass
class _Context:
    params: AuditParams
    request: AuditRequest
    recipe: TrainRecipe
    device: torch.device
    inputs: torch.Tensor  # train + test, on the device (the pool)
    labels: torch.Tensor
    n_train: int
    store: ShadowStore
    progress: AuditProgress
    seconds: dict[str, float] = field(default_factory=dict)

    def material(self, **extra: Any) -> dict[str, Any]:
        return {
            "dataset": self.request.dataset_sha256,
            "architecture": self.request.architecture,
            "arch_config": self.request.arch_config,
            # CUDA trains under bf16 autocast, the CPU in fp32: a model trained on one is not the other's.
            "device_type": self.device.type,
            **extra,
        }


def _resolve_params(request: AuditRequest) -> tuple[AuditParams, TrainRecipe]:
    try:
        params = AuditParams.model_validate(request.params)
    except ValidationError as error:
        message = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'params'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise InvalidInputError(f"invalid audit parameters: {message}") from None
    if params.recipe is not None:
        recipe = params.recipe
    elif request.original_recipe is not None:
        recipe = TrainRecipe.model_validate(request.original_recipe)
    else:
        raise InvalidInputError(
            "the audit needs the original model's training recipe (the model was uploaded):"
            " pass params.recipe"
        )
    return params, recipe


def forget_sets(request: AuditRequest, count: int, seed: int) -> list[np.ndarray]:
    """The job's forget set, then ``count - 1`` random draws of the same size (random forget sets only)."""
    first = np.asarray(request.forget_indices, dtype=np.int64)
    if count > 1 and request.forget_kind != "random":
        raise InvalidInputError(
            "forget_sets_per_shadow > 1 needs a random forget set to redraw;"
            f" this one is {request.forget_kind}"
        )
    sets = [first]
    for index in range(1, count):
        rng = np.random.default_rng(derive_seed(seed, "forget", index))
        sets.append(np.sort(rng.choice(request.dataset.n_train, size=first.size, replace=False)))
    return sets


def pool_memberships(shadows: int, pool_size: int, seed: int) -> np.ndarray:
    """(K, N) bool: each example IN for exactly floor(K/2) shadows, chosen at random (the LiRA reference's
    balanced split: per example, the ranks of K uniform draws below K/2)."""
    rng = np.random.default_rng(derive_seed(seed, "pool-split"))
    draws = rng.random((shadows, pool_size))
    return np.argsort(np.argsort(draws, axis=0), axis=0) < shadows // 2


# ------------------------------------------------------------------------------------------- training
def _obtain_trained(
    context: _Context, stage: str, specs: Sequence[ShadowSpec], subsets: Sequence[np.ndarray]
) -> list[Weights]:
    """Stored weights where present; the rest trained together (vectorised) and saved."""
    started = time.perf_counter()
    context.progress.stage = stage
    found = context.store.fetch([spec.key for spec in specs])
    missing = [index for index, spec in enumerate(specs) if spec.key not in found]
    context.progress.counts[stage] = {"reused": len(specs) - len(missing), "trained": 0}
    context.progress.advance(len(specs) - len(missing))
    if missing:
        before = context.progress.done

        def on_step(done: int, total: int) -> None:
            context.progress.done = before + len(missing) * done / max(total, 1)
            context.progress.report()

        trained = train_models(
            context.request.architecture,
            context.request.arch_config,
            context.inputs,
            context.labels,
            [subsets[index] for index in missing],
            context.recipe,
            [int(specs[index].material["seed"]) for index in missing],
            chunk_size=context.params.chunk_size,
            progress=on_step,
            task=context.request.dataset.task,
        )
        for index, weights in zip(missing, trained, strict=True):
            context.store.save(specs[index], weights)
            found[specs[index].key] = weights
        context.progress.counts[stage]["trained"] = len(missing)
        context.progress.done = before + len(missing)
        context.progress.report()
    context.seconds[stage] = context.seconds.get(stage, 0.0) + time.perf_counter() - started
    return [found[spec.key] for spec in specs]


def _training_spec(context: _Context, role: ShadowRole, subset: np.ndarray, seed: int) -> ShadowSpec:
    return ShadowSpec(
        role,
        context.material(
            recipe=context.recipe.model_dump(mode="json"),
            pool=("train" if role != "pool" else "train+test"),
            subset=indices_digest(subset),
            subset_size=int(subset.size),
            seed=seed,
            trainer=TRAINER,
        ),
    )


class _InnerHooks:
    """Hooks for one unlearning run inside the audit: progress (and cancellation) goes to the audit's
    counter; epoch checkpoints are dropped (a retried audit resumes from the stored models instead)."""

    def __init__(self, context: _Context, units_before: float) -> None:
        self.context, self.units_before = context, units_before

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        self.context.progress.done = self.units_before + (step / total if total else 0.0)
        self.context.progress.report({"pipeline_phase": phase})

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        return None


def _unlearn_one(
    context: _Context, spec: MethodSpec, base: Weights, forget: np.ndarray, seed: int
) -> Weights:
    request = context.request
    architecture = ARCHITECTURES.get(request.architecture)
    config = architecture.parse_config(request.arch_config)
    torch.manual_seed(seed)
    model = build_model(architecture.name, config)
    if spec.job_kind != "retrain":  # retrain starts from a seeded initialisation, not the base model
        load_weights(model, base, architecture.param_shapes(config))
    model.to(context.device)
    n_train = context.n_train
    forget_tensor = torch.from_numpy(forget).to(context.device)
    retain = np.setdiff1d(np.arange(n_train, dtype=np.int64), forget, assume_unique=True)
    splits = DeviceSplits(
        x_train=context.inputs[:n_train],
        y_train=context.labels[:n_train],
        x_test=context.inputs[n_train:],
        y_test=context.labels[n_train:],
        forget_indices=forget_tensor,
        retain_indices=torch.from_numpy(retain).to(context.device),
    )
    method_context = MethodContext(
        model=model,
        params=spec.params_model.model_validate(context.params.method_params),
        data=splits,
        seed=seed,
        phase=spec.name,
        hooks=_InnerHooks(context, context.progress.done),
        task=request.dataset.task,
        num_classes=request.dataset.num_classes,
        original_recipe=context.recipe,
    )
    output = import_by_path(spec.impl)(method_context)
    return state_to_numpy(output.model)


def _unlearning_spec(
    context: _Context, method: MethodSpec, base_key: str, forget: np.ndarray, seed: int
) -> ShadowSpec:
    return ShadowSpec(
        "unlearned",
        context.material(
            base=base_key,
            forget=indices_digest(forget),
            method=method.name,
            method_params=context.params.method_params,
            recipe=context.recipe.model_dump(mode="json"),
            seed=seed,
            unlearner=UNLEARNER,
        ),
    )


def _run_unlearning(
    context: _Context, stage: str, runs: Sequence[tuple[ShadowSpec, Weights, np.ndarray]]
) -> list[Weights]:
    """The audited method on each (spec, base weights, forget set), stored ones fetched, sequentially."""
    started = time.perf_counter()
    context.progress.stage = stage
    method = METHODS.get(context.params.method)
    found = context.store.fetch([spec.key for spec, _, _ in runs])
    counts = {"reused": 0, "trained": 0}
    context.progress.counts[stage] = counts
    result: list[Weights] = []
    for spec, base, forget in runs:
        weights = found.get(spec.key)
        if weights is None:
            before = context.progress.done
            weights = _unlearn_one(context, method, base, forget, int(spec.material["seed"]))
            context.store.save(spec, weights)
            counts["trained"] += 1
            context.progress.done = before
        else:
            counts["reused"] += 1
        context.progress.advance(1)
        result.append(weights)
    context.seconds[stage] = context.seconds.get(stage, 0.0) + time.perf_counter() - started
    return result


def _obtain_unlearned(
    context: _Context, bases: Sequence[Weights], base_specs: Sequence[ShadowSpec], sets: Sequence[np.ndarray]
) -> list[list[Weights]]:
    """[f][k]: the audited method applied to base k and forget set f."""
    method = METHODS.get(context.params.method)
    runs = [
        (
            _unlearning_spec(
                context, method, base_specs[k].key, forget, derive_seed(context.request.seed, "unlearn", k, f)
            ),
            bases[k],
            forget,
        )
        for f, forget in enumerate(sets)
        for k in range(len(bases))
    ]
    flat = _run_unlearning(context, "unlearned", runs)
    shadows = len(bases)
    return [flat[f * shadows : (f + 1) * shadows] for f in range(len(sets))]


def _obtain_unlearned_original(context: _Context, forget: np.ndarray, count: int) -> list[Weights]:
    """The released Kaggle protocol's N runs: the audited method on the job's original model, N seeds."""
    method = METHODS.get(context.params.method)
    original = context.request.original_weights
    base_key = f"original:{weights_digest(original)}"
    runs = [
        (
            _unlearning_spec(
                context, method, base_key, forget, derive_seed(context.request.seed, "unlearn-original", k)
            ),
            original,
            forget,
        )
        for k in range(count)
    ]
    return _run_unlearning(context, "unlearned_original", runs)


# ------------------------------------------------------------------------------------------- attacks
@dataclass
class _Outputs:
    """Eval-mode outputs of some models on the whole pool (models x pool). Regression fills the same
    fields with the scores of ``metrics/regression_scores.py``."""

    # classification: logit-scaled confidence of the true label; regression: -sqrt(|e| / target scale)
    phi: np.ndarray
    # classification: softmax probability of the true label; regression: exp(-|e| / the model's scale)
    true_probability: np.ndarray
    # the Kaggle utility: classification 1.0 where the prediction is the true label; regression |e|
    utility: np.ndarray


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = ln p_y - ln(1 - p_y) = z_y - logsumexp_{k != y} z_k, straight from the logits (... x N x C):
    exact even where p_y rounds to 1 in floating point."""
    true_logit = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels[..., None], -np.inf, axis=-1)
    peak = others.max(axis=-1, keepdims=True)
    rest = peak[..., 0] + np.log(np.exp(others - peak).sum(axis=-1))
    return np.asarray(true_logit - rest, dtype=np.float64)


def _predict(context: _Context, states: Sequence[Weights], held_out: np.ndarray | None = None) -> _Outputs:
    """Outputs of ``states`` on the pool. ``held_out`` (models x pool bool, regression only): the points each
    model did not train on, for its Laplace scale; ``None`` means the test split (models that never saw
    it)."""
    pool_size = context.labels.shape[0]
    if not states:
        empty = np.zeros((0, pool_size))
        return _Outputs(empty, empty, empty)
    logits = predict_models(
        context.request.architecture,
        context.request.arch_config,
        states,
        context.inputs,
        chunk_size=context.params.chunk_size,
    )
    if context.request.dataset.task is TaskType.regression:
        return _regression_outputs(context, logits, held_out)
    labels = np.ascontiguousarray(np.broadcast_to(context.labels.cpu().numpy(), logits.shape[:2]))
    probabilities = np.stack([softmax(model_logits) for model_logits in logits])
    return _Outputs(
        phi=logit_scaled_confidence(logits, labels),
        true_probability=np.take_along_axis(probabilities, labels[..., None], axis=-1)[..., 0],
        utility=(logits.argmax(axis=-1) == labels).astype(np.float64),
    )


def _regression_outputs(context: _Context, predictions: np.ndarray, held_out: np.ndarray | None) -> _Outputs:
    """φ, Pr(x | θ) and |e| of regressors (models x pool predictions); see ``metrics/regression_scores``."""
    dataset = context.request.dataset
    targets = context.labels.cpu().numpy()
    errors = absolute_errors(predictions, targets)
    if held_out is None:
        held_out = np.zeros(errors.shape, dtype=bool)
        held_out[:, context.n_train :] = True
    scale = target_scale(dataset.y_train)
    scales = laplace_scales(errors, held_out, floor=RELATIVE_SCALE_FLOOR * scale)
    return _Outputs(
        phi=regression_phi(errors, scale),
        true_probability=laplace_tail_probability(errors, scales),
        utility=errors,
    )


def _kaggle_utility(outputs: _Outputs, indices: np.ndarray, task: TaskType) -> np.ndarray:
    """Per model, the Kaggle utility over ``indices``: percent predicted correctly (classification) or the
    mean absolute error (regression)."""
    mean = outputs.utility[:, indices].mean(axis=1)
    return PERCENT * mean if task is TaskType.classification else mean


def _flatten_report(prefix: str, report: dict[str, Any], metrics: dict[str, float]) -> None:
    for name in ("auc", "balanced_accuracy", "balanced_accuracy_at_decision"):
        entry = report[name]
        if entry.get("value") is None:
            continue
        short = "accuracy" if name == "balanced_accuracy_at_decision" else name
        metrics[f"{prefix}_{short}"] = float(entry["value"])
        if entry.get("ci_low") is not None:
            metrics[f"{prefix}_{short}_ci_low"] = float(entry["ci_low"])
            metrics[f"{prefix}_{short}_ci_high"] = float(entry["ci_high"])
    for alpha, entry in report["tpr_at_fpr"].items():
        if entry.get("value") is None:
            continue
        label = format(float(alpha) * PERCENT, "g").replace(".", "_")
        metrics[f"{prefix}_tpr_at_{label}pct_fpr"] = float(entry["value"])
        if entry.get("ci_low") is not None:
            metrics[f"{prefix}_tpr_at_{label}pct_fpr_ci_low"] = float(entry["ci_low"])
            metrics[f"{prefix}_tpr_at_{label}pct_fpr_ci_high"] = float(entry["ci_high"])


def run_audit(request: AuditRequest, store: ShadowStore, hooks: EngineHooks | None = None) -> AuditResult:
    """Run the audit ``request`` against ``store``; see the module docstring for the stages."""
    started = time.perf_counter()
    params, recipe = _resolve_params(request)
    dataset = request.dataset.validate()
    if dataset.task not in (TaskType.classification, TaskType.regression):
        raise InvalidInputError(f"audits support classification and regression models, not {dataset.task}")
    method_tasks = METHODS.get(params.method).task_types
    if dataset.task not in method_tasks:
        raise InvalidInputError(f"method {params.method!r} does not support {dataset.task.value} models")
    from workers.engine.devices import resolve_device
    from workers.engine.training import reproducible

    device = torch.device(resolve_device(request.device))
    shadows, per_shadow = params.shadows, params.forget_sets_per_shadow
    sets = forget_sets(request, per_shadow, request.seed)
    for forget in sets:
        if forget.size == 0 or forget.size >= dataset.n_train:
            raise InvalidInputError("the forget set must be non-empty and leave training data to retain")
    pool_units = shadows if params.needs_pool_shadows else 0
    retrain_units = shadows * per_shadow if params.needs_retrains else 0
    pipeline_units = shadows + shadows * per_shadow if params.needs_pipelines else 0
    released_units = shadows if params.needs_released_unlearning else 0
    calibration_units = shadows if params.needs_kaggle_calibration else 0
    total_units = pipeline_units + retrain_units + pool_units + released_units + calibration_units + 2
    progress = AuditProgress(hooks or NullHooks(), total_units)
    progress.report()

    with reproducible(device) as deterministic:
        from workers.engine.execute import _environment

        # The same environment record as every other job (library versions included).
        environment = _environment(device, deterministic)
        inputs = device_inputs(dataset, np.concatenate([dataset.x_train, dataset.x_test]), device)
        labels = torch.from_numpy(np.concatenate([dataset.y_train, dataset.y_test])).to(device)
        context = _Context(params, request, recipe, device, inputs, labels, dataset.n_train, store, progress)
        all_train = np.arange(dataset.n_train, dtype=np.int64)

        base_specs: list[ShadowSpec] = []
        bases: list[Weights] = []
        if params.needs_pipelines:
            base_specs = [
                _training_spec(context, "base", all_train, derive_seed(request.seed, "base", k))
                for k in range(shadows)
            ]
            bases = _obtain_trained(context, "base", base_specs, [all_train] * shadows)

        retain_sets = [np.setdiff1d(all_train, forget, assume_unique=True) for forget in sets]
        retrained: list[list[Weights]] = [[] for _ in sets]
        if params.needs_retrains:
            retrain_specs = [
                _training_spec(context, "retrain", retain_sets[f], derive_seed(request.seed, "retrain", k, f))
                for f in range(per_shadow)
                for k in range(shadows)
            ]
            retrained_flat = _obtain_trained(
                context,
                "retrain",
                retrain_specs,
                [retain_sets[f] for f in range(per_shadow) for _ in range(shadows)],
            )
            retrained = [retrained_flat[f * shadows : (f + 1) * shadows] for f in range(per_shadow)]

        pool_in = pool_memberships(shadows, dataset.n_train + dataset.n_test, request.seed)
        pool: list[Weights] = []
        if params.needs_pool_shadows:
            pool_subsets = [np.flatnonzero(row).astype(np.int64) for row in pool_in]
            pool_specs = [
                _training_spec(context, "pool", pool_subsets[k], derive_seed(request.seed, "pool", k))
                for k in range(shadows)
            ]
            pool = _obtain_trained(context, "pool", pool_specs, pool_subsets)

        calibration: list[Weights] = []
        if params.needs_kaggle_calibration:
            calibration_specs = [
                _training_spec(
                    context, "retrain", retain_sets[0], derive_seed(request.seed, "retrain-calibration", k)
                )
                for k in range(shadows)
            ]
            calibration = _obtain_trained(
                context, "calibration", calibration_specs, [retain_sets[0]] * shadows
            )

        unlearned: list[list[Weights]] = [[] for _ in sets]
        if params.needs_pipelines:
            unlearned = _obtain_unlearned(context, bases, base_specs, sets)
        released: list[Weights] = []
        if params.needs_released_unlearning:
            released = _obtain_unlearned_original(context, sets[0], shadows)

        progress.stage = "predict"
        predict_started = time.perf_counter()
        original = _predict(context, [request.original_weights])
        unlearned_out = [_predict(context, row) for row in unlearned]
        retrained_out = [_predict(context, row) for row in retrained]
        # A pool shadow's Laplace scale (regression) comes from the test points it did not train on.
        pool_held_out = ~pool_in
        pool_held_out[:, : dataset.n_train] = False
        pool_out = _predict(context, pool, pool_held_out) if pool else None
        released_out = _predict(context, released) if released else None
        calibration_out = _predict(context, calibration) if calibration else None
        context.seconds["predict"] = time.perf_counter() - predict_started
        progress.advance(1)

    progress.stage = "attacks"
    attacks_started = time.perf_counter()
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"attacks": {}}
    arrays: dict[str, np.ndarray] = {f"forget_indices_{f}": forget for f, forget in enumerate(sets)}
    report_options: dict[str, Any] = {
        "alphas": params.alphas,
        "n_bootstrap": params.n_bootstrap,
        "seed": request.seed,
    }
    test_indices = np.arange(dataset.n_train, dataset.n_train + dataset.n_test)

    if "ulira" in params.attacks:
        member_parts, nonmember_parts, pipeline_ids, example_ids = [], [], [], []
        for f, forget in enumerate(sets):
            members, nonmembers = ulira_trials(
                unlearned_out[f].phi[:, forget],
                retrained_out[f].phi[:, forget],
                fixed_variance=params.fixed_variance,
            )
            member_parts.append(members)
            nonmember_parts.append(nonmembers)
            # Trial p * n + i is example i under pipeline p; the pipeline cluster is the base model p,
            # which all F forget sets' unlearned models share; the example cluster is the train index,
            # which two random forget sets may share.
            pipeline_ids.append(np.repeat(np.arange(shadows), forget.size))
            example_ids.append(np.tile(forget, shadows))
        member_scores, nonmember_scores = np.concatenate(member_parts), np.concatenate(nonmember_parts)
        pipelines, examples = np.concatenate(pipeline_ids), np.concatenate(example_ids)
        report = attack_report(
            member_scores,
            nonmember_scores,
            decision_threshold=LOG_RATIO_DECISION,
            clusters=TrialClusters(pipelines, examples, pipelines, examples),
            **report_options,
        )
        details["attacks"]["ulira"] = report
        _flatten_report("ulira", report, metrics)
        arrays["ulira_member_scores"] = member_scores
        arrays["ulira_nonmember_scores"] = nonmember_scores
        # Both sides share the layout: trial j of either side is (pipeline_ids[j], example_ids[j]).
        arrays["ulira_pipeline_ids"] = pipelines
        arrays["ulira_example_ids"] = examples

    if "kaggle" in params.attacks:
        kaggle = _kaggle(
            params,
            sets,
            retain_sets,
            test_indices,
            _KaggleOutputs(unlearned_out, retrained_out, released_out, calibration_out),
            arrays,
            metrics,
            dataset.task,
        )
        details["attacks"]["kaggle"] = kaggle
        details.setdefault("warnings", []).extend(kaggle["warnings"])

    nonmember_summaries: dict[str, Any] = {
        attack: PAIRED_NONMEMBERS for attack in ("ulira", "kaggle") if attack in params.attacks
    }
    if pool_out is not None:
        forget = sets[0]
        chosen = _attack_nonmembers(request, dataset, forget)
        summary = chosen.summary()
        pool_attacks = [attack for attack in ("lira", "rmia") if attack in params.attacks]
        nonmember_summaries.update({attack: summary for attack in pool_attacks})
        if chosen.indices is None:
            # No test samples share the members' distribution: an AUC would measure that difference.
            for attack in pool_attacks:
                details["attacks"][attack] = {"nonmembers": summary, "reason": chosen.reason}
                details.setdefault("warnings", []).append(f"{attack}: not run: {chosen.reason}")
        else:
            nonmember_points = dataset.n_train + chosen.indices
            targets = {"original": original, "unlearned": unlearned_out[0]}
            for target_name, target in targets.items():
                clusters = _grid_clusters(target.phi.shape[0], forget, nonmember_points)
                for side in ("member", "nonmember"):
                    arrays[f"trials_{target_name}_{side}_model_ids"] = getattr(clusters, f"{side}_models")
                    arrays[f"trials_{target_name}_{side}_example_ids"] = getattr(clusters, f"{side}_examples")
            if "lira" in params.attacks:
                details["attacks"]["lira"] = _lira(
                    pool_out, pool_in, targets, forget, nonmember_points, report_options, metrics, arrays
                )
                details["attacks"]["lira"]["nonmembers"] = summary
                details["lira_headline_variant"] = HEADLINE_LIRA_VARIANT
            if "rmia" in params.attacks:
                details["attacks"]["rmia"] = _rmia(
                    pool_out.true_probability,
                    pool_in,
                    targets,
                    forget,
                    _RmiaPoints(nonmember_points, test_indices),
                    report_options,
                    metrics,
                    arrays,
                )
                details["attacks"]["rmia"]["nonmembers"] = summary
    details["nonmembers"] = nonmember_summaries
    context.seconds["attacks"] = time.perf_counter() - attacks_started
    progress.advance(1)

    details.update(
        kind="audit",
        method=params.method,
        params=params.model_dump(mode="json"),
        recipe=recipe.model_dump(mode="json"),
        seed=request.seed,
        shadows=shadows,
        forget_sets_per_shadow=per_shadow,
        forget_set_sizes=[int(forget.size) for forget in sets],
        pipelines=shadows * per_shadow,
        store=progress.counts,
        counts={"n_train": dataset.n_train, "n_test": dataset.n_test},
    )
    trained = sum(entry["trained"] for entry in progress.counts.values())
    reused = sum(entry["reused"] for entry in progress.counts.values())
    metrics["models_trained"] = float(trained)
    metrics["models_reused"] = float(reused)
    timings = {f"{stage}_s": seconds for stage, seconds in context.seconds.items()}
    timings["total_s"] = time.perf_counter() - started
    return AuditResult(
        metrics=metrics, details=details, timings=timings, arrays=arrays, environment=environment
    )


def _lira(
    pool_out: _Outputs,
    pool_in: np.ndarray,
    targets: dict[str, _Outputs],
    forget: np.ndarray,
    nonmember_points: np.ndarray,
    report_options: dict[str, Any],
    metrics: dict[str, float],
    arrays: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Every LiRA variant against every target: members = the forget set, non-members = the test samples
    of the members' distribution (``_attack_nonmembers``; pool indices), scored together (the fixed
    variance is one over all attacked points) and pooled over target models, with cluster-bootstrap
    intervals (models x examples). Per-trial scores go to ``arrays`` as
    ``lira_<variant>_<target>_{member,nonmember}_scores`` in the ``trials_<target>_*`` layout."""
    points = np.concatenate([forget, nonmember_points])
    shadow_phi, shadow_in = pool_out.phi[:, points], pool_in[:, points]
    result: dict[str, Any] = {}
    for variant, (online, fixed) in LIRA_VARIANTS.items():
        attack = lira_online if online else lira_offline
        result[variant] = {}
        for target_name, target in targets.items():
            scores = np.stack(
                [attack(row[points], shadow_phi, shadow_in, fixed_variance=fixed) for row in target.phi]
            )
            member_scores, nonmember_scores = (
                scores[:, : forget.size].ravel(),
                scores[:, forget.size :].ravel(),
            )
            report = attack_report(
                member_scores,
                nonmember_scores,
                clusters=_grid_clusters(scores.shape[0], forget, nonmember_points),
                **report_options,
            )
            arrays[f"lira_{variant}_{target_name}_member_scores"] = member_scores
            arrays[f"lira_{variant}_{target_name}_nonmember_scores"] = nonmember_scores
            result[variant][target_name] = report
            if variant == HEADLINE_LIRA_VARIANT:
                _flatten_report(f"lira_{target_name}", report, metrics)
    return result


def _rmia(
    pool_p: np.ndarray,
    pool_in: np.ndarray,
    targets: dict[str, _Outputs],
    forget: np.ndarray,
    points: _RmiaPoints,
    report_options: dict[str, Any],
    metrics: dict[str, float],
    arrays: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Offline RMIA with the pool shadows as reference models, each point's P(x) averaged over the shadows
    it was OUT of. The population z is the test split, whose points are also pool points (IN for half the
    shadows): P(z) averages only the shadows OUT for z, and ``a`` is tuned, as the reference does, by
    attacking pool shadow 0 with the others on the test points shadow 0 did not train on (so the tuning
    population holds no member of the attacked shadow). The targets never trained on the test split, so
    their population is the whole split. The non-member trials are the test samples of the members'
    distribution (``_attack_nonmembers``), a subset of the population, so a non-member is compared with
    itself once (LR = 1, a constant shift of 1/m); the population stays the whole split because it only
    ranks LR(x, z), it is not a side of the attack. Intervals: cluster bootstrap (models x examples);
    per-trial scores go to ``arrays`` as ``rmia_<target>_{member,nonmember}_scores``."""
    test_indices, nonmember_points = points.population, points.nonmembers
    out_mask = ~pool_in
    population = pool_p[:, test_indices]
    population_out = out_mask[:, test_indices]
    pseudo_target = 0
    best_a, auc_by_a = tune_offline_a(
        pool_p, population, out_mask, pseudo_target=pseudo_target, population_mask=population_out
    )
    tuning_size = int(tuning_population(population_out, population.shape, pseudo_target).size)
    result: dict[str, Any] = {
        "a": best_a,
        "auc_by_a": {format(a, "g"): value for a, value in auc_by_a.items()},
        "population": "test split; P(z) over the shadows OUT for z",
        "tuning": {
            "pseudo_target": pseudo_target,
            "population": "the test points the pseudo-target shadow did not train on",
            "population_size": tuning_size,
        },
    }
    for target_name, target in targets.items():

        def scores(points: np.ndarray, row: np.ndarray) -> np.ndarray:
            return rmia_offline(
                row[points],
                pool_p[:, points],
                row[test_indices],
                population,
                a=best_a,
                reference_mask=out_mask[:, points],
                population_mask=population_out,
            )

        member_scores = np.concatenate([scores(forget, row) for row in target.true_probability])
        nonmember_scores = np.concatenate([scores(nonmember_points, row) for row in target.true_probability])
        report = attack_report(
            member_scores,
            nonmember_scores,
            clusters=_grid_clusters(target.true_probability.shape[0], forget, nonmember_points),
            **report_options,
        )
        arrays[f"rmia_{target_name}_member_scores"] = member_scores
        arrays[f"rmia_{target_name}_nonmember_scores"] = nonmember_scores
        result[target_name] = report
        _flatten_report(f"rmia_{target_name}", report, metrics)
    return result


@dataclass(frozen=True)
class _RmiaPoints:
    """Pool indices of RMIA's non-member trials and of its population (the whole test split)."""

    nonmembers: np.ndarray
    population: np.ndarray


def _attack_nonmembers(
    request: AuditRequest, dataset: ArrayDataset, forget: np.ndarray
) -> NonMembers | RegressionNonMembers:
    """LiRA / RMIA's non-members: the test samples drawn from the forget set's distribution. Classification:
    ``select_nonmembers`` (a class forget set: the forgotten class's test samples; otherwise the test split
    unless the labels differ); regression: ``regression_nonmembers`` (a target-range forget set: the test
    samples in that range)."""
    if dataset.task is TaskType.regression:
        return regression_nonmembers(
            dataset.y_train, forget, dataset.y_test, detect_range=request.forget_kind != "random"
        )
    member_labels = dataset.y_train[forget]
    classes = np.unique(member_labels)
    forget_class = int(classes[0]) if request.forget_kind == "class" and classes.size == 1 else None
    return select_nonmembers(
        member_labels, dataset.y_test, forget_class, derive_seed(request.seed, "nonmembers")
    )


def _grid_clusters(n_models: int, member_points: np.ndarray, nonmember_points: np.ndarray) -> TrialClusters:
    """Cluster ids of trials laid out model-major (row t of a models x points score matrix, raveled):
    model t, and the example's pool index."""
    return TrialClusters(
        member_models=np.repeat(np.arange(n_models), member_points.size),
        member_examples=np.tile(member_points, n_models),
        nonmember_models=np.repeat(np.arange(n_models), nonmember_points.size),
        nonmember_examples=np.tile(nonmember_points, n_models),
    )


@dataclass
class _KaggleOutputs:
    unlearned: list[_Outputs]  # [f]: the pipelines' unlearned models
    retrained: list[_Outputs]  # [f]: the retrains
    released: _Outputs | None  # the original model unlearned N times (released protocol)
    calibration: _Outputs | None  # N further retrains of forget set 0


def _kaggle(
    params: AuditParams,
    sets: Sequence[np.ndarray],
    retain_sets: Sequence[np.ndarray],
    test_indices: np.ndarray,
    outputs: _KaggleOutputs,
    arrays: dict[str, np.ndarray],
    metrics: dict[str, float],
    task: TaskType,
) -> dict[str, Any]:
    """The Kaggle score under the chosen protocol, with N, the points cap, the small-N warning and the
    retrain-vs-retrain ceiling at the same N. Regression: φ and the MAE ratios of ``regression_scores``."""

    def summary(unlearned: _Outputs, retrained: _Outputs, f: int) -> dict[str, Any]:
        forget, retain = sets[f], retain_sets[f]
        return kaggle_score(
            unlearned.phi[:, forget],
            retrained.phi[:, forget],
            _kaggle_utility(unlearned, retain, task),
            _kaggle_utility(retrained, retain, task),
            _kaggle_utility(unlearned, test_indices, task),
            _kaggle_utility(retrained, test_indices, task),
            utility="accuracy" if task is TaskType.classification else "mae",
        )

    protocol = params.kaggle_protocol
    if protocol == "released":
        assert outputs.released is not None
        per_set = [summary(outputs.released, outputs.retrained[0], 0)]
    else:
        per_set = [summary(outputs.unlearned[f], outputs.retrained[f], f) for f in range(len(sets))]
    for f, entry in enumerate(per_set):
        arrays[f"kaggle_epsilons_{f}"] = np.asarray(entry["epsilons"], dtype=np.float64)
    n_models, cap = int(per_set[0]["n_models"]), float(per_set[0]["points_cap"])
    warning = small_n_warning(n_models)
    result: dict[str, Any] = {
        "protocol": protocol,
        "protocol_description": KAGGLE_PROTOCOLS[protocol],
        "score": float(np.mean([entry["score"] for entry in per_set])),
        "forgetting_quality": float(np.mean([entry["forgetting_quality"] for entry in per_set])),
        "n_models": n_models,
        "points_cap": cap,
        "released_n_models": RELEASED_N_MODELS,
        "small_n_below": SMALL_N_WARNING_BELOW,
        "warnings": [warning] if warning else [],
        "per_forget_set": [
            {key: value for key, value in entry.items() if key != "epsilons"} for entry in per_set
        ],
        "calibration": None,
    }
    metrics["kaggle_score"] = result["score"]
    metrics["kaggle_forgetting_quality"] = result["forgetting_quality"]
    metrics["kaggle_n_models"] = float(n_models)
    metrics["kaggle_points_cap"] = cap
    if outputs.calibration is not None:
        ceiling = summary(outputs.calibration, outputs.retrained[0], 0)
        arrays["kaggle_calibration_epsilons_0"] = np.asarray(ceiling["epsilons"], dtype=np.float64)
        result["calibration"] = {
            "description": KAGGLE_CALIBRATION,
            **{key: value for key, value in ceiling.items() if key != "epsilons"},
        }
        relative = {
            "score_vs_ceiling": relative_to_ceiling(result["score"], ceiling["score"]),
            "forgetting_quality_vs_ceiling": relative_to_ceiling(
                result["forgetting_quality"], ceiling["forgetting_quality"]
            ),
        }
        result.update(relative)
        metrics["kaggle_ceiling_score"] = float(ceiling["score"])
        metrics["kaggle_ceiling_forgetting_quality"] = float(ceiling["forgetting_quality"])
        for key, value in relative.items():
            if value is not None:
                metrics[f"kaggle_{key}"] = float(value)
    return result


__all__ = ["AuditRequest", "AuditResult", "derive_seed", "forget_sets", "pool_memberships", "run_audit"]
