"""Turn in-memory data into the bytes the API takes: a dataset .npz, a safetensors checkpoint.

numpy, torch and safetensors are imported here only when called (extras ``[numpy]`` / ``[torch]``), so the
base client installs with httpx and pydantic alone. Nothing is ever pickled: the API refuses pickles.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _missing(extra: str, module: str) -> ImportError:
    return ImportError(f"{module} is needed for this upload helper: pip install 'lethe-client[{extra}]'")


def dataset_npz(x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> bytes:
    """The four arrays as the compressed .npz ``POST /v1/datasets/upload`` expects (no object arrays)."""
    try:
        import numpy as np
    except ImportError as exc:
        raise _missing("numpy", "numpy") from exc
    arrays = {
        name: np.asarray(value)
        for name, value in zip(NPZ_ARRAYS, (x_train, y_train, x_test, y_test), strict=True)
    }
    for name, array in arrays.items():
        if array.dtype == object:
            raise ValueError(
                f"{name} is an object array; the API refuses anything that would need unpickling"
            )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def state_dict_safetensors(state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """A torch ``state_dict`` (or a mapping of numpy arrays) as safetensors bytes."""
    if not state_dict:
        raise ValueError("the state_dict is empty")
    meta = dict(metadata) if metadata else None
    if all(hasattr(value, "detach") for value in state_dict.values()):
        try:
            from safetensors.torch import save
        except ImportError as exc:
            raise _missing("torch", "safetensors and torch") from exc
        # clone(): tied weights share storage, which safetensors refuses to write twice.
        tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in state_dict.items()}
        return bytes(save(tensors, metadata=meta))
    try:
        import numpy as np
        from safetensors.numpy import save as save_numpy
    except ImportError as exc:
        raise _missing("numpy", "safetensors and numpy") from exc
    arrays = {name: np.ascontiguousarray(np.asarray(value)) for name, value in state_dict.items()}
    return bytes(save_numpy(arrays, metadata=meta))


def config_json(config: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(config or {}), sort_keys=True)
