from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

NAME_MAX = 200
# Names are shown in tables, CSV exports, reports, logs and the dashboard. Refused: control characters
# (C0, DEL, C1), which Postgres rejects (NUL) or which break terminals and CSV readers, and Unicode's
# Bidi_Control characters (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), which reorder how the
# text around them is displayed (a name with U+202E can show "model-gpj.exe" as "model-exe.jpg").
BIDI_CONTROL_CHARACTERS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page.")
    has_more: bool


class RegistryEntry(BaseModel):
    name: str
    description: str
    task_types: list[str]
    params_schema: dict = Field(
        description="JSON schema of the entry's params/config (render forms from it)."
    )
    job_kind: str | None = None
