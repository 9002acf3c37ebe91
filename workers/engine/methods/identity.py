"""``identity``: the no-op control. Returns the original model unchanged, so evaluations and audits can show
they would notice a method that forgets nothing."""

from __future__ import annotations

from workers.engine.methods.base import MethodContext, MethodOutput


def run(context: MethodContext) -> MethodOutput:
    return MethodOutput(model=context.model, resolved_params={})
