"""The append-only audit trail, hash-chained per tenant, written inside the caller's transaction, and anchored
by signed checkpoints kept in the database and in a file outside it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import session_scope
from app.core.problems import Conflict
from app.models import AuditCheckpoint, AuditEvent, Tenant
from app.models.base import utcnow
from app.services.compliance import signing

log = logging.getLogger(__name__)


def _digest(prev_hash: str | None, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(((prev_hash or "") + body).encode()).hexdigest()


def record(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    # Lock the tenant row so concurrent writers of one tenant chain their hashes in order. NO KEY UPDATE
    # (Postgres): every insert of a tenant's row holds KEY SHARE on the tenant (its foreign key), which a
    # plain FOR UPDATE waits for, so two writers that had both inserted would deadlock.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))
    # Sessions do not autoflush: a row recorded earlier in this transaction (a key rotation records the new
    # key, then the revocation of the old one) must be in the table before the head is read, or both rows
    # would chain to the same predecessor.
    if any(isinstance(obj, AuditEvent) for obj in session.new):
        session.flush()
    prev_hash = session.scalar(
        select(AuditEvent.hash)
        .where(AuditEvent.tenant_id == tenant_id)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    ts = utcnow()
    payload = {
        "ts": ts.isoformat(),
        "tenant_id": str(tenant_id),
        "actor": actor,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "details": details or {},
    }
    event = AuditEvent(
        ts=ts,
        tenant_id=tenant_id,
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=request_id,
        details=details or {},
        prev_hash=prev_hash,
        hash=_digest(prev_hash, payload),
    )
    session.add(event)
    return event


def _event_payload(event: AuditEvent) -> dict[str, Any]:
    return {
        "ts": event.ts.isoformat(),
        "tenant_id": str(event.tenant_id),
        "actor": event.actor,
        "action": event.action,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "details": event.details,
    }


@dataclass(frozen=True)
class BrokenLink:
    """The first row whose link does not hold: ``position`` counts the tenant's rows from 1 in id order."""

    id: int
    position: int
    reason: str  # "prev-hash-mismatch" (a row removed or inserted before it) | "hash-mismatch" (edited)


@dataclass(frozen=True)
class _Walk:
    events: int
    broken: BrokenLink | None
    heads: dict[int, tuple[int, str]]  # position -> (row id, stored hash), at the positions asked for


def _walk(
    events: Iterable[AuditEvent], positions: frozenset[int] = frozenset(), *, stop: bool = False
) -> _Walk:
    """Check every link; keep going after the first break (the length and the heads are still needed)."""
    prev: str | None = None
    broken: BrokenLink | None = None
    heads: dict[int, tuple[int, str]] = {}
    position = 0
    for position, event in enumerate(events, start=1):  # position is the length afterwards
        if broken is None:
            if event.prev_hash != prev:
                broken = BrokenLink(id=event.id, position=position, reason="prev-hash-mismatch")
            elif event.hash != _digest(prev, _event_payload(event)):
                broken = BrokenLink(id=event.id, position=position, reason="hash-mismatch")
            if broken is not None and stop:
                break
        if position in positions:
            heads[position] = (event.id, event.hash)
        prev = event.hash
    return _Walk(events=position, broken=broken, heads=heads)


def _chain(session: Session, tenant_id: uuid.UUID) -> Generator[AuditEvent]:
    # Streamed in batches (a chain grows without bound); closed even when the walk stops early.
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id)
    with session.scalars(query.execution_options(yield_per=CHAIN_BATCH)) as events:
        yield from events


def verify_chain(session: Session, tenant_id: uuid.UUID) -> bool:
    """Recompute the tenant's chain; False when any row was altered, inserted or removed in the middle.

    The links alone cannot see a rewrite that recomputes every later hash, nor a deleted tail: that takes
    the signed checkpoints of ``verify``.
    """
    with contextlib.closing(_chain(session, tenant_id)) as events:
        return _walk(events, stop=True).broken is None


