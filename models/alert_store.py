"""Alert episodes, the alert cursor and the notification queue in PostgreSQL (or SQLite).

Every function that takes a connection runs inside the caller's transaction, so one tick's
reads, episode changes and queued notifications commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from models.tables import alert_cursors, alert_notifications, alerts, subaccount_ticks

EPISODE_COLUMNS = (
    "id",
    "kind",
    "currency",
    "subaccount",
    "status",
    "started_at",
    "resolved_at",
    "baseline",
    "current",
    "details",
    "notifications",
    "dedup_key",
)


def utc(moment: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite hands them back naive)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _insert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# --------------------------------------------------------------------------- cursor


def lock_cursor(conn: Connection, currency: str) -> tuple[datetime | None, dict[str, Any]]:
    """Lock the currency's alert cursor for this transaction; returns (last tick, state).

    A second tick for the same currency waits here until the first commits, then sees its
    cursor.
    """
    conn.execute(
        _insert(conn, alert_cursors)
        .values(currency=currency, observed_at=None, state={})
        .on_conflict_do_nothing(index_elements=["currency"])
    )
    row = conn.execute(
        sa.select(alert_cursors.c.observed_at, alert_cursors.c.state)
        .where(alert_cursors.c.currency == currency)
        .with_for_update()
    ).one()
    return utc(row.observed_at), dict(row.state or {})


def save_cursor(
    conn: Connection, currency: str, observed_at: datetime, state: Mapping[str, Any]
) -> None:
    """Move the currency's alert cursor to this tick, with the rules' state."""
    conn.execute(
        sa.update(alert_cursors)
        .where(alert_cursors.c.currency == currency)
        .values(observed_at=observed_at, state=dict(state))
    )


# --------------------------------------------------------------------------- history


def recent_counts(
    conn: Connection, currency: str, since: datetime, until: datetime
) -> list[tuple[str, datetime, int]]:
    """(subaccount, observed_at, active) of the ticks in [since, until), oldest first."""
    t = subaccount_ticks.c
    rows = conn.execute(
        sa.select(t.subaccount, t.observed_at, t.active)
        .where(t.currency == currency, t.observed_at >= since, t.observed_at < until)
        .order_by(t.observed_at, t.subaccount)
    )
    return [(r.subaccount, utc(r.observed_at), int(r.active)) for r in rows]


def active_workers_at(
    conn: Connection, currency: str, observed_at: datetime, subaccounts: Iterable[str] | None
) -> dict[str, list[str]]:
    """The names of the workers that were ACTIVE in each subaccount at one tick."""
    t = subaccount_ticks.c
    query = sa.select(t.subaccount, t.worker_names, t.worker_active).where(
        t.currency == currency, t.observed_at == observed_at
    )
    if subaccounts is not None:
        query = query.where(t.subaccount.in_(list(subaccounts)))
    result: dict[str, list[str]] = {}
    for row in conn.execute(query):
        names = row.worker_names or []
        flags = row.worker_active or []
        result[row.subaccount] = [n for n, up in zip(names, flags, strict=False) if up]
    return result


# --------------------------------------------------------------------------- episodes


def live_episodes(
    conn: Connection, currency: str, resolved_since: datetime
) -> list[dict[str, Any]]:
    """Firing episodes and those resolved since a moment, locked for this transaction."""
    c = alerts.c
    query = (
        sa.select(*(c[name] for name in EPISODE_COLUMNS))
        .where(
            c.currency == currency,
            sa.or_(c.status == "firing", c.resolved_at >= resolved_since),
        )
        .order_by(c.started_at, c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return [_episode(row) for row in conn.execute(query)]


def _episode(row: Any) -> dict[str, Any]:
    doc = dict(row._mapping)
    doc["started_at"] = utc(doc["started_at"])
    doc["resolved_at"] = utc(doc["resolved_at"])
    doc["details"] = dict(doc["details"] or {})
    doc["notifications"] = dict(doc["notifications"] or {})
    return doc


def insert_episode(conn: Connection, episode: Mapping[str, Any]) -> int | None:
    """Insert an episode; None when its subject already has one firing or its key exists."""
    values = {k: episode[k] for k in EPISODE_COLUMNS if k != "id"}
    values["updated_at"] = datetime.now(UTC)
    statement = (
        _insert(conn, alerts).values(**values).on_conflict_do_nothing().returning(alerts.c.id)
    )
    return conn.execute(statement).scalar()


def update_episode(conn: Connection, episode_id: int, episode: Mapping[str, Any]) -> None:
    """Write an episode's new status, counts, details and notification record."""
    values = {
        k: episode[k]
        for k in ("status", "resolved_at", "baseline", "current", "details", "notifications")
    }
    values["updated_at"] = datetime.now(UTC)
    conn.execute(sa.update(alerts).where(alerts.c.id == episode_id).values(**values))


