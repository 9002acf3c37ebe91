"""The ``recovery`` job kind's engine run: transforms and relearning on the audited model and its control.

Generative models (a one-step generator or a DDPM teacher) go to the kind's ``generative_run``
(:mod:`workers.engine.recovery.generative`). Inputs: the audited (unlearned) model as the request's weights,
``request.controls["original"]`` and ``request.controls["retrain"]`` (loaded by the worker from the params'
model ids), the forget set. Each transform (``transforms``) is applied to a copy of the audited model and to
a copy of the retrain, and the forget-set metrics are measured before and after on both; each relearning
source (``relearn``) gives a recovery curve per model on the held-out forget set. The figures (``scores``)
compare the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, load_weights
from workers.engine.device_inputs import device_inputs
from workers.engine.devices import resolve_device
from workers.engine.errors import InvalidInputError
from workers.engine.execute import (
    EngineRequest,
    EngineResult,
    _environment,
    _execute_generative,
    predict_logits,
)
from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.job_kinds import job_kind
from workers.engine.metrics import accuracy, retain_indices, softmax
from workers.engine.metrics.attacks import auc, membership_score
from workers.engine.metrics.nonmembers import select_nonmembers
from workers.engine.recovery import relearn, scores, transforms
from workers.engine.recovery.params import ORIGINAL_FIELD, RETRAIN_FIELD, RecoveryParams
from workers.engine.task_types import TaskType
from workers.engine.training import reproducible, synchronize

PHASE = "recovery"
MIA_SCORE = "logit_confidence"
MIA_SEED = 0
AUDITED, CONTROL, ORIGINAL = "unlearned", "retrain", "original"
CONTROL_ROLES = {ORIGINAL: ORIGINAL_FIELD, CONTROL: RETRAIN_FIELD}


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    forget: np.ndarray
    y_train_np: np.ndarray
    y_test_np: np.ndarray
    forget_class: int | None


Measure = Callable[[nn.Module, Data], dict[str, float]]


@dataclass(frozen=True)
class TaskRules:
    """What a recovery audit measures on one task type: the headline forget metric and its direction, the
    full measurement after a transform, the probe of a relearning curve (on given train indices) and the
    relearning loss."""

    direction: scores.Direction
    measure: Measure
    probe: Callable[[nn.Module, Data, np.ndarray], float]
    loss: relearn.Loss
    target_dtype: torch.dtype


def _classification_measure(model: nn.Module, data: Data) -> dict[str, float]:
    train_probs = softmax(
        predict_logits(model, data.x_train[torch.from_numpy(data.forget).to(data.x_train.device)])
    )
    test_probs = softmax(predict_logits(model, data.x_test))
    forget_labels = data.y_train_np[data.forget]
    out = {
        "forget_accuracy": accuracy(train_probs, forget_labels),
        "test_accuracy": accuracy(test_probs, data.y_test_np),
    }
    # The population MIA of every evaluation (threshold on the logit-scaled confidence), members = the forget
    # set, non-members = test samples of the same label distribution (workers.engine.metrics.nonmembers).
    nonmembers = select_nonmembers(forget_labels, data.y_test_np, data.forget_class, MIA_SEED)
    if nonmembers.indices is not None:
        member_scores = membership_score(MIA_SCORE, train_probs, forget_labels)
        other = nonmembers.indices
        nonmember_scores = membership_score(MIA_SCORE, test_probs[other], data.y_test_np[other])
        is_member = np.concatenate([np.ones(member_scores.size, bool), np.zeros(nonmember_scores.size, bool)])
        out["mia_auc"] = auc(np.concatenate([member_scores, nonmember_scores]), is_member)
    return out


def _classification_probe(model: nn.Module, data: Data, indices: np.ndarray) -> float:
    selected = torch.from_numpy(indices).to(data.x_train.device)
    probabilities = softmax(predict_logits(model, data.x_train[selected]))
    return accuracy(probabilities, data.y_train_np[indices])


def _mae(model: nn.Module, inputs: torch.Tensor, targets: np.ndarray) -> float:
    predictions = predict_logits(model, inputs).reshape(-1)
    return float(np.mean(np.abs(predictions - targets)))


def _regression_measure(model: nn.Module, data: Data) -> dict[str, float]:
    forget = torch.from_numpy(data.forget).to(data.x_train.device)
    return {
        "forget_mae": _mae(model, data.x_train[forget], data.y_train_np[data.forget]),
        "test_mae": _mae(model, data.x_test, data.y_test_np),
    }


def _regression_probe(model: nn.Module, data: Data, indices: np.ndarray) -> float:
    selected = torch.from_numpy(indices).to(data.x_train.device)
    return _mae(model, data.x_train[selected], data.y_train_np[indices])


def _l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(outputs.reshape(-1), targets)


TASKS: dict[TaskType, TaskRules] = {
    TaskType.classification: TaskRules(
        scores.Direction("forget_accuracy", 1.0),
        _classification_measure,
        _classification_probe,
        F.cross_entropy,
        torch.long,
    ),
    TaskType.regression: TaskRules(
        scores.Direction("forget_mae", -1.0), _regression_measure, _regression_probe, _l1, torch.float32
    ),
}


def _params(request: EngineRequest) -> RecoveryParams:
    try:
        return RecoveryParams.model_validate(request.params or {})
    except ValidationError as error:
        raise InvalidInputError(f"invalid params for a recovery audit: {error}") from None


def _forget(request: EngineRequest) -> np.ndarray:
    dataset = request.dataset
    if request.forget_indices is not None:
        indices = np.asarray(request.forget_indices, dtype=np.int64)
    elif request.forget_class is not None:
        indices = np.flatnonzero(dataset.y_train == request.forget_class).astype(np.int64)
    else:
        raise InvalidInputError("a recovery request needs a forget set")
    if indices.size < 2 or indices[0] < 0 or indices[-1] >= dataset.n_train:
        raise InvalidInputError(
            "the forget set needs at least 2 training samples, all inside the train split"
        )
    return np.unique(indices)


def _build(request: EngineRequest, weights: Mapping[str, np.ndarray], device: torch.device) -> nn.Module:
    spec = ARCHITECTURES.get(request.architecture)
    config = spec.parse_config(request.arch_config)
    with torch.random.fork_rng(devices=[]):
        model = build_model(spec.name, config)
    load_weights(model, weights, spec.param_shapes(config))
    return model.to(device).eval()


def _with_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state, strict=True)
    return model.eval()


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def run_recovery_request(request: EngineRequest, hooks: EngineHooks | None = None) -> EngineResult:
    started = time.perf_counter()
    if TaskType.generative in ARCHITECTURES.get(request.architecture).task_types:
        # A generator or a teacher: the entry's generative_run (workers.engine.recovery.generative).
        return _execute_generative(request, job_kind(request.kind), hooks, started)
    params = _params(request)
    dataset = request.dataset.validate()
    if dataset.task not in TASKS:
        raise InvalidInputError(f"recovery audits do not support {dataset.task.value} models yet")
    rules = TASKS[dataset.task]
    if request.weights is None:
        raise InvalidInputError("a recovery request needs the audited model's weights")
    missing = [role for role in CONTROL_ROLES if role not in request.controls]
    if missing:
        raise InvalidInputError(f"a recovery request needs the {' and '.join(missing)} model's weights")
    forget = _forget(request)
    progress = hooks or NullHooks()
    device = torch.device(resolve_device(request.device))
    with reproducible(device) as deterministic:
        data = Data(
            x_train=device_inputs(dataset, dataset.x_train, device),
            y_train=torch.from_numpy(dataset.y_train).to(device=device, dtype=rules.target_dtype),
            x_test=device_inputs(dataset, dataset.x_test, device),
            y_test=torch.from_numpy(dataset.y_test).to(device=device, dtype=rules.target_dtype),
            forget=forget,
            y_train_np=np.asarray(dataset.y_train),
            y_test_np=np.asarray(dataset.y_test),
            forget_class=request.forget_class,
        )
        models = {
            AUDITED: _build(request, request.weights, device),
            CONTROL: _build(request, request.controls[CONTROL], device),
            ORIGINAL: _build(request, request.controls[ORIGINAL], device),
        }
        scratch = _build(request, request.weights, device)
        suite = transforms.transforms_for(params.sparsities)
        if not params.quantization:
            suite = [t for t in suite if t.family != transforms.QUANTIZATION]
        sources = relearn.choose_sources(
            data.x_train,
            forget,
            retain_indices(dataset.n_train, forget),
            params.relearn_sources,
            params.relearn_samples,
            request.seed,
        )
        total = 3 + 2 * len(suite) + 2 * len(sources.indices)
        done = 0

        def tick(info: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            progress.progress(PHASE, done, total, info)

        synchronize(device)
        transform_started = time.perf_counter()
        before: dict[str, dict[str, float]] = {}
        for role, model in models.items():
            before[role] = rules.measure(model, data)
            tick({"measured": role})
        table: list[dict[str, Any]] = []
        for transform in suite:
            row: dict[str, Any] = {
                "name": transform.name,
                "family": transform.family,
                "description": transform.description,
            }
            for role in (AUDITED, CONTROL):
                state = transform.apply(models[role].state_dict())
                if not transforms.is_finite(state):
                    raise InvalidInputError(f"{transform.name} gave non-finite weights for the {role} model")
                row[role] = rules.measure(_with_state(scratch, state), data)
                row[f"{role}_zero_fraction"] = transforms.zero_fraction(state)
                tick({"transform": transform.name, "model": role})
            table.append(row)
        synchronize(device)
        transform_seconds = time.perf_counter() - transform_started

        relearn_started = time.perf_counter()
        original_held_out = rules.probe(models[ORIGINAL], data, sources.held_out)
        curves: dict[str, dict[str, relearn.Curve]] = {}
        for source, indices in sources.indices.items():
            selected = torch.from_numpy(indices).to(device)
            inputs, targets = data.x_train[selected], data.y_train[selected]
            curves[source] = {}
            for role in (AUDITED, CONTROL):
                curves[source][role] = relearn.relearn_curve(
                    models[role],
                    inputs,
                    targets,
                    lambda m: rules.probe(m, data, sources.held_out),
                    params.relearn_steps,
                    objective=relearn.supervised(rules.loss),
                    lr=params.relearn_lr,
                    batch_size=params.relearn_batch_size,
                    seed=request.seed,
                )
                tick({"relearn": source, "model": role})
        synchronize(device)
        relearn_seconds = time.perf_counter() - relearn_started

    metrics, details = summarise(rules.direction, params, before, table, curves, original_held_out)
    details.update(
        kind=request.kind,
        method=None,
        architecture=request.architecture,
        arch_config=request.arch_config,
        seed=request.seed,
        forget_class=request.forget_class,
        params=params.model_dump(mode="json"),
        sources={
            "feature_space": "input",
            "held_out_forget": int(sources.held_out.size),
            "sizes": {name: int(ix.size) for name, ix in sources.indices.items()},
            "definitions": {
                "forget_subset": "seeded random subset of the forget set (at most half); curves are read on"
                " the rest of it",
                "retain_neighbours": "retain samples nearest the forget set in input space (Euclidean)",
                "unrelated": "random retain samples farther from the forget set than the median",
            },
        },
        transforms_applied_to="copies of the audited and the retrain model's weights",
        nf4_codebook=transforms.nf4_codebook().tolist(),
        relearn_optimizer={"name": "adam", "lr": params.relearn_lr, "batch_size": params.relearn_batch_size},
    )
    return EngineResult(
        weights=None,
        metrics=metrics,
        details=details,
        timings={
            "method_s": transform_seconds + relearn_seconds,
            "transforms_s": transform_seconds,
            "relearn_s": relearn_seconds,
            "total_s": time.perf_counter() - started,
        },
        environment=_environment(device, deterministic),
    )


def summarise(
    direction: scores.Direction,
    params: RecoveryParams,
    before: dict[str, dict[str, float]],
    table: list[dict[str, Any]],
    curves: dict[str, dict[str, relearn.Curve]],
    original_held_out: float,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat metrics and the details tables from the measurements (pure numbers)."""
    key = direction.metric
    metrics: dict[str, Any] = {
        key: before[AUDITED][key],
        f"control.{key}": before[CONTROL][key],
        f"original.{key}": before[ORIGINAL][key],
    }
    for role, prefix in ((AUDITED, ""), (CONTROL, "control."), (ORIGINAL, "original.")):
        metrics.update({f"{prefix}{name}": value for name, value in before[role].items()})
    gap_value = scores.gap(direction, before[ORIGINAL][key], before[CONTROL][key])
    usable = gap_value >= params.min_gap
    reason = (
        None
        if usable
        else (
            f"the original and the retrain differ by {gap_value:.3g} on {key} (< min_gap {params.min_gap}):"
            " there is nothing to recover"
        )
    )
    metrics["recovery_gap"] = gap_value
    transform_rows = []
    family_scores: dict[str, list[float]] = {}
    for row in table:
        audited = (before[AUDITED][key], row[AUDITED][key])
        control = (before[CONTROL][key], row[CONTROL][key])
        excess = scores.excess_recovery(direction, audited, control)
        value = scores.score(excess, gap_value) if usable else None
        name = row["name"]
        deltas = {
            "delta": audited[1] - audited[0],
            "control_delta": control[1] - control[0],
            "delta_vs_control": (audited[1] - audited[0]) - (control[1] - control[0]),
            "excess_recovery": excess,
            "score": value,
        }
        for extra in ("mia_auc", "test_accuracy", "test_mae", "retain_accuracy"):
            if extra in row[AUDITED] and extra in before[AUDITED] and extra in row[CONTROL]:
                deltas[f"{extra}_delta"] = row[AUDITED][extra] - before[AUDITED][extra]
                deltas[f"control_{extra}_delta"] = row[CONTROL][extra] - before[CONTROL][extra]
        metrics.update({f"transform.{name}.{k}": v for k, v in deltas.items()})
        metrics[f"transform.{name}.{key}"] = audited[1]
        metrics[f"transform.{name}.control_{key}"] = control[1]
        # The policy rule's figure ("forgetting survives 4-bit quantization"): how far above the equally
        # transformed control the transformed audited model is.
        deltas["gap_to_control"] = direction.knowledge(audited[1]) - direction.knowledge(control[1])
        metrics[f"transform.{name}.gap_to_control"] = deltas["gap_to_control"]
        if value is not None:
            family_scores.setdefault(row["family"], []).append(value)
        transform_rows.append({**row, **deltas})

    relearn_rows: dict[str, Any] = {}
    source_scores = []
    for source, pair in curves.items():
        audited_curve, control_curve = pair[AUDITED], pair[CONTROL]
        grid, last = audited_curve.steps, audited_curve.steps[-1]
        source_gap = scores.gap(direction, original_held_out, control_curve.values[0])
        threshold = scores.recovery_threshold(
            original_held_out, control_curve.values[0], params.recover_fraction
        )
        steps_audited = scores.steps_to_recover(direction, grid, audited_curve.values, threshold)
        steps_control = scores.steps_to_recover(direction, grid, control_curve.values, threshold)
        ratio = scores.steps_ratio(steps_audited, steps_control, last)
        source_usable = source_gap >= params.min_gap
        source_score = (
            scores.curve_score(direction, audited_curve.values, control_curve.values, source_gap)
            if source_usable
            else None
        )
        if source_score is not None:
            source_scores.append(source_score)
        relearn_rows[source] = {
            "steps": grid,
            AUDITED: audited_curve.values,
            CONTROL: control_curve.values,
            "original_held_out": original_held_out,
            "gap": source_gap,
            "threshold": threshold,
            "steps_to_recover": steps_audited,
            "control_steps_to_recover": steps_control,
            "steps_ratio": ratio,
            "score": source_score,
            "reason": None if source_usable else f"held-out gap {source_gap:.3g} < min_gap {params.min_gap}",
        }
        prefix = f"relearn.{source}"
        metrics.update(
            {
                f"{prefix}.steps_to_recover": steps_audited,
                f"{prefix}.control_steps_to_recover": steps_control,
                f"{prefix}.steps_ratio": ratio["value"],
                f"{prefix}.score": source_score,
            }
        )
        for step, a, c in zip(grid, audited_curve.values, control_curve.values, strict=True):
            metrics[f"{prefix}.step_{step}.{key}"] = a
            metrics[f"{prefix}.step_{step}.control_{key}"] = c
            # The policy rule's figure: how far above the control the audited model is after k steps.
            metrics[f"{prefix}.step_{step}.gap_to_control"] = direction.knowledge(a) - direction.knowledge(c)

    quantization = (
        min(family_scores[transforms.QUANTIZATION]) if transforms.QUANTIZATION in family_scores else None
    )
    pruning = min(family_scores[transforms.PRUNING]) if transforms.PRUNING in family_scores else None
    relearning = min(source_scores) if source_scores else None
    robustness = (
        scores.harmonic_mean(quantization, relearning)
        if quantization is not None and relearning is not None
        else None
    )
    metrics.update(
        recovery_quantization_score=quantization,
        recovery_pruning_score=pruning,
        recovery_relearning_score=relearning,
        recovery_robustness=robustness,
    )
    details = {
        "recovery": {
            "metric": key,
            "direction": "higher = knows more" if direction.sign > 0 else "lower = knows more",
            "before": before,
            "gap": gap_value,
            "reason": reason,
            "transforms": transform_rows,
            "relearning": relearn_rows,
            "scores": {
                "quantization": quantization,
                "pruning": pruning,
                "relearning": relearning,
                "robustness": robustness,
            },
            "definitions": {
                "score": "1 - min(1, excess recovery / gap), excess = recovery of the audited model beyond"
                " the retrain control's under the same transform; gap = original - retrain on the forget set",
                "quantization": "min of the int8, int4 and nf4 scores",
                "pruning": "min over the sparsities (not part of the robustness)",
                "relearning": "min over sources of 1 - mean over k > 0 of min(1, excess recovery after k"
                " steps / held-out gap)",
                "robustness": "harmonic mean of the quantization and relearning scores",
                "steps_to_recover": f"first grid step at which the held-out forget metric has come"
                f" {params.recover_fraction:g} of the way from the retrain's (step 0) to the original's",
            },
        }
    }
    return _finite(metrics), details
