"""The storage layout: daily partitions, retention, rollups, the contract views, replays."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from models import partitions
from models.store import make_engine, upgrade_schema, write_subaccount_ticks
from tasks.maintenance import run_maintenance
from tasks.tick import tick_rows
from tests.integration.conftest import DATABASE_URL
from worker.settings import load_settings
from worker.snapshot import SubaccountSnapshot, WorkerSample

T0 = datetime(2026, 10, 5, 12, 0, tzinfo=UTC)


def sample(name: str, **fields) -> WorkerSample:
    values = {
        "id": f"id-{name}",
        "name": name,
        "status": "ACTIVE",
        "hashrate_hs": 1.234567890123e14,
        "efficiency": 0.9960606098175049,
        "stale_shares": 0.00066154,
        "rejected_shares": 0.25,
        "last_share_time": datetime(2026, 10, 5, 11, 59, 41, tzinfo=UTC),
        "firmware": "fw",
    }
    values.update(fields)
    return WorkerSample(**values)


def snapshot(
    name: str, at: datetime, workers: tuple[WorkerSample, ...], currency: str = "BTC"
) -> SubaccountSnapshot:
    active = sum(1 for w in workers if w.status == "ACTIVE")
    return SubaccountSnapshot(
        currency,
        name,
        at,
        active,
        len(workers) - active,
        sum(w.hashrate_hs or 0.0 for w in workers),
        workers,
    )


def fleet_rows(at: datetime, n_subaccounts: int = 3, n_workers: int = 4) -> list[dict]:
    return [
        tick_rows(
            snapshot(
                f"site-{s}",
                at,
                tuple(
                    sample(f"rig-{w}", hashrate_hs=float(1e12 * (s + 1) + w))
                    for w in range(n_workers)
                ),
            )
        )
        for s in range(n_subaccounts)
    ]


def downgrade_schema(engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from models.store import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def query(engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


@pytest.fixture
def rollups(db):
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE subaccount_rollups_hourly"))
    return db


def test_the_hot_table_is_partitioned_by_day_with_compact_storage(db):
    write_subaccount_ticks(db, fleet_rows(T0))
    [(kind,)] = query(db, "SELECT relkind::text FROM pg_class WHERE relname = 'subaccount_ticks'")
    assert kind == "p"
    name = partitions.partition_name(T0.date())
    [(options,)] = query(db, "SELECT reloptions FROM pg_class WHERE relname = :n", n=name)
    assert options == ["toast_tuple_target=128"]
    columns = dict(
        (r[0], (r[1], r[2]))
        for r in query(
            db,
            "SELECT attname, attstorage::text, attcompression::text FROM pg_attribute "
            "WHERE attrelid = CAST(:n AS regclass) AND attnum > 0",
            n=name,
        )
    )
    assert columns["worker_hashrates"] == ("x", "l")  # to TOAST, lz4
    assert columns["worker_names"] == ("m", "p")  # inline, pglz
    foreign_keys = "SELECT count(*) FROM pg_constraint WHERE conrelid = CAST(:n AS regclass) "
    assert query(db, foreign_keys + "AND contype = 'f'", n=name) == [(0,)]
    indexes = {
        r[0] for r in query(db, "SELECT indexdef FROM pg_indexes WHERE tablename = :n", n=name)
    }
    assert any("USING brin (observed_at)" in i for i in indexes)
    assert any("(currency, subaccount, observed_at)" in i and "UNIQUE" in i for i in indexes)
    # Only the partition of that day holds the rows.
    assert query(db, f"SELECT count(*) FROM {name}") == [(3,)]


def test_a_tick_for_a_day_without_a_partition_creates_it(db):
    far = datetime(2027, 3, 9, 0, 0, tzinfo=UTC)
    write_subaccount_ticks(db, fleet_rows(far, 1, 2))
    assert partitions.partition_name(far.date()) in partitions.partitions(db.connect()).values()
    # A partition dropped behind this process's back is recreated on the next write.
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {partitions.partition_name(far.date())}"))
    write_subaccount_ticks(db, fleet_rows(far, 1, 2))
    assert query(db, "SELECT count(*) FROM subaccount_ticks WHERE observed_at = :t", t=far) == [
        (1,)
    ]


def test_the_worker_view_answers_per_worker_queries_exactly(db):
    workers = (
        sample("rig-a"),
        sample("rig\u00e9 \u2603", status="INACTIVE", hashrate_hs=0.0, last_share_time=None),
        sample("rig-c", hashrate_hs=None, efficiency=None, stale_shares=None, rejected_shares=None),
    )
    write_subaccount_ticks(db, [tick_rows(snapshot("site-x", T0, workers))])
    write_subaccount_ticks(
        db, [tick_rows(snapshot("site-x", T0 + timedelta(minutes=1), workers[:1]))]
    )
    rows = query(
        db,
        "SELECT observed_at, status, hashrate, efficiency, stale_shares, rejected_shares, "
        "last_share_time FROM worker_snapshots WHERE subaccount = 'site-x' "
        "AND worker_name = 'rig-a' ORDER BY observed_at",
    )
    assert [r[0] for r in rows] == [T0, T0 + timedelta(minutes=1)]
    _, status, hashrate, efficiency, stale, rejected, last_share = rows[0]
    assert (status, hashrate, efficiency) == ("ACTIVE", 1.234567890123e14, 0.9960606098175049)
    assert stale == pytest.approx(0.00066154, rel=1e-7) and rejected == 0.25  # float4 kept
    assert last_share == datetime(2026, 10, 5, 11, 59, 41, tzinfo=UTC)
    [(status, hashrate, last_share)] = query(
        db,
        "SELECT status, hashrate, last_share_time FROM worker_snapshots WHERE worker_name = :n",
        n="rig\u00e9 \u2603",
    )
    assert (status, hashrate, last_share) == ("INACTIVE", 0.0, None)
    [nulls] = query(
        db,
        "SELECT hashrate, efficiency, stale_shares, rejected_shares FROM worker_snapshots "
        "WHERE worker_name = 'rig-c'",
    )
    assert nulls == (None, None, None, None)
    assert query(
        db, "SELECT observed_at, active, inactive, workers FROM subaccount_snapshots ORDER BY 1"
    ) == [(T0, 2, 1, 3), (T0 + timedelta(minutes=1), 1, 0, 1)]


def test_replaying_a_tick_replaces_it_even_when_two_writers_race(db):
    first = fleet_rows(T0, 3, 5)
    write_subaccount_ticks(db, first)
    changed = [r | {"active": 1, "worker_hashrates": [7.0] * 5} for r in first]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_subaccount_ticks(db, changed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert query(db, "SELECT subaccount, active FROM subaccount_ticks ORDER BY 1") == [
        ("site-0", 1),
        ("site-1", 1),
        ("site-2", 1),
    ]
    assert query(db, "SELECT DISTINCT hashrate FROM worker_snapshots") == [(7.0,)]
    assert query(db, "SELECT count(*) FROM worker_snapshots") == [(15,)]


def test_rollups_aggregate_each_subaccount_hour(rollups):
    db = rollups
    for minute, active in ((0, 4), (20, 2), (40, 3), (60, 1)):
        rows = fleet_rows(T0 + timedelta(minutes=minute), 2, 4)
        for row in rows:
            row["active"], row["inactive"] = active, 4 - active
        write_subaccount_ticks(db, rows)
    settings = load_settings(retention_days=30, rollup_retention_days=400)
    run_maintenance(settings, engine=db, now=T0 + timedelta(hours=2))
    rows = query(
        db,
        "SELECT subaccount, hour, samples, active_avg, active_min, active_max, inactive_max, "
        "hashrate_min, hashrate_max FROM subaccount_rollups_hourly ORDER BY 1, 2",
    )
    assert rows[0] == ("site-0", T0, 3, 3.0, 2, 4, 2, 4e12 + 6, 4e12 + 6)
    assert rows[1] == ("site-0", T0 + timedelta(hours=1), 1, 1.0, 1, 1, 3, 4e12 + 6, 4e12 + 6)
    assert [r[:3] for r in rows[2:]] == [
        ("site-1", T0, 3),
        ("site-1", T0 + timedelta(hours=1), 1),
    ]
    # Running it again changes nothing.
    run_maintenance(settings, engine=db, now=T0 + timedelta(hours=2))
    assert query(db, "SELECT count(*), sum(samples) FROM subaccount_rollups_hourly") == [(4, 8)]


def test_retention_drops_whole_days_after_rolling_them_up(rollups):
    db = rollups
    days = [T0 + timedelta(days=n) for n in range(4)]  # Oct 5 .. Oct 8, at noon
    for day in days:
        write_subaccount_ticks(db, fleet_rows(day, 1, 2))
    now = datetime(2026, 11, 6, 1, 0, tzinfo=UTC)
    # 30 days before Nov 6 is Oct 7: the partitions of Oct 5 and 6 go, Oct 7 and 8 stay.
    report = run_maintenance(
        load_settings(retention_days=30, rollup_retention_days=400), engine=db, now=now
    )
    existing = partitions.partitions(db.connect())
    assert all(d.date() not in existing for d in days[:2])
    assert all(d.date() in existing for d in days[2:])
    assert {partitions.partition_name(d.date()) for d in days[:2]} <= set(report.dropped)
    ticks = [r[0] for r in query(db, "SELECT observed_at FROM subaccount_ticks ORDER BY 1")]
    assert ticks == days[2:]
    # Partitions ahead of today exist, so no tick waits for DDL.
    assert all((now + timedelta(days=n)).date() in existing for n in range(8))
    # The dropped days were rolled up before they went.
    hours = [r[0] for r in query(db, "SELECT hour FROM subaccount_rollups_hourly ORDER BY 1")]
    assert hours == days
    # Rollups have their own, longer retention: 30 days and one hour back from `now`.
    report = run_maintenance(
        load_settings(retention_days=30, rollup_retention_days=30), engine=db, now=now
    )
    assert report.deleted_rollups == 2
    hours = [r[0] for r in query(db, "SELECT hour FROM subaccount_rollups_hourly ORDER BY 1")]
    assert hours == days[2:]


def test_the_migration_keeps_rows_written_before_it(database_url):
    url = sa.engine.make_url(DATABASE_URL).set(database="luxor_etl_test_migrate03")
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        upgrade_schema(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO subaccount_ticks VALUES ('BTC', 'old', :t, 1, 1, 2.5, "
                    "ARRAY['a','b'], ARRAY[true,false], ARRAY[2.5,0], ARRAY[0.5,0.25], "
                    "ARRAY[0.125,0], ARRAY[0.0625,NULL], ARRAY[1790000000,NULL]::bigint[])"
                ),
                {"t": T0},
            )
        upgrade_schema(engine)
        assert query(
            engine,
            "SELECT worker_name, status, hashrate, efficiency, stale_shares, rejected_shares, "
            "last_share_time FROM worker_snapshots ORDER BY worker_name",
        ) == [
            ("a", "ACTIVE", 2.5, 0.5, 0.125, 0.0625, datetime.fromtimestamp(1790000000, UTC)),
            ("b", "INACTIVE", 0.0, 0.25, 0.0, None, None),
        ]
        downgrade_schema(engine, "0002")
        assert query(engine, "SELECT worker_name, rejected_shares FROM worker_snapshots") == [
            ("a", 0.0625),
            ("b", None),
        ]
        upgrade_schema(engine)
        assert query(engine, "SELECT count(*) FROM worker_snapshots") == [(2,)]
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        admin.dispose()


def test_arrays_reach_postgres_exactly_whatever_holds_nulls(db):
    row = fleet_rows(T0, 1, 5)[0] | {
        "worker_names": ["a", "b\u00e9", "", "d \u2603", "e"],
        "worker_active": [True, False, True, True, False],
        "worker_hashrates": [None, 1.5, None, None, 2.5],
        "worker_efficiencies": [0.1, 0.2, 0.3, 0.4, None],
        "worker_stale_shares": [None, None, None, None, None],
        "worker_rejected_shares": [0.5, 0.25, 0.125, 1e-3, 3.0],
        "worker_last_share_epochs": [1790000000, None, -5, 2**40, None],
    }
    empty = fleet_rows(T0, 2, 0)[1]
    write_subaccount_ticks(db, [row, empty])
    got = query(
        db,
        "SELECT worker_names, worker_active, worker_hashrates, worker_efficiencies, "
        "worker_stale_shares, worker_rejected_shares, worker_last_share_epochs "
        "FROM subaccount_ticks ORDER BY subaccount",
    )
    assert got[0][:4] == (
        row["worker_names"],
        row["worker_active"],
        row["worker_hashrates"],
        row["worker_efficiencies"],
    )
    assert got[0][4] == [None] * 5
    assert got[0][5] == pytest.approx([0.5, 0.25, 0.125, 1e-3, 3.0], rel=1e-7)
    assert got[0][6] == row["worker_last_share_epochs"]
    assert got[1] == ([], [], [], [], [], [], [])