def episode_id(conn: Connection, dedup_key: str) -> int | None:
    """The id of the episode with this dedup key, if stored."""
    return conn.execute(sa.select(alerts.c.id).where(alerts.c.dedup_key == dedup_key)).scalar()


def firing_alerts(engine: Engine) -> list[dict[str, Any]]:
    """Every firing episode, oldest first (for `luxor-etl status`)."""
    c = alerts.c
    query = (
        sa.select(*(c[name] for name in EPISODE_COLUMNS))
        .where(c.status == "firing")
        .order_by(c.started_at, c.currency, c.kind, c.subaccount)
    )
    with engine.connect() as conn:
        return [_episode(row) for row in conn.execute(query)]


# --------------------------------------------------------------------------- notifications


def queue_notifications(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Queue notifications as pending; one already queued under the same key is skipped."""
    ids: list[int] = []
    for row in rows:
        statement = (
            _insert(conn, alert_notifications)
            .values(**row, status="pending", attempts=0)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(alert_notifications.c.id)
        )
        new_id = conn.execute(statement).scalar()
        if new_id is not None:
            ids.append(new_id)
    return ids


def due_notifications(
    engine: Engine, now: datetime, grace: timedelta, limit: int = 200
) -> list[int]:
    """Pending notifications whose next attempt is overdue by `grace` (their task was lost,
    or the process that queued them delivered inline and exited)."""
    n = alert_notifications.c
    query = (
        sa.select(n.id)
        .where(
            n.status == "pending",
            n.next_attempt_at <= now - grace,
            n.deliver_until > now,
            sa.or_(n.claimed_until.is_(None), n.claimed_until < now),
        )
        .order_by(n.next_attempt_at)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.scalars(query))


def expire_notifications(engine: Engine, now: datetime) -> list[dict[str, Any]]:
    """Give up on pending notifications past their delivery deadline; returns them."""
    n = alert_notifications.c
    with engine.begin() as conn:
        rows = conn.execute(
            sa.update(alert_notifications)
            .where(
                n.status == "pending",
                n.deliver_until <= now,
                sa.or_(n.claimed_until.is_(None), n.claimed_until < now),
            )
            .values(status="failed", last_error=sa.func.coalesce(n.last_error, "deadline"))
            .returning(n.id, n.channel, n.kind)
        )
        return [dict(r._mapping) for r in rows]


def claim_notification(
    engine: Engine, notification_id: int, now: datetime, lease: timedelta, early: timedelta
) -> dict[str, Any] | None:
    """Take a pending notification for one delivery attempt (a lease, so two workers never
    send it at once); None if it is sent, failed, claimed, or not due for `early` more."""
    n = alert_notifications.c
    with engine.begin() as conn:
        row = conn.execute(
            sa.update(alert_notifications)
            .where(
                n.id == notification_id,
                n.status == "pending",
                sa.or_(n.claimed_until.is_(None), n.claimed_until < now),
                n.next_attempt_at <= now + early,
            )
            .values(claimed_until=now + lease)
            .returning(*alert_notifications.c)
        ).first()
    if row is None:
        return None
    doc = dict(row._mapping)
    for name in ("observed_at", "created_at", "next_attempt_at", "deliver_until"):
        doc[name] = utc(doc[name])
    return doc


def finish_attempt(
    engine: Engine,
    notification_id: int,
    *,
    status: str,
    attempts: int,
    next_attempt_at: datetime | None = None,
    error: str | None = None,
    sent_at: datetime | None = None,
) -> None:
    """Record an attempt's outcome and release the lease."""
    values: dict[str, Any] = {
        "status": status,
        "attempts": attempts,
        "claimed_until": None,
        "last_error": error,
    }
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if sent_at is not None:
        values["sent_at"] = sent_at
    with engine.begin() as conn:
        conn.execute(
            sa.update(alert_notifications)
            .where(alert_notifications.c.id == notification_id)
            .values(**values)
        )
