"""Signed checkpoints anchor the audit chain (issue 17): a database-only rewrite or truncation is detected.

Each test writes its own tenant's chain, checkpoints it (database row + a line of the anchor file, signed by
the anchor key, which the database does not hold), tampers with the database the way someone with write
access to it would, and checks what ``audit.verify`` reports. ``verify_chain`` (the links alone) is shown
to miss the rewrites that the checkpoints catch.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import AuditCheckpoint, AuditEvent
from app.models.base import utcnow
from app.services.compliance import audit, signing
from app.services.ops.keys import get_or_create_tenant

Chain = Callable[[int], uuid.UUID]


@pytest.fixture
def chain(sessions: sessionmaker[Session]) -> Chain:
    """A new tenant with ``n`` audit rows."""

    def make(n: int) -> uuid.UUID:
        with sessions() as session:
            tenant = get_or_create_tenant(session, f"anchors-{uuid.uuid4().hex[:10]}")
            session.commit()
            tenant_id = tenant.id
        append(sessions, tenant_id, n)
        return tenant_id

    return make


def append(sessions: sessionmaker[Session], tenant_id: uuid.UUID, n: int) -> None:
    for i in range(n):
        with sessions() as session:
            audit.record(
                session,
                tenant_id=tenant_id,
                actor="test",
                action="thing.do",
                resource_type="thing",
                resource_id=str(i),
                details={"i": i},
            )
            session.commit()


def checkpoint(sessions: sessionmaker[Session], tenant_id: uuid.UUID, settings: Settings) -> AuditCheckpoint:
    with sessions() as session:
        row = audit.take_checkpoint(session, tenant_id, settings)
        assert row is not None
        session.commit()
        return row


def verify(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, settings: Settings
) -> audit.ChainVerification:
    with sessions() as session:
        return audit.verify(session, tenant_id, settings)


def events(session: Session, tenant_id: uuid.UUID) -> list[AuditEvent]:
    return list(
        session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id))
    )


def rewrite_from(session: Session, rows: list[AuditEvent], start: int) -> None:
    """Recompute every hash from ``rows[start]`` on, as an attacker who edited that row would."""
    prev = rows[start - 1].hash if start else None
    for row in rows[start:]:
        row.prev_hash = prev
        row.hash = audit._digest(prev, audit._event_payload(row))
        prev = row.hash


def test_an_untouched_chain_is_ok_and_the_unsigned_tail_is_counted(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(5)
    before = verify(sessions, tenant_id, migrated)
    assert before.ok and before.events == 5 and before.unsigned_tail == 5 and before.last_checkpoint is None
    taken = checkpoint(sessions, tenant_id, migrated)
    append(sessions, tenant_id, 3)
    result = verify(sessions, tenant_id, migrated)
    assert result.ok, result.problems
    assert result.events == 8 and result.unsigned_tail == 3
    assert result.last_checkpoint is not None and result.last_checkpoint.event_count == 5
    assert result.last_checkpoint.head_hash == taken.head_hash
    assert result.checkpoints == 1 and result.anchors == 1


def test_an_edited_row_with_every_later_hash_recomputed_is_detected(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(6)
    first = checkpoint(sessions, tenant_id, migrated)  # signs rows 1..6
    append(sessions, tenant_id, 4)
    checkpoint(sessions, tenant_id, migrated)  # signs rows 1..10
    append(sessions, tenant_id, 2)
    with sessions() as session:
        rows = events(session, tenant_id)
        rows[3].details = {"i": 3, "forged": True}  # row 4 of 12
        rewrite_from(session, rows, 3)
        session.commit()
        assert audit.verify_chain(session, tenant_id)  # the links alone still hold
    result = verify(sessions, tenant_id, migrated)
    assert not result.ok and result.problems == ["checkpoint-mismatch"]
    assert result.first_broken_link is None and result.truncation is None
    mismatch = result.head_mismatch
    assert mismatch is not None
    # The earliest signed head the chain no longer matches: the database checkpoint of rows 1..6.
    assert mismatch.checkpoint.source == audit.SOURCE_DB and mismatch.checkpoint.ref == str(first.id)
    assert mismatch.checkpoint.event_count == 6 and mismatch.found_hash != first.head_hash
    assert result.last_checkpoint is None and result.unsigned_tail == 12
    # The maintenance beat will not sign the rewritten head (which would make the newest checkpoint vouch
    # for the forgery): it refuses, and the tenant stays flagged.
    with sessions() as session, pytest.raises(audit.ChainInconsistent):
        audit.take_checkpoint(session, tenant_id, migrated)


def test_an_edited_row_without_recomputing_is_the_first_broken_link(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(5)
    checkpoint(sessions, tenant_id, migrated)
    with sessions() as session:
        rows = events(session, tenant_id)
        rows[2].details = {"i": 2, "forged": True}
        session.commit()
        edited = rows[2].id
    result = verify(sessions, tenant_id, migrated)
    assert result.first_broken_link == audit.BrokenLink(id=edited, position=3, reason="hash-mismatch")
    assert "broken-link" in result.problems


def test_a_deleted_tail_is_a_truncation(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(7)
    checkpoint(sessions, tenant_id, migrated)
    with sessions() as session:
        tail = [row.id for row in events(session, tenant_id)[4:]]
        session.execute(delete(AuditEvent).where(AuditEvent.id.in_(tail)))
        session.commit()
        assert audit.verify_chain(session, tenant_id)  # a shorter chain still links
    result = verify(sessions, tenant_id, migrated)
    assert result.problems == ["truncated"]
    assert result.truncation is not None and result.truncation.events == 4
    assert (
        result.truncation.checkpoint.event_count == 7
        and result.truncation.checkpoint.source == audit.SOURCE_DB
    )
    with sessions() as session, pytest.raises(audit.ChainInconsistent):
        audit.take_checkpoint(session, tenant_id, migrated, only_if_changed=False)


def test_deleting_the_tail_and_the_checkpoint_rows_is_caught_by_the_anchor_file(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(6)
    taken = checkpoint(sessions, tenant_id, migrated)
    with sessions() as session:
        tail = [row.id for row in events(session, tenant_id)[2:]]
        session.execute(delete(AuditEvent).where(AuditEvent.id.in_(tail)))
        session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant_id))
        session.commit()
    result = verify(sessions, tenant_id, migrated)
    assert result.checkpoints == 0 and result.anchors == 1
    assert result.problems == ["truncated"]
    assert result.truncation is not None
    assert result.truncation.checkpoint.source == audit.SOURCE_FILE
    assert result.truncation.checkpoint.ref == str(taken.id) and result.truncation.events == 2


def test_a_rewrite_with_the_checkpoint_rows_deleted_is_caught_by_the_anchor_file(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(4)
    checkpoint(sessions, tenant_id, migrated)
    with sessions() as session:
        rows = events(session, tenant_id)
        rows[0].actor = "someone-else"
        rewrite_from(session, rows, 0)
        session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant_id))
        session.commit()
    result = verify(sessions, tenant_id, migrated)
    assert result.problems == ["checkpoint-mismatch"]
    assert result.head_mismatch is not None and result.head_mismatch.checkpoint.source == audit.SOURCE_FILE
    # With the rows gone the beat has nothing to compare with and signs the forged head; the file's earlier
    # line still holds the original one, and every line is checked.
    append(sessions, tenant_id, 2)
    assert checkpoint(sessions, tenant_id, migrated).event_count == 6
    later = verify(sessions, tenant_id, migrated)
    assert later.problems == ["checkpoint-mismatch"] and later.anchors == 2
    assert later.head_mismatch is not None and later.head_mismatch.checkpoint.event_count == 4


def test_a_checkpoint_forged_in_the_database_has_an_invalid_signature(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    """Rewriting the chain and re-signing its head with a key of one's own does not pass: the checkpoint
    must verify under this installation's anchor key."""
    tenant_id = chain(3)
    forger = signing.SigningKey(Ed25519PrivateKey.generate())
    with sessions() as session:
        row = audit.take_checkpoint(session, tenant_id, migrated, key=forger)
        assert row is not None
        session.commit()
        forged = f"db:{row.id}"
    result = verify(sessions, tenant_id, migrated)
    # Both copies (row and file line) carry the forger's signature: neither counts as evidence.
    assert "invalid-signature" in result.problems and forged in result.invalid_signatures
    assert any(ref.startswith("anchor-file:") for ref in result.invalid_signatures)
    assert result.last_checkpoint is None and result.unsigned_tail == 3


