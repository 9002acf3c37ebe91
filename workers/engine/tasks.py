"""Task types: every catalog entry (architecture, dataset, method) and every evaluator is keyed by one.

Only classification exists today; regression and generative tasks are added by extending this enum and
registering entries/evaluators for them, without touching the classification code paths.
"""

from __future__ import annotations

from enum import StrEnum


class TaskType(StrEnum):
    classification = "classification"
