from __future__ import annotations

from fastapi import UploadFile

from app.core.problems import PayloadTooLarge

CHUNK_BYTES = 1024 * 1024


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """Read an upload, refusing anything beyond ``max_bytes`` without reading it all."""
    chunks = []
    total = 0
    while chunk := await file.read(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"the upload exceeds the limit of {max_bytes} bytes", code="upload-too-large"
            )
        chunks.append(chunk)
    return b"".join(chunks)
