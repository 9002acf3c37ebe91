"""Run a privacy audit: shadow pipelines, the audited method on each, and the per-example attacks.

Stages (each model is looked up in the shadow store first and only trained when missing):

1. ``base``: K models trained on the full training split with the recipe, seeds derived from the audit seed.
2. ``retrain`` (U-LiRA / Kaggle only): for each of F forget sets, K models trained on the training split
   without it.
3. ``pool`` (LiRA / RMIA only): K models on random halves of the pool (train + test), each example IN for
   exactly half of them (the LiRA reference's balanced split).
4. ``unlearned``: the audited method applied to every base model and forget set (K·F runs); ``retrain`` as
   the method trains from a seeded initialisation instead, with seeds distinct from stage 2's.
5. Predictions of every model on the pool, then the attacks:

   - **U-LiRA** (peers.md §3.3): per forget set, leave-one-pipeline-out per-example Gaussians over the
     unlearned vs the retrained pipelines; trials from all F forget sets are pooled. Perfect unlearning
     gives AUC 0.5 and accuracy 50 %.
   - **Kaggle ε score** (peers.md §3.5): per forget set from the K unlearned vs K retrained samples of φ,
     with the retain- and test-accuracy ratios; the reported score is the mean over forget sets.
   - **LiRA** (online / offline, each also with fixed variance; peers.md §3.2) and **RMIA offline**
     (peers.md §3.4) against two targets: the original model and the K unlearned models of the first
     forget set (pooled). Members: the first forget set's examples; non-members: the test split.

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
from workers.engine.audit.store import ShadowRole, ShadowSpec, ShadowStore, Weights, indices_digest
from workers.engine.datasets import ArrayDataset
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.imports import import_by_path
from workers.engine.methods import METHODS, MethodSpec
from workers.engine.methods.base import DeviceSplits, MethodContext
from workers.engine.methods.params import TrainRecipe
from workers.engine.metrics import softmax
from workers.engine.metrics.attacks import attack_report
from workers.engine.metrics.kaggle import kaggle_score
from workers.engine.metrics.lira import lira_offline, lira_online, ulira_trials
from workers.engine.metrics.rmia import rmia_offline, tune_offline_a
from workers.engine.vectorised import predict_models, train_models

AUDIT_PHASE = "audit"
TRAINER = "vectorised/1"
UNLEARNER = "method/1"
SEED_MODULUS = 2**31 - 1
# The decision rule of a likelihood-ratio attack: member iff the log-ratio is positive.
LOG_RATIO_DECISION = 0.0
PERCENT = 100.0
ForgetKind = Literal["random", "class", "indices", "worst_case"]
LIRA_VARIANTS: dict[str, tuple[bool, bool]] = {  # name -> (online, fixed_variance)
    "online": (True, False),
    "online_fixed": (True, True),
    "offline": (False, False),
    "offline_fixed": (False, True),
}
# The LiRA variant whose figures become flat metrics (the others are in the details).
HEADLINE_LIRA_VARIANT = "online_fixed"


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
    context: _Context, stage: ShadowRole, specs: Sequence[ShadowSpec], subsets: Sequence[np.ndarray]
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


def _obtain_unlearned(
    context: _Context, bases: Sequence[Weights], base_specs: Sequence[ShadowSpec], sets: Sequence[np.ndarray]
) -> list[list[Weights]]:
    """[f][k]: the audited method applied to base k and forget set f."""
    started = time.perf_counter()
    context.progress.stage = "unlearned"
    method = METHODS.get(context.params.method)
    specs = [
        [
            ShadowSpec(
                "unlearned",
                context.material(
                    base=base_specs[k].key,
                    forget=indices_digest(forget),
                    method=method.name,
                    method_params=context.params.method_params,
                    recipe=context.recipe.model_dump(mode="json"),
                    seed=derive_seed(context.request.seed, "unlearn", k, f),
                    unlearner=UNLEARNER,
                ),
            )
            for k in range(len(bases))
        ]
        for f, forget in enumerate(sets)
    ]
    found = context.store.fetch([spec.key for row in specs for spec in row])
    counts = {"reused": 0, "trained": 0}
    context.progress.counts["unlearned"] = counts
    result: list[list[Weights]] = []
    for f, forget in enumerate(sets):
        row = []
        for k, spec in enumerate(specs[f]):
            weights = found.get(spec.key)
            if weights is None:
                before = context.progress.done
                weights = _unlearn_one(context, method, bases[k], forget, int(spec.material["seed"]))
                context.store.save(spec, weights)
                counts["trained"] += 1
                context.progress.done = before
            else:
                counts["reused"] += 1
            context.progress.advance(1)
            row.append(weights)
        result.append(row)
    context.seconds["unlearned"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------------------- attacks
@dataclass
class _Outputs:
    """Eval-mode outputs of some models on the whole pool (models x pool)."""

    phi: np.ndarray  # logit-scaled confidence of the true label
    true_probability: np.ndarray  # softmax probability of the true label
    correct: np.ndarray  # 1.0 where the prediction is the true label


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = ln p_y - ln(1 - p_y) = z_y - logsumexp_{k != y} z_k, straight from the logits (... x N x C):
    exact even where p_y rounds to 1 in floating point."""
    true_logit = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels[..., None], -np.inf, axis=-1)
    peak = others.max(axis=-1, keepdims=True)
    rest = peak[..., 0] + np.log(np.exp(others - peak).sum(axis=-1))
    return np.asarray(true_logit - rest, dtype=np.float64)


