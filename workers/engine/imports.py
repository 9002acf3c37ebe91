"""Resolve ``"package.module:attribute"`` strings lazily.

Catalog entries name their torch implementations by string so that importing the catalog never imports
torch; the worker resolves the string only when it actually runs the implementation.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_by_path(path: str) -> Any:
    """Return the attribute named by ``"module:attribute"`` (attribute may be dotted)."""
    module_name, separator, attribute_path = path.partition(":")
    if not separator or not module_name or not attribute_path:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    target: Any = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        target = getattr(target, attribute)
    return target
