"""PostgreSQL: NOTIFY hearth_keys on every change to api_keys (SQLite: nothing to do).

A running Hearth LISTENs on the channel (Store.watch_keys) and rereads its key table, so a key
created or revoked by the CLI or another Hearth takes effect without any query per request.
One notification per statement, sent when its transaction commits (never for a rollback).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION hearth_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('hearth_keys', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION hearth_keys_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS api_keys_notify ON api_keys")
    op.execute("DROP FUNCTION IF EXISTS hearth_keys_changed()")