# Anchors: signed checkpoints of the chain head ------------------------------------------------------------
# The chain makes an edit evident only to someone who cannot recompute it. Anyone who can write the database
# can edit a row and recompute every later hash, or delete the tail, and the links still hold. A checkpoint is
# the statement (tenant, number of rows, id and hash of the last row, time) signed with the audit anchor key
# (app/services/compliance/signing.py), which the database does not hold; it is stored twice: as an
# audit_checkpoints row, and as a line appended to a file outside the database (<home>/audit-anchors.jsonl,
# 0600), so that deleting the checkpoint rows together with the tail is still caught by the file. What a
# database-only attacker can still do unseen: rewrite the rows after the last checkpoint (``unsigned_tail``
# says how many).

CHECKPOINT_TYPE = "lethe.audit-checkpoint/v1"  # in every signed statement: it cannot pass for another one
ANCHOR_FILE_NAME = "audit-anchors.jsonl"
CHAIN_BATCH = 1000
SOURCE_DB = "db"
SOURCE_FILE = "anchor-file"


def anchor_file_path(settings: Settings) -> Path:
    configured = settings.audit_anchor_file
    return configured if configured is not None else settings.home.resolve() / ANCHOR_FILE_NAME


def checkpoint_statement(
    tenant_id: uuid.UUID, event_count: int, head_id: int, head_hash: str, at: datetime
) -> bytes:
    """The bytes a checkpoint signature covers (canonical JSON)."""
    return signing.canonical_json(
        {
            "type": CHECKPOINT_TYPE,
            "tenant_id": str(tenant_id),
            "event_count": event_count,
            "head_id": head_id,
            "head_hash": head_hash,
            "at": at.isoformat(),
        }
    )


