"""Hourly usage: the request log summed per UTC hour, tenant, model, backend and served model,
for usage over time (``Store.usage_series``, the hub's charts).

Summing a million raw calls took SQLite 1.5 s (its GROUP BY sorts every row); this table holds a
few hundred rows an hour whatever the traffic. ``Store.insert_requests`` adds each batch to it in
the same transaction, so it always agrees with the log; this migration fills it from the log
already there. Missing values are stored as '' (a primary key column cannot be NULL).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_COLUMNS = (
    "hour, tenant, model, backend, served_model, "
    "requests, errors, prompt_tokens, completion_tokens, estimated, busy_ms"
)


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(128), nullable=False),
        sa.Column("served_model", sa.String(255), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("estimated", sa.BigInteger, nullable=False),
        sa.Column("busy_ms", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("hour", "tenant", "model", "backend", "served_model"),
        # SQLite: stored in key order, so a range of hours is a range of pages, read once.
        sqlite_with_rowid=False,
    )
    hour = (
        "CAST(ts / 3600 AS INTEGER)"
        if op.get_bind().dialect.name == "sqlite"
        else "CAST(floor(ts / 3600) AS BIGINT)"
    )
    op.execute(
        f"INSERT INTO usage_hourly ({_COLUMNS}) "
        f"SELECT {hour} * 3600, COALESCE(tenant, ''), model, COALESCE(backend, ''), "
        "COALESCE(served_model, ''), count(*), "
        "sum(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END), "
        "sum(COALESCE(prompt_tokens, 0)), sum(COALESCE(completion_tokens, 0)), "
        "sum(CASE WHEN tokens_estimated THEN 1 ELSE 0 END), "
        "sum(duration_ms - COALESCE(queue_wait_ms, 0)) "
        f"FROM requests GROUP BY {hour}, COALESCE(tenant, ''), model, COALESCE(backend, ''), "
        "COALESCE(served_model, '')"
    )


def downgrade() -> None:
    op.drop_table("usage_hourly")
