"""Stored prompts and replies for tenants who opt in, and tenant limits edited at run time.

- ``trace_contents``: the request as the client sent it and the reply's text, one row per call
  of a tenant with ``store_content`` on; ``requests.content_id`` points at it (NULL for every
  other call, so the request log's rows stay small). Kept ``content_retention_days``.
- ``tenant_limits``: limits set through the admin API or the hub, over the config file's (a JSON
  object of the fields it overrides; a null value means "no limit").
- PostgreSQL: a change to ``tenant_limits`` notifies ``hearth_keys`` like a key change, so every
  Hearth rereads them without a query per request.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trace_contents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("tenant", sa.String(128)),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("response", sa.Text),
    )
    op.create_index("ix_trace_contents_ts", "trace_contents", ["ts"])
    # A plain ADD/DROP COLUMN (SQLite >= 3.35 has both): batch mode would copy the whole log
    # into a new table, and drop the expression index of migration 0006 on the way.
    op.add_column("requests", sa.Column("content_id", sa.Integer))
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER tenant_limits_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            "ON tenant_limits FOR EACH STATEMENT EXECUTE FUNCTION hearth_keys_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS tenant_limits_notify ON tenant_limits")
    op.drop_table("tenant_limits")
    op.drop_column("requests", "content_id")
    op.drop_index("ix_trace_contents_ts", "trace_contents")
    op.drop_table("trace_contents")