def append_anchor(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line, durably, under an exclusive lock (the API and the worker may both write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(PermissionError):  # a file provisioned by another owner keeps its mode
            os.fchmod(fd, 0o600)
        size = os.fstat(fd).st_size
        # A line torn by a crash mid-write must not swallow this one: start on a fresh line.
        data = (
            (b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b"")
            + signing.canonical_json(record)
            + b"\n"
        )
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class SignedHead:
    """A checkpoint as read back from the database or the anchor file (not yet known to be genuine)."""

    source: str  # SOURCE_DB | SOURCE_FILE
    ref: str  # the checkpoint id (the file's line also names the row it was written with)
    event_count: int
    head_id: int
    head_hash: str
    at: datetime
    key_id: str
    signature: str

    def genuine(self, tenant_id: uuid.UUID, public: Ed25519PublicKey | None) -> bool:
        if public is None or self.key_id != signing.key_id(public):
            return False
        message = checkpoint_statement(tenant_id, self.event_count, self.head_id, self.head_hash, self.at)
        return signing.verify(public, message, self.signature)


def _head_from_row(row: AuditCheckpoint) -> SignedHead:
    return SignedHead(
        source=SOURCE_DB,
        ref=str(row.id),
        event_count=row.event_count,
        head_id=row.head_id,
        head_hash=row.head_hash,
        at=row.created_at,
        key_id=row.key_id,
        signature=row.signature,
    )


def read_anchors(path: Path, tenant_id: uuid.UUID) -> list[tuple[int, SignedHead]]:
    """The tenant's lines of the anchor file as (line number, head); unreadable lines are skipped (a line
    torn by a crash, or another format), since only a correctly signed line counts as evidence anyway."""
    if not path.exists():
        return []
    wanted = str(tenant_id)
    found: list[tuple[int, SignedHead]] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                if record.get("type") != CHECKPOINT_TYPE or record.get("tenant_id") != wanted:
                    continue
                head = SignedHead(
                    source=SOURCE_FILE,
                    ref=str(record["checkpoint_id"]),
                    event_count=int(record["event_count"]),
                    head_id=int(record["head_id"]),
                    head_hash=str(record["head_hash"]),
                    at=datetime.fromisoformat(record["at"]),
                    key_id=str(record["key_id"]),
                    signature=str(record["signature"]),
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            found.append((number, head))
    return found


@dataclass(frozen=True)
class ChainHead:
    event_count: int
    head_id: int
    head_hash: str


def chain_head(session: Session, tenant_id: uuid.UUID) -> ChainHead | None:
    # One statement for the count and the last id: a row committed in between cannot make them disagree.
    count, last_id = session.execute(
        select(func.count(), func.max(AuditEvent.id)).where(AuditEvent.tenant_id == tenant_id)
    ).one()
    if not count:
        return None
    head_hash = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == last_id))
    assert head_hash is not None
    return ChainHead(event_count=int(count), head_id=int(last_id), head_hash=head_hash)


class ChainInconsistent(Conflict):
    code = "audit-chain-inconsistent"


def take_checkpoint(
    session: Session,
    tenant_id: uuid.UUID,
    settings: Settings,
    *,
    only_if_changed: bool = True,
    checkpoint_id: uuid.UUID | None = None,
    key: signing.SigningKey | None = None,
) -> AuditCheckpoint | None:
    """Sign the tenant's chain head, append it to the anchor file, add the row (the caller commits).

    None when the chain is empty, or unchanged since the last checkpoint and ``only_if_changed``;
    ChainInconsistent (409) when the chain no longer extends the last checkpoint. Rows the caller added must
    be flushed first to be covered. The file line is written before the row commits: a
    crash in between leaves a signed line without its row (still valid evidence), never a row without its
    line, so a database checkpoint newer than the file's can only mean the file was tampered with or lost.
    """
    # The same lock record() takes: no row of this tenant is appended while the head is read and signed.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))
    head = chain_head(session, tenant_id)
    if head is None:
        return None
    last = session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tenant_id == tenant_id)
        .order_by(AuditCheckpoint.event_count.desc(), AuditCheckpoint.created_at.desc())
        .limit(1)
    )
    if last is not None:
        # Never sign over a chain that no longer extends the last signed head: that would launder a rewrite
        # or a truncation into a genuine-looking checkpoint. (The older signatures would still expose it;
        # this keeps the newest one honest too.)
        at_head = session.scalar(
            select(AuditEvent.hash).where(AuditEvent.id == last.head_id, AuditEvent.tenant_id == tenant_id)
        )
        position = session.scalar(
            select(func.count()).where(AuditEvent.tenant_id == tenant_id, AuditEvent.id <= last.head_id)
        )
        if at_head != last.head_hash or position != last.event_count:
            raise ChainInconsistent(
                f"the audit chain no longer extends its checkpoint {last.id} ({last.event_count} rows): "
                "run `lethe audit verify`; no checkpoint was signed"
            )
        if only_if_changed and (last.event_count, last.head_hash) == (head.event_count, head.head_hash):
            return None
    key = key or signing.anchor_key(settings)
    at = utcnow()
    row = AuditCheckpoint(
        id=checkpoint_id or uuid.uuid4(),
        tenant_id=tenant_id,
        created_at=at,
        event_count=head.event_count,
        head_id=head.head_id,
        head_hash=head.head_hash,
        key_id=key.key_id,
        signature=key.sign(
            checkpoint_statement(tenant_id, head.event_count, head.head_id, head.head_hash, at)
        ),
    )
    append_anchor(
        anchor_file_path(settings),
        {
            "type": CHECKPOINT_TYPE,
            "checkpoint_id": str(row.id),
            "tenant_id": str(tenant_id),
            "event_count": row.event_count,
            "head_id": row.head_id,
            "head_hash": row.head_hash,
            "at": at.isoformat(),
            "key_id": row.key_id,
            "signature": row.signature,
        },
    )
    session.add(row)
    session.flush()
    return row


def checkpoint_all(sessions: sessionmaker[Session], settings: Settings) -> int:
    """A checkpoint of every tenant whose chain changed since its last one (the maintenance beat); one
    short transaction per tenant, so a busy tenant's lock never holds up the others. Returns how many."""
    with sessions() as session:
        tenant_ids = list(session.scalars(select(AuditEvent.tenant_id).distinct()))
    key = signing.anchor_key(settings)
    taken = 0
    for tenant_id in tenant_ids:
        try:
            with session_scope(sessions) as session:
                if take_checkpoint(session, tenant_id, settings, key=key) is not None:
                    taken += 1
        except ChainInconsistent:
            # Every run logs it again until someone looks: a tampered chain must not go quiet.
            log.error("audit: tenant %s's chain does not extend its last checkpoint; not signed", tenant_id)
    return taken


@dataclass(frozen=True)
class HeadMismatch:
    """A genuine checkpoint whose signed head is not the chain's row at that position: rewritten history."""

    checkpoint: SignedHead
    found_id: int
    found_hash: str


@dataclass(frozen=True)
class Truncation:
    """A genuine checkpoint that counted more rows than the chain has now: the tail was deleted."""

    checkpoint: SignedHead
    events: int


