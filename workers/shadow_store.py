"""The audit shadow-model store backed by the database (rows) and the artifact store (safetensors bytes).

Rows are tenant-scoped: an audit only ever sees the models its own tenant stored. Bytes are written before the
row, content-addressed, so a crash between the two leaves at worst an unreferenced file, never a row without
its weights. Saving a key that another audit stored concurrently is a no-op (the unique (tenant, key)
constraint decides).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from safetensors.numpy import save as save_safetensors
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.core.db import session_scope
from app.models import ShadowModel
from app.models.base import utcnow
from app.storage.base import content_key, sha256_hex
from workers.engine.audit.store import ShadowSpec, Weights
from workers.runtime import WorkerRuntime


class DbShadowStore:
    def __init__(self, runtime: WorkerRuntime, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
        self.runtime, self.tenant_id, self.job_id = runtime, tenant_id, job_id

    def fetch(self, keys: Sequence[str]) -> dict[str, Weights]:
        from app.intake import load_safetensors_arrays

        if not keys:
            return {}
        with session_scope(self.runtime.sessions) as session:
            rows = session.execute(
                select(ShadowModel.key, ShadowModel.storage_key).where(
                    ShadowModel.tenant_id == self.tenant_id, ShadowModel.key.in_(list(keys))
                )
            ).all()
            if rows:
                session.execute(
                    update(ShadowModel)
                    .where(
                        ShadowModel.tenant_id == self.tenant_id, ShadowModel.key.in_([r.key for r in rows])
                    )
                    .values(use_count=ShadowModel.use_count + 1, last_used_at=utcnow())
                )
        found: dict[str, Weights] = {}
        for key, storage_key in rows:
            if self.runtime.store.exists(storage_key):  # a purged file means "train it again"
                found[key] = load_safetensors_arrays(self.runtime.store.get(storage_key))
        return found

    def save(self, spec: ShadowSpec, weights: Weights) -> None:
        blob = save_safetensors(weights, metadata={"role": spec.role, "key": spec.key})
        digest = sha256_hex(blob)
        storage_key = content_key("shadows", str(self.tenant_id), digest, ".safetensors")
        self.runtime.store.put(storage_key, blob)
        row = ShadowModel(
            tenant_id=self.tenant_id,
            key=spec.key,
            role=spec.role,
            architecture=str(spec.material.get("architecture")),
            dataset_sha256=str(spec.material.get("dataset")),
            spec=spec.material,
            sha256=digest,
            storage_key=storage_key,
            size_bytes=len(blob),
            job_id=self.job_id,
            use_count=0,
        )
        try:
            with session_scope(self.runtime.sessions) as session:
                session.add(row)
        except IntegrityError:
            # Stored before (same inputs, same model): keep that row, but repoint it if its file was purged.
            with session_scope(self.runtime.sessions) as session:
                existing = session.scalar(
                    select(ShadowModel).where(
                        ShadowModel.tenant_id == self.tenant_id, ShadowModel.key == spec.key
                    )
                )
                if existing is not None and not self.runtime.store.exists(existing.storage_key):
                    existing.storage_key, existing.sha256, existing.size_bytes = (
                        storage_key,
                        digest,
                        len(blob),
                    )
