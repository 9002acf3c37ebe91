"""index jobs by (tenant, start time) for the fair pick

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 20:50:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The fair pick (app.services.jobs.lifecycle.claim_next) reads each waiting tenant's latest start: with
    # this index that is one index read per tenant instead of a scan of the tenant's whole job history.
    op.create_index("ix_jobs_tenant_started", "jobs", ["tenant_id", "started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_started", table_name="jobs")
