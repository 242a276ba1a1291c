"""Storage upkeep on beat: daily partitions ahead, hourly rollups, retention.

Order matters: rollups are brought up to date (and a partition's whole day rolled up) before
that partition is dropped, so the long-lived rollups never miss an hour the ticks had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from models import partitions
from worker.settings import Settings

log = logging.getLogger("luxor_etl.maintenance")

MAINTENANCE_TASK = "luxor.maintenance"  # the same name as worker/celery_app.py
# Partitions created ahead of time, so no tick pays for creating one.
PARTITIONS_AHEAD_DAYS = 7
# Hours recomputed on every run: ticks parked in the outbox can land up to a day late.
ROLLUP_LOOKBACK = timedelta(hours=26)


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    rolled_up: int = 0
    dropped: list[str] = field(default_factory=list)
    deleted_ticks: int = 0
    deleted_rollups: int = 0


def run_maintenance(
    settings: Settings, *, engine: Engine, now: datetime | None = None
) -> MaintenanceReport:
    """Create partitions ahead, roll up recent hours, drop and delete what retention allows."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    today = now.date()
    report = MaintenanceReport()
    postgres = engine.dialect.name == "postgresql"
    tick_cutoff_day = today - timedelta(days=settings.retention_days)
    tick_cutoff = datetime(
        tick_cutoff_day.year, tick_cutoff_day.month, tick_cutoff_day.day, tzinfo=UTC
    )

    with engine.begin() as conn:
        if postgres:
            report.created = partitions.ensure_partitions(
                conn, [today + timedelta(days=n) for n in range(-1, PARTITIONS_AHEAD_DAYS + 1)]
            )
        latest = partitions.latest_rollup_hour(conn)
        since = now - ROLLUP_LOOKBACK
        if latest is None:
            since = min(since, partitions.earliest_tick(conn) or since)
        else:
            since = min(since, latest)
        report.rolled_up = partitions.rollup_hours(conn, since, now)

    with engine.begin() as conn:
        if postgres:
            for day, _name in sorted(partitions.partitions(conn).items()):
                if day >= tick_cutoff_day:
                    break
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                report.rolled_up += partitions.rollup_hours(conn, start, start + timedelta(days=1))
            report.dropped = partitions.drop_partitions_before(conn, tick_cutoff_day)
        else:
            oldest = partitions.earliest_tick(conn)
            if oldest is not None and oldest < tick_cutoff:
                report.rolled_up += partitions.rollup_hours(conn, oldest, tick_cutoff)
            report.deleted_ticks = partitions.delete_ticks_before(conn, tick_cutoff)
        report.deleted_rollups = partitions.delete_rollups_before(
            conn, now - timedelta(days=settings.rollup_retention_days)
        )

    log.info(
        "maintenance done",
        extra={
            "partitions_created": len(report.created),
            "partitions_dropped": len(report.dropped),
            "rollup_rows": report.rolled_up,
            "rollups_deleted": report.deleted_rollups,
        },
    )
    return report
