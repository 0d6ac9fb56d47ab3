"""The request log keeps the load time the backend reported (Ollama's load_duration).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("load_ms", sa.Float))  # plain ADD COLUMN, as in 0007


def downgrade() -> None:
    op.drop_column("requests", "load_ms")
