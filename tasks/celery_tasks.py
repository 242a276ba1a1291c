"""Thin Celery tasks around the tick; connections are made once per worker process."""

from __future__ import annotations

from functools import cache
from typing import Any

import redis
from celery import Task, shared_task
from sqlalchemy.engine import Engine

from models.store import make_engine
from tasks import alerts, scaleout
from tasks.maintenance import MAINTENANCE_TASK, run_maintenance
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
    settings = _settings()
    if settings.tick_chunk_subaccounts:
        report = scaleout.start_tick(
            settings,
            engine=_engine(),
            redis_client=_redis(),
            send_chunk=_send_chunk,
            alert_delivery=alerts.CELERY,
        )
    else:
        report = run_tick_locked(
            settings,
            engine=_engine(),
            redis_client=_redis(),
            skip_completed=True,
            alert_delivery=alerts.CELERY,
        )
    if report.skipped == SKIPPED_BUSY:
        raise self.retry(countdown=LOCK_RETRY_S)
    return report.exit_code


def _send_chunk(observed_at: str, index: int, names: list[str]) -> None:
    # A chunk not started while its tick could still finish is dropped, not run late.
    tick_chunk.apply_async(
        args=(observed_at, index, names), expires=float(_settings().tick_time_limit_seconds)
    )


@shared_task(name=scaleout.CHUNK_TASK, ignore_result=True)
def tick_chunk(observed_at: str, index: int, names: list[str]) -> str:
    """One chunk of a tick split across workers (TICK_CHUNK_SUBACCOUNTS)."""
    return scaleout.run_chunk(
        _settings(),
        engine=_engine(),
        redis_client=_redis(),
        observed_at=observed_at,
        index=index,
        names=names,
        alert_delivery=alerts.CELERY,
    )


@shared_task(name=MAINTENANCE_TASK, ignore_result=True)
def maintenance() -> None:
    """Partitions ahead, hourly rollups, retention (tasks/maintenance.py)."""
    run_maintenance(_settings(), engine=_engine())


@shared_task(bind=True, name=alerts.DELIVER_TASK, ignore_result=True, max_retries=None)
def deliver_alert(
    self: Task, notification_id: int | None = None, message: dict[str, Any] | None = None
) -> str:
    """Deliver one alert notification; network errors, 429 and 5xx retry with exponential
    backoff until its delivery window (an hour) closes, other 4xx fail at once."""
    # An ETA longer than the broker's visibility timeout would be handed out twice.
    visibility_s = (app.conf.broker_transport_options or {}).get("visibility_timeout", 3600)
    delay_s = min(alerts.task_backoff_s(self.request.retries), visibility_s / 2)
    if notification_id is not None:
        result = alerts.deliver_queued(
            _settings(),
            engine=_engine(),
            redis_client=_redis(),
            notification_id=notification_id,
            retry_delay_s=delay_s,
        )
    else:
        result = alerts.deliver_message(
            _settings(),
            redis_client=_redis(),
            message=message or {},
            attempt=self.request.retries,
            retry_delay_s=delay_s,
        )
    if result.retry_in_s is not None:
        raise self.retry(countdown=min(result.retry_in_s, visibility_s / 2))
    return result.result
