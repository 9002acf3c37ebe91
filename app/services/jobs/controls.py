"""The further models a job reads besides its input model (a kind's ``control_models``), resolved at
submission so that the job's params record exactly which models it used.

For a recovery audit of an unlearned model on a forget set:

- **original**: ``params.original_model_id`` if given; else the input model of the job that produced the
  audited model (an unlearn job's original; for a retrain's output, the model it retrained); else the input
  model of the given retrain's job. None of these: 422 ``missing-original``.
- **retrain**: ``params.retrain_model_id`` if given; else the output of a succeeded retrain job of that
  original on the same forget set, picked as the comparison view picks a row's reference
  (``app.services.jobs.results.pick_reference``: the same seed as the job that produced the audited model
  first, then the newest). None: 422 ``missing-retrain`` (submit a retrain job, or pass the id).

Every control must be the tenant's, share the audited model's architecture and configuration (the engine
builds them alike; a generative model's controls are ``unet_ddpm`` teachers of its U-Net config, which a
one-step generator extends by its ``t_init``) and, when it records one, the forget set's dataset.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.problems import Unprocessable
from app.models import ForgetSet, Job, JobStatus, Model
from app.services.jobs.results import pick_reference
from workers.engine.diffusion.job_params import TEACHER, same_network
from workers.engine.job_kinds import JobKindSpec, kinds_where


@dataclass(frozen=True)
class _Key:
    model_id: uuid.UUID | None
    seed: int | None


@dataclass
class _Context:
    session: Session
    tenant_id: uuid.UUID
    model: Model
    forget_set: ForgetSet
    given: dict[str, uuid.UUID | None]
    resolved: dict[str, Model]


def _producer(session: Session, model: Model | None) -> Job | None:
    return session.get(Job, model.job_id) if model is not None and model.job_id is not None else None


def _tenant_model(context: _Context, role: str, model_id: uuid.UUID) -> Model:
    row = context.session.get(Model, model_id)
    if row is None or row.tenant_id != context.tenant_id:
        raise Unprocessable(f"the {role} model {model_id} was not found", code="control-not-found")
    return row


def _original(context: _Context) -> Model:
    given = context.given.get("original")
    if given is not None:
        return _tenant_model(context, "original", given)
    for source in (context.model, _given_retrain(context)):
        producer = _producer(context.session, source)
        if producer is not None and producer.model_id is not None:
            return _tenant_model(context, "original", producer.model_id)
    raise Unprocessable(
        "the audited model's original could not be found (it was not produced by a job on another model):"
        " pass params.original_model_id",
        code="missing-original",
    )


def _given_retrain(context: _Context) -> Model | None:
    given = context.given.get("retrain")
    return _tenant_model(context, "retrain", given) if given is not None else None


def _retrain(context: _Context) -> Model:
    given = _given_retrain(context)
    if given is not None:
        return given
    original = context.resolved["original"]
    retrains = list(
        context.session.scalars(
            select(Job).where(
                Job.tenant_id == context.tenant_id,
                Job.kind.in_(kinds_where(comparison_role="reference")),
                Job.status == JobStatus.succeeded,
                Job.model_id == original.id,
                Job.forget_set_id == context.forget_set.id,
                Job.output_model_id.is_not(None),
            )
        )
    )
    producer = _producer(context.session, context.model)
    picked = pick_reference(_Key(original.id, producer.seed if producer is not None else None), retrains)
    if picked is None or picked.output_model_id is None:
        raise Unprocessable(
            f"no succeeded retrain of the original model {original.id} on this forget set: submit one"
            " (kind 'retrain') or pass params.retrain_model_id",
            code="missing-retrain",
        )
    return _tenant_model(context, "retrain", picked.output_model_id)


# One resolver per role, in order (the retrain's search needs the original).
RESOLVERS: dict[str, Callable[[_Context], Model]] = {"original": _original, "retrain": _retrain}


def _same_network(control: Model, model: Model) -> bool:
    if control.architecture == model.architecture and control.arch_config == model.arch_config:
        return True
    # A generative model's controls are multi-step teachers (the original SFD distilled, the retrain without
    # the class): a one-step generator shares their U-Net and only adds its t_init.
    return control.architecture == TEACHER and same_network(
        model.architecture, model.arch_config or {}, control.arch_config or {}
    )


def _check_compatible(role: str, control: Model, model: Model, forget_set: ForgetSet) -> None:
    if not _same_network(control, model):
        raise Unprocessable(
            f"the {role} model is a {control.architecture} {control.arch_config}, the audited model a"
            f" {model.architecture} {model.arch_config}: they must match (a generative model's controls:"
            f" {TEACHER} teachers of the same U-Net)",
            code="control-mismatch",
        )
    if control.dataset_id is not None and control.dataset_id != forget_set.dataset_id:
        raise Unprocessable(
            f"the {role} model was trained on dataset {control.dataset_id}, the forget set belongs to"
            f" {forget_set.dataset_id}",
            code="dataset-mismatch",
        )


def resolve_controls(
    session: Session,
    tenant_id: uuid.UUID,
    spec: JobKindSpec,
    model: Model | None,
    forget_set: ForgetSet | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """``params`` with every control model's id filled in (checked); unchanged for kinds without any."""
    if not spec.control_models:
        return params
    assert model is not None and forget_set is not None, f"{spec.name} requires model_id and forget_set_id"
    given = {
        role: uuid.UUID(str(params[field])) if params.get(field) is not None else None
        for role, field in spec.control_models.items()
    }
    context = _Context(session, tenant_id, model, forget_set, given, {})
    for role in spec.control_models:
        control = RESOLVERS[role](context)
        _check_compatible(role, control, model, forget_set)
        context.resolved[role] = control
    return {
        **params,
        **{field: str(context.resolved[role].id) for role, field in spec.control_models.items()},
    }
