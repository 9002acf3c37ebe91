from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from app.api.deps import Reader, SessionDep, StoreDep, Submitter, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.core.problems import DomainError, NotFound
from app.models import ForgetSet
from app.schemas.common import Page
from app.schemas.jobs import Comparison
from app.schemas.resources import ForgetSetCreate, ForgetSetIndices, ForgetSetOut
from app.services.compliance import audit
from app.services.data.datasets import get_dataset
from app.services.data.deletion import CASCADE_DESCRIPTION, DELETE_RESPONSES, DeletionReport, delete_resource
from app.services.data.forget_sets import create_forget_set, get_forget_set
from app.services.jobs.results import compare

router = APIRouter(prefix="/forget-sets", tags=["forget sets"])


@router.get("", response_model=Page[ForgetSetOut])
def list_forget_sets(
    principal: Reader,
    session: SessionDep,
    dataset_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[ForgetSetOut]:
    query = select(ForgetSet).where(ForgetSet.tenant_id == principal.tenant_id)
    if dataset_id is not None:
        query = query.where(ForgetSet.dataset_id == dataset_id)
    rows, next_cursor = paginate(session, query, ForgetSet, cursor, limit)
    return Page[ForgetSetOut](
        data=[ForgetSetOut.model_validate(r) for r in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


@router.post("", response_model=ForgetSetOut, status_code=201)
def create(
    body: ForgetSetCreate,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    request: Request,
    response: Response,
) -> ForgetSetOut:
    """Create a forget set from explicit indices, a class, or a random fraction with a seed."""
    dataset = get_dataset(session, principal.tenant_id, body.dataset_id)
    row = create_forget_set(session, store, principal.tenant_id, body, dataset)
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="forget_set.create",
        resource_type="forget_set",
        resource_id=str(row.id),
        request_id=request_id(request),
        details={"kind": row.kind, "size": row.size, "sha256": row.sha256, "dataset_id": str(dataset.id)},
    )
    session.commit()
    response.headers["Location"] = f"/v1/forget-sets/{row.id}"
    return ForgetSetOut.model_validate(row)


@router.get("/{forget_set_id}", response_model=ForgetSetOut)
def read(forget_set_id: uuid.UUID, principal: Reader, session: SessionDep) -> ForgetSetOut:
    return ForgetSetOut.model_validate(get_forget_set(session, principal.tenant_id, forget_set_id))


@router.get("/{forget_set_id}/indices", response_model=ForgetSetIndices)
def read_indices(forget_set_id: uuid.UUID, principal: Reader, session: SessionDep) -> ForgetSetIndices:
    row = get_forget_set(session, principal.tenant_id, forget_set_id)
    return ForgetSetIndices(id=row.id, sha256=row.sha256, indices=row.indices)


@router.get(
    "/{forget_set_id}/scores",
    responses={
        404: {"description": "Unknown, or not a searched forget set"},
        410: {"description": "scores-purged: removed by the retention policy"},
    },
)
def read_scores(
    forget_set_id: uuid.UUID, principal: Reader, session: SessionDep, store: StoreDep
) -> Response:
    """A searched forget set's per-item difficulty scores (the search's final continuous weights: one per
    train sample, or per class for a class-wise search) and the upper objective per outer iteration."""
    row = get_forget_set(session, principal.tenant_id, forget_set_id)
    if row.scores_key is None:
        if row.kind == "worst_case":
            raise DomainError(
                f"the scores of forget set {forget_set_id} were purged by the retention policy"
                " (LETHE_RETENTION_DAYS_INTERMEDIATE); run the search again to regenerate them",
                code="scores-purged",
                status=410,
            )
        raise NotFound(
            f"forget set {forget_set_id} was not searched: it has no scores", code="scores-not-found"
        )
    return Response(
        store.get(row.scores_key),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.scores.json"'},
    )


@router.get("/{forget_set_id}/comparison", response_model=Comparison, tags=["results"])
def comparison(
    forget_set_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    model_id: Annotated[uuid.UUID | None, Query(description="Only jobs on this original model.")] = None,
) -> Comparison:
    """Every method's metrics on this forget set, side by side with the retrain row and the Avg-Gap."""
    get_forget_set(session, principal.tenant_id, forget_set_id)
    return compare(session, principal.tenant_id, forget_set_id, model_id)


@router.delete("/{forget_set_id}", response_model=DeletionReport, responses=DELETE_RESPONSES)
def delete_forget_set(
    forget_set_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    request: Request,
    cascade: Annotated[bool, Query(description=CASCADE_DESCRIPTION)] = False,
) -> DeletionReport:
    """Delete the forget set (its indices live in the row) and a searched set's scores.

    Refused (409) while a queued or running job uses it, and, without ``cascade``, while jobs (and through
    them their output models) or campaigns depend on it. Audited with its hash and size, never its
    contents."""
    return delete_resource(
        session,
        request.app.state.sessions,
        store,
        principal,
        "forget_set",
        forget_set_id,
        cascade=cascade,
        request_id=request_id(request),
    )
