"""Compact, daily-partitioned `subaccount_ticks`; hourly per-subaccount rollups.

PostgreSQL: `subaccount_ticks` becomes range-partitioned by day on `observed_at` (retention
drops whole partitions). Share ratios are stored as float4; the large float arrays go to
TOAST with lz4, the compressible ones (names, flags, share times) stay inline with pglz, and
each partition sets toast_tuple_target=128 so every array is compressed or moved out of the
heap. The contract views are recreated with their former column types. SQLite (the demo
fallback) keeps its table and only gains the rollup table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)

# Partition DDL is repeated here rather than imported: a migration must not change meaning
# when the application code moves on.
PARTITION_STORAGE = "WITH (toast_tuple_target = 128)"

PG_TICKS = """
CREATE TABLE subaccount_ticks (
    currency text NOT NULL,
    subaccount text NOT NULL,
    observed_at timestamptz NOT NULL,
    active integer NOT NULL,
    inactive integer NOT NULL,
    hashrate double precision NOT NULL,
    worker_names text[] COMPRESSION pglz NOT NULL,
    worker_active boolean[] COMPRESSION pglz NOT NULL,
    worker_hashrates double precision[] COMPRESSION lz4 NOT NULL,
    worker_efficiencies double precision[] COMPRESSION lz4 NOT NULL,
    worker_stale_shares real[] COMPRESSION lz4 NOT NULL,
    worker_rejected_shares real[] COMPRESSION lz4 NOT NULL,
    worker_last_share_epochs bigint[] COMPRESSION pglz NOT NULL,
    CONSTRAINT pk_subaccount_ticks PRIMARY KEY (currency, subaccount, observed_at)
) PARTITION BY RANGE (observed_at);

ALTER TABLE subaccount_ticks
    ALTER COLUMN currency SET STORAGE MAIN,
    ALTER COLUMN subaccount SET STORAGE MAIN,
    ALTER COLUMN worker_names SET STORAGE MAIN,
    ALTER COLUMN worker_active SET STORAGE MAIN,
    ALTER COLUMN worker_last_share_epochs SET STORAGE MAIN;

CREATE INDEX ix_subaccount_ticks_observed_at_brin ON subaccount_ticks USING brin (observed_at);
"""

PG_VIEWS = """
CREATE VIEW subaccount_snapshots AS
SELECT observed_at, currency, subaccount, active, inactive, hashrate,
       cardinality(worker_names) AS workers
FROM subaccount_ticks;

CREATE VIEW worker_snapshots AS
SELECT t.observed_at, t.currency, t.subaccount, w.worker_name,
       CASE WHEN w.is_active THEN 'ACTIVE' ELSE 'INACTIVE' END AS status,
       w.hashrate, w.efficiency,
       w.stale_shares::double precision AS stale_shares,
       w.rejected_shares::double precision AS rejected_shares,
       to_timestamp(w.last_share_epoch) AS last_share_time
FROM subaccount_ticks t
CROSS JOIN LATERAL unnest(
    t.worker_names, t.worker_active, t.worker_hashrates, t.worker_efficiencies,
    t.worker_stale_shares, t.worker_rejected_shares, t.worker_last_share_epochs
) AS w(worker_name, is_active, hashrate, efficiency, stale_shares, rejected_shares,
       last_share_epoch);
"""

PG_VIEWS_0001 = """
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

COLUMNS = (
    "currency, subaccount, observed_at, active, inactive, hashrate, worker_names, "
    "worker_active, worker_hashrates, worker_efficiencies, worker_stale_shares, "
    "worker_rejected_shares, worker_last_share_epochs"
)


def _execute_all(script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def _partition_name(day: date) -> str:
    return f"subaccount_ticks_p{day:%Y%m%d}"


def _create_partition(day: date) -> None:
    op.execute(
        f"CREATE TABLE IF NOT EXISTS {_partition_name(day)} PARTITION OF subaccount_ticks "
        f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') "
        f"TO ('{(day + timedelta(days=1)).isoformat()} 00:00:00+00') {PARTITION_STORAGE}"
    )


def _create_rollups() -> None:
    op.create_table(
        "subaccount_rollups_hourly",
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
        sa.PrimaryKeyConstraint(
            "currency", "subaccount", "hour", name="pk_subaccount_rollups_hourly"
        ),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        _create_rollups()
        return
    bind = op.get_bind()
    op.execute("DROP VIEW IF EXISTS worker_snapshots")
    op.execute("DROP VIEW IF EXISTS subaccount_snapshots")
    op.execute("ALTER TABLE subaccount_ticks RENAME TO subaccount_ticks_0001")
    op.execute("ALTER TABLE subaccount_ticks_0001 RENAME CONSTRAINT pk_subaccount_ticks TO pk_0001")
    op.execute("DROP INDEX IF EXISTS ix_subaccount_ticks_observed_at_brin")
    _execute_all(PG_TICKS)

    days = {
        row[0]
        for row in bind.execute(
            sa.text(
                "SELECT DISTINCT (observed_at AT TIME ZONE 'UTC')::date FROM subaccount_ticks_0001"
            )
        )
    }
    today = datetime.now(UTC).date()
    days.update(today + timedelta(days=n) for n in range(-1, 8))
    for day in sorted(days):
        _create_partition(day)

    op.execute(
        f"INSERT INTO subaccount_ticks ({COLUMNS}) SELECT currency, subaccount, observed_at, "
        "active, inactive, hashrate, worker_names, worker_active, worker_hashrates, "
        "worker_efficiencies, worker_stale_shares::real[], worker_rejected_shares::real[], "
        "worker_last_share_epochs FROM subaccount_ticks_0001"
    )
    op.execute("DROP TABLE subaccount_ticks_0001")
    _execute_all(PG_VIEWS)

    _create_rollups()
    op.execute(
        "CREATE INDEX ix_subaccount_rollups_hourly_hour_brin "
        "ON subaccount_rollups_hourly USING brin (hour)"
    )


def downgrade() -> None:
    op.drop_table("subaccount_rollups_hourly")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP VIEW IF EXISTS worker_snapshots")
    op.execute("DROP VIEW IF EXISTS subaccount_snapshots")
    op.execute("ALTER TABLE subaccount_ticks RENAME TO subaccount_ticks_0003")
    op.execute("ALTER INDEX pk_subaccount_ticks RENAME TO pk_0003")
    op.execute("DROP INDEX IF EXISTS ix_subaccount_ticks_observed_at_brin")
    op.execute(
        """
        CREATE TABLE subaccount_ticks (
            currency text NOT NULL,
            subaccount text NOT NULL,
            observed_at timestamptz NOT NULL,
            active integer NOT NULL,
            inactive integer NOT NULL,
            hashrate double precision NOT NULL,
            worker_names text[] NOT NULL,
            worker_active boolean[] NOT NULL,
            worker_hashrates double precision[] NOT NULL,
            worker_efficiencies double precision[] NOT NULL,
            worker_stale_shares double precision[] NOT NULL,
            worker_rejected_shares double precision[] NOT NULL,
            worker_last_share_epochs bigint[] NOT NULL,
            CONSTRAINT pk_subaccount_ticks PRIMARY KEY (currency, subaccount, observed_at)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_subaccount_ticks_observed_at_brin "
        "ON subaccount_ticks USING brin (observed_at)"
    )
    op.execute(
        f"INSERT INTO subaccount_ticks ({COLUMNS}) SELECT currency, subaccount, observed_at, "
        "active, inactive, hashrate, worker_names, worker_active, worker_hashrates, "
        "worker_efficiencies, worker_stale_shares::double precision[], "
        "worker_rejected_shares::double precision[], worker_last_share_epochs "
        "FROM subaccount_ticks_0003"
    )
    op.execute("DROP TABLE subaccount_ticks_0003 CASCADE")
    _execute_all(PG_VIEWS_0001)
