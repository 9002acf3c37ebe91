"""API keys ``lk_<key_id>_<secret>``: tenant-scoped, scoped, stored as an HMAC of the secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

KEY_PREFIX = "lk"
KEY_ID_BYTES = 8
SECRET_BYTES = 24


class Scope(StrEnum):
    read = "read"
    submit = "submit"
    admin = "admin"


# What each scope implies: admin can do everything, submit can also read.
SCOPE_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.read: frozenset({Scope.read}),
    Scope.submit: frozenset({Scope.read, Scope.submit}),
    Scope.admin: frozenset({Scope.read, Scope.submit, Scope.admin}),
}


def effective_scopes(granted: list[str]) -> frozenset[Scope]:
    result: set[Scope] = set()
    for name in granted:
        result |= SCOPE_IMPLIES[Scope(name)]
    return frozenset(result)


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    key_id: str
    scopes: frozenset[Scope]

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"{KEY_PREFIX}_{self.key_id}_{self.secret}"


def generate_key() -> NewKey:
    return NewKey(key_id=secrets.token_hex(KEY_ID_BYTES), secret=secrets.token_urlsafe(SECRET_BYTES))


def hash_secret(secret: str, pepper: str) -> str:
    # The secret has 192 bits of entropy, so a fast keyed hash is enough (no password KDF needed).
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """Split ``lk_<key_id>_<secret>``; the secret may itself contain underscores."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def verify_secret(secret: str, stored_hash: str, pepper: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, pepper), stored_hash)


BEARER_PREFIX = "bearer "


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header (scheme case-insensitive), else None."""
    if authorization is None or not authorization.lower().startswith(BEARER_PREFIX):
        return None
    return authorization[len(BEARER_PREFIX) :].strip() or None


def request_token(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key a request presents: ``X-API-Key`` first, else the bearer token."""
    return x_api_key or bearer_token(authorization)


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """Whether the bearer token equals ``expected``, compared in constant time (a shared scrape token)."""
    token = bearer_token(authorization)
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


# How long an API process trusts a key it has verified without asking the database again. Keys are revoked
# (revoked_at) in the database, possibly by another process, so this is the bound on how long a revoked key
# keeps working: at most KEY_CACHE_TTL_SECONDS after the revocation commits, in every API process. Expiry
# (expires_at) is exact: an entry never outlives its key.
KEY_CACHE_TTL_SECONDS = 1.0
KEY_CACHE_MAX_ENTRIES = 10_000

# last_used_at is written at most once per this many seconds per key: a busy key would otherwise turn every
# authenticated read (one lookup per key and second per process, past the cache) into a write.
LAST_USED_RESOLUTION_SECONDS = 60.0


def last_used_due(last_used_at: datetime | None, now: datetime) -> bool:
    """Is the stored last use stale enough to be written again?"""
    return last_used_at is None or (now - last_used_at).total_seconds() >= LAST_USED_RESOLUTION_SECONDS


class KeyCache:
    """Verified tokens → their principal, for ``ttl`` seconds (one per API process).

    Skips the key lookup (a DB round trip and an HMAC) on all but one request per key and second. Only
    successful authentications are cached, so a new key works at once. Entries are keyed by a SHA-256 of the
    token, so no secret stays in memory. Used from the event loop thread only; no locking needed.
    """

    def __init__(
        self,
        ttl: float = KEY_CACHE_TTL_SECONDS,
        max_entries: int = KEY_CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[bytes, tuple[Principal, float]] = {}

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        principal, valid_until = entry
        if self.clock() >= valid_until:
            self._entries.pop(key, None)
            return None
        return principal

    def put(self, token: str, principal: Principal, expires_in: float | None = None) -> None:
        """``expires_in``: seconds until the key itself expires, if it does."""
        lifetime = self.ttl if expires_in is None else min(self.ttl, expires_in)
        if lifetime <= 0:
            return
        now = self.clock()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[self._key(token)] = (principal, now + lifetime)

    def invalidate(self, key_id: str) -> None:
        """Forget a key at once in this process (a revocation made here); other processes wait out the TTL."""
        self._entries = {k: v for k, v in self._entries.items() if v[0].key_id != key_id}

    def clear(self) -> None:
        self._entries.clear()
