"""The audit job kind's engine run: an :class:`EngineRequest` through the audit pipeline.

The request's input model is the audited original, its forget set the job's; shadow models come from (and
go to) ``request.shadow_store`` (the worker's DB-backed store; an in-memory one when the caller gives none).
"""

from __future__ import annotations

from typing import cast

from workers.engine.audit.pipeline import AuditRequest, ForgetKind, run_audit
from workers.engine.audit.store import MemoryShadowStore
from workers.engine.errors import InvalidInputError
from workers.engine.execute import EngineRequest, EngineResult
from workers.engine.hooks import EngineHooks


def run_audit_request(request: EngineRequest, hooks: EngineHooks | None = None) -> EngineResult:
    if request.weights is None or request.forget_indices is None:
        raise InvalidInputError("an audit needs a model and a forget set")
    if request.dataset_sha256 is None:
        raise InvalidInputError("an audit needs the dataset's content hash (it keys the shadow models)")
    audit = AuditRequest(
        params=request.params,
        seed=request.seed,
        device=request.device,
        dataset=request.dataset,
        dataset_sha256=request.dataset_sha256,
        architecture=request.architecture,
        arch_config=request.arch_config,
        original_weights=request.weights,
        original_recipe=request.original_recipe,
        forget_indices=request.forget_indices,
        # The stored forget set's kind (ForgetSet.kind), one of ForgetKind.
        forget_kind=cast(ForgetKind, request.forget_kind or "indices"),
    )
    store = request.shadow_store if request.shadow_store is not None else MemoryShadowStore()
    result = run_audit(audit, store, hooks)
    return EngineResult(
        weights=None,
        metrics=result.metrics,
        details=result.details,
        timings=result.timings,
        environment=result.environment,
        arrays=result.arrays,
    )
