from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from app.schemas.jobs import MAX_SEED
from app.schemas.resources import NAME_MAX, NAME_PATTERN, ForgetSpec
from app.services.jobs.guardrails import Guardrails
from workers.engine.paper_presets import PAPER_PRESETS

MAX_METHODS = 20
MAX_FORGET_SETS = 20
MAX_SEEDS = 10
MAX_GRID_CANDIDATES = 50


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(max_length=100, description="An unlearn method from GET /v1/methods.")
    label: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=NAME_PATTERN,
        description="Row name; defaults to the method.",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Sweep mode: candidate values per parameter; their product is tried on the sweep "
        "forget set "
        "and the setting with the smallest Avg-Gap is used on every forget set.",
    )

    @property
    def name(self) -> str:
        return self.label or self.method


class ForgetSetRef(BaseModel):
    """An existing forget set, a spec that creates one on the campaign model's dataset, a worst-case
    search (its params, e.g. ``{"fraction": 0.1}``) whose output forget set the campaign then uses, or the
    poisoning canary (``{"canary": true}``): exactly the Gaussian-poisoned points of the model's
    ``gaussian_poisoned`` dataset, so that the table's UA against the retrain row shows whether each method
    removed the poison (its poison fit, the accuracy on the poison labels, is 100 - UA)."""

    model_config = ConfigDict(extra="forbid")

    forget_set_id: uuid.UUID | None = None
    spec: ForgetSpec | None = None
    worst_case: dict[str, Any] | None = Field(
        None, description="WorstCaseSearchParams (see method 'worst_case_search' in GET /v1/methods)."
    )
    canary: Literal[True] | None = Field(
        None, description="The poisoned points of the model's gaussian_poisoned dataset (a built-in)."
    )
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _exactly_one(self) -> ForgetSetRef:
        given = (self.forget_set_id, self.spec, self.worst_case, self.canary)
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of forget_set_id, spec, worst_case and canary")
        return self


class CampaignCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paper_preset: str | None = Field(
        None,
        max_length=100,
        description="A paper-scale preset (GET /v1/paper-presets): fills methods, forget_sets and "
        "retrain_params where the body leaves them out.",
    )
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    model_id: uuid.UUID = Field(description="The original model; its recipe drives the retrain oracle.")
    methods: list[MethodEntry] = Field(min_length=1, max_length=MAX_METHODS)
    forget_sets: list[ForgetSetRef] = Field(min_length=1, max_length=MAX_FORGET_SETS)
    seeds: list[StrictInt] = Field(min_length=1, max_length=MAX_SEEDS)
    retrain_params: dict[str, Any] = Field(
        default_factory=dict, description="RetrainParams; empty = original recipe."
    )
    sweep_forget_set: ForgetSetRef | None = Field(  # a fixed or spec'd forget set (not a search)
        None,
        description="Where grids are tuned (the worst-case paper's protocol tunes on a random forget set).",
    )
    guardrails: Guardrails = Field(default_factory=Guardrails)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")

    @model_validator(mode="before")
    @classmethod
    def _expand_paper_preset(cls, data: Any) -> Any:
        # Before validation, so that the preset's entries are validated like the body's own and fields the
        # body gives win.
        if not isinstance(data, dict) or data.get("paper_preset") is None:
            return data
        name = data["paper_preset"]
        if not isinstance(name, str) or name not in PAPER_PRESETS:
            raise ValueError(f"unknown paper_preset {name!r}; available: {', '.join(PAPER_PRESETS.names())}")
        filled = PAPER_PRESETS.get(name).campaign_fields()
        return {**filled, **data}

    @model_validator(mode="after")
    def _consistent(self) -> CampaignCreate:
        if len(set(self.seeds)) != len(self.seeds) or any(not 0 <= s <= MAX_SEED for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers in [0, {MAX_SEED}]")
        labels = [m.name for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError("method labels must be unique: give a label to repeated methods")
        if any(m.grid for m in self.methods) and self.sweep_forget_set is None:
            raise ValueError("a method has a grid: give sweep_forget_set to tune it on")
        if self.sweep_forget_set is not None and self.sweep_forget_set.worst_case is not None:
            raise ValueError("tune on a fixed or random forget set, not on a searched one")
        return self


class Stat(BaseModel):
    mean: float | None
    std: float | None
    n: int


class TableRow(BaseModel):
    forget_set_id: uuid.UUID
    forget_set_name: str
    row: str = Field(description="'original', 'retrain' or a method label.")
    method: str | None
    params: dict[str, Any] | None
    metrics: dict[str, Stat]
    avg_gap: Stat
    rte_seconds: Stat
    flags: list[str] = Field(description="Guardrail rules broken by any seed's result.")
    jobs: list[dict[str, Any]] = Field(description="The cell jobs behind the row: id, seed, status, flags.")


class CampaignTable(BaseModel):
    campaign_id: uuid.UUID
    columns: list[str]
    rows: list[TableRow]


class CampaignProgress(BaseModel):
    total: int
    by_status: dict[str, int]
    fraction: float


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    model_id: uuid.UUID
    status: str
    stage: str
    spec: dict[str, Any]
    chosen_params: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    version: int
    progress: CampaignProgress | None = None
