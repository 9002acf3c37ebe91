"""The worker finds the original training recipe an unlearning job inherits from, through the jobs that
derived its input model (train -> prune -> unlearn ...)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from app.models import Job, Model
from workers.jobrunner import MAX_RECIPE_HOPS, _training_recipe

RECIPE = {"epochs": 20, "batch_size": 64, "augment": False}


@dataclass
class FakeModel:
    train_recipe: dict[str, Any] | None
    job_id: uuid.UUID | None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class FakeJob:
    model_id: uuid.UUID | None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


class FakeSession:
    """``get(Model | Job, id)`` over in-memory rows, like a SQLAlchemy session."""

    def __init__(self) -> None:
        self.rows: dict[tuple[type, uuid.UUID], Any] = {}

    def add(self, kind: type, row: Any) -> Any:
        self.rows[(kind, row.id)] = row
        return row

    def get(self, kind: type, key: uuid.UUID) -> Any:
        return self.rows.get((kind, key))


def _derived(session: FakeSession, parent: FakeModel) -> FakeModel:
    """A model produced by a job (prune / unlearn) whose input was ``parent``."""
    job = session.add(Job, FakeJob(model_id=parent.id))
    return session.add(Model, FakeModel(train_recipe=None, job_id=job.id))


def test_a_trained_model_gives_its_own_recipe() -> None:
    session = FakeSession()
    trained = session.add(Model, FakeModel(train_recipe=RECIPE, job_id=None))
    assert _training_recipe(session, trained) == RECIPE  # type: ignore[arg-type]


def test_derived_models_inherit_the_recipe_of_the_model_they_came_from() -> None:
    session = FakeSession()
    trained = session.add(Model, FakeModel(train_recipe=RECIPE, job_id=None))
    pruned = _derived(session, trained)
    unlearned = _derived(session, pruned)
    assert _training_recipe(session, pruned) == RECIPE  # type: ignore[arg-type]
    assert _training_recipe(session, unlearned) == RECIPE  # type: ignore[arg-type]


def test_uploads_and_overlong_chains_have_no_recipe() -> None:
    session = FakeSession()
    uploaded = session.add(Model, FakeModel(train_recipe=None, job_id=None))
    assert _training_recipe(session, uploaded) is None  # type: ignore[arg-type]
    derived = _derived(session, uploaded)
    assert _training_recipe(session, derived) is None  # type: ignore[arg-type]
    current = session.add(Model, FakeModel(train_recipe=RECIPE, job_id=None))
    for _ in range(MAX_RECIPE_HOPS):
        current = _derived(session, current)
    assert _training_recipe(session, current) is None  # type: ignore[arg-type]
