from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


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
