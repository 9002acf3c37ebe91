"""deletion request references: data subject, ticket, requester

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("subject_reference", "ticket_reference", "requested_by")


def upgrade() -> None:
    # Nullable: requests made before these fields existed keep null references (their reports say none).
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
