"""Files under the operator's data root: resolving a tenant's relative path safely, and reading files while
recording a content digest of every byte read.

Digest: the SHA-256 of each file's bytes, computed while the loader reads them (no second pass over the
data), then one SHA-256 over the sorted ``name size sha256`` lines of the files used. Hashing is a small
cost next to decoding (CIFAR-10's 178 MB: well under a second per pass), so the digest is of the content,
not of sizes and modification times; the worker recomputes it at every load and refuses a dataset whose
files changed since registration, so a result always refers to the registered bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from workers.engine.errors import InvalidInputError

# Generous ceilings that stop a corrupt or hostile header from asking for absurd allocations.
MAX_GZIP_RATIO = 64


class DataRootPathError(InvalidInputError):
    """The tenant's path is not a usable location under the data root (absolute, traversal, outside)."""


class DatasetFilesError(InvalidInputError):
    """The files at the path are missing or not in the format's exact on-disk layout."""


def resolve_under(root: Path, relative: str) -> Path:
    """``relative`` (a POSIX path) under ``root``, refusing absolute paths, ``..`` components and anything
    whose real path (symbolic links followed) leaves the root's real path; the directory must exist."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise DataRootPathError("path must be a non-empty relative POSIX path (no NUL, no backslash)")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("~"):
        raise DataRootPathError("path must be relative to the data root, not absolute")
    if any(part == ".." for part in pure.parts):
        raise DataRootPathError("path must not contain '..'")
    try:
        real_root = root.resolve(strict=True)
    except OSError:
        raise DataRootPathError("the data root is not available on this machine") from None
    target = real_root.joinpath(*pure.parts)
    try:
        real = target.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        raise DatasetFilesError(f"{relative!r} does not exist under the data root") from None
    if not real.is_relative_to(real_root):
        raise DataRootPathError(f"{relative!r} leads outside the data root (a symbolic link)")
    if not real.is_dir():
        raise DatasetFilesError(f"{relative!r} is not a directory")
    return real


@dataclass
class FileReader:
    """Reads files of one dataset directory (each checked to stay inside ``root``), hashing each one."""

    root: Path  # the data root's real path
    directory: Path  # the dataset's real directory (from resolve_under)
    digests: dict[str, tuple[int, str]] = field(default_factory=dict)  # relative name → (size, sha256)

    def path(self, name: str) -> Path:
        """A file in the directory, ``name`` relative to it (POSIX), or DatasetFilesError."""
        candidate = self.directory.joinpath(*PurePosixPath(name).parts)
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DatasetFilesError(f"missing file {name!r}") from None
        if not real.is_relative_to(self.root):
            raise DataRootPathError(f"{name!r} leads outside the data root (a symbolic link)")
        if not stat.S_ISREG(real.stat().st_mode):
            raise DatasetFilesError(f"{name!r} is not a regular file")
        return real

    def exists(self, name: str) -> bool:
        try:
            self.path(name)
        except DatasetFilesError:
            return False
        return True

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        path = self.path(name)
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise DatasetFilesError(f"{name!r} is {size} bytes, more than the {max_bytes} this format allows")
        with open(path, "rb") as handle:
            data = handle.read()
        self.digests[name] = (len(data), hashlib.sha256(data).hexdigest())
        return data

    def read_maybe_gzip(self, name: str, expected_bytes: int | None = None) -> bytes:
        """``name`` or ``name.gz`` (decompressed), whichever exists."""
        if self.exists(name):
            return self.read(name)
        packed = self.read(f"{name}.gz")
        limit = expected_bytes if expected_bytes is not None else len(packed) * MAX_GZIP_RATIO
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(packed)) as handle:
                data = handle.read(limit + 1)
        except (OSError, EOFError) as error:
            raise DatasetFilesError(f"{name}.gz is not a readable gzip file: {error}") from None
        if len(data) > limit:
            raise DatasetFilesError(f"{name}.gz decompresses to more than {limit} bytes")
        return data

    def digest(self) -> str:
        lines = "".join(f"{name} {size} {sha}\n" for name, (size, sha) in sorted(self.digests.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def manifest(self) -> list[dict[str, object]]:
        return [{"name": n, "bytes": s, "sha256": h} for n, (s, h) in sorted(self.digests.items())]

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.digests.values())


def walk_files(reader: FileReader, subdirectory: str) -> list[str]:
    """Regular files below ``subdirectory`` (relative names, sorted), not following directory links that
    leave the data root; hidden entries (``.``-prefixed) skipped, as an ImageFolder listing would."""
    base = reader.directory / subdirectory if subdirectory else reader.directory
    names: list[str] = []
    for current, directories, files in os.walk(base, followlinks=False):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                names.append(Path(current, name).relative_to(reader.directory).as_posix())
    return names


__all__ = [
    "DataRootPathError",
    "DatasetFilesError",
    "FileReader",
    "resolve_under",
    "walk_files",
]
