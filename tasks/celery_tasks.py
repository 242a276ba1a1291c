"""Thin Celery tasks around the tick; connections are made once per worker process."""

from __future__ import annotations

from functools import cache

import redis
from celery import shared_task
from sqlalchemy.engine import Engine

from models.store import make_engine
from tasks.tick import run_tick_locked
from worker.celery_app import TICK_TASK, app
from worker.settings import Settings


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


@shared_task(name=TICK_TASK, ignore_result=True)
def tick() -> int:
    """The beat-driven tick; returns its exit code (0 ok, 1 partial, 2 auth)."""
    report = run_tick_locked(
        _settings(), engine=_engine(), redis_client=_redis(), skip_completed=True
    )
    return report.exit_code
