"""Named parameter presets: ``preset: "lethe" | "reference"`` on every method's and the search's params.

A field declared with :func:`preset_field` carries both presets' values (in its description and, under
``presets``, in its JSON schema); :class:`PresetModel`'s before-validator fills each key absent from the input
from the chosen preset's table, so an explicit value always wins and the validated model is ordinary (its dump
validates back to the same values). Torch-free and free of engine imports: the methods and the search both
build on it.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Preset = Literal["lethe", "reference"]
DEFAULT_PRESET: Preset = "lethe"
PRESET_KEY = "presets"  # json_schema_extra key of a field's per-preset values (also shown in the schema)


def _shown(value: Any) -> str:
    return "null" if value is None else json.dumps(value)


def preset_field(description: str, *, lethe: Any, reference: Any, **constraints: Any) -> Any:
    """A field whose default is the ``lethe`` preset's value and whose ``reference`` preset value differs;
    both are appended to the description and kept in the JSON schema under ``presets``."""
    return Field(
        default=lethe,
        description=(
            f"{description} Presets: 'lethe' (default) {_shown(lethe)}, 'reference' {_shown(reference)}."
        ),
        json_schema_extra={PRESET_KEY: {"lethe": lethe, "reference": reference}},
        **constraints,
    )


class PresetModel(BaseModel):
    """Base of params with presets: the ``preset`` field (subclasses restate it with their own description)
    and the validator that resolves it."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset = Field(default=DEFAULT_PRESET)

    @classmethod
    def preset_values(cls, preset: Preset) -> dict[str, Any]:
        """The fields this preset sets, with their values (only fields declared with preset values)."""
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and PRESET_KEY in extra:
                table = extra[PRESET_KEY]
                assert isinstance(table, dict)
                values[name] = copy.deepcopy(table[preset])
        return values

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        # Before validation, so that a key absent from the input takes the preset's value and an explicit
        # one wins.
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", DEFAULT_PRESET)
        if preset not in get_args(Preset):
            return data  # the field's own validation reports the bad value
        return {**cls.preset_values(preset), **data}
