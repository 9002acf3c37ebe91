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
