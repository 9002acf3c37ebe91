"""Task types: every catalog entry (architecture, dataset, method) and every evaluator is keyed by one.

``classification``: integer class labels, logits out, cross-entropy. ``regression``: one continuous float32
target per sample, a scalar prediction out (shape ``(N,)``), the L1 loss (Deep Regression Unlearning,
blindspot_sfd.md §1). ``generative``: class-conditional image generators (diffusion teachers and one-step SFD
generators, blindspot_sfd.md §2) trained on a classification dataset's images and labels; datasets themselves
are never generative (:class:`DatasetTask`). Further task types are added by extending this enum and
registering entries and an evaluator for them, without touching the existing code paths.
"""

from __future__ import annotations

from enum import StrEnum


class TaskType(StrEnum):
    classification = "classification"
    regression = "regression"
    generative = "generative"


class DatasetTask(StrEnum):
    """The task types a dataset can have (a generative model learns from a classification dataset)."""

    classification = "classification"
    regression = "regression"
