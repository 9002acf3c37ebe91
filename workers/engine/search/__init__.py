"""Forget-set search: find the forget set that is hardest (or easiest) to unlearn.

Torch-free at import: ``projection`` (numpy) and ``params`` (pydantic) are safe for the API process; the
torch implementation lives in ``workers.engine.search.worst_case`` and is imported only by the engine.
"""

from __future__ import annotations

from workers.engine.search.params import WorstCaseSearchParams
from workers.engine.search.projection import project_capped_simplex

__all__ = ["WorstCaseSearchParams", "project_capped_simplex"]
