"""Checks every upload gets before its format is even looked at."""

from __future__ import annotations

from app.intake.errors import IntakeError, IntakeErrorCode


def check_upload_size(data: bytes, max_bytes: int, what: str) -> None:
    """Reject empty bodies and bodies over ``max_bytes`` (checked first so nothing big is parsed)."""
    if len(data) > max_bytes:
        raise IntakeError(
            IntakeErrorCode.UPLOAD_TOO_LARGE,
            f"The {what} is {len(data)} bytes; the limit is {max_bytes} bytes. "
            "Upload a smaller file or ask the operator to raise the limit.",
        )
    if not data:
        raise IntakeError(IntakeErrorCode.EMPTY_UPLOAD, f"The uploaded {what} is empty (0 bytes).")
