"""Runs one job: claim its lease, load its inputs, call the engine, store outputs, finish once.

The engine knows nothing about Celery or the database; this module is the only bridge.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
import traceback
import uuid
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from safetensors.numpy import save as save_safetensors
from sqlalchemy.exc import OperationalError

from app.core.config import code_version
from app.core.logs import bind
from app.intake import weights_digest
from app.models import Dataset, ForgetSet, Job, JobStatus, Model
from app.services.data.dataset_sources import DatasetRef, load_dataset
from app.services.data.forget_sets import indices_digest
from app.services.jobs import lifecycle as job_service
from app.services.jobs.lifecycle import Claim, JobOutcome, LeaseLost
from app.services.ops.processes import WORKER_GPU_ENV
from app.storage import StorageError
from app.storage.base import content_key, sha256_hex
from workers.device_memory import OUT_OF_MEMORY_CODE, DeviceOutOfMemory, device_record
from workers.engine.errors import InvalidInputError, JobCancelled
from workers.engine.job_kinds import job_kind
from workers.observability import job_trace
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class DbHooks:
    """Engine hooks backed by the DB: throttled heartbeats carry progress and return the cancel flag."""

    def __init__(self, runtime: WorkerRuntime, claim: Claim, job: Job) -> None:
        self.runtime = runtime
        self.claim = claim
        self.job = job
        self._last_beat = 0.0
        self._last_phase: str | None = None

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        now = time.monotonic()
        epoch_end = bool(info.get("epoch_end"))
        due = now - self._last_beat >= self.runtime.settings.heartbeat_seconds
        phase_changed = phase != self._last_phase
        if not (due or epoch_end or phase_changed):
            return
        self._last_beat = now
        if phase_changed:
            bind(phase=phase)  # the log context's phase (workers/observability.py)
        self._last_phase = phase
        fraction = (step / total) if total else 0.0
        progress = {
            "phase": phase,
            "step": step,
            "total": total,
            "fraction": round(fraction, 4),
            "info": _jsonable(info),
        }
        reply = job_service.heartbeat(
            self.runtime.sessions,
            self.claim,
            self.runtime.settings.lease_seconds,
            progress=progress,
            event=progress if (epoch_end or phase_changed) else None,
        )
        if reply.cancel_requested:
            raise JobCancelled("cancellation requested")

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        key = f"{self.job.tenant_id}/checkpoints/{self.job.id}.safetensors"
        self.runtime.store.put(key, blob)
        job_service.save_checkpoint_pointer(self.runtime.sessions, self.claim, key, epoch)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def _load_inputs(runtime: WorkerRuntime, job: Job) -> dict[str, Any]:
    """Everything the engine needs, read inside one short session."""
    from app.core.db import session_scope

    with session_scope(runtime.sessions) as session:
        forget_set = session.get(ForgetSet, job.forget_set_id) if job.forget_set_id else None
        model = session.get(Model, job.model_id) if job.model_id else None
        dataset_id = job.dataset_id or (forget_set.dataset_id if forget_set else None)
        dataset = session.get(Dataset, dataset_id) if dataset_id else None
        if dataset is None:
            raise InvalidInputError("the job has no dataset")
        inputs: dict[str, Any] = {
            "dataset_key": dataset.storage_key,
            "dataset": DatasetRef.of(dataset),  # loaded by its source (app.services.data.dataset_sources)
            "dataset_sha256": dataset.sha256,
            "model_sha256": model.sha256 if model else None,
            "dataset_id": dataset.id,
            "forget_indices": np.asarray(forget_set.indices, dtype=np.int64) if forget_set else None,
            "forget_class": forget_set.forget_class if forget_set else None,
            "forget_kind": forget_set.kind if forget_set else None,
            "model_key": model.storage_key if model else None,
            "mask_key": model.mask_key if model else None,
            "architecture": model.architecture if model else job.architecture,
            "arch_config": model.arch_config if model else job.arch_config,
            "original_recipe": _training_recipe(session, model) if model else None,
            "checkpoint_key": job.checkpoint_key,
            "control_keys": _control_keys(session, job),
        }
    return inputs


def _control_keys(session: Any, job: Job) -> dict[str, str]:
    """Storage keys of the further models the job's kind reads (role -> key), from the model ids the API
    resolved into its params; a model deleted since then fails the job with a readable reason."""
    keys: dict[str, str] = {}
    for role, field in job_kind(job.kind).control_models.items():
        raw = (job.params or {}).get(field)
        model = session.get(Model, uuid.UUID(str(raw))) if raw else None
        if model is None or model.tenant_id != job.tenant_id:
            raise InvalidInputError(f"the {role} model ({field} = {raw}) no longer exists")
        keys[role] = model.storage_key
    return keys


# How many producing jobs _training_recipe follows back (prune -> unlearn -> ... -> train).
MAX_RECIPE_HOPS = 8


def _training_recipe(session: Any, model: Model) -> dict[str, Any] | None:
    """The recipe ``model`` was trained with: its own (train and retrain outputs record one) or, for a model
    another job derived from an input model (prune, unlearn), that input model's, followed back through the
    producing jobs. Unlearning methods inherit batch size and augmentation from it; None for uploads."""
    current: Model | None = model
    seen: set[uuid.UUID] = set()
    for _ in range(MAX_RECIPE_HOPS):
        if current is None or current.id in seen:
            return None
        if current.train_recipe is not None:
            return current.train_recipe
        seen.add(current.id)
        producer = session.get(Job, current.job_id) if current.job_id else None
        if producer is None or producer.model_id is None:
            return None
        current = session.get(Model, producer.model_id)
    return None


def _load_weights(data: bytes) -> dict[str, np.ndarray]:
    from app.intake import load_safetensors_arrays

    return load_safetensors_arrays(data)


def run_claimed_job(runtime: WorkerRuntime, job_id: uuid.UUID) -> None:
    """Run the job whose turn it is. The message named ``job_id``, but the fair pick decides: one tenant's
    backlog of messages cannot hold back another tenant's job (app.services.jobs.lifecycle.claim_next)."""
    claim = job_service.claim_next(runtime.sessions, runtime.worker_name, runtime.settings.lease_seconds)
    if claim is None:
        log.info("message for job %s: no job is waiting (taken elsewhere, finished or cancelled)", job_id)
        return
    if claim.job_id != job_id:
        from workers.celery_app import CeleryPublisher, celery_app

        log.info("message for job %s: running job %s, whose turn it is", job_id, claim.job_id)
        job_service.hand_on(runtime.sessions, CeleryPublisher(celery_app), job_id)
    run_claim(runtime, claim)


