"""The tables, as SQLAlchemy Core metadata: one definition for SQLite and PostgreSQL.

Migrations in ``migrations/versions`` create and change them; this module is what queries use.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per model call. Never the prompt or the reply: those may be health data.
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),  # start, epoch seconds
    sa.Column("dialect", sa.String(16), nullable=False),  # ollama | openai
    sa.Column("endpoint", sa.String(16), nullable=False),  # chat | completion | embed
    sa.Column("model", sa.String(255), nullable=False),  # as the client asked (alias or real)
    sa.Column("served_model", sa.String(255)),  # what the backend ran
    sa.Column("backend", sa.String(128)),
    sa.Column("status", sa.Integer, nullable=False),  # HTTP status, or 499 when the client left
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float),  # time to the first byte sent to the client
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("tenant", sa.String(128)),  # "<tenant>/<person>" for sub-tenants
    sa.Column("key_id", sa.String(16)),  # None for trusted networks
    # Time waiting in the scheduler's queue for a backend slot before the call was sent.
    sa.Column("queue_wait_ms", sa.Float),
    # The backend reported no token counts, so prompt_tokens/completion_tokens are Hearth's
    # estimate (gateway/records.py says how).
    sa.Column("tokens_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    # Loading the model before the call, as the backend reported it (Ollama's load_duration).
    sa.Column("load_ms", sa.Float),
    # The stored request and reply (trace_contents), only for tenants with store_content on.
    # Last: Store.insert_requests sets it in place.
    sa.Column("content_id", sa.Integer),
)

# Prompts and replies of the tenants who opt in (``store_content``), kept
# ``content_retention_days``; everyone else's calls have metadata only.
trace_contents = sa.Table(
    "trace_contents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("tenant", sa.String(128)),
    sa.Column("request", sa.Text, nullable=False),  # the body as the client sent it (JSON)
    sa.Column("response", sa.Text),  # the reply's text
)

# Limits edited at run time (admin API, hub), over the config file's: a JSON object of the
# TenantSettings limit fields it overrides (null: no limit).
tenant_limits = sa.Table(
    "tenant_limits",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("limits", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# The request log summed per UTC hour and (tenant, model, backend, served_model), kept by
# Store.insert_requests in the same transaction as the calls: usage over time reads this, not
# every call. '' stands for a missing tenant, backend or served model.
usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    sa.Column("hour", sa.BigInteger, primary_key=True),  # start, epoch seconds
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("backend", sa.String(128), primary_key=True),
    sa.Column("served_model", sa.String(255), primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("estimated", sa.BigInteger, nullable=False),  # calls whose counts are estimates
    sa.Column("busy_ms", sa.Float, nullable=False),  # duration less queue wait
    sqlite_with_rowid=False,
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# The secret itself is never stored: only its SHA-256 (keys are 190 random bits, so a fast
# hash is enough; a slow KDF would only cost latency on every request).
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),  # the visible part: hth_<id>_...
    sa.Column("tenant", sa.String(128), sa.ForeignKey("tenants.name"), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("label", sa.String(255)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

# Alert history (observability/alerts.py): one row each time an alert fires or resolves.
alert_events = sa.Table(
    "alert_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),  # epoch seconds
    sa.Column("rule", sa.String(64), nullable=False),  # backend_down, slow_responses, ...
    sa.Column("subject", sa.String(255), nullable=False),  # the backend, model, tenant or path
    sa.Column("event", sa.String(16), nullable=False),  # fired | resolved
    sa.Column("value", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("since", sa.Float, nullable=False),  # when the alert started firing
)

# Column order of the tuples the request log hands to Store.insert_requests.
REQUEST_COLUMNS = tuple(c.name for c in requests.columns if c.name != "id")
# And of the trace_contents rows that may come with them.
CONTENT_COLUMNS = tuple(c.name for c in trace_contents.columns if c.name != "id")

# The columns usage can be grouped by (Store.usage_summary).
USAGE_GROUPS = ("tenant", "model", "backend", "served_model")
