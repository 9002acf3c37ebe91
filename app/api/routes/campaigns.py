from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from app.api.deps import PublisherDep, Reader, SessionDep, SettingsDep, StoreDep, Submitter, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.core.problems import NotFound
from app.models import Campaign
from app.schemas.campaigns import CampaignCreate, CampaignOut, CampaignTable
from app.schemas.common import Page
from app.services.compliance import audit
from app.services.jobs import campaigns as campaign_service
from app.services.jobs import lifecycle as job_service

router = APIRouter(prefix="/campaigns", tags=["campaigns"])
CSV_MEDIA_TYPE = "text/csv"


def campaign_out(session: SessionDep, campaign: Campaign) -> CampaignOut:
    out = CampaignOut.model_validate(campaign)
    out.progress = campaign_service.progress(session, campaign)
    return out


@router.post("", response_model=CampaignOut, status_code=202)
def create_campaign(
    body: CampaignCreate,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    request: Request,
    response: Response,
) -> CampaignOut:
    """Run methods x forget sets x seeds on one model, with the (cached) retrain oracle and an evaluation of
    the original per forget set; grids are tuned on the sweep forget set first."""
    campaign, new_jobs = campaign_service.create(
        session, store, principal, body, settings, request_id(request)
    )
    session.commit()
    job_service.publish_all(request.app.state.sessions, publisher, new_jobs)
    response.headers["Location"] = f"/v1/campaigns/{campaign.id}"
    return campaign_out(session, campaign)


@router.get("", response_model=Page[CampaignOut])
def list_campaigns(
    principal: Reader,
    session: SessionDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[CampaignOut]:
    query = select(Campaign).where(Campaign.tenant_id == principal.tenant_id)
    rows, next_cursor = paginate(session, query, Campaign, cursor, limit)
    return Page[CampaignOut](
        data=[campaign_out(session, r) for r in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


@router.get("/{campaign_id}", response_model=CampaignOut)
def read_campaign(campaign_id: uuid.UUID, principal: Reader, session: SessionDep) -> CampaignOut:
    return campaign_out(session, campaign_service.get_campaign(session, principal.tenant_id, campaign_id))


@router.get(
    "/{campaign_id}/table",
    response_model=CampaignTable,
    responses={200: {"content": {CSV_MEDIA_TYPE: {}}, "description": "JSON, or CSV with format=csv"}},
)
def read_table(
    campaign_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> CampaignTable | Response:
    """UA, RA, TA, MIA-Efficacy, RTE and Avg-Gap to retrain, mean ± std over seeds, per forget set."""
    campaign = campaign_service.get_campaign(session, principal.tenant_id, campaign_id)
    result = campaign_service.table(session, campaign)
    if format == "csv":
        return Response(
            campaign_service.table_csv(result),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="campaign-{campaign.id}.csv"'},
        )
    return result


def _cancel(
    session: SessionDep,
    principal: Submitter,
    request: Request,
    campaign_id: uuid.UUID,
    job_id: uuid.UUID | None,
) -> CampaignOut:
    campaign = campaign_service.get_campaign(session, principal.tenant_id, campaign_id)
    if job_id is not None and str(job_id) not in {c["job_id"] for c in campaign.cells}:
        raise NotFound(f"job {job_id} is not a cell of campaign {campaign_id}", code="cell-not-found")
    count = campaign_service.cancel(session, campaign, None if job_id is None else [job_id])
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="campaign.cancel",
        resource_type="campaign",
        resource_id=str(campaign.id),
        request_id=request_id(request),
        details={"cell": str(job_id) if job_id else None, "jobs_cancelled": count},
    )
    session.commit()
    return campaign_out(session, campaign)


@router.post("/{campaign_id}/cancel", response_model=CampaignOut, status_code=202)
def cancel_campaign(
    campaign_id: uuid.UUID, principal: Submitter, session: SessionDep, request: Request
) -> CampaignOut:
    """Cancel every unfinished cell of the campaign (cached jobs shared with other campaigns keep running)."""
    return _cancel(session, principal, request, campaign_id, None)


@router.post("/{campaign_id}/cells/{job_id}/cancel", response_model=CampaignOut, status_code=202)
def cancel_cell(
    campaign_id: uuid.UUID, job_id: uuid.UUID, principal: Submitter, session: SessionDep, request: Request
) -> CampaignOut:
    """Cancel one cell; the rest of the grid goes on."""
    return _cancel(session, principal, request, campaign_id, job_id)
