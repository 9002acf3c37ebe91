"""A test-only "unlearning method" that changes nothing (the no-op control)."""

from __future__ import annotations

from workers.engine.methods.base import MethodContext, MethodOutput


def run(context: MethodContext) -> MethodOutput:
    return MethodOutput(model=context.model, resolved_params={})