def run_claim(runtime: WorkerRuntime, claim: Claim) -> None:
    """Run a claimed job inside its log context (job id, attempt, submitting request, phase); its outcome
    and duration are observed when it ends (workers/observability.py)."""
    with runtime.sessions() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None
        session.expunge(job)
    with job_trace(job.id, job.kind, claim.attempt, job.request_id) as trace:
        trace.outcome = _run_and_finish(runtime, claim, job)


def _run_and_finish(runtime: WorkerRuntime, claim: Claim, job: Job) -> str:
    """Run the claimed job and record how it ended; the outcome names its metric label."""
    try:
        return _run(runtime, claim, job)
    except DeviceOutOfMemory as exc:
        job_service.finish_unsuccessful(
            runtime.sessions,
            claim,
            JobStatus.failed,
            {"code": OUT_OF_MEMORY_CODE, "detail": exc.detail, **exc.record},
            environment={**device_record(), **worker_environment(claim)},
        )
        return "out_of_memory"
    except LeaseLost:
        log.warning("job %s: lease lost, stopping without writing results", job.id)
        return "lease_lost"
    except JobCancelled:
        job_service.finish_unsuccessful(
            runtime.sessions,
            claim,
            JobStatus.cancelled,
            {"code": "cancelled", "detail": "cancelled on request"},
        )
        return "cancelled"
    except InvalidInputError as exc:
        job_service.finish_unsuccessful(
            runtime.sessions, claim, JobStatus.failed, {"code": "invalid-input", "detail": str(exc)}
        )
        return "failed"
    except StorageError as exc:
        job_service.finish_unsuccessful(
            runtime.sessions, claim, JobStatus.failed, {"code": "storage-error", "detail": str(exc)}
        )
        return "failed"
    except Exception as exc:
        return _finish_after_error(runtime, claim, exc)
    finally:
        _release_device_memory()


def _release_device_memory() -> None:
    """Free what the job left on the device before the child reports back (workers/device_memory.py)."""
    from workers import device_memory

    device_memory.release()


