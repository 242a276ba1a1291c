"""A whole tick against the simulator over HTTP, real PostgreSQL and real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tasks.tick import run_tick_locked
from tests.integration.conftest import (
    arm_fault,
    assert_secrets_absent,
    etl_env,
    fetch_truth,
    run_cli,
)
from worker import cache
from worker.settings import load_settings

TICK = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def settings_for(database_url, sim, **extra):
    env = etl_env(database_url, sim, **extra)
    return load_settings(**{k.lower(): v for k, v in env.items() if k not in ("PATH", "HOME")})


def worker_rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                sa.text("SELECT * FROM worker_snapshots ORDER BY subaccount, worker_name")
            )
        ]


def subaccount_rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                sa.text("SELECT * FROM subaccount_snapshots ORDER BY observed_at, subaccount")
            )
        ]


@pytest.mark.sim(hostile_names=True, subaccounts=4, workers=230)
def test_poll_once_stores_and_caches_exactly_what_the_api_says(db, redis_client, simulator):
    truth = fetch_truth(simulator)
    result = run_cli(etl_env(db.url.render_as_string(hide_password=False), simulator), "poll-once")
    assert result.returncode == 0, result.stderr
    assert "4 ok, 0 failed" in result.stdout

    stored = worker_rows(db)
    assert len(stored) == sum(len(w) for w in truth.values()) == 4 * 230
    by_key = {(r["subaccount"], r["worker_name"]): r for r in stored}
    for subaccount, workers in truth.items():
        for w in workers:
            row = by_key[(subaccount, w["name"])]
            assert row["status"] == w["status"]
            assert row["hashrate"] == float(w["hashrate"])  # strings and numbers alike
            assert row["efficiency"] == w["efficiency"]
            if w.get("last_share_time"):
                assert row["last_share_time"].strftime("%Y-%m-%dT%H:%M:%SZ") == w["last_share_time"]
            else:
                assert row["last_share_time"] is None

    keys = cache.CacheKeys("luxor")
    summary = cache.read_summary(redis_client, keys, "BTC")
    assert summary["active"] == sum(
        1 for ws in truth.values() for w in ws if w["status"] == "ACTIVE"
    )
    assert summary["subaccounts"] == 4 and summary["missing_subaccounts"] == []
    for subaccount, workers in truth.items():
        entry = cache.read_subaccount(redis_client, keys, "BTC", subaccount)
        assert entry["subaccount"] == subaccount
        assert sorted(w["name"] for w in entry["workers"]) == sorted(w["name"] for w in workers)
    listing = cache.read_subaccounts(redis_client, keys, "BTC")
    assert sorted(e["subaccount"] for e in listing) == sorted(truth)
    # Every contract key lives under the prefix; hostile names cannot escape their segment.
    for key in redis_client.scan_iter("luxor:v1:*"):
        assert key.decode().count(":") == (3 if key.endswith((b":summary", b":subaccounts")) else 4)


def test_running_the_same_tick_again_replaces_rows(db, redis_client, simulator):
    env = etl_env(db.url.render_as_string(hide_password=False), simulator)
    assert run_cli(env, "poll-once").returncode == 0
    assert run_cli(env, "poll-once").returncode == 0
    rows = subaccount_rows(db)
    assert len(rows) == 3 and len({r["observed_at"] for r in rows}) == 1
    assert len(worker_rows(db)) == 3 * 120


def test_a_failing_subaccount_is_a_gap_with_its_old_cache_kept(db, redis_client, simulator):
    settings = settings_for(
        db.url.render_as_string(hide_password=False),
        simulator,
        POLL_INTERVAL_SECONDS="60",
        LUXOR_MAX_ATTEMPTS="2",
    )
    first = run_tick_locked(settings, engine=db, redis_client=redis_client, now=TICK)
    assert first.exit_code == 0
    arm_fault(simulator, kind="503", probability=1.0, subaccount="site-01")

    second = run_tick_locked(
        settings, engine=db, redis_client=redis_client, now=TICK + timedelta(minutes=1)
    )
    assert second.exit_code == 1
    assert [f.subaccount for f in second.failures] == ["site-01"]
    assert "503" in second.failures[0].reason

    rows = subaccount_rows(db)
    per_tick = {}
    for r in rows:
        per_tick.setdefault(r["observed_at"], set()).add(r["subaccount"])
    assert list(per_tick.values()) == [{"site-00", "site-01", "site-02"}, {"site-00", "site-02"}]

    keys = cache.CacheKeys(settings.cache_prefix)
    summary = cache.read_summary(redis_client, keys, "BTC")
    assert summary["stale_subaccounts"] == ["site-01"]
    assert summary["observed_at"] == "2026-12-03T10:01:00Z"
    stale = cache.read_subaccount(redis_client, keys, "BTC", "site-01")
    assert stale["stale"] is True and stale["observed_at"] == "2026-12-03T10:00:00Z"


def test_poll_once_exits_1_and_names_the_failed_subaccount(db, redis_client, simulator):
    arm_fault(simulator, kind="500", probability=1.0, subaccount="site-02")
    env = etl_env(db.url.render_as_string(hide_password=False), simulator, LUXOR_MAX_ATTEMPTS="2")
    result = run_cli(env, "poll-once")
    assert result.returncode == 1
    assert "site-02" in result.stdout and "FAILED unavailable" in result.stdout
    assert "subaccount fetch failed" in result.stderr and "subaccount=site-02" in result.stderr
    assert {r["subaccount"] for r in subaccount_rows(db)} == {"site-00", "site-01"}


def test_a_refused_key_exits_2_and_stores_nothing(db, redis_client, simulator):
    env = etl_env(
        db.url.render_as_string(hide_password=False), simulator, LUXOR_API_KEY="wrong-key-0042"
    )
    result = run_cli(env, "poll-once")
    assert result.returncode == 2
    assert "refused the key" in result.stdout
    assert subaccount_rows(db) == []
    assert "wrong-key-0042" not in result.stdout + result.stderr


def test_a_bearer_prefixed_key_is_a_config_error(db, simulator):
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        LUXOR_API_KEY=f"Bearer {simulator.api_key}",
    )
    result = run_cli(env, "poll-once")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("luxor-etl: configuration error: LUXOR_API_KEY:")
    assert "Traceback" not in result.stderr


@pytest.mark.sim(api_key="k3y-that-must-never-leak-77")
def test_the_api_key_appears_in_no_output_row_or_cache_value(db, redis_client, simulator):
    arm_fault(simulator, kind="429_retry_after", count=2)
    arm_fault(simulator, kind="500", probability=1.0, subaccount="site-00")
    env = etl_env(db.url.render_as_string(hide_password=False), simulator, LUXOR_MAX_ATTEMPTS="2")
    outputs = [
        run_cli(env, "poll-once"),
        run_cli(env, "poll-once", "--json"),
        run_cli(env, "status"),
        run_cli(env, "status", "--json"),
    ]
    assert_secrets_absent(
        ["k3y-that-must-never-leak-77"], outputs=outputs, engine=db, redis_client=redis_client
    )


def test_postgres_away_still_refreshes_the_cache_and_exits_1(redis_client, simulator):
    env = etl_env("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", simulator)
    result = run_cli(env, "poll-once")
    assert result.returncode == 1
    assert "PostgreSQL:" in result.stdout
    assert "Traceback" not in result.stderr
    summary = cache.read_summary(redis_client, cache.CacheKeys("luxor"), "BTC")
    assert summary is not None and summary["subaccounts"] == 3


def test_redis_away_still_writes_postgres_and_exits_1(db, simulator):
    env = etl_env(
        db.url.render_as_string(hide_password=False), simulator, REDIS_URL="redis://127.0.0.1:1/0"
    )
    result = run_cli(env, "poll-once")
    assert result.returncode == 1
    assert "Redis:" in result.stdout and "Traceback" not in result.stderr
    assert len(subaccount_rows(db)) == 3


def test_status_reads_what_the_dashboard_sees(db, redis_client, simulator):
    env = etl_env(db.url.render_as_string(hide_password=False), simulator)
    empty = run_cli(env, "status")
    assert empty.returncode == 0 and "unknown" in empty.stdout
    assert run_cli(env, "poll-once").returncode == 0
    shown = run_cli(env, "status")
    assert "BTC:" in shown.stdout and "across 3 subaccounts" in shown.stdout
    assert run_cli(env, "status", "--health").returncode == 0


def test_migrate_creates_a_missing_database_and_is_repeatable(database_url):
    from sqlalchemy.engine import make_url

    name = f"luxor_etl_migrate_{datetime.now(UTC):%H%M%S%f}"
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    env = etl_env(url, None)
    try:
        first = run_cli(env, "migrate")
        assert first.returncode == 0, first.stderr
        assert "database created" in first.stdout
        second = run_cli(env, "migrate")
        assert second.returncode == 0 and "created" not in second.stdout
        assert "schema revision" in second.stdout
    finally:
        admin = sa.create_engine(
            make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_nul_in_a_name_is_stored_replaced_and_cached_exactly(db, redis_client):
    from models.store import write_subaccount_ticks
    from tasks.tick import tick_rows
    from worker.snapshot import FleetSnapshot, SubaccountSnapshot, WorkerSample

    worker = WorkerSample("1", "rig\x00one", "ACTIVE", 1e14, None, None, None, None, None)
    snap = SubaccountSnapshot("BTC", "site\x00x", TICK, 1, 0, 1e14, (worker,))
    assert write_subaccount_ticks(db, [tick_rows(snap)]) == 1
    [row] = worker_rows(db)
    assert (row["subaccount"], row["worker_name"]) == ("site\ufffdx", "rig\ufffdone")
    fleet = FleetSnapshot("BTC", TICK, ("site\x00x",), (snap,), ())
    keys = cache.CacheKeys("luxor")
    cache.publish_fleet(redis_client, fleet, keys=keys, ttl_seconds=300)
    entry = cache.read_subaccount(redis_client, keys, "BTC", "site\x00x")
    assert entry["workers"][0]["name"] == "rig\x00one"
