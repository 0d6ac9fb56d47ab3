"""Indexes for the trace list (store/traces.py): one per filter, each ending in id so that a
page, newest first, is a backward walk of one index that stops after the page.

- ``(tenant, id)``: one exact tenant or sub-tenant; bytewise ("C") on PostgreSQL, so that the
  names under a sub-tenant are one range whatever the database's collation;
- ``(root of tenant, id)``: a tenant with its sub-tenants ("t" and "t/..."), the root being the
  name up to its first "/";
- ``(model, id)`` and ``(served_model, id)``: a model as asked or as served;
- ``(backend, id)``;
- partial, over failed calls only (a few percent of rows, so nearly free to write):
  ``(id)`` for the errors-only list and ``(status, id)`` for one error status.

Every index costs the request log's inserts (bench/README.md, "Trace list" has the figures). The
expressions and the predicate must read exactly as in store/traces.py: SQLite matches them as
written. On PostgreSQL, building them takes a lock that holds back other processes' writes to
``requests`` for a few seconds per million rows.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ROOT = {
    "sqlite": "substr(tenant, 1, instr(tenant || '/', '/') - 1)",
    "postgresql": "split_part(tenant, '/', 1)",
}
_ERROR = "status >= 400 OR error IS NOT NULL"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    postgres = dialect == "postgresql"
    tenant = sa.text('tenant COLLATE "C"') if postgres else "tenant"
    root = sa.text(_ROOT["postgresql" if postgres else "sqlite"])
    op.create_index("ix_requests_tenant_id", "requests", [tenant, "id"])
    op.create_index("ix_requests_tenant_root_id", "requests", [root, "id"])
    op.create_index("ix_requests_model_id", "requests", ["model", "id"])
    op.create_index("ix_requests_served_model_id", "requests", ["served_model", "id"])
    op.create_index("ix_requests_backend_id", "requests", ["backend", "id"])
    failed = sa.text(_ERROR)
    for name, columns in (
        ("ix_requests_errors_id", ["id"]),
        ("ix_requests_errors_status_id", ["status", "id"]),
    ):
        op.create_index(name, "requests", columns, sqlite_where=failed, postgresql_where=failed)
    if postgres:
        # Statistics for the root expression now: without them PostgreSQL guesses that a tenant
        # holds 0.5% of the log, and autovacuum analyzes a big table only after 10% of it changed.
        op.execute("ANALYZE requests")


def downgrade() -> None:
    for name in (
        "ix_requests_errors_status_id",
        "ix_requests_errors_id",
        "ix_requests_backend_id",
        "ix_requests_served_model_id",
        "ix_requests_model_id",
        "ix_requests_tenant_root_id",
        "ix_requests_tenant_id",
    ):
        op.drop_index(name, "requests")
