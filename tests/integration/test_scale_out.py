"""A tick split into chunks that two Celery worker processes take: one complete tick, once."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from tasks import scaleout
from tests.integration.conftest import BROKER_URL, etl_env, fetch_truth
from tests.integration.test_celery import start, stop
from worker import cache
from worker.settings import load_settings

PREFIX = "scaleout"


def worker_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT observed_at, subaccount, worker_name, status, hashrate "
                    "FROM worker_snapshots ORDER BY subaccount, worker_name"
                )
            )
        ]


@pytest.mark.sim(subaccounts=6, workers=40, latency_ms=300)
def test_two_workers_share_one_tick(db, redis_client, simulator, tmp_path):
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        CACHE_PREFIX=PREFIX,
        TICK_CHUNK_SUBACCOUNTS="1",
        LUXOR_TIMEOUT_SECONDS="5",
    )
    workers = [
        start(
            env,
            "worker",
            "--concurrency=1",
            f"--hostname=w{n}@%h",
            log_path=tmp_path / f"worker{n}.log",
        )
        for n in (1, 2)
    ]
    try:
        time.sleep(3)  # both consumers up before the chunks are queued
        Celery(broker=BROKER_URL).send_task("luxor.tick")
        keys = cache.CacheKeys(PREFIX)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and redis_client.get(keys.last_tick()) is None:
            for n, process in enumerate(workers, 1):
                assert process.poll() is None, (tmp_path / f"worker{n}.log").read_text()[-3000:]
            time.sleep(0.3)
        logs = [(tmp_path / f"worker{n}.log").read_text() for n in (1, 2)]
        assert redis_client.get(keys.last_tick()) is not None, logs[0][-3000:] + logs[1][-3000:]

        # Both processes fetched chunks of the same tick.
        assert all("tick chunk done" in text for text in logs), logs
        assert sum(text.count("tick chunk done") for text in logs) == 6
        assert sum(text.count("tick done") for text in logs) == 1

        truth = fetch_truth(simulator)
        rows = worker_rows(db)
        assert len({r[0] for r in rows}) == 1  # one tick
        keyed = [(r[1], r[2]) for r in rows]
        assert len(keyed) == len(set(keyed)) == sum(len(w) for w in truth.values())
        expected = sorted(
            (name, w["name"], w["status"], float(w["hashrate"]))
            for name, ws in truth.items()
            for w in ws
        )
        assert sorted(r[1:] for r in rows) == expected

        summary = cache.read_summary(redis_client, keys, "BTC")
        assert summary["subaccounts"] == 6
        assert summary["stale_subaccounts"] == summary["missing_subaccounts"] == []
        assert summary["active"] == sum(
            1 for ws in truth.values() for w in ws if w["status"] == "ACTIVE"
        )
        listing = cache.read_subaccounts(redis_client, keys, "BTC")
        assert sorted(e["subaccount"] for e in listing) == sorted(truth)
        for name in truth:
            entry = cache.read_subaccount(redis_client, keys, "BTC", name)
            assert entry["observed_at"] == summary["observed_at"]
            assert len(entry["workers"]) == len(truth[name])
        assert not list(redis_client.scan_iter(f"{PREFIX}:internal:staging:*"))
        assert not list(redis_client.scan_iter(f"{PREFIX}:internal:tick:*"))
        assert redis_client.get(keys.tick_lock()) is None
    finally:
        for process in workers:
            stop(process)


@pytest.mark.sim(subaccounts=5, workers=30)
def test_a_redelivered_chunk_neither_duplicates_nor_publishes_twice(db, redis_client, simulator):
    url = db.url.render_as_string(hide_password=False)
    env = etl_env(url, simulator, CACHE_PREFIX=PREFIX, TICK_CHUNK_SUBACCOUNTS="2")
    settings = load_settings(**{k.lower(): v for k, v in env.items() if k not in ("PATH", "HOME")})
    now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    sent: list[tuple] = []
    report = scaleout.start_tick(
        settings,
        engine=db,
        redis_client=redis_client,
        send_chunk=lambda *a: sent.append(a),
        now=now,
    )
    assert report.skipped is None and [len(names) for _, _, names in sent] == [2, 2, 1]
    # A second beat while the chunks run finds the tick locked.
    again = scaleout.start_tick(
        settings,
        engine=db,
        redis_client=redis_client,
        send_chunk=lambda *a: sent.append(a),
        now=now,
    )
    assert again.skipped is not None and len(sent) == 3

    def run(args: tuple) -> str:
        tick, index, names = args
        return scaleout.run_chunk(
            settings,
            engine=db,
            redis_client=redis_client,
            observed_at=tick,
            index=index,
            names=names,
        )

    assert run(sent[0]) == "chunk done"
    assert run(sent[0]) == "chunk done"  # redelivered before the tick completes
    assert run(sent[1]) == "chunk done"
    assert run(sent[2]) == "tick published"
    assert run(sent[1]) == "expired"  # redelivered after: nothing is written again

    with db.connect() as conn:
        counts = conn.execute(
            sa.text("SELECT subaccount, count(*) FROM subaccount_snapshots GROUP BY subaccount")
        ).all()
    assert sorted(counts) == [(f"site-0{n}", 1) for n in range(5)]
    assert len(worker_rows(db)) == 5 * 30
    keys = cache.CacheKeys(PREFIX)
    assert cache.read_summary(redis_client, keys, "BTC")["observed_at"] == "2026-12-03T10:00:00Z"
    assert redis_client.get(keys.last_tick()) == b"2026-12-03T10:00:00Z"
    assert redis_client.get(keys.tick_lock()) is None