@dataclass
class ChainVerification:
    tenant_id: uuid.UUID
    events: int
    head_hash: str | None
    checkpoints: int  # database checkpoints examined
    anchors: int  # anchor-file lines of the tenant
    first_broken_link: BrokenLink | None = None
    head_mismatch: HeadMismatch | None = None  # the earliest one
    truncation: Truncation | None = None  # the largest signed count above the chain's length
    invalid_signatures: list[str] = field(default_factory=list)  # "db:<id>" | "anchor-file:<line>"
    last_checkpoint: SignedHead | None = None  # the newest genuine checkpoint the chain still matches
    unsigned_tail: int = 0  # rows after last_checkpoint: no signature covers them yet
    anchor_file_behind: bool = False  # the database holds a genuine checkpoint the file lacks

    @property
    def problems(self) -> list[str]:
        found = []
        if self.first_broken_link is not None:
            found.append("broken-link")
        if self.head_mismatch is not None:
            found.append("checkpoint-mismatch")
        if self.truncation is not None:
            found.append("truncated")
        if self.invalid_signatures:
            found.append("invalid-signature")
        if self.anchor_file_behind:
            found.append("anchor-file-behind")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def _public_anchor_key(settings: Settings) -> Ed25519PublicKey | None:
    # Verification never creates the key: without it nothing can be genuine, and every checkpoint says so.
    path = signing.anchor_key_path(settings)
    return signing.load_public_key(path.read_bytes()) if path.exists() else None


def verify(session: Session, tenant_id: uuid.UUID, settings: Settings) -> ChainVerification:
    """Check the tenant's chain against its links, its signed checkpoints and the anchor file."""
    public = _public_anchor_key(settings)
    result = ChainVerification(tenant_id=tenant_id, events=0, head_hash=None, checkpoints=0, anchors=0)
    genuine: list[SignedHead] = []
    rows = session.scalars(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tenant_id == tenant_id)
        .order_by(AuditCheckpoint.event_count, AuditCheckpoint.created_at)
    )
    for row in rows:
        result.checkpoints += 1
        head = _head_from_row(row)
        if head.genuine(tenant_id, public):
            genuine.append(head)
        else:
            result.invalid_signatures.append(f"{SOURCE_DB}:{head.ref}")
    # Every line of the file, not only its newest: a line signed after a rewrite (had one been signed) vouches
    # for the rewritten chain, while the lines before it still hold the original heads.
    anchors = read_anchors(anchor_file_path(settings), tenant_id)
    result.anchors = len(anchors)
    for number, head in anchors:
        if head.genuine(tenant_id, public):
            genuine.append(head)
        else:
            result.invalid_signatures.append(f"{SOURCE_FILE}:{number}")
    db_newest = max((h.event_count for h in genuine if h.source == SOURCE_DB), default=0)
    file_newest = max((h.event_count for h in genuine if h.source == SOURCE_FILE), default=0)
    result.anchor_file_behind = db_newest > file_newest

    with contextlib.closing(_chain(session, tenant_id)) as events:
        walk = _walk(events, frozenset(h.event_count for h in genuine))
    result.events, result.first_broken_link = walk.events, walk.broken
    # Database first among equal counts: the file is reported when it is the only evidence left.
    for head in sorted(genuine, key=lambda h: (h.event_count, h.source != SOURCE_DB)):
        if head.event_count > walk.events:
            if result.truncation is None or head.event_count > result.truncation.checkpoint.event_count:
                result.truncation = Truncation(checkpoint=head, events=walk.events)
            continue
        found_id, found_hash = walk.heads[head.event_count]
        if found_hash != head.head_hash or found_id != head.head_id:
            if result.head_mismatch is None:
                result.head_mismatch = HeadMismatch(checkpoint=head, found_id=found_id, found_hash=found_hash)
        elif result.last_checkpoint is None or head.event_count > result.last_checkpoint.event_count:
            result.last_checkpoint = head
    if walk.events:
        result.head_hash = session.scalar(
            select(AuditEvent.hash)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.id.desc())
            .limit(1)
        )
    signed = result.last_checkpoint.event_count if result.last_checkpoint is not None else 0
    result.unsigned_tail = walk.events - signed
    return result
