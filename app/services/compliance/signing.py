"""Report signing keys (Ed25519) and the canonical JSON encoding that is signed.

Key management
--------------
* The service signs with one Ed25519 private key, a PKCS#8 PEM file (mode 0600) at
  ``$LETHE_REPORT_SIGNING_KEY_FILE``, by default ``<LETHE_HOME>/report-signing.key``. It is created on first
  use (API start, or the first report the reaper issues), atomically: concurrent first users end up with the
  same key. In production put it on a volume shared by the API and the maintenance worker (or provision it
  yourself: ``openssl genpkey -algorithm ed25519 -out report-signing.key``).
* The public key is served at ``GET /v1/report-signing-key`` and printed by ``lethe report-public-key``;
  its ``key_id`` (first 16 hex digits of the SHA-256 of the raw 32-byte public key) is written in every
  report. Verifiers must get the public key from a trusted channel, never from the report itself.
* Rotation: move the old file aside (keep its public key to verify old reports) and restart; a new key is
  created. Reports name the key that signed them.

Canonical JSON: UTF-8, keys sorted, no insignificant whitespace (``separators=(",", ":")``), no NaN or
infinity, non-ASCII characters kept as is. A report file is exactly these bytes; the signature covers the
canonical encoding of the document without its ``signature`` member.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.core.config import Settings

ALGORITHM = "ed25519"
KEY_FILE_ENV = "LETHE_REPORT_SIGNING_KEY_FILE"
KEY_FILE_NAME = "report-signing.key"


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_path(settings: Settings) -> Path:
    configured = os.environ.get(KEY_FILE_ENV)
    return Path(configured) if configured else settings.home.resolve() / KEY_FILE_NAME


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def public_info(self) -> dict[str, str]:
        return {
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "public_key": base64.b64encode(_raw_public(self.public)).decode(),
            "pem": public_pem(self.public),
        }

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode()


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _load_private(path: Path) -> SigningKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return SigningKey(private)


def load_or_create(path: Path) -> SigningKey:
    """The key at ``path``; created (0600) when missing. A concurrent creator's key wins consistently:
    the new key is written to a temporary file and hard-linked into place, which fails if one exists."""
    if path.exists():
        return _load_private(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # a concurrent first user won: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _load_private(path)


def signing_key(settings: Settings) -> SigningKey:
    return load_or_create(key_path(settings))


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key from a PEM (SubjectPublicKeyInfo), a private-key PEM, or base64 of the raw 32 bytes."""
    text = data.strip()
    if text.startswith(b"-----BEGIN PRIVATE KEY"):
        private = serialization.load_pem_private_key(text, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return private.public_key()
    if text.startswith(b"-----BEGIN"):
        public = serialization.load_pem_public_key(text)
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return public
    if text.startswith(b"{"):  # the JSON of GET /v1/report-signing-key
        text = json.loads(text)["public_key"].encode()
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def verify(public: Ed25519PublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


# Audit anchors -------------------------------------------------------------------------------------------
# A key of its own rather than the report key: the report key's public half is handed to third parties to
# trust compliance reports, the anchor key vouches for the internal audit chain. Separate keys keep the two
# statements apart (neither signature can stand in for the other; each key can be rotated or revoked for
# its own reasons without invalidating the other's evidence). Both are stored the same way: a PKCS#8 PEM,
# 0600, created atomically on first use, never in the database.
ANCHOR_KEY_FILE_NAME = "audit-anchor.key"


def anchor_key_path(settings: Settings) -> Path:
    configured = settings.audit_anchor_key_file
    return configured if configured is not None else settings.home.resolve() / ANCHOR_KEY_FILE_NAME


def anchor_key(settings: Settings) -> SigningKey:
    return load_or_create(anchor_key_path(settings))
