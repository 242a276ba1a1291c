"""Daily partitions of `subaccount_ticks`, retention by dropping them, and hourly rollups.

PostgreSQL only, except the rollups and retention, which have a plain-SQL fallback for the
SQLite demo database.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from models.tables import subaccount_rollups_hourly, subaccount_ticks

PARENT = "subaccount_ticks"
PARTITION_PREFIX = f"{PARENT}_p"
# Storage parameters cannot be set on a partitioned parent; every partition repeats them.
PARTITION_OPTIONS = "WITH (toast_tuple_target = 128)"
_NAME_RE = re.compile(rf"^{PARTITION_PREFIX}(\d{{8}})$")
# Serialises partition creation between processes (an arbitrary, fixed advisory lock key).
_CREATE_LOCK_KEY = 0x6C75786F72  # "luxor"

_known_lock = threading.Lock()
_known: set[tuple[str, date]] = set()


def partition_name(day: date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _database_identity(conn: Connection) -> str:
    url = conn.engine.url
    return f"{url.host}:{url.port}/{url.database}"


def forget_partitions(conn: Connection) -> None:
    """Drop this process's memory of which partitions exist (after an error or a drop)."""
    identity = _database_identity(conn)
    with _known_lock:
        for key in [k for k in _known if k[0] == identity]:
            _known.discard(key)


def ensure_partitions(conn: Connection, days: Iterable[date]) -> list[str]:
    """Create the daily partitions for `days` that do not exist yet; returns those created.

    Runs in the caller's transaction. Each process remembers the days it has seen, so the
    hot write path asks the catalog once per day, not once per write.
    """
    identity = _database_identity(conn)
    created: list[str] = []
    for day in sorted(set(days)):
        with _known_lock:
            if (identity, day) in _known:
                continue
        name = partition_name(day)
        if conn.scalar(sa.text("SELECT to_regclass(:name)"), {"name": name}) is None:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK_KEY})
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            end = start + timedelta(days=1)
            result = conn.execute(
                sa.text(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {PARENT} "
                    f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}') "
                    f"{PARTITION_OPTIONS}"
                )
            )
            result.close()
            created.append(name)
        with _known_lock:
            _known.add((identity, day))
    return created


def partitions(conn: Connection) -> dict[date, str]:
    """The daily partitions that exist now, by day."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": PARENT},
    )
    found: dict[date, str] = {}
    for (name,) in rows:
        match = _NAME_RE.match(name)
        if match:
            found[datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return found


def drop_partitions_before(conn: Connection, cutoff: date) -> list[str]:
    """Drop every daily partition whose day ends on or before `cutoff`; returns their names."""
    dropped = []
    for day, name in sorted(partitions(conn).items()):
        if day + timedelta(days=1) <= cutoff:
            conn.execute(sa.text(f"DROP TABLE {name}"))
            dropped.append(name)
    if dropped:
        forget_partitions(conn)
    return dropped


def _rollup_values(rows: Iterable[Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, datetime], list[Any]] = defaultdict(list)
    for row in rows:
        moment = row.observed_at
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        hour = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        groups[row.currency, row.subaccount, hour].append(row)
    values = []
    for (currency, subaccount, hour), members in groups.items():
        actives = [m.active for m in members]
        inactives = [m.inactive for m in members]
        hashrates = [m.hashrate for m in members]
        values.append(
            {
                "currency": currency,
                "subaccount": subaccount,
                "hour": hour,
                "samples": len(members),
                "active_avg": sum(actives) / len(actives),
                "active_min": min(actives),
                "active_max": max(actives),
                "inactive_avg": sum(inactives) / len(inactives),
                "inactive_min": min(inactives),
                "inactive_max": max(inactives),
                "hashrate_avg": sum(hashrates) / len(hashrates),
                "hashrate_min": min(hashrates),
                "hashrate_max": max(hashrates),
            }
        )
    return values


_AGGREGATES = """
    count(*) AS samples,
    avg(active) AS active_avg, min(active) AS active_min, max(active) AS active_max,
    avg(inactive) AS inactive_avg, min(inactive) AS inactive_min, max(inactive) AS inactive_max,
    avg(hashrate) AS hashrate_avg, min(hashrate) AS hashrate_min, max(hashrate) AS hashrate_max
"""
_ROLLUP_COLUMNS = tuple(c.name for c in subaccount_rollups_hourly.columns)
_ROLLUP_KEY = ("currency", "subaccount", "hour")


def rollup_hours(conn: Connection, since: datetime, until: datetime) -> int:
    """(Re)compute the hourly rollups of every hour that starts in [since, until)."""
    since = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    until = until.astimezone(UTC)
    if until <= since:
        return 0
    if conn.dialect.name == "postgresql":
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ROLLUP_COLUMNS if c not in _ROLLUP_KEY)
        result = conn.execute(
            sa.text(
                f"INSERT INTO subaccount_rollups_hourly ({', '.join(_ROLLUP_COLUMNS)}) "
                f"SELECT currency, subaccount, date_trunc('hour', observed_at, 'UTC') AS hour, "
                f"{_AGGREGATES} FROM subaccount_ticks "
                "WHERE observed_at >= :since AND observed_at < :until "
                "GROUP BY 1, 2, 3 "
                f"ON CONFLICT (currency, subaccount, hour) DO UPDATE SET {updates}"
            ),
            {"since": since, "until": until},
        )
        return result.rowcount
    t = subaccount_ticks.c
    rows = conn.execute(
        sa.select(t.currency, t.subaccount, t.observed_at, t.active, t.inactive, t.hashrate).where(
            t.observed_at >= since, t.observed_at < until
        )
    )
    values = _rollup_values(rows)
    if not values:
        return 0
    statement = sqlite.insert(subaccount_rollups_hourly)
    statement = statement.on_conflict_do_update(
        index_elements=list(_ROLLUP_KEY),
        set_={c: statement.excluded[c] for c in _ROLLUP_COLUMNS if c not in _ROLLUP_KEY},
    )
    conn.execute(statement, values)
    return len(values)


def latest_rollup_hour(conn: Connection) -> datetime | None:
    value = conn.scalar(sa.select(sa.func.max(subaccount_rollups_hourly.c.hour)))
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def earliest_tick(conn: Connection) -> datetime | None:
    value = conn.scalar(sa.select(sa.func.min(subaccount_ticks.c.observed_at)))
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def delete_ticks_before(conn: Connection, cutoff: datetime) -> int:
    """Retention where there are no partitions to drop (the SQLite demo database)."""
    result = conn.execute(
        sa.delete(subaccount_ticks).where(subaccount_ticks.c.observed_at < cutoff)
    )
    return result.rowcount


def delete_rollups_before(conn: Connection, cutoff: datetime) -> int:
    result = conn.execute(
        sa.delete(subaccount_rollups_hourly).where(subaccount_rollups_hourly.c.hour < cutoff)
    )
    return result.rowcount