def worker_environment(claim: Claim) -> dict[str, Any]:
    """Who ran the job where: the worker, the attempt, and the GPU the worker was started for (``lethe worker
    --gpus``: its index on the host and the CUDA_VISIBLE_DEVICES the worker was given)."""
    return {
        "code_version": code_version(),
        "worker": claim.worker,
        "attempt": claim.attempt,
        "worker_gpu": os.environ.get(WORKER_GPU_ENV),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the chain: the time-limit signal can land inside a database call,
    where SQLAlchemy / the driver wrap it in their own error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return False


def _finish_after_error(runtime: WorkerRuntime, claim: Claim, exc: Exception) -> str:
    if _caused_by(exc, OperationalError) and not _caused_by(exc, SoftTimeLimitExceeded):
        # The database went away mid-job (a heartbeat or a write failed). If it is back already, marking the
        # job failed would throw away a run the reaper can resume from its last checkpoint: leave the lease to
        # expire instead (the reaper requeues the job, bounded by max_attempts).
        log.warning("job %s: database unavailable (%s); left for the reaper to resume", claim.job_id, exc)
        return "interrupted"
    if _caused_by(exc, SoftTimeLimitExceeded):
        job_service.finish_unsuccessful(
            runtime.sessions,
            claim,
            JobStatus.failed,
            {
                "code": "time-limit",
                "detail": f"the job exceeded its time limit of {runtime.settings.task_soft_time_limit} s",
            },
        )
        return "time_limit"
    from workers import device_memory

    if device_memory.is_out_of_memory(exc):  # out of memory outside the engine (storing its outputs)
        job_service.finish_unsuccessful(
            runtime.sessions,
            claim,
            JobStatus.failed,
            {"code": OUT_OF_MEMORY_CODE, "detail": f"{type(exc).__name__}: {exc}"},
            environment=worker_environment(claim),
        )
        return "out_of_memory"
    log.error("job %s failed", claim.job_id, exc_info=exc)
    job_service.finish_unsuccessful(
        runtime.sessions,
        claim,
        JobStatus.failed,
        {
            "code": "internal-error",
            "detail": f"{type(exc).__name__}: {exc}",
            "trace": "".join(traceback.format_exception(exc, limit=8)),
        },
    )
    return "failed"


def _run(runtime: WorkerRuntime, claim: Claim, job: Job) -> str:
    from workers.engine.execute import EngineRequest

    kind = job_kind(job.kind)
    started = time.perf_counter()
    inputs = _load_inputs(runtime, job)
    dataset = load_dataset(runtime.store, inputs["dataset"])
    weights = _load_weights(runtime.store.get(inputs["model_key"])) if inputs["model_key"] else None
    masks = _load_weights(runtime.store.get(inputs["mask_key"])) if inputs["mask_key"] else None
    resume = None
    if inputs["checkpoint_key"] and runtime.store.exists(inputs["checkpoint_key"]):
        resume = runtime.store.get(inputs["checkpoint_key"])
    controls: dict[str, str] = inputs["control_keys"]
    shadow_store = None
    if kind.uses_shadow_store:
        from workers.shadow_store import DbShadowStore

        # Audit shadows come from (and go to) the tenant's shadow store.
        shadow_store = DbShadowStore(runtime, job.tenant_id, job.id)
    request = EngineRequest(
        kind=kind.name,
        method=job.method,
        params=job.params,
        seed=job.seed,
        device=job.device_requested,
        dataset=dataset,
        architecture=inputs["architecture"],
        arch_config=inputs["arch_config"],
        weights=weights,
        forget_indices=inputs["forget_indices"],
        forget_class=inputs["forget_class"],
        original_recipe=inputs["original_recipe"],
        resume=resume,
        masks=masks,
        cache=StoreCache(runtime, job.tenant_id),
        dataset_sha256=inputs["dataset_sha256"],
        forget_kind=inputs["forget_kind"],
        shadow_store=shadow_store,
        controls={role: _load_weights(runtime.store.get(key)) for role, key in controls.items()},
    )
    load_s = time.perf_counter() - started
    hooks = DbHooks(runtime, claim, job)
    hooks.progress("load", 1, 1, {})  # renew the lease after loading, before the engine's first step
    result, memory_retry = _execute_within_memory(runtime, request, hooks)

    output_model = None
    architecture = result.architecture or inputs["architecture"]
    arch_config = result.arch_config if result.arch_config is not None else inputs["arch_config"]
    if result.weights is not None:
        blob = save_safetensors(
            result.weights, metadata={"job_id": str(job.id), "architecture": architecture}
        )
        # The file (with the producing job in its metadata) is stored by its bytes; the model is
        # identified by its tensors, so bit-identical outputs of two jobs share one sha256.
        key = content_key("models", str(job.tenant_id), sha256_hex(blob), ".safetensors")
        digest = weights_digest(blob)
        runtime.store.put(key, blob)
        recipe = (result.details.get("params") or {}).get("recipe")
        mask_key = mask_digest = None
        mask_sparsity = None
        if result.masks is not None:
            mask_blob = save_safetensors(result.masks)
            mask_digest = sha256_hex(mask_blob)
            mask_key = content_key("masks", str(job.tenant_id), mask_digest, ".safetensors")
            runtime.store.put(mask_key, mask_blob)
            # The engine reads sparsity from the output weights (zeros in the prunable layers); the masks'
            # own fraction would hide weights a mask failed to keep at zero.
            mask_sparsity = result.metrics["sparsity"] / 100.0 if "sparsity" in result.metrics else None
        output_model = Model(
            tenant_id=job.tenant_id,
            name=f"{job.kind}:{job.method}:{str(job.id)[:8]}",
            architecture=architecture,
            arch_config=arch_config,
            dataset_id=inputs["dataset_id"],
            source="job",
            job_id=job.id,
            train_recipe=recipe if kind.records_recipe else None,
            seed=job.seed,
            sha256=digest,
            storage_key=key,
            size_bytes=len(blob),
            num_params=int(sum(int(np.prod(v.shape)) for v in result.weights.values())),
            mask_key=mask_key,
            mask_sha256=mask_digest,
            sparsity=mask_sparsity,
        )
    # The engine records the environment as for every other job (device, torch, numpy, sklearn, ...); a
    # hand-written list here had drifted from it (sklearn missing, so reports showed it as null).
    environment = {**_jsonable(result.environment), **worker_environment(claim)}
    timings = {**result.timings, "load_s": load_s, "wall_s": time.perf_counter() - started}
    output_forget_set = None
    if "forget_set" in kind.produces:
        output_forget_set = _searched_forget_set(runtime, job, inputs, result)
    details = _jsonable(result.details)
    # How the stored inputs became the model's (uint8 scale, per-channel normalisation), in every result.
    details.setdefault("dataset_inputs", dataset.input_record())
    details.update(_store_images(runtime, job, result, store_samples="samples" in kind.produces))
    if "report" in kind.produces:
        details.update(_store_report_arrays(runtime, job, result))
    if memory_retry is not None:
        # The result is of a smaller batch than the job asked for: said here, and kept out of the cache.
        details["device_memory_retry"] = memory_retry
        job_service.drop_cache_key(runtime.sessions, claim)
    outcome = JobOutcome(
        output_forget_set=output_forget_set,
        metrics=result.metrics,
        result=details,
        environment=environment,
        timings=timings,
        output_model=output_model,
    )
    if not job_service.finish_succeeded(runtime.sessions, claim, job, outcome):
        log.warning("job %s: finished but no longer owned; results discarded", job.id)
        return "lease_lost"
    return "succeeded"


class _NoCheckpoints:
    """The hooks of a retry with half the batch: progress and cancellation as before, but no epoch
    checkpoints, whose recipe would not match the job's params if a later attempt resumed from them."""

    def __init__(self, hooks: DbHooks) -> None:
        self.hooks = hooks

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        self.hooks.progress(phase, step, total, info)

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        return None


def _execute_within_memory(
    runtime: WorkerRuntime, request: Any, hooks: DbHooks
) -> tuple[Any, dict[str, Any] | None]:
    """``execute(request)``; when the device runs out of memory, free it and fail with DeviceOutOfMemory, or,
    with ``oom_retry_half_batch``, run once more with half the batch size. Returns the result and the retry's
    record (None without one)."""
    from workers import device_memory
    from workers.engine.execute import execute

    try:
        return execute(request, hooks), None
    except Exception as exc:
        if not device_memory.is_out_of_memory(exc):
            raise
        first_error = _first_line(exc)
        device_memory.forget_frames(exc)
    # Outside the except block: the exception and the failed attempt's tensors are unreachable now.
    record: dict[str, Any] = {"first_error": first_error, "memory_after_release": device_memory.release()}
    retry = None
    if runtime.settings.oom_retry_half_batch:
        retry = device_memory.halved_batch(request.method, request.params, request.original_recipe)
    if retry is None:
        raise DeviceOutOfMemory(f"the job ran out of device memory: {first_error}", record)
    log.warning("job ran out of device memory (%s); retrying with %s", first_error, retry.record())
    record.update(retry.record())
    retried = dataclasses.replace(request, params=retry.params, resume=None)
    try:
        return execute(retried, _NoCheckpoints(hooks)), record
    except Exception as exc:
        if not device_memory.is_out_of_memory(exc):
            raise
        record["retry_error"] = _first_line(exc)
        device_memory.forget_frames(exc)
    record["memory_after_release"] = device_memory.release()
    raise DeviceOutOfMemory(
        f"the job ran out of device memory, also with batch size {retry.batch_size_to}: "
        f"{record['retry_error']}",
        record,
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class StoreCache:
    """The engine's artifact cache on the tenant's artifact store (kind ``classifiers``): the generative
    metric classifier trained once per dataset and params. Jobs name the key in their result, which keeps
    the file referenced (the orphan sweep removes it once no job does)."""

    def __init__(self, runtime: WorkerRuntime, tenant_id: uuid.UUID) -> None:
        self.store = runtime.store
        self.tenant_id = tenant_id

    def key(self, name: str) -> str:
        # Keyed on the code version as well (the images stamp the commit): a new build retrains the classifier
        # once rather than scoring with one an older build trained.
        versioned = sha256_hex(f"{code_version()}:{name}".encode())
        return content_key("classifiers", str(self.tenant_id), versioned, ".safetensors")

    def get(self, name: str) -> bytes | None:
        key = self.key(name)
        return self.store.get(key) if self.store.exists(key) else None

    def put(self, name: str, data: bytes) -> str:
        key = self.key(name)
        self.store.put(key, data)
        return key


def _store_images(runtime: WorkerRuntime, job: Job, result: Any, *, store_samples: bool) -> dict[str, Any]:
    """PNG grids (``grids``: name -> key) and a sample job's images (``samples_key``, an npz)."""
    stored: dict[str, Any] = {}
    if result.pngs:
        grids = {}
        for name, png in sorted(result.pngs.items()):
            key = content_key("grids", str(job.tenant_id), sha256_hex(png), ".png")
            runtime.store.put(key, png)
            grids[name] = key
        stored["grids"] = grids
        stored["grid_url"] = f"/v1/jobs/{job.id}/grid.png"
    if result.arrays and store_samples:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **result.arrays)
        blob = buffer.getvalue()
        key = content_key("samples", str(job.tenant_id), sha256_hex(blob), ".npz")
        runtime.store.put(key, blob)
        stored["samples_key"] = key
    return stored


def _store_report_arrays(runtime: WorkerRuntime, job: Job, result: Any) -> dict[str, Any]:
    """An audit's per-example scores, stored as one npz artifact referenced from the result."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **result.arrays)
    arrays_blob = buffer.getvalue()
    arrays_key = content_key("audits", str(job.tenant_id), sha256_hex(arrays_blob), ".npz")
    runtime.store.put(arrays_key, arrays_blob)
    return {"arrays_key": arrays_key, "arrays": sorted(result.arrays)}


def _searched_forget_set(runtime: WorkerRuntime, job: Job, inputs: dict[str, Any], result: Any) -> ForgetSet:
    """The search's output as a forget set, with its provenance and the per-item difficulty scores."""
    indices = np.asarray(result.arrays["forget_indices"], dtype=np.int64)
    details = _jsonable(result.details)
    scores_blob = json.dumps(
        {
            "granularity": details.get("granularity"),
            "scores": np.asarray(result.arrays["scores"], dtype=np.float64).tolist(),
            "objective_history": np.asarray(
                result.arrays.get("objective_history", []), dtype=np.float64
            ).tolist(),
        }
    ).encode()
    scores_key = content_key("scores", str(job.tenant_id), sha256_hex(scores_blob), ".json")
    runtime.store.put(scores_key, scores_blob)
    selected_classes = details.get("selected_classes") or []
    return ForgetSet(
        tenant_id=job.tenant_id,
        dataset_id=inputs["dataset_id"],
        name=f"worst-case {details.get('granularity', 'data')} {int(indices.size)} ({str(job.id)[:8]})",
        kind="worst_case",
        spec={
            "search_params": job.params,
            "seed": job.seed,
            "job_id": str(job.id),
            "model_sha256": inputs["model_sha256"],
            "dataset_sha256": inputs["dataset_sha256"],
            "granularity": details.get("granularity"),
            "cost": details.get("cost"),
        },
        forget_class=int(selected_classes[0]) if len(selected_classes) == 1 else None,
        size=int(indices.size),
        indices=indices.tolist(),
        sha256=indices_digest(indices),
        job_id=job.id,
        scores_key=scores_key,
    )


__all__ = ["run_claimed_job"]
