"""Exceptions raised by the engine.

The worker maps these onto job outcomes: :class:`InvalidInputError` is the user's fault and its message is
shown to them verbatim, :class:`JobCancelled` ends the job as cancelled, any other :class:`EngineError` is an
internal failure.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class UnknownEntryError(EngineError, LookupError):
    """A registry lookup used a name that is not registered; the message lists the registered names."""


class InvalidInputError(EngineError):
    """The request (parameters, dataset, weights, forget set) is unusable; the message is user-facing."""


class ShapeTableUnavailable(EngineError):
    """A library model's state_dict table could not be computed here (the torch helper is missing, crashed
    or timed out): the service's fault, not the request's."""


class JobCancelled(EngineError):
    """Raised by a progress hook to stop a running job; the engine lets it propagate unchanged."""
