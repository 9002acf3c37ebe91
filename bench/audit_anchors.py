"""Audit-chain tampering against the signed checkpoints: what is detected, and what verification costs.

Builds one tenant's chain of ``--events`` rows in a fresh embedded installation (SQLite, temporary home),
signs a checkpoint every ``--every`` rows (database row + anchor-file line, as the maintenance beat does),
then applies each database-only tampering inside a transaction, runs ``audit.verify`` on it, and rolls back:

* ``untouched``: nothing changed;
* ``edit_no_rehash``: one row's details edited (links left as they were);
* ``edit_rehash``: one row edited and every later hash recomputed (the links hold again);
* ``delete_tail``: the newest rows deleted;
* ``delete_tail_and_checkpoints``: the newest rows and every checkpoint row deleted;
* ``rewrite_and_checkpoints``: one row edited, every later hash recomputed, every checkpoint row deleted.

Prints JSON: per scenario the problems found, what located them, the unsigned tail, and the verification
time; plus the time to build and to sign. Usage: ``.venv/bin/python bench/audit_anchors.py [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core import migrate
from app.core.config import Settings
from app.core.db import make_engine, make_session_factory
from app.models import AuditCheckpoint, AuditEvent
from app.services.compliance import audit
from app.services.ops.keys import get_or_create_tenant


def _rows(session: Session, tenant_id: uuid.UUID) -> list[AuditEvent]:
    return list(
        session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id))
    )


def _rehash(rows: list[AuditEvent], start: int) -> None:
    prev = rows[start - 1].hash if start else None
    for row in rows[start:]:
        row.prev_hash = prev
        row.hash = audit._digest(prev, audit._event_payload(row))
        prev = row.hash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000, help="rows between checkpoints")
    parser.add_argument("--tail", type=int, default=250, help="rows appended after the last checkpoint")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lethe-anchors-"))
    settings = Settings(home=home)
    migrate.upgrade(settings)
    engine = make_engine(settings.db_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        tenant_id = get_or_create_tenant(session, "bench").id
        session.commit()

    started = time.perf_counter()
    sign_seconds = 0.0
    for i in range(args.events + args.tail):
        with sessions() as session:
            audit.record(
                session,
                tenant_id=tenant_id,
                actor="bench",
                action="thing.do",
                resource_type="thing",
                resource_id=str(i),
                details={"i": i},
            )
            session.commit()
        if (i + 1) % args.every == 0 and i < args.events:
            t0 = time.perf_counter()
            with sessions() as session:
                audit.take_checkpoint(session, tenant_id, settings)
                session.commit()
            sign_seconds += time.perf_counter() - t0
    build_seconds = time.perf_counter() - started
    total = args.events + args.tail
    edited = args.events // 3  # a row well inside the signed part

    def edit(session: Session, rehash: bool) -> None:
        rows = _rows(session, tenant_id)
        rows[edited].details = {"i": edited, "forged": True}
        if rehash:
            _rehash(rows, edited)

    def delete_tail(session: Session) -> None:
        ids = [row.id for row in _rows(session, tenant_id)[total - args.tail - args.every // 2 :]]
        session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))

    def drop_checkpoints(session: Session) -> None:
        session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant_id))

    scenarios: dict[str, Callable[[Session], Any]] = {
        "untouched": lambda s: None,
        "edit_no_rehash": lambda s: edit(s, rehash=False),
        "edit_rehash": lambda s: edit(s, rehash=True),
        "delete_tail": delete_tail,
        "delete_tail_and_checkpoints": lambda s: (delete_tail(s), drop_checkpoints(s)),
        "rewrite_and_checkpoints": lambda s: (edit(s, rehash=True), drop_checkpoints(s)),
    }
    results: dict[str, Any] = {}
    for name, tamper in scenarios.items():
        with sessions() as session:
            tamper(session)
            session.flush()
            links_hold = audit.verify_chain(session, tenant_id)
            t0 = time.perf_counter()
            result = audit.verify(session, tenant_id, settings)
            seconds = time.perf_counter() - t0
            session.rollback()
        located: dict[str, Any] = {}
        if result.first_broken_link is not None:
            located["first_broken_link"] = vars(result.first_broken_link)
        if result.head_mismatch is not None:
            head = result.head_mismatch.checkpoint
            located["checkpoint_mismatch"] = {"source": head.source, "event_count": head.event_count}
        if result.truncation is not None:
            head = result.truncation.checkpoint
            located["truncation"] = {
                "source": head.source,
                "signed_events": head.event_count,
                "events": result.truncation.events,
            }
        results[name] = {
            "links_alone_hold": links_hold,
            "detected": not result.ok,
            "problems": result.problems,
            "located": located,
            "unsigned_tail": result.unsigned_tail,
            "verify_seconds": round(seconds, 3),
        }
    engine.dispose()
    print(
        json.dumps(
            {
                "events": total,
                "checkpoint_every": args.every,
                "edited_position": edited + 1,
                "build_seconds": round(build_seconds, 1),
                "sign_seconds_per_checkpoint": round(sign_seconds / max(1, args.events // args.every), 4),
                "scenarios": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
