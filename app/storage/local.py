"""The local-directory artifact store (the embedded default; a shared volume in production)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Re-exported: callers imported the interface and the key helpers from here before backends were pluggable.
from app.storage.base import (
    ArtifactInfo,
    ArtifactStore,
    StorageError,
    check_key,
    check_prefix,
    content_key,
    sha256_hex,
)

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "TEMP_PREFIX",
    "ArtifactStore",
    "LocalArtifactStore",
    "StorageError",
    "content_key",
    "ensure_private_dir",
    "sha256_hex",
]

# Artifacts are tenants' data: only the service's own user may list or read them.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Temporary files of writes in progress (put, staging_path): scan() reports them as temporary.
TEMP_PREFIX = ".tmp-"


def ensure_private_dir(path: Path, *, root: Path | None = None) -> Path:
    """Create ``path`` and its missing parents as 0700 (below ``root`` only, when given), and return it.

    ``Path.mkdir(parents=True, mode=...)`` applies the mode to the last directory only, and the umask to all
    of them; an existing directory is left as it is (an operator may have chosen its mode)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != root and current.parent != current:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # a concurrent writer created it
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is filtered through the umask
    return path


class LocalArtifactStore:
    """Files under a root directory. A write lands under a temporary name and is renamed into place,
    so a reader never sees a half-written artifact, even when the disk fills up mid-write. Directories are
    created 0700 and files 0600 (mkstemp's mode, kept by the rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise StorageError(f"artifact key escapes the store: {key!r}")
        return path

    def _parent_dir(self, path: Path) -> None:
        ensure_private_dir(self.root)
        ensure_private_dir(path.parent, root=self.root)

    def staging_path(self, prefix: str) -> Path:
        """A new, empty 0600 temporary file in the directory of key prefix ``prefix`` (e.g.
        ``<tenant>/datasets``): on the artifacts' file system, so ``put_file`` renames it into place without
        copying, and named like ``put``'s temporary files, so the orphan sweep removes it if the process dies
        before it is put or deleted. The caller deletes it when it is not put."""
        directory = self._path(f"{prefix}/x").parent
        try:
            self._parent_dir(directory / "x")
            fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        except OSError as exc:
            raise StorageError(f"cannot create a staging file: {exc.strerror or exc}") from exc
        os.close(fd)
        return Path(name)

    def put_file(self, key: str, source: Path) -> None:
        """Move a complete file (from ``staging_path``) to ``key``: fsync, then rename into place."""
        path = self._path(key)
        try:
            self._parent_dir(path)
            os.chmod(source, PRIVATE_FILE_MODE)
            with open(source, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(source, path)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {key!r}: {exc.strerror or exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self._parent_dir(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write artifact {key!r}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read artifact {key!r}: {exc.strerror or exc}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"cannot read artifact {key!r}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ArtifactInfo | None:
        self._path(key)  # refuses a key that leaves the root
        try:
            # lstat: the entry itself; a symbolic link under the root is never followed
            info = (self.root / key).lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat artifact {key!r}: {exc.strerror or exc}") from exc
        return ArtifactInfo(key, info.st_size, info.st_mtime, key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def scan(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        """Regular files below ``prefix``, depth first in name order; symbolic links are neither followed
        nor listed (nothing the store wrote is one), unreadable directories are skipped like os.walk does."""
        directory = self.root
        for part in check_prefix(prefix).split("/")[:-1]:
            directory = directory / part
            try:
                if not stat.S_ISDIR(directory.lstat().st_mode):
                    return
            except OSError:
                return
        yield from self._walk(directory, prefix)

    def _walk(self, directory: Path, prefix: str) -> Iterator[ArtifactInfo]:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            key = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/")
            elif entry.is_file(follow_symlinks=False):
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the listing
                yield ArtifactInfo(key, info.st_size, info.st_mtime, entry.name.startswith(TEMP_PREFIX))
