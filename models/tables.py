"""SQLAlchemy tables. The contract relations of SPEC.md are views over `subaccount_ticks`."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _array(item: sa.types.TypeEngine) -> sa.types.TypeEngine:
    # PostgreSQL arrays; a JSON list where the demo falls back to SQLite.
    return postgresql.ARRAY(item).with_variant(sa.JSON(), "sqlite")


TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# One row per subaccount per successful tick: the counts, and every worker as parallel
# arrays (one TOASTed value per column instead of a row per worker keeps it small).
# On PostgreSQL it is range-partitioned by day on observed_at (migration 0003).
subaccount_ticks = sa.Table(
    "subaccount_ticks",
    metadata,
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("subaccount", sa.Text, nullable=False),
    sa.Column("observed_at", TIMESTAMP, nullable=False),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("inactive", sa.Integer, nullable=False),
    sa.Column("hashrate", sa.Float(53), nullable=False),
    sa.Column("worker_names", _array(sa.Text), nullable=False),
    sa.Column("worker_active", _array(sa.Boolean), nullable=False),
    sa.Column("worker_hashrates", _array(sa.Float(53)), nullable=False),
    sa.Column("worker_efficiencies", _array(sa.Float(53)), nullable=False),
    # Share ratios keep float4 precision (~7 significant digits); see migration 0003.
    sa.Column("worker_stale_shares", _array(sa.REAL), nullable=False),
    sa.Column("worker_rejected_shares", _array(sa.REAL), nullable=False),
    sa.Column("worker_last_share_epochs", _array(sa.BigInteger), nullable=False),
    sa.PrimaryKeyConstraint("currency", "subaccount", "observed_at"),
)

# Hourly per-subaccount aggregates, kept longer than the raw ticks (tasks/maintenance.py).
subaccount_rollups_hourly = sa.Table(
    "subaccount_rollups_hourly",
    metadata,
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("subaccount", sa.Text, nullable=False),
    sa.Column("hour", TIMESTAMP, nullable=False),
    sa.Column("samples", sa.Integer, nullable=False),
    sa.Column("active_avg", sa.Float(53), nullable=False),
    sa.Column("active_min", sa.Integer, nullable=False),
    sa.Column("active_max", sa.Integer, nullable=False),
    sa.Column("inactive_avg", sa.Float(53), nullable=False),
    sa.Column("inactive_min", sa.Integer, nullable=False),
    sa.Column("inactive_max", sa.Integer, nullable=False),
    sa.Column("hashrate_avg", sa.Float(53), nullable=False),
    sa.Column("hashrate_min", sa.Float(53), nullable=False),
    sa.Column("hashrate_max", sa.Float(53), nullable=False),
    sa.PrimaryKeyConstraint("currency", "subaccount", "hour"),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("subaccount", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", TIMESTAMP, nullable=False),
    sa.Column("resolved_at", TIMESTAMP, nullable=True),
    sa.Column("baseline", sa.Float(53), nullable=True),
    sa.Column("current", sa.Float(53), nullable=True),
    sa.Column("details", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
    # Delivery bookkeeping (migration 0002): what each channel was told, and when.
    sa.Column("dedup_key", sa.Text, nullable=True, unique=True),
    sa.Column("notifications", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
    sa.Column("updated_at", TIMESTAMP, nullable=True),
    sa.CheckConstraint("status IN ('firing', 'resolved')", name="status"),
)

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

alert_cursors = sa.Table(
    "alert_cursors",
    metadata,
    sa.Column("currency", sa.Text, primary_key=True),
    sa.Column("observed_at", TIMESTAMP, nullable=True),
    sa.Column("state", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
)

alert_notifications = sa.Table(
    "alert_notifications",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("observed_at", TIMESTAMP, nullable=False),
    sa.Column("dedup_keys", JSON_DOC, nullable=False),
    sa.Column("body", JSON_DOC, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
    sa.Column("deliver_until", TIMESTAMP, nullable=False),
    sa.Column("claimed_until", TIMESTAMP, nullable=True),
    sa.Column("sent_at", TIMESTAMP, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
)
