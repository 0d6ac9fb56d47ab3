"""Usage accounting: queue wait and whether the token counts are estimates.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Time spent waiting for a backend slot; always 0 until the scheduler brings a queue.
    op.add_column("requests", sa.Column("queue_wait_ms", sa.Float))
    # True when the backend reported no token counts and Hearth estimated them.
    op.add_column(
        "requests",
        sa.Column("tokens_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("requests", "tokens_estimated")
    op.drop_column("requests", "queue_wait_ms")
