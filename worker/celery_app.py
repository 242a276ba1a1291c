"""The Celery app: broker, beat schedule and the limits that keep ticks bounded."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from celery import Celery, signals

from worker.errors import ConfigError
from worker.logs import setup_logging
from worker.settings import Settings, load_settings

TICK_TASK = "luxor.tick"
MAINTENANCE_TASK = "luxor.maintenance"  # partitions, rollups, retention (tasks/maintenance.py)


def create_app(settings: Settings) -> Celery:
    app = Celery("luxor_etl", broker=settings.broker_url, include=["tasks.celery_tasks"])
    time_limit = settings.tick_time_limit_seconds
    visibility_s = time_limit + 60
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_time_limit=time_limit,
        task_soft_time_limit=int(time_limit * 0.9),
        # A Redis broker hands an unacknowledged tick to another worker after this long; the
        # tick lock and the completed-tick check make a second run of a live tick harmless.
        broker_transport_options={"visibility_timeout": visibility_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
        beat_schedule={
            "luxor-tick": {
                "task": TICK_TASK,
                "schedule": float(settings.poll_interval_seconds),
                # A backlog after an outage is dropped, not replayed; the expiry still leaves
                # time for a crashed worker's tick to be redelivered. Extra copies that do
                # arrive find the tick completed and skip it.
                "options": {"expires": float(visibility_s + settings.poll_interval_seconds)},
            },
            "luxor-maintenance": {
                "task": MAINTENANCE_TASK,
                "schedule": 3600.0,
                "options": {"expires": 3600.0},
            },
        },
        beat_schedule_filename=str(
            Path(tempfile.gettempdir()) / f"luxor-etl-beat-{settings.cache_prefix}"
        ),
    )
    app.luxor_settings = settings  # type: ignore[attr-defined]
    return app


def _load_or_exit() -> Settings:
    try:
        settings = load_settings()
        settings.api_key  # noqa: B018 - validate the key now, not at the first tick
    except ConfigError as exc:
        print(f"luxor-etl: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


app = create_app(_load_or_exit())


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    setup_logging(app.luxor_settings.secrets())  # type: ignore[attr-defined]
