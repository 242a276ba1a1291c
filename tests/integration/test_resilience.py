"""Faults, outages and limits: every stored row and cache value is exact or absent."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tasks.tick import run_tick_locked
from tests.integration.conftest import REDIS_URL, arm_fault, etl_env, fetch_truth
from worker import cache, outbox
from worker.luxor.simulator import FAULT_KINDS
from worker.ratelimit import SharedRateLimiter
from worker.settings import load_settings

TICK = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
# Every other fault kind of the simulator must be survived by retrying.
UNRECOVERABLE = {"loop_pagination": "bad_response", "400": "rejected", "401": "auth"}
SURVIVABLE = [kind for kind in FAULT_KINDS if kind not in UNRECOVERABLE]


def settings_for(database_url, sim, **extra):
    env = etl_env(
        database_url, sim, **{"POLL_INTERVAL_SECONDS": "60", "LUXOR_TIMEOUT_SECONDS": "1", **extra}
    )
    return load_settings(**{k.lower(): v for k, v in env.items() if k not in ("PATH", "HOME")})


def stored(engine) -> dict[tuple, list[tuple]]:
    """(observed_at, subaccount) -> sorted (worker_name, status, hashrate) rows."""
    result: dict[tuple, list[tuple]] = {}
    with engine.connect() as conn:
        for row in conn.execute(
            sa.text(
                "SELECT observed_at, subaccount, worker_name, status, hashrate "
                "FROM worker_snapshots"
            )
        ):
            result.setdefault((row[0], row[1]), []).append((row[2], row[3], row[4]))
    return {k: sorted(v) for k, v in result.items()}


def expected(truth: dict[str, list[dict]], subaccount: str) -> list[tuple]:
    return sorted((w["name"], w["status"], float(w["hashrate"])) for w in truth[subaccount])


@pytest.mark.parametrize("kind", SURVIVABLE)
@pytest.mark.sim(workers=250, subaccounts=2)
def test_a_transient_fault_is_retried_into_an_exact_snapshot(kind, db, redis_client, simulator):
    truth = fetch_truth(simulator)
    page = 2 if kind in ("repeat_page", "shift_items") else None
    arm_fault(
        simulator,
        kind=kind,
        count=1,
        endpoint="workers",
        subaccount="site-00",
        page=page,
        delay_s=3,
        retry_after_s=1,
    )
    report = run_tick_locked(
        settings_for(db.url.render_as_string(hide_password=False), simulator),
        engine=db,
        redis_client=redis_client,
        now=TICK,
    )
    assert report.exit_code == 0, report.failures
    rows = stored(db)
    assert rows[(TICK, "site-00")] == expected(truth, "site-00")
    assert rows[(TICK, "site-01")] == expected(truth, "site-01")
    entry = cache.read_subaccount(redis_client, cache.CacheKeys("luxor"), "BTC", "site-00")
    assert entry["active"] + entry["inactive"] == len(entry["workers"]) == 250


@pytest.mark.parametrize(
    ("kind", "error"), [(k, e) for k, e in UNRECOVERABLE.items() if k != "401"]
)
@pytest.mark.sim(workers=250, subaccounts=2)
def test_an_unrecoverable_listing_leaves_a_gap_not_a_part(kind, error, db, redis_client, simulator):
    arm_fault(simulator, kind=kind, probability=1.0, endpoint="workers", subaccount="site-00")
    report = run_tick_locked(
        settings_for(db.url.render_as_string(hide_password=False), simulator),
        engine=db,
        redis_client=redis_client,
        now=TICK,
    )
    assert report.exit_code == 1
    assert [(f.subaccount, f.error) for f in report.failures] == [("site-00", error)]
    assert set(stored(db)) == {(TICK, "site-01")}
    assert cache.read_subaccount(redis_client, cache.CacheKeys("luxor"), "BTC", "site-00") is None


@pytest.mark.sim(workers=250, subaccounts=3)
def test_a_401_in_the_middle_of_a_tick_stores_nothing_partial(db, redis_client, simulator):
    arm_fault(simulator, kind="401", count=1, endpoint="workers", subaccount="site-01", page=2)
    report = run_tick_locked(
        settings_for(db.url.render_as_string(hide_password=False), simulator),
        engine=db,
        redis_client=redis_client,
        now=TICK,
    )
    assert report.exit_code == 2
    assert "site-01" not in {s for _, s in stored(db)}
    assert [(f.subaccount, f.error) for f in report.failures] == [("site-01", "auth")]


@pytest.mark.sim(subaccounts=3, workers=50)
def test_a_hanging_api_cannot_outlast_the_tick_deadline(db, redis_client, simulator):
    arm_fault(simulator, kind="hang", probability=1.0, subaccount="site-02")
    settings = settings_for(
        db.url.render_as_string(hide_password=False),
        simulator,
        POLL_INTERVAL_SECONDS="5",
        LUXOR_TIMEOUT_SECONDS="2",
    )
    started = time.monotonic()
    report = run_tick_locked(settings, engine=db, redis_client=redis_client)
    assert time.monotonic() - started < 5
    assert [f.subaccount for f in report.failures] == ["site-02"]
    assert "deadline" in report.failures[0].reason
    assert redis_client.get(cache.CacheKeys("luxor").tick_lock()) is None  # lock released


def test_postgres_away_parks_rows_and_the_next_tick_writes_them_first(db, redis_client, simulator):
    url = db.url.render_as_string(hide_password=False)
    settings = settings_for(url, simulator)
    from models.store import make_engine

    away = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/luxor_etl_test")
    truth_first = fetch_truth(simulator)
    first = run_tick_locked(settings, engine=away, redis_client=redis_client, now=TICK)
    assert first.exit_code == 1 and first.parked and first.store_error
    keys = cache.CacheKeys("luxor")
    assert outbox.depth(redis_client, keys) == 1
    assert cache.read_summary(redis_client, keys, "BTC")["subaccounts"] == 3  # cache kept going

    httpx_down = simulator.control_url + "/workers/down"
    import httpx

    httpx.post(httpx_down, json={"subaccount": "site-00", "count": 7}).raise_for_status()
    second = run_tick_locked(
        settings, engine=db, redis_client=redis_client, now=TICK + timedelta(minutes=1)
    )
    assert second.exit_code == 0 and second.replayed_rows == 3
    assert outbox.depth(redis_client, keys) == 0
    rows = stored(db)
    for name in ("site-00", "site-01", "site-02"):
        assert rows[(TICK, name)] == expected(truth_first, name)  # same rows, same observed_at
    assert len(rows) == 6


def test_the_outbox_is_bounded_and_overflow_is_counted(redis_client):
    keys = cache.CacheKeys("luxor")
    for n in range(5):
        outbox.park(redis_client, keys, [{"n": n}], max_ticks=3)
    assert outbox.depth(redis_client, keys) == 3
    assert outbox.dropped(redis_client, keys) == 2
    seen: list[int] = []
    outbox.drain(redis_client, keys, lambda rows: seen.append(rows[0]["n"]) or 1)
    assert seen == [2, 3, 4]  # oldest kept first


def test_the_rate_limit_is_shared_between_limiter_instances():
    async def go() -> float:
        a = SharedRateLimiter(REDIS_URL, "ratetest", per_second=10, burst=1)
        b = SharedRateLimiter(REDIS_URL, "ratetest", per_second=10, burst=1)
        started = time.monotonic()
        await asyncio.gather(*(lim.acquire() for lim in [a, b] * 10))
        elapsed = time.monotonic() - started
        await a.aclose()
        await b.aclose()
        return elapsed

    assert asyncio.run(go()) >= 1.7  # 20 requests at 10/s with a burst of 1


def test_a_retry_after_pause_holds_back_every_worker(redis_client):
    async def go() -> float:
        told = SharedRateLimiter(REDIS_URL, "pausetest", per_second=0, burst=1)
        other = SharedRateLimiter(REDIS_URL, "pausetest", per_second=0, burst=1)
        await told.pause(1.0)
        started = time.monotonic()
        await other.acquire()
        elapsed = time.monotonic() - started
        await told.aclose()
        await other.aclose()
        return elapsed

    assert asyncio.run(go()) >= 0.9


def test_a_redis_outage_does_not_stop_requests():
    async def go() -> float:
        limiter = SharedRateLimiter("redis://127.0.0.1:1/0", "x", per_second=1, burst=1)
        started = time.monotonic()
        for _ in range(3):
            await limiter.acquire()
        await limiter.aclose()
        return time.monotonic() - started

    assert asyncio.run(go()) < 2
