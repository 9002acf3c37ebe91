"""The S3-compatible artifact store (``LETHE_ARTIFACT_BACKEND=s3``): workers on many machines, no shared disk.

Client: boto3/botocore. It speaks every S3 dialect in use (AWS, MinIO, Ceph RGW, R2, GCS interop), its
``standard`` retry mode retries throttling, 5xx answers, timeouts and dropped connections with capped
exponential backoff and jitter, and it is pure Python wheels (nothing to compile on a worker image).

* **Keys**: the service's content-addressed keys (``<tenant>/<kind>/<aa>/<sha256><suffix>``) below an
  optional ``LETHE_S3_PREFIX`` in ``LETHE_S3_BUCKET``.
* **Atomic visibility**: a ``put`` (or a staged file of one part) is one PutObject, a larger staged file one
  multipart upload to the final key; S3 makes an object visible only when its PutObject or
  CompleteMultipartUpload returns, so a reader sees the old object or the whole new one, never parts. A
  failed upload is aborted; one whose process died stays an *incomplete multipart upload*, which ``scan``
  lists as a temporary entry (``.tmp-…`` beside the key it was for; its time is that of its newest part,
  else its start) and ``delete`` aborts: the orphan sweep removes it after its grace period, like a local
  temporary file.
* **Streaming**: staged files go up one part (``LETHE_S3_PART_BYTES``) at a time, and ``open`` hands out the
  response body as a stream that resumes with a Range request (same ETag) when the connection drops.
* **Times**: ``modified`` is the server's LastModified. Where it has only whole seconds (HEAD answers), the
  end of that second is reported, so a rewrite in the same second as a deletion is never taken as older.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import heapq
import io
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.storage.base import ArtifactInfo, StorageError, check_key, check_prefix
from app.storage.local import TEMP_PREFIX, ensure_private_dir

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's lower bound for every part but the last
MAX_PARTS = 10_000
READ_CHUNK = 1024 * 1024
MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
# Reconnects of one streamed read after a dropped connection (each from where it stopped).
READ_RESUMES = 5


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in MISSING


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def _seconds(moment: datetime, *, whole_seconds: bool) -> float:
    stamp = moment.timestamp()
    return stamp + 0.999 if whole_seconds and moment.microsecond == 0 else stamp


class _ObjectReader(io.RawIOBase):
    """The body of one object version (pinned by ETag); a dropped connection resumes with a Range request."""

    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        super().__init__()
        self._store, self._key = store, key
        self._position = 0
        self._etag: str | None = None
        self._body: Any = self._request()

    def _request(self) -> Any:
        args: dict[str, Any] = {"Bucket": self._store.bucket, "Key": self._store.object_key(self._key)}
        if self._position:
            args["Range"] = f"bytes={self._position}-"
        if self._etag is not None:
            args["IfMatch"] = self._etag  # the same bytes as the first request, or an error
        try:
            response = self._store.client.get_object(**args)
        except ClientError as exc:
            raise StorageError(f"cannot read artifact {self._key!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read artifact {self._key!r}: {exc}") from exc
        self._etag = response.get("ETag")
        return response["Body"]

    def readable(self) -> bool:
        return True

    def read_whole(self) -> bytes:
        """The rest of the body in one piece (botocore checks it against the announced length)."""
        data: bytes = self._body.read()
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        for attempt in range(READ_RESUMES + 1):
            try:
                data = self._body.read(len(view))
            except (BotoCoreError, OSError) as exc:
                if attempt == READ_RESUMES:
                    raise StorageError(f"cannot read artifact {self._key!r}: {exc}") from exc
                time.sleep(min(0.1 * 2**attempt, 5.0))
                self._body.close()
                self._body = self._request()
                continue
            view[: len(data)] = data
            self._position += len(data)
            return len(data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        body = getattr(self, "_body", None)  # absent when the first request failed
        if not self.closed and body is not None:
            body.close()
        super().close()


class S3ArtifactStore:
    """Objects in one bucket (below ``prefix``), through an S3 API endpoint."""

    def __init__(
        self,
        *,
        bucket: str,
        staging_dir: Path,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "path",
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        part_bytes: int = 16 * 1024 * 1024,
        max_connections: int = 10,
    ) -> None:
        if prefix:
            check_prefix(prefix)
        self.bucket, self.prefix, self.staging_dir = bucket, prefix, staging_dir
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": addressing_style},
            max_pool_connections=max_connections,
            # Checksums only where the API requires them: MinIO, Ceph and older gateways refuse the
            # CRC trailers botocore adds by default; content addressing already names every object's bytes.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    # -- keys ------------------------------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @staticmethod
    def _temporary_key(key: str, upload_id: str) -> str:
        """The name an incomplete multipart upload of ``key`` is listed under (beside the key)."""
        head, _, name = key.rpartition("/")
        temp = f"{TEMP_PREFIX}{_b64(name)}.{_b64(upload_id)}"
        return f"{head}/{temp}" if head else temp

    @staticmethod
    def _upload_of(key: str) -> tuple[str, str] | None:
        """(final key, upload id) of a temporary key, None for any other key."""
        head, _, name = key.rpartition("/")
        if not name.startswith(TEMP_PREFIX):
            return None
        try:
            encoded_name, encoded_upload = name[len(TEMP_PREFIX) :].split(".")
            final = _unb64(encoded_name)
            upload_id = _unb64(encoded_upload)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        return (f"{head}/{final}" if head else final), upload_id

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        return StorageError(f"cannot {action} artifact {key!r}: {exc}")

    # -- writes ----------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("write", key, exc) from exc

    def staging_path(self, prefix: str) -> Path:
        """A local 0600 file in the staging directory (LETHE_S3_STAGING_DIR): it is uploaded by ``put_file``;
        a process that dies first leaves it on its own machine's disk, removed by ``purge_staging``."""
        check_key(prefix)
        try:
            ensure_private_dir(self.staging_dir)
            fd, name = tempfile.mkstemp(dir=self.staging_dir, prefix=TEMP_PREFIX)
        except OSError as exc:
            raise StorageError(f"cannot create a staging file: {exc.strerror or exc}") from exc
        os.close(fd)
        return Path(name)

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` a part at a time (one PutObject when it fits in one part), then delete it."""
        object_key = self.object_key(key)
        try:
            size = source.stat().st_size
            # Parts grow for very large files: S3 allows at most 10,000 per upload.
            part_bytes = max(self.part_bytes, -(-size // MAX_PARTS))
            with open(source, "rb") as handle:
                if size <= part_bytes:
                    self.client.put_object(Bucket=self.bucket, Key=object_key, Body=handle)
                else:
                    self._multipart(object_key, handle, part_bytes)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {key!r}: {exc.strerror or exc}") from exc
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("write", key, exc) from exc
        source.unlink(missing_ok=True)

    def _multipart(self, object_key: str, handle: BinaryIO, part_bytes: int) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=object_key)["UploadId"]
        try:
            parts = []
            number = 1
            while chunk := handle.read(part_bytes):
                answer = self.client.upload_part(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                number += 1
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # If the abort fails too, scan lists the upload as a temporary entry: the orphan sweep aborts it.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            raise

    # -- reads -----------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The whole object in one read (the body's bytes, no second copy); a read cut off is retried whole.
        Large files go through ``open`` instead."""
        for attempt in range(READ_RESUMES + 1):
            reader = _ObjectReader(self, key)
            try:
                return reader.read_whole()
            except (BotoCoreError, OSError) as exc:
                if attempt == READ_RESUMES:
                    raise StorageError(f"cannot read artifact {key!r}: {exc}") from exc
                time.sleep(min(0.1 * 2**attempt, 5.0))
            finally:
                reader.close()
        raise AssertionError("unreachable")

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_ObjectReader(self, key), buffer_size=READ_CHUNK)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        return self._upload_of(key) is None and self.stat(key) is not None

    def stat(self, key: str) -> ArtifactInfo | None:
        upload = self._upload_of(check_key(key))
        if upload is not None:
            return self._stat_upload(key, *upload)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise self._fail("stat", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("stat", key, exc) from exc
        modified = _seconds(head["LastModified"], whole_seconds=True)
        return ArtifactInfo(key, int(head["ContentLength"]), modified)

    def _stat_upload(self, key: str, final: str, upload_id: str) -> ArtifactInfo | None:
        for upload in self._uploads(self.object_key(final)):
            if upload["Key"] == self.object_key(final) and upload["UploadId"] == upload_id:
                return self._upload_info(upload)
        return None

    def _upload_info(self, upload: dict[str, Any]) -> ArtifactInfo | None:
        """An incomplete upload as a temporary entry: its parts' bytes, and the time of its latest activity
        (the newest part, else its start), so an upload still sending parts is never taken for abandoned.
        None when it ended meanwhile."""
        size, latest = 0, upload["Initiated"].timestamp()
        try:
            paginator = self.client.get_paginator("list_parts")
            pages = paginator.paginate(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in pages:
                for part in page.get("Parts", []):
                    size += int(part["Size"])
                    latest = max(latest, _seconds(part["LastModified"], whole_seconds=True))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        key = self._temporary_key(upload["Key"][len(self.prefix) :], upload["UploadId"])
        return ArtifactInfo(key, size, latest, temporary=True)

    def delete(self, key: str) -> None:
        upload = self._upload_of(check_key(key))
        try:
            if upload is not None:
                final, upload_id = upload
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.object_key(final), UploadId=upload_id
                )
            else:
                self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if not _missing(exc):
                raise self._fail("delete", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("delete", key, exc) from exc

    # -- listing ---------------------------------------------------------------------------------------

    def _uploads(self, object_prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=object_prefix):
            yield from page.get("Uploads", [])

    def _objects(self, object_prefix: str) -> Iterator[ArtifactInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=object_prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                modified = _seconds(item["LastModified"], whole_seconds=False)
                yield ArtifactInfo(key, int(item["Size"]), modified)

    def scan(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        """Objects in key order, merged with the incomplete multipart uploads (temporary entries)."""
        object_prefix = self.prefix + check_prefix(prefix)
        try:
            # Incomplete uploads are rare (a crashed writer's): one list_parts request each is cheap.
            found = (self._upload_info(upload) for upload in self._uploads(object_prefix))
            pending = sorted((info for info in found if info is not None), key=lambda info: info.key)
            yield from heapq.merge(self._objects(object_prefix), pending, key=lambda info: info.key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list artifacts under {prefix!r}: {exc}") from exc

    # -- local staging -----------------------------------------------------------------------------------

    def purge_staging(self, older_than_seconds: float) -> int:
        """Delete this machine's staging files older than the given age (left by a process that died before
        its upload); the number deleted."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            entries = list(os.scandir(self.staging_dir))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.name.startswith(TEMP_PREFIX) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed
