"""Snapshots as one row per subaccount-tick with worker arrays; contract views; alerts.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _array(item: sa.types.TypeEngine) -> sa.types.TypeEngine:
    return postgresql.ARRAY(item).with_variant(sa.JSON(), "sqlite")


PG_VIEWS = """
CREATE VIEW subaccount_snapshots AS
SELECT observed_at, currency, subaccount, active, inactive, hashrate,
       cardinality(worker_names) AS workers
FROM subaccount_ticks;

CREATE VIEW worker_snapshots AS
SELECT t.observed_at, t.currency, t.subaccount, w.worker_name,
       CASE WHEN w.is_active THEN 'ACTIVE' ELSE 'INACTIVE' END AS status,
       w.hashrate, w.efficiency, w.stale_shares, w.rejected_shares,
       to_timestamp(w.last_share_epoch) AS last_share_time
FROM subaccount_ticks t
CROSS JOIN LATERAL unnest(
    t.worker_names, t.worker_active, t.worker_hashrates, t.worker_efficiencies,
    t.worker_stale_shares, t.worker_rejected_shares, t.worker_last_share_epochs
) AS w(worker_name, is_active, hashrate, efficiency, stale_shares, rejected_shares,
       last_share_epoch);
"""

SQLITE_VIEWS = """
CREATE VIEW subaccount_snapshots AS
SELECT observed_at, currency, subaccount, active, inactive, hashrate,
       json_array_length(worker_names) AS workers
FROM subaccount_ticks;

CREATE VIEW worker_snapshots AS
SELECT t.observed_at, t.currency, t.subaccount, n.value AS worker_name,
       CASE WHEN a.value THEN 'ACTIVE' ELSE 'INACTIVE' END AS status,
       h.value AS hashrate, e.value AS efficiency, s.value AS stale_shares,
       r.value AS rejected_shares,
       strftime('%Y-%m-%dT%H:%M:%SZ', l.value, 'unixepoch') AS last_share_time
FROM subaccount_ticks t
JOIN json_each(t.worker_names) n
JOIN json_each(t.worker_active) a ON a.key = n.key
JOIN json_each(t.worker_hashrates) h ON h.key = n.key
JOIN json_each(t.worker_efficiencies) e ON e.key = n.key
JOIN json_each(t.worker_stale_shares) s ON s.key = n.key
JOIN json_each(t.worker_rejected_shares) r ON r.key = n.key
JOIN json_each(t.worker_last_share_epochs) l ON l.key = n.key;
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "subaccount_ticks",
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("subaccount", sa.Text, nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Integer, nullable=False),
        sa.Column("inactive", sa.Integer, nullable=False),
        sa.Column("hashrate", sa.Float(53), nullable=False),
        sa.Column("worker_names", _array(sa.Text), nullable=False),
        sa.Column("worker_active", _array(sa.Boolean), nullable=False),
        sa.Column("worker_hashrates", _array(sa.Float(53)), nullable=False),
        sa.Column("worker_efficiencies", _array(sa.Float(53)), nullable=False),
        sa.Column("worker_stale_shares", _array(sa.Float(53)), nullable=False),
        sa.Column("worker_rejected_shares", _array(sa.Float(53)), nullable=False),
        sa.Column("worker_last_share_epochs", _array(sa.BigInteger), nullable=False),
        sa.PrimaryKeyConstraint(
            "currency", "subaccount", "observed_at", name="pk_subaccount_ticks"
        ),
    )
    if postgres:
        op.execute(
            "CREATE INDEX ix_subaccount_ticks_observed_at_brin "
            "ON subaccount_ticks USING brin (observed_at)"
        )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("subaccount", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("baseline", sa.Float(53), nullable=True),
        sa.Column("current", sa.Float(53), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
            server_default=sa.text("'{}'"),
        ),
        sa.CheckConstraint("status IN ('firing', 'resolved')", name="ck_alerts_status"),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    # At most one open episode per alert and subject.
    op.execute(
        "CREATE UNIQUE INDEX uq_alerts_open_episode ON alerts "
        "(kind, currency, coalesce(subaccount, '')) WHERE status = 'firing'"
    )
    for statement in (PG_VIEWS if postgres else SQLITE_VIEWS).split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS worker_snapshots")
    op.execute("DROP VIEW IF EXISTS subaccount_snapshots")
    op.drop_table("alerts")
    op.drop_table("subaccount_ticks")
