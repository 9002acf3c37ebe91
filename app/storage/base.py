"""The artifact store interface every backend implements, and the content-addressed keys the service uses.

The operations are exactly those the API, the workers and the maintenance tasks call: whole-object reads
(``get``) and streamed ones (``open``, for large files: downloads, datasets), atomic writes (``put``, or
``staging_path`` + ``put_file`` for a large file produced a chunk at a time),
``exists``/``stat``/``delete``, and a listing (``scan``) for the orphan sweep. Nothing outside a backend
may assume artifacts are files under a directory: a backend without one (an object store, issue 18) has to
serve the same calls. ``tests/app/storage/test_store_contract.py`` is the behaviour every backend owes.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class StorageError(RuntimeError):
    """The store could not write or read an artifact (disk full, permissions, missing file)."""


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored object as a listing or ``stat`` sees it."""

    key: str
    size: int
    modified: float  # seconds since the epoch: the orphan sweep's grace period and the deletion race check
    # The leftover of an interrupted write (a local temporary file), never a committed artifact: the sweep
    # deletes these once they are older than the grace period without asking the database.
    temporary: bool = False


@runtime_checkable
class ArtifactStore(Protocol):
    """Keys are relative, ``/``-separated paths (``<tenant>/<kind>/...``, see ``content_key``)."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing what was there; readers see the old or the whole new bytes."""
        ...

    def staging_path(self, prefix: str) -> Path:
        """A new, empty local file to fill and then ``put_file`` under a key starting with ``prefix``.

        The caller deletes it when it is not put. A backend that stages inside its own namespace (the local
        directory does, to rename without copying) lists a leftover of a crashed process as temporary."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Store the complete file ``source`` (from ``staging_path``) at ``key``, atomically; consumes it."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes at ``key``; StorageError when there are none or they cannot be read."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the bytes at ``key`` (the caller closes it), not necessarily seekable;
        StorageError when there are none. Memory stays bounded whatever the object's size."""
        ...

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> ArtifactInfo | None:
        """Size and modification time of ``key``; None when nothing is stored there."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing stored there is not an error."""
        ...

    def scan(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        """Every object whose key starts with ``prefix`` ("" or ending in "/"), in key order."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that are not plain relative paths (a backend must never write outside its namespace)."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"artifact key escapes the store: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: "" (everything) or a key prefix ending in "/"."""
    if prefix:
        if not prefix.endswith("/"):
            raise StorageError(f"invalid artifact prefix: {prefix!r}")
        check_key(prefix[:-1])
    return prefix


def copy_stream(source: BinaryIO, target: BinaryIO, chunk: int = 1024 * 1024) -> int:
    """Copy a stream a chunk at a time; the number of bytes copied."""
    total = 0
    while block := source.read(chunk):
        target.write(block)
        total += len(block)
    return total


@contextmanager
def seekable(stream: BinaryIO) -> Iterator[BinaryIO]:
    """``stream`` itself when it can seek (a local file), else a spooled local copy (an object store's body):
    zip readers (npz) need to seek, and a temporary file keeps memory bounded."""
    if stream.seekable():
        yield stream
        return
    with tempfile.TemporaryFile() as spool:
        copy_stream(stream, spool)
        spool.seek(0)
        yield spool


def iter_chunks(store: ArtifactStore, key: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The bytes at ``key`` a chunk at a time (a streamed HTTP response); opens the object on first use."""
    with store.open(key) as stream:
        while block := stream.read(chunk):
            yield block


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(kind: str, tenant_id: str, digest: str, suffix: str) -> str:
    """Content-addressed key: identical bytes of one tenant share one file."""
    return f"{tenant_id}/{kind}/{digest[:2]}/{digest}{suffix}"


def digest_of(key: str) -> str | None:
    """The SHA-256 a content-addressed key names (its file name up to the suffix), None for other keys."""
    name = key.rsplit("/", 1)[-1]
    digest = name.split(".", 1)[0]
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) and key.count("/") >= 3:
        return digest
    return None
