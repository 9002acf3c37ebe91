"""API keys ``lk_<key_id>_<secret>``: tenant-scoped, scoped, stored as an HMAC of the secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
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
