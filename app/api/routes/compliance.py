"""Policies, deletion requests and compliance reports (under /v1)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import select

from app.api.deps import Admin, PublisherDep, Reader, SessionDep, SettingsDep, Submitter, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.core.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA_REF, NotFound
from app.models import ComplianceReport, DeletionRequest, DeletionRequestStatus, Policy
from app.schemas.common import Page
from app.schemas.compliance import (
    DeletionRequestCreate,
    DeletionRequestOut,
    PolicyCheck,
    PolicyCheckOut,
    PolicyCreate,
    PolicyOut,
    ReportOut,
    SigningKeyOut,
)
from app.services.compliance import deletion_requests as service
from app.services.compliance.policies import create_policy, get_policy, policy_out
from app.services.compliance.policy_check import check_policy
from app.services.compliance.report_pdf import render_pdf
from app.services.compliance.reports import render_html
from app.services.compliance.signing import signing_key
from app.services.jobs import lifecycle as job_service

router = APIRouter(tags=["compliance"])
_request_id = request_id  # routes below have a path parameter of that name
MAX_IDEMPOTENCY_KEY = 255
POLL_HINT_SECONDS = 2
JSON_RESPONSE = {"content": {"application/json": {}}, "description": "The signed report, canonical JSON."}
HTML_RESPONSE = {"content": {"text/html": {}}, "description": "The report as a self-contained HTML page."}
PDF_RESPONSE = {"content": {"application/pdf": {}}, "description": "The report as PDF (a rendering)."}


# ------------------------------------------------------------------------------------------ policies
@router.post("/policies", response_model=PolicyOut, status_code=201)
def publish_policy(
    body: PolicyCreate, principal: Admin, session: SessionDep, request: Request, response: Response
) -> PolicyOut:
    """Publish a policy. A name that exists gets its next version; earlier versions stay as they were.

    ``warnings`` lists rules the untouched original meets whatever it measures; when every rule is such
    (``vacuous-policy``) no request under the policy can pass. Dry-run rules first with
    ``POST /v1/policies/check``."""
    policy = create_policy(session, principal, body, request_id(request))
    session.commit()
    response.headers["Location"] = f"/v1/policies/{policy.id}"
    return policy_out(policy)


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA_REF}}}


CHECK_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: _problem(
        "`policy-not-found`, `deletion-request-not-found` or `job-not-found` (also another tenant's)."
    ),
    409: _problem("`control-not-evaluated`: an evidence job has not succeeded (yet)."),
    422: _problem(
        "`validation-error` (rules, evidence combination, metric names, non-finite values) or"
        " `wrong-control-job` (an evidence job of the wrong kind or method)."
    ),
}


@router.post("/policies/check", response_model=PolicyCheckOut, responses=CHECK_PROBLEMS)
def dry_run_policy(
    body: PolicyCheck, principal: Submitter, session: SessionDep, request: Request
) -> PolicyCheckOut:
    """Dry-run a policy (published, or rules not yet published) against the untouched-model control.

    Reports the rules the original meets by construction and, given evidence (a deletion request's
    controls, succeeded control jobs, or metrics), the untouched model's finding per rule. ``separates``
    is false when it passes every rule: under such a policy a request can only be inconclusive or fail.
    Nothing is stored but the check's audit row."""
    result = check_policy(session, principal, body, request_id(request))
    session.commit()
    return result


@router.get("/policies", response_model=Page[PolicyOut])
def list_policies(
    principal: Reader,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[PolicyOut]:
    query = select(Policy).where(Policy.tenant_id == principal.tenant_id)
    if name is not None:
        query = query.where(Policy.name == name)
    rows, next_cursor = paginate(session, query, Policy, cursor, limit)
    return Page[PolicyOut](
        data=[policy_out(r) for r in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


@router.get("/policies/{policy_id}", response_model=PolicyOut)
def read_policy(policy_id: uuid.UUID, principal: Reader, session: SessionDep) -> PolicyOut:
    return policy_out(get_policy(session, principal.tenant_id, policy_id))


# ------------------------------------------------------------------------------------------ deletion requests
@router.post(
    "/deletion-requests",
    response_model=DeletionRequestOut,
    status_code=202,
    responses={200: {"description": "Idempotent replay"}},
)
def create_deletion_request(
    body: DeletionRequestCreate,
    principal: Submitter,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=MAX_IDEMPOTENCY_KEY, description="Retries with the same key return the same request."
        ),
    ] = None,
) -> DeletionRequestOut:
    """Unlearn a forget set from a model with a method and check the result against a policy version.

    Runs the unlearning, the retrain oracle and an evaluation of the original (both reused when cached) and,
    when a rule names an audit metric, an audit; when all have ended a signed report is issued."""
    row, created, new_jobs = service.submit(
        session, principal, body, settings, idempotency_key=idempotency_key, request_id=request_id(request)
    )
    session.commit()
    if new_jobs:
        job_service.publish_all(request.app.state.sessions, publisher, new_jobs)
    session.refresh(row)
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/v1/deletion-requests/{row.id}"
    response.headers["Retry-After"] = str(POLL_HINT_SECONDS)
    return service.to_out(session, row)


@router.get("/deletion-requests", response_model=Page[DeletionRequestOut])
def list_deletion_requests(
    principal: Reader,
    session: SessionDep,
    status: DeletionRequestStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[DeletionRequestOut]:
    query = select(DeletionRequest).where(DeletionRequest.tenant_id == principal.tenant_id)
    if status is not None:
        query = query.where(DeletionRequest.status == status)
    rows, next_cursor = paginate(session, query, DeletionRequest, cursor, limit)
    return Page[DeletionRequestOut](
        data=[service.to_out(session, r) for r in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


@router.get("/deletion-requests/{request_id}", response_model=DeletionRequestOut)
def read_deletion_request(
    request_id: uuid.UUID, principal: Reader, session: SessionDep
) -> DeletionRequestOut:
    return service.to_out(session, service.get_request(session, principal.tenant_id, request_id))


@router.post("/deletion-requests/{request_id}/cancel", response_model=DeletionRequestOut, status_code=202)
def cancel_deletion_request(
    request_id: uuid.UUID, principal: Submitter, session: SessionDep, request: Request
) -> DeletionRequestOut:
    row = service.get_request(session, principal.tenant_id, request_id)
    service.cancel(session, principal, row, _request_id(request))
    session.commit()
    return service.to_out(session, row)


@router.get("/deletion-requests/{request_id}/reports", response_model=list[ReportOut])
def list_reports(request_id: uuid.UUID, principal: Reader, session: SessionDep) -> list[ReportOut]:
    """Every report issued for the request, oldest first."""
    row = service.get_request(session, principal.tenant_id, request_id)
    reports = session.scalars(
        select(ComplianceReport)
        .where(ComplianceReport.deletion_request_id == row.id)
        .order_by(ComplianceReport.created_at, ComplianceReport.id)
    )
    return [ReportOut.model_validate(r) for r in reports]


@router.post("/deletion-requests/{request_id}/reports", response_model=ReportOut, status_code=201)
def reissue_report(
    request_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> ReportOut:
    """Issue the request's report again (rebuilt from the stored results): the same bytes as the first but
    for ``issued_at`` and the signature. Earlier reports stay as they were."""
    row = service.get_request(session, principal.tenant_id, request_id)
    report = service.reissue(session, principal, row, settings, _request_id(request))
    session.commit()
    response.headers["Location"] = f"/v1/reports/{report.id}"
    return ReportOut.model_validate(report)


def _report(session: SessionDep, tenant_id: uuid.UUID, report_id: uuid.UUID) -> ComplianceReport:
    report = session.get(ComplianceReport, report_id)
    if report is None or report.tenant_id != tenant_id:
        raise NotFound(f"report {report_id} not found", code="report-not-found")
    return report


def _download(report: ComplianceReport, suffix: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="lethe-report-{report.id}.{suffix}"',
        "Cache-Control": "private, max-age=31536000, immutable",
        "ETag": f'"{report.sha256}"',
    }


@router.get("/reports/{report_id}", response_class=Response, responses={200: JSON_RESPONSE})
def read_report(report_id: uuid.UUID, principal: Reader, session: SessionDep) -> Response:
    """The signed report: exactly the canonical JSON bytes that were signed (save them as they are)."""
    report = _report(session, principal.tenant_id, report_id)
    return Response(
        report.document.encode("utf-8"), media_type="application/json", headers=_download(report, "json")
    )


@router.get("/reports/{report_id}/html", response_class=Response, responses={200: HTML_RESPONSE})
def read_report_html(report_id: uuid.UUID, principal: Reader, session: SessionDep) -> Response:
    """The report as a self-contained HTML page that embeds the signed JSON (it verifies too)."""
    report = _report(session, principal.tenant_id, report_id)
    page = render_html(report.document.encode("utf-8"))
    return Response(
        page.encode("utf-8"), media_type="text/html; charset=utf-8", headers=_download(report, "html")
    )


@router.get("/reports/{report_id}/pdf", response_class=Response, responses={200: PDF_RESPONSE})
def read_report_pdf(report_id: uuid.UUID, principal: Reader, session: SessionDep) -> Response:
    """The report as PDF (A4, for filing): a rendering of the signed JSON, whose SHA-256 its footer names."""
    report = _report(session, principal.tenant_id, report_id)
    return Response(
        render_pdf(report.document.encode("utf-8")),
        media_type="application/pdf",
        headers=_download(report, "pdf"),
    )


@router.get("/reports/{report_id}/meta", response_model=ReportOut)
def read_report_meta(report_id: uuid.UUID, principal: Reader, session: SessionDep) -> ReportOut:
    return ReportOut.model_validate(_report(session, principal.tenant_id, report_id))


@router.get("/report-signing-key", response_model=SigningKeyOut)
def read_signing_key(principal: Reader, settings: SettingsDep) -> SigningKeyOut:
    """The public key reports are signed with (Ed25519); pin it where reports are verified."""
    return SigningKeyOut(**signing_key(settings).public_info())
