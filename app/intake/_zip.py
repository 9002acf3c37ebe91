"""Zip parsing shared by format sniffing and .npz validation (central directory only, no decompression)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

ZIP_LOCAL_FILE_MAGIC = b"PK\x03\x04"
# An archive with no members starts directly with the end-of-central-directory record.
ZIP_EMPTY_ARCHIVE_MAGIC = b"PK\x05\x06"

# What ``zipfile`` raises on crafted or truncated archives (found by fuzzing real .npz files):
# seeks to negative offsets (ValueError), undecodable UTF-8 names (UnicodeDecodeError, a ValueError),
# unsupported versions/compressions (NotImplementedError), encrypted members (RuntimeError),
# corrupt deflate streams (zlib.error, OSError), truncated structures (struct.error, EOFError).
ZIP_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
    EOFError,
    zlib.error,
    struct.error,
)


def starts_like_zip(data: bytes) -> bool:
    return data.startswith(ZIP_LOCAL_FILE_MAGIC) or data.startswith(ZIP_EMPTY_ARCHIVE_MAGIC)


def read_zip_directory(data: bytes) -> list[zipfile.ZipInfo]:
    """The archive's member list from the central directory; raises one of ``ZIP_PARSE_ERRORS``.

    Only the directory is read: no member is decompressed, so this is safe on zip bombs.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.infolist()
