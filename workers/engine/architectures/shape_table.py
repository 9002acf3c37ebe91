"""The state_dict table of a library model (name -> (shape, safetensors dtype)), read off the library.

In a worker it is called in process; the API runs it as ``python -m workers.engine.architectures.shape_table``
(a JSON request on stdin, one JSON line on stdout) so the API process itself never imports torch. The model
is built on the ``meta`` device: no memory is allocated and nothing is initialised for real.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from pydantic import ValidationError

from workers.engine.architectures import ARCHITECTURES, FLOAT32, INT64, ShapeDict
from workers.engine.errors import InvalidInputError
from workers.engine.imports import import_by_path

SAFETENSORS_DTYPES = {torch.float32: FLOAT32, torch.int64: INT64}


def compute_table(architecture: str, config: dict[str, Any]) -> ShapeDict:
    """Build ``architecture`` from ``config`` on the meta device and list its state_dict entries."""
    spec = ARCHITECTURES.get(architecture)
    try:
        parsed = spec.config_model.model_validate(config)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid {architecture} config: {exc}") from None
    builder = import_by_path(spec.builder)
    try:
        with torch.device("meta"):
            model = builder(parsed, *spec.builder_args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        # The library refused the arguments (e.g. a width its blocks cannot split): the config's fault.
        raise InvalidInputError(f"the library cannot build {architecture} with this config: {exc}") from None
    table: ShapeDict = {}
    for key, value in model.state_dict().items():
        dtype = SAFETENSORS_DTYPES.get(value.dtype)
        if dtype is None:
            raise InvalidInputError(
                f"{architecture}: state entry {key!r} has unsupported dtype {value.dtype}"
            )
        table[key] = (tuple(int(n) for n in value.shape), dtype)
    return table


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        table = compute_table(str(request["architecture"]), dict(request["config"]))
    except InvalidInputError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(json.dumps({"table": {key: [list(shape), dtype] for key, (shape, dtype) in table.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
