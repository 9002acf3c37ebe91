"""Admin request/response models: API-key lifecycle and audit-chain verification (issue 17)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.core.security import KEY_PREFIX
from app.models import ApiKey
from app.schemas.common import Page
from app.services.compliance import audit
from app.services.ops.keys import key_status


class KeyStatus(StrEnum):
    active = "active"
    expired = "expired"
    revoked = "revoked"


class KeyOut(BaseModel):
    """A key as listed: never its secret, which is shown once, at creation or rotation."""

    key_id: str
    prefix: str = Field(description="The token's non-secret start, `lk_<key_id>_`, to find it in configs.")
    name: str
    scopes: list[str]
    status: KeyStatus
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="Last successful authentication, to within a minute (written at most once a minute)."
    )
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: str | None = Field(description="The key this one replaced by rotation.")

    @classmethod
    def of(cls, row: ApiKey, now: datetime) -> KeyOut:
        return cls(
            key_id=row.key_id,
            prefix=f"{KEY_PREFIX}_{row.key_id}_",
            name=row.name,
            scopes=row.scopes,
            status=KeyStatus(key_status(row, now)),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            rotated_from=row.rotated_from,
        )


class KeyPage(Page[KeyOut]):
    pass


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_at: AwareDatetime | None = Field(
        None, description="Expiry of the new key (with a UTC offset; must be in the future). Null: never."
    )


class KeyRotated(KeyOut):
    token: str = Field(description="The new key, shown once; the rotated key is revoked.")


class BrokenLinkOut(BaseModel):
    id: int = Field(description="Audit event id of the first row whose link does not hold.")
    position: int = Field(description="Its position in the tenant's chain, from 1.")
    reason: str = Field(description="prev-hash-mismatch (a row removed or inserted) | hash-mismatch (edited)")


class CheckpointOut(BaseModel):
    """A signed statement of the chain head: ``event_count`` rows, the last one ``head_id``/``head_hash``."""

    id: str
    source: str = Field(description="db (an audit_checkpoints row) | anchor-file (the file outside the DB)")
    event_count: int
    head_id: int
    head_hash: str
    at: datetime
    key_id: str = Field(description="The audit anchor key that signed it.")

    @classmethod
    def of(cls, head: audit.SignedHead) -> CheckpointOut:
        return cls(
            id=head.ref,
            source=head.source,
            event_count=head.event_count,
            head_id=head.head_id,
            head_hash=head.head_hash,
            at=head.at,
            key_id=head.key_id,
        )


class HeadMismatchOut(BaseModel):
    checkpoint: CheckpointOut = Field(
        description="The earliest genuine checkpoint the chain no longer matches."
    )
    found_id: int
    found_hash: str = Field(description="The hash at the checkpoint's position now.")


class TruncationOut(BaseModel):
    checkpoint: CheckpointOut = Field(description="The genuine checkpoint with the most rows.")
    events: int = Field(description="Rows the chain has now (fewer than the checkpoint counted).")


class AuditVerification(BaseModel):
    tenant_id: uuid.UUID
    ok: bool
    problems: list[str] = Field(
        description="broken-link | checkpoint-mismatch | truncated | invalid-signature | anchor-file-behind"
    )
    events: int
    head_hash: str | None
    checkpoints: int = Field(description="Database checkpoints examined.")
    anchors: int = Field(description="Lines of this tenant in the anchor file.")
    first_broken_link: BrokenLinkOut | None
    checkpoint_mismatch: HeadMismatchOut | None = Field(
        description="History rewritten: a signed head differs from the chain's row at that position."
    )
    truncation: TruncationOut | None = Field(description="The chain is shorter than a signed checkpoint.")
    invalid_signatures: list[str] = Field(description="`db:<checkpoint id>` or `anchor-file:<line>`.")
    last_checkpoint: CheckpointOut | None = Field(
        description="The newest genuine checkpoint the chain still matches."
    )
    unsigned_tail: int = Field(description="Rows after last_checkpoint, not yet covered by a signature.")
    anchor_file_behind: bool = Field(
        description="The database holds a genuine checkpoint newer than the anchor file's newest."
    )

    @classmethod
    def of(cls, result: audit.ChainVerification) -> AuditVerification:
        broken = result.first_broken_link
        mismatch = result.head_mismatch
        truncation = result.truncation
        return cls(
            tenant_id=result.tenant_id,
            ok=result.ok,
            problems=result.problems,
            events=result.events,
            head_hash=result.head_hash,
            checkpoints=result.checkpoints,
            anchors=result.anchors,
            first_broken_link=None
            if broken is None
            else BrokenLinkOut(id=broken.id, position=broken.position, reason=broken.reason),
            checkpoint_mismatch=None
            if mismatch is None
            else HeadMismatchOut(
                checkpoint=CheckpointOut.of(mismatch.checkpoint),
                found_id=mismatch.found_id,
                found_hash=mismatch.found_hash,
            ),
            truncation=None
            if truncation is None
            else TruncationOut(checkpoint=CheckpointOut.of(truncation.checkpoint), events=truncation.events),
            invalid_signatures=result.invalid_signatures,
            last_checkpoint=None
            if result.last_checkpoint is None
            else CheckpointOut.of(result.last_checkpoint),
            unsigned_tail=result.unsigned_tail,
            anchor_file_behind=result.anchor_file_behind,
        )


class CheckpointTaken(BaseModel):
    id: uuid.UUID
    event_count: int
    head_id: int
    head_hash: str
    created_at: datetime
    key_id: str
    signature: str = Field(description="Ed25519 over the canonical JSON statement, base64.")
