"""A real Celery worker and beat process land scheduled ticks through the broker."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import sqlalchemy as sa

from tests.integration.conftest import BROKER_URL, ROOT, etl_env


def start(env: dict[str, str], *args: str, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, *, kill: bool = False) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ticks_stored(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT observed_at, count(*) FROM subaccount_snapshots GROUP BY observed_at "
                    "ORDER BY observed_at"
                )
            )
        ]


@pytest.mark.sim(api_key="celery-run-secret-key-9")
def test_worker_and_beat_land_scheduled_ticks(db, redis_client, simulator, tmp_path):
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        POLL_INTERVAL_SECONDS="5",
        CACHE_PREFIX="celerytest",
    )
    worker = start(env, "worker", "--concurrency=2", log_path=tmp_path / "worker.log")
    beat = start(
        env, "beat", "--schedule", str(tmp_path / "beat-schedule"), log_path=tmp_path / "beat.log"
    )
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and len(ticks_stored(db)) < 2:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-3000:]
            time.sleep(0.5)
        stored = ticks_stored(db)
        worker_log = (tmp_path / "worker.log").read_text()
        assert len(stored) >= 2, worker_log[-3000:]
        # Each scheduled tick stored every subaccount once, with its own observed_at.
        assert all(count == 3 for _, count in stored)
        assert all(
            (b - a).total_seconds() % 5 == 0 for (a, _), (b, _) in itertools.pairwise(stored)
        )
        assert "tick done" in worker_log
        assert redis_client.get("celerytest:v1:BTC:summary") is not None
        assert redis_client.get("celerytest:internal:heartbeat:tick") is not None
        for log in (worker_log, (tmp_path / "beat.log").read_text()):
            assert "celery-run-secret-key-9" not in log
    finally:
        stop(beat)
        stop(worker)
