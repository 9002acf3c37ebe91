"""Finds branches on a job kind in Python source (used by test_job_kinds.py).

What a job kind needs belongs in its registry entry (``workers.engine.job_kinds``); code elsewhere reads the
entry's fields. A *branch on a kind* is any of:

- a comparison (``==``, ``!=``, ``is``, ``is not``, ``in``, ``not in``) of a kind (a name or attribute called
  ``kind``) with a kind's name, a ``JobKind`` member, a collection of them, or any other expression that is
  not a literal (a ``KINDS_...`` constant, a lookup table);
- a ``JobKind`` member used anywhere but as a call argument (``JobCreate(kind=JobKind.unlearn)`` creates a
  job of a kind; ``{JobKind.prune: ...}``, ``frozenset({JobKind.retrain})`` or ``Job.kind.in_([...])`` select
  by kind);
- a lookup keyed by a kind in a table named for kinds (``_KIND_METHOD.get(kind)``,
  ``REQUEST_JOB_KINDS[request.kind]``; tables keyed by ``JobKind`` members are found by their keys);
- ``match kind:``.

Comparisons of other things called ``kind`` with literals that are not job kinds (``forget_set.kind !=
"class"``, ``dtype.kind not in "iu"``) and lookups of other kinds (``_LABEL[kind]``: a resource kind) are not
branches on a job kind.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

KIND_ATTRIBUTE = "kind"
ENUM_NAME = "JobKind"
REGISTRY_NAMES = frozenset({"JOB_KINDS"})
TABLE_MARK = "kind"  # a lookup table whose name has it is keyed by kinds


@dataclass(frozen=True)
class Branch:
    path: str
    line: int
    source: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source}"


def _is_kind(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == KIND_ATTRIBUTE) or (
        isinstance(node, ast.Attribute) and node.attr == KIND_ATTRIBUTE
    )


def _is_member(node: ast.AST, kinds: frozenset[str]) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == ENUM_NAME
        and node.attr in kinds
    )


def _names_a_kind(node: ast.AST, kinds: frozenset[str]) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in kinds
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_kind(element, kinds) for element in node.elts)
    return _is_member(node, kinds)


def _selects_by_kind(other: ast.AST, kinds: frozenset[str]) -> bool:
    """Whether comparing a kind with ``other`` is a branch on the kind."""
    if _names_a_kind(other, kinds):
        return True
    # A literal that names no job kind compares another thing called "kind" (``("gap_retrain", "drop")``);
    # a name, attribute, subscript or call is a table of kinds.
    return not isinstance(other, ast.Constant | ast.Tuple | ast.List | ast.Set)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _is_call_argument(node: ast.AST, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.keyword):
        return True
    return isinstance(parent, ast.Call) and node in parent.args


def _is_kind_table(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return TABLE_MARK in name.lower() and name not in REGISTRY_NAMES


def find_branches(source: str, path: str, kinds: frozenset[str]) -> Iterator[Branch]:
    tree = ast.parse(source, filename=path)
    lines = source.splitlines()
    parents = _parents(tree)

    def branch(node: ast.AST) -> Branch:
        line = getattr(node, "lineno", 0)
        return Branch(path, line, lines[line - 1].strip() if line else "")

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for index, operand in enumerate(operands):
                others = operands[:index] + operands[index + 1 :]
                if _is_kind(operand) and any(_selects_by_kind(other, kinds) for other in others):
                    yield branch(node)
                    break
        elif _is_member(node, kinds):
            parent = parents.get(node)
            if not _is_call_argument(node, parent):
                yield branch(node)
        elif isinstance(node, ast.Call):
            function = node.func
            if (
                isinstance(function, ast.Attribute)
                and function.attr == "get"
                and _is_kind_table(function.value)
                and node.args
                and _is_kind(node.args[0])
            ):
                yield branch(node)
        elif isinstance(node, ast.Subscript):
            if _is_kind(node.slice) and _is_kind_table(node.value):
                yield branch(node)
        elif isinstance(node, ast.Match) and _is_kind(node.subject):
            yield branch(node)
