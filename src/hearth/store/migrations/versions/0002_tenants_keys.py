"""Tenants and their API keys (stored only as SHA-256 hashes).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("tenant", sa.String(128), sa.ForeignKey("tenants.name"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    op.add_column("requests", sa.Column("tenant", sa.String(128)))
    op.add_column("requests", sa.Column("key_id", sa.String(16)))


def downgrade() -> None:
    op.drop_column("requests", "key_id")
    op.drop_column("requests", "tenant")
    op.drop_table("api_keys")
    op.drop_table("tenants")
