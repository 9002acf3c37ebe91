"""The one exception type raised by the intake validators, with stable machine-readable codes.

Intake never lets a parser's own exception (``json.JSONDecodeError``, ``zipfile.BadZipFile``,
numpy's ``ValueError``...) reach the user: every rejection is an :class:`IntakeError` whose
``detail`` says what is wrong with the upload and how to fix it. The API layer renders it as an
RFC 9457 ``application/problem+json`` response using ``status``, ``code``, ``title``, ``detail``
and ``errors``. This module deliberately imports nothing from the web stack so that workers and
the CLI can use the validators too.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from http import HTTPStatus
from typing import Any


class IntakeErrorCode(StrEnum):
    """Stable slugs clients may branch on. Never rename one; add new members instead."""

    # Any format
    EMPTY_UPLOAD = "empty-upload"
    UPLOAD_TOO_LARGE = "upload-too-large"
    PICKLE_REJECTED = "pickle-rejected"
    UNSUPPORTED_FORMAT = "unsupported-format"
    NON_FINITE_VALUES = "non-finite-values"
    DTYPE_NOT_ALLOWED = "dtype-not-allowed"
    SHAPE_MISMATCH = "shape-mismatch"
    # safetensors structure
    SAFETENSORS_HEADER = "safetensors-header"
    SAFETENSORS_OFFSETS = "safetensors-offsets"
    NO_TENSORS = "no-tensors"
    # safetensors against the architecture's expected state_dict
    MISSING_KEYS = "missing-keys"
    UNEXPECTED_KEYS = "unexpected-keys"
    DTYPE_MISMATCH = "dtype-mismatch"
    STATE_DICT_MISMATCH = "state-dict-mismatch"
    # npz datasets
    NPZ_STRUCTURE = "npz-structure"
    ZIP_BOMB = "zip-bomb"
    NPZ_MISSING_ARRAY = "npz-missing-array"
    NPZ_UNEXPECTED_ARRAY = "npz-unexpected-array"
    NPZ_ARRAYS_MISMATCH = "npz-arrays-mismatch"
    EMPTY_SPLIT = "empty-split"
    NON_INTEGER_LABELS = "non-integer-labels"
    LABEL_OUT_OF_RANGE = "label-out-of-range"
    TOO_FEW_CLASSES = "too-few-classes"


# Everything is a 422 (the body was received and is well-formed HTTP, but its content is unusable)
# except the two cases HTTP has a more specific status for.
_HTTP_STATUS_BY_CODE: dict[str, int] = {
    IntakeErrorCode.UPLOAD_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    IntakeErrorCode.UNSUPPORTED_FORMAT: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
}

_TITLE_BY_CODE: dict[str, str] = {
    IntakeErrorCode.EMPTY_UPLOAD: "Empty upload",
    IntakeErrorCode.UPLOAD_TOO_LARGE: "Upload too large",
    IntakeErrorCode.PICKLE_REJECTED: "Pickle files are not accepted",
    IntakeErrorCode.UNSUPPORTED_FORMAT: "Unsupported file format",
    IntakeErrorCode.NON_FINITE_VALUES: "Non-finite values",
    IntakeErrorCode.DTYPE_NOT_ALLOWED: "Data type not allowed",
    IntakeErrorCode.SHAPE_MISMATCH: "Shape mismatch",
    IntakeErrorCode.SAFETENSORS_HEADER: "Invalid safetensors header",
    IntakeErrorCode.SAFETENSORS_OFFSETS: "Invalid safetensors data layout",
    IntakeErrorCode.NO_TENSORS: "No tensors in checkpoint",
    IntakeErrorCode.MISSING_KEYS: "Missing state_dict keys",
    IntakeErrorCode.UNEXPECTED_KEYS: "Unexpected state_dict keys",
    IntakeErrorCode.DTYPE_MISMATCH: "Data type mismatch",
    IntakeErrorCode.STATE_DICT_MISMATCH: "Checkpoint does not match the architecture",
    IntakeErrorCode.NPZ_STRUCTURE: "Invalid .npz archive",
    IntakeErrorCode.ZIP_BOMB: "Archive expands too much",
    IntakeErrorCode.NPZ_MISSING_ARRAY: "Missing dataset arrays",
    IntakeErrorCode.NPZ_UNEXPECTED_ARRAY: "Unexpected dataset arrays",
    IntakeErrorCode.NPZ_ARRAYS_MISMATCH: "Dataset arrays do not match the expected set",
    IntakeErrorCode.EMPTY_SPLIT: "Empty dataset split",
    IntakeErrorCode.NON_INTEGER_LABELS: "Labels are not integers",
    IntakeErrorCode.LABEL_OUT_OF_RANGE: "Label out of range",
    IntakeErrorCode.TOO_FEW_CLASSES: "Too few classes",
}

# Beyond this the detail string stops being readable; the rest are in ``errors``.
MAX_FINDINGS_IN_DETAIL = 10
# A checkpoint of the wrong architecture can produce thousands of findings; the response body
# stays bounded and the detail says how many were left out.
MAX_FINDINGS_REPORTED = 200

#: Every code an :class:`IntakeError` can carry.
INTAKE_ERROR_CODES: frozenset[str] = frozenset(code.value for code in IntakeErrorCode)


class IntakeError(ValueError):
    """An uploaded file was rejected.

    ``code`` is a stable slug from :class:`IntakeErrorCode`; ``detail`` is a complete, user-facing
    sentence naming the offending key/array/offset and the fix; ``errors`` lists the individual
    findings when there are several (each a JSON-serialisable dict with at least ``code`` and
    ``message``); ``status`` and ``title`` are what the problem+json response should carry.
    """

    def __init__(self, code: str, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        if code not in INTAKE_ERROR_CODES:
            # A typo here would silently create an undocumented code for API clients.
            raise ValueError(f"unknown intake error code {code!r}")
        super().__init__(detail)
        self.code: str = str(code)
        self.detail: str = detail
        self.errors: list[dict[str, Any]] = list(errors) if errors else []
        self.status: int = int(_HTTP_STATUS_BY_CODE.get(code, HTTPStatus.UNPROCESSABLE_ENTITY))
        self.title: str = _TITLE_BY_CODE[code]

    def __str__(self) -> str:
        return f"[{self.code}] {self.detail}"

    def __repr__(self) -> str:
        return f"IntakeError(code={self.code!r}, detail={self.detail!r}, errors={len(self.errors)})"

    def to_dict(self) -> dict[str, Any]:
        """The problem+json body fields this error determines (the API adds type/instance)."""
        body: dict[str, Any] = {
            "code": self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


def format_shape(shape: Sequence[int]) -> str:
    """A shape as users write it in messages: ``[10, 64]``, ``[]`` for a scalar."""
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def finding(code: str, message: str, **context: Any) -> dict[str, Any]:
    """One entry of ``IntakeError.errors``: a code, a sentence, and the values it refers to."""
    return {"code": str(code), "message": message, **context}


def raise_findings(findings: list[dict[str, Any]], *, mixed_code: str, summary: str) -> None:
    """Raise one IntakeError reporting every finding (no-op when there are none).

    The top-level code is the findings' shared code when they all agree (so a client checking for
    ``missing-keys`` sees it), otherwise ``mixed_code``; ``summary`` heads a detail that lists the
    individual messages.
    """
    if not findings:
        return
    codes = {item["code"] for item in findings}
    code = codes.pop() if len(codes) == 1 else mixed_code
    shown = [item["message"] for item in findings[:MAX_FINDINGS_IN_DETAIL]]
    detail = summary + " " + " ".join(shown)
    hidden = len(findings) - len(shown)
    if hidden:
        listed = min(len(findings), MAX_FINDINGS_REPORTED)
        detail += f" ...and {hidden} more ({listed} of {len(findings)} listed in 'errors')."
    raise IntakeError(code, detail, errors=findings[:MAX_FINDINGS_REPORTED])