def test_a_database_checkpoint_missing_from_the_anchor_file_is_reported(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings, tmp_path
) -> None:
    """The file line is written before the row commits, so a genuine row the file lacks means the file was
    rolled back, replaced, or is not the one the signer wrote (a home not shared with the worker)."""
    tenant_id = chain(2)
    checkpoint(sessions, tenant_id, migrated)
    elsewhere = migrated.model_copy(update={"audit_anchor_file": tmp_path / "other-anchors.jsonl"})
    result = verify(sessions, tenant_id, elsewhere)
    assert result.problems == ["anchor-file-behind"] and result.anchors == 0


def test_the_anchor_file_is_private_append_only_and_survives_a_torn_line(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(2)
    checkpoint(sessions, tenant_id, migrated)
    path = audit.anchor_file_path(migrated)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with path.open("ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"type": "lethe.audit-checkpoint/v1", "tenant')
    before = path.read_bytes()
    append(sessions, tenant_id, 1)
    taken = checkpoint(sessions, tenant_id, migrated)
    after = path.read_bytes()
    assert after.startswith(before)  # appended, nothing rewritten
    last = json.loads(after.splitlines()[-1])
    assert last["checkpoint_id"] == str(taken.id) and last["event_count"] == 3
    result = verify(sessions, tenant_id, migrated)
    assert result.ok and result.unsigned_tail == 0


def test_checkpoint_all_signs_only_changed_chains(
    chain: Chain, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    tenant_id = chain(2)
    assert audit.checkpoint_all(sessions, migrated) >= 1
    assert audit.checkpoint_all(sessions, migrated) == 0  # nothing changed since
    append(sessions, tenant_id, 1)
    assert audit.checkpoint_all(sessions, migrated) == 1
    assert verify(sessions, tenant_id, migrated).unsigned_tail == 0


def test_the_signed_statement_covers_every_field(migrated: Settings) -> None:
    key = signing.anchor_key(migrated)
    tenant_id, at = uuid.uuid4(), utcnow()
    head = audit.SignedHead(
        source=audit.SOURCE_DB,
        ref="x",
        event_count=3,
        head_id=9,
        head_hash="a" * 64,
        at=at,
        key_id=key.key_id,
        signature=key.sign(audit.checkpoint_statement(tenant_id, 3, 9, "a" * 64, at)),
    )
    assert head.genuine(tenant_id, key.public)
    assert not head.genuine(uuid.uuid4(), key.public)  # another tenant's chain
    for change in ({"event_count": 4}, {"head_id": 8}, {"head_hash": "b" * 64}, {"at": utcnow()}):
        assert not audit.SignedHead(**{**head.__dict__, **change}).genuine(tenant_id, key.public), change


def test_the_maintenance_beat_schedules_the_checkpoints(migrated: Settings) -> None:
    from workers.celery_app import AUDIT_CHECKPOINT_TASK, DEFAULT_QUEUE, make_celery

    app = make_celery(migrated.model_copy(update={"audit_checkpoint_interval_seconds": 42.0}))
    entry = app.conf.beat_schedule["audit-checkpoints"]
    assert entry == {"task": AUDIT_CHECKPOINT_TASK, "schedule": 42.0}
    # Routed to the maintenance worker's queue, never to a GPU worker.
    assert app.amqp.router.route({}, AUDIT_CHECKPOINT_TASK)["queue"].name == DEFAULT_QUEUE
