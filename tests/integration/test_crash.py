"""Crashes and mistakes: kill -9 mid-tick, and two beats, never duplicate a tick."""

from __future__ import annotations

import time

import httpx
import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from tests.integration.conftest import BROKER_URL, etl_env
from tests.integration.test_celery import start, stop, ticks_stored

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def purge(broker_url: str) -> None:
    app = Celery(broker=broker_url)
    try:
        app.control.purge()
    finally:
        app.close()


def requests_seen(sim) -> int:
    return httpx.get(f"{sim.control_url}/stats").json()["requests_total"]


@pytest.mark.sim(subaccounts=3, workers=250, latency_ms=700)
def test_a_worker_killed_mid_tick_is_replaced_and_the_tick_lands_once(
    db, redis_client, simulator, tmp_path
):
    purge(RABBITMQ_URL)
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        CELERY_BROKER_URL=RABBITMQ_URL,
        POLL_INTERVAL_SECONDS="300",
        CACHE_PREFIX="crash",
    )
    first = start(env, "worker", "--concurrency=1", log_path=tmp_path / "first.log")
    try:
        sender = Celery(broker=RABBITMQ_URL)
        sender.send_task("luxor.tick", expires=240)
        sender.close()
        deadline = time.monotonic() + 30
        while requests_seen(simulator) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert requests_seen(simulator) >= 3, (tmp_path / "first.log").read_text()[-2000:]
        stop(first, kill=True)  # kill -9 the worker and its pool mid-tick
        assert ticks_stored(db) == []

        second = start(env, "worker", "--concurrency=1", log_path=tmp_path / "second.log")
        try:
            deadline = time.monotonic() + 60
            while not ticks_stored(db) and time.monotonic() < deadline:
                time.sleep(0.5)
            log = (tmp_path / "second.log").read_text()
            assert ticks_stored(db) != [], log[-3000:]
            time.sleep(2)
            stored = ticks_stored(db)
            assert len(stored) == 1 and stored[0][1] == 3  # one tick, every subaccount once
            assert log.count("tick done") == 1
        finally:
            stop(second)
    finally:
        stop(first, kill=True)


@pytest.mark.sim(subaccounts=3, workers=40)
def test_two_beats_by_mistake_still_give_one_tick_per_period(db, redis_client, simulator, tmp_path):
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        POLL_INTERVAL_SECONDS="5",
        CACHE_PREFIX="twobeats",
    )
    worker = start(env, "worker", "--concurrency=2", log_path=tmp_path / "worker.log")
    beats = [
        start(
            env,
            "beat",
            "--schedule",
            str(tmp_path / f"beat-{n}"),
            log_path=tmp_path / f"beat-{n}.log",
        )
        for n in (1, 2)
    ]
    try:
        deadline = time.monotonic() + 40
        while len(ticks_stored(db)) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
    finally:
        for process in beats:
            stop(process)
        time.sleep(3)
        stop(worker)
    log = (tmp_path / "worker.log").read_text()
    sent = sum((tmp_path / f"beat-{n}.log").read_text().count("Sending due task") for n in (1, 2))
    stored = ticks_stored(db)
    assert len(stored) >= 3, log[-3000:]
    assert sent > len(stored)  # both beats really sent ticks
    assert all(count == 3 for _, count in stored)
    assert log.count("tick done") == len(stored)  # every extra copy was skipped
    with db.connect() as conn:
        dupes = conn.scalar(
            sa.text(
                "SELECT count(*) FROM (SELECT observed_at, subaccount, worker_name, count(*) "
                "FROM worker_snapshots GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
            )
        )
    assert dupes == 0
