"""The tenant's shadow-model store, read-only: what audits trained and how often it was reused."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import Reader, SessionDep
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.models import ShadowModel
from app.schemas.common import Page
from app.schemas.resources import ShadowModelOut

router = APIRouter(prefix="/shadow-models", tags=["audits"])


@router.get("", response_model=Page[ShadowModelOut])
def list_shadow_models(
    principal: Reader,
    session: SessionDep,
    role: Literal["base", "retrain", "unlearned", "pool"] | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[ShadowModelOut]:
    query = select(ShadowModel).where(ShadowModel.tenant_id == principal.tenant_id)
    if role is not None:
        query = query.where(ShadowModel.role == role)
    rows, next_cursor = paginate(session, query, ShadowModel, cursor, limit)
    return Page[ShadowModelOut](
        data=[ShadowModelOut.model_validate(row) for row in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )
