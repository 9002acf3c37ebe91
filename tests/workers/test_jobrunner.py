from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from workers.jobrunner import _caused_by


def test_time_limit_is_found_inside_wrapped_database_errors() -> None:
    try:
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded as inner:
            raise OperationalError("UPDATE jobs", {}, inner) from inner
    except OperationalError as wrapped:
        assert _caused_by(wrapped, SoftTimeLimitExceeded)
    wrapped_orig = OperationalError("UPDATE jobs", {}, SoftTimeLimitExceeded())
    assert _caused_by(wrapped_orig, SoftTimeLimitExceeded)  # only via .orig
    assert not _caused_by(ValueError("boom"), SoftTimeLimitExceeded)


def _finishes(monkeypatch, exc: Exception) -> list[dict]:
    """The error records _finish_after_error writes for ``exc`` (none: the job is left to the reaper)."""
    import uuid
    from types import SimpleNamespace

    from workers import jobrunner

    written: list[dict] = []
    monkeypatch.setattr(
        jobrunner.job_service,
        "finish_unsuccessful",
        lambda sessions, claim, status, error: written.append({"status": status, **error}),
    )
    runtime = SimpleNamespace(sessions=None, settings=SimpleNamespace(task_soft_time_limit=60))
    claim = SimpleNamespace(job_id=uuid.uuid4())
    jobrunner._finish_after_error(runtime, claim, exc)  # type: ignore[arg-type]
    return written


def test_a_database_outage_mid_job_leaves_the_job_to_the_reaper(monkeypatch) -> None:
    outage = OperationalError("UPDATE jobs SET lease_expires_at", {}, ConnectionRefusedError("refused"))
    assert _finishes(monkeypatch, outage) == []
    # Other errors fail the job with their reason; a time limit inside a DB call is still a time limit.
    assert [e["code"] for e in _finishes(monkeypatch, ValueError("boom"))] == ["internal-error"]
    limited = OperationalError("UPDATE jobs", {}, SoftTimeLimitExceeded())
    assert [e["code"] for e in _finishes(monkeypatch, limited)] == ["time-limit"]