def _predict(context: _Context, states: Sequence[Weights]) -> _Outputs:
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
    labels = np.ascontiguousarray(np.broadcast_to(context.labels.cpu().numpy(), logits.shape[:2]))
    probabilities = np.stack([softmax(model_logits) for model_logits in logits])
    return _Outputs(
        phi=logit_scaled_confidence(logits, labels),
        true_probability=np.take_along_axis(probabilities, labels[..., None], axis=-1)[..., 0],
        correct=(logits.argmax(axis=-1) == labels).astype(np.float64),
    )


def _accuracy(correct: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per model, percent of ``indices`` predicted correctly (``correct``: models x pool, 0/1)."""
    return PERCENT * correct[:, indices].mean(axis=1)


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
    if request.dataset.task.value != "classification":
        raise InvalidInputError("audits support classification models only")
    from workers.engine.execute import resolve_device
    from workers.engine.training import reproducible

    device = torch.device(resolve_device(request.device))
    shadows, per_shadow = params.shadows, params.forget_sets_per_shadow
    sets = forget_sets(request, per_shadow, request.seed)
    for forget in sets:
        if forget.size == 0 or forget.size >= dataset.n_train:
            raise InvalidInputError("the forget set must be non-empty and leave training data to retain")
    pool_units = shadows if params.needs_pool_shadows else 0
    retrain_units = shadows * per_shadow if params.needs_retrains else 0
    total_units = shadows + shadows * per_shadow + retrain_units + pool_units + 2
    progress = AuditProgress(hooks or NullHooks(), total_units)
    progress.report()

    with reproducible(device):
        inputs = torch.from_numpy(np.concatenate([dataset.x_train, dataset.x_test])).to(device)
        labels = torch.from_numpy(np.concatenate([dataset.y_train, dataset.y_test])).to(device)
        context = _Context(params, request, recipe, device, inputs, labels, dataset.n_train, store, progress)
        all_train = np.arange(dataset.n_train, dtype=np.int64)

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

        unlearned = _obtain_unlearned(context, bases, base_specs, sets)

        progress.stage = "predict"
        predict_started = time.perf_counter()
        original = _predict(context, [request.original_weights])
        unlearned_out = [_predict(context, row) for row in unlearned]
        retrained_out = [_predict(context, row) for row in retrained]
        pool_out = _predict(context, pool) if pool else None
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
        member_parts, nonmember_parts = [], []
        for f, forget in enumerate(sets):
            members, nonmembers = ulira_trials(
                unlearned_out[f].phi[:, forget],
                retrained_out[f].phi[:, forget],
                fixed_variance=params.fixed_variance,
            )
            member_parts.append(members)
            nonmember_parts.append(nonmembers)
        member_scores, nonmember_scores = np.concatenate(member_parts), np.concatenate(nonmember_parts)
        report = attack_report(
            member_scores, nonmember_scores, decision_threshold=LOG_RATIO_DECISION, **report_options
        )
        details["attacks"]["ulira"] = report
        _flatten_report("ulira", report, metrics)
        arrays["ulira_member_scores"] = member_scores
        arrays["ulira_nonmember_scores"] = nonmember_scores

    if "kaggle" in params.attacks:
        per_set = []
        for f, forget in enumerate(sets):
            retain = retain_sets[f]
            summary = kaggle_score(
                unlearned_out[f].phi[:, forget],
                retrained_out[f].phi[:, forget],
                _accuracy(unlearned_out[f].correct, retain),
                _accuracy(retrained_out[f].correct, retain),
                _accuracy(unlearned_out[f].correct, test_indices),
                _accuracy(retrained_out[f].correct, test_indices),
            )
            per_set.append(summary)
            arrays[f"kaggle_epsilons_{f}"] = np.asarray(summary.get("epsilons", []), dtype=np.float64)
        details["attacks"]["kaggle"] = {
            "per_forget_set": [
                {key: value for key, value in summary.items() if key != "epsilons"} for summary in per_set
            ]
        }
        metrics["kaggle_score"] = float(np.mean([summary["score"] for summary in per_set]))
        metrics["kaggle_forgetting_quality"] = float(
            np.mean([summary["forgetting_quality"] for summary in per_set])
        )

    if pool_out is not None:
        forget = sets[0]
        targets = {"original": original, "unlearned": unlearned_out[0]}
        if "lira" in params.attacks:
            details["attacks"]["lira"] = _lira(
                pool_out, pool_in, targets, forget, test_indices, report_options, metrics
            )
            details["lira_headline_variant"] = HEADLINE_LIRA_VARIANT
        if "rmia" in params.attacks:
            details["attacks"]["rmia"] = _rmia(
                pool_out.true_probability, pool_in, targets, forget, test_indices, report_options, metrics
            )
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
    return AuditResult(metrics=metrics, details=details, timings=timings, arrays=arrays)


def _lira(
    pool_out: _Outputs,
    pool_in: np.ndarray,
    targets: dict[str, _Outputs],
    forget: np.ndarray,
    test_indices: np.ndarray,
    report_options: dict[str, Any],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Every LiRA variant against every target: members = the forget set, non-members = the test split,
    scored together (the fixed variance is one over all attacked points) and pooled over target models."""
    points = np.concatenate([forget, test_indices])
    shadow_phi, shadow_in = pool_out.phi[:, points], pool_in[:, points]
    result: dict[str, Any] = {}
    for variant, (online, fixed) in LIRA_VARIANTS.items():
        attack = lira_online if online else lira_offline
        result[variant] = {}
        for target_name, target in targets.items():
            scores = np.stack(
                [attack(row[points], shadow_phi, shadow_in, fixed_variance=fixed) for row in target.phi]
            )
            report = attack_report(
                scores[:, : forget.size].ravel(), scores[:, forget.size :].ravel(), **report_options
            )
            result[variant][target_name] = report
            if variant == HEADLINE_LIRA_VARIANT:
                _flatten_report(f"lira_{target_name}", report, metrics)
    return result


def _out_filled(probabilities: np.ndarray, out_mask: np.ndarray) -> np.ndarray:
    """``probabilities`` (models x points) with every IN entry replaced by that point's OUT mean, so that a
    plain mean over models equals the mean over the OUT models only (population points here are pool
    points too, IN for half the shadows)."""
    counts = out_mask.sum(axis=0)
    out_mean = np.where(out_mask, probabilities, 0.0).sum(axis=0) / np.maximum(counts, 1)
    return np.where(out_mask, probabilities, out_mean[None, :])


def _rmia(
    pool_p: np.ndarray,
    pool_in: np.ndarray,
    targets: dict[str, _Outputs],
    forget: np.ndarray,
    test_indices: np.ndarray,
    report_options: dict[str, Any],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Offline RMIA with the pool shadows as reference models, each point's P(x) averaged over the shadows
    it was OUT of; the population z is the test split (whose points are also the non-member trials, so a
    non-member is compared with itself once: LR = 1, a constant shift of 1/m). ``a`` is tuned as the
    reference does, by attacking pool shadow 0 with the others."""
    out_mask = ~pool_in
    population = _out_filled(pool_p[:, test_indices], out_mask[:, test_indices])
    best_a, auc_by_a = tune_offline_a(pool_p, population, out_mask, pseudo_target=0)
    result: dict[str, Any] = {
        "a": best_a,
        "auc_by_a": {format(a, "g"): value for a, value in auc_by_a.items()},
        "population": "test split",
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
            )

        member_scores = np.concatenate([scores(forget, row) for row in target.true_probability])
        nonmember_scores = np.concatenate([scores(test_indices, row) for row in target.true_probability])
        report = attack_report(member_scores, nonmember_scores, **report_options)
        result[target_name] = report
        _flatten_report(f"rmia_{target_name}", report, metrics)
    return result


__all__ = ["AuditRequest", "AuditResult", "derive_seed", "forget_sets", "pool_memberships", "run_audit"]
