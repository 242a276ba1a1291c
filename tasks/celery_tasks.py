"""Thin Celery tasks around the tick; connections are made once per worker process."""

from __future__ import annotations

from functools import cache

import redis
from celery import Task, shared_task
from sqlalchemy.engine import Engine

from models.store import make_engine
from tasks.tick import SKIPPED_BUSY, run_tick_locked
from worker.celery_app import TICK_TASK, app
from worker.settings import Settings

LOCK_RETRY_S = 3


def _settings() -> Settings:
    return app.luxor_settings  # type: ignore[attr-defined]


@cache
def _engine() -> Engine:
    settings = _settings()
    return make_engine(
        settings.database_url, statement_timeout_s=settings.database_statement_timeout_seconds
    )


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(_settings().redis_url, socket_timeout=10, socket_connect_timeout=5)


@shared_task(bind=True, name=TICK_TASK, ignore_result=True, max_retries=None)
def tick(self: Task) -> int:
    """The beat-driven tick; returns its exit code (0 ok, 1 partial, 2 auth).

    While another tick holds the lock (a slow tick, or a crashed worker whose lock has not
    lapsed yet) it tries again shortly; the message's expiry bounds how long.
    """
    report = run_tick_locked(
        _settings(), engine=_engine(), redis_client=_redis(), skip_completed=True
    )
    if report.skipped == SKIPPED_BUSY:
        raise self.retry(countdown=LOCK_RETRY_S)
    return report.exit_code
