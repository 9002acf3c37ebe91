"""A small, typed name -> entry registry used for architectures, datasets and methods.

Registries are filled at import time of their (torch-free) catalog modules, so listing them never imports
an implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from workers.engine.errors import UnknownEntryError


class Named(Protocol):
    @property
    def name(self) -> str: ...


EntryT = TypeVar("EntryT", bound=Named)


class Registry(Generic[EntryT]):
    """Ordered mapping from a unique ``entry.name`` to the entry itself."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, EntryT] = {}

    def register(self, entry: EntryT) -> EntryT:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> EntryT:
        """Remove and return an entry (tests register entries of their own and take them out again)."""
        try:
            return self._entries.pop(name)
        except KeyError:
            raise UnknownEntryError(f"unknown {self.kind} {name!r}") from None

    def get(self, name: str) -> EntryT:
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(self.names()) or "(none)"
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[EntryT]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
