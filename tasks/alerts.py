"""The alert step of a tick: evaluate the rules, move the episodes, queue and deliver pages.

For each currency, one PostgreSQL transaction locks the currency's alert cursor, reads the
recent counts and the live episodes, applies the rules, writes the episodes and queues the
notifications; a repeated or concurrent run of the same tick finds the cursor and does
nothing, so nothing is paged twice. Delivery happens after the commit: as one Celery task per
notification (`delivery="celery"`), or right here with a few quick retries (`"inline"`, for
`poll-once`). Recent counts, worker activity and a copy of the episodes are kept in Redis, so
the rules keep working, and paging, while PostgreSQL is away.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import redis
import sqlalchemy.exc
from kombu.exceptions import KombuError
from sqlalchemy.engine import Connection, Engine

from models import alert_store as store
from worker import cache, health
from worker.alerts import channels, rules
from worker.alerts.rules import FIRING, RESOLVED, Episode, Notification, SubjectFacts
from worker.cache import CacheKeys
from worker.errors import one_line
from worker.settings import Settings
from worker.snapshot import FleetSnapshot, iso_z

if TYPE_CHECKING:
    from tasks.tick import TickReport

log = logging.getLogger("luxor_etl.alerts")

INLINE, CELERY = "inline", "celery"
DELIVER_TASK = "luxor.deliver_alert"
DELIVERY_WINDOW = timedelta(hours=1)
CLAIM_LEASE = timedelta(seconds=60)
CLAIM_EARLY = timedelta(seconds=5)
INLINE_DELAYS_S = (0.5, 1.0, 2.0)
# After inline attempts run out, a later tick's sweep tries again from this far on.
INLINE_LEFTOVER_S = 30.0
TASK_BACKOFF_BASE_S = 10.0
TASK_BACKOFF_CAP_S = 600.0
INLINE_THREADS = 8
# A cursor this far ahead of the tick is a clock that went back, not a tick already done.
CLOCK_RESET = timedelta(hours=1)

_encode = msgspec.json.Encoder().encode


@dataclass
class AlertStepReport:
    """What the alert step did in one tick."""

    source: str = ""  # "postgres", "redis" (PostgreSQL away), or "" when nothing ran
    skipped: list[str] = field(default_factory=list)  # currencies whose tick was already done
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    firing: int = 0
    queued: int = 0
    delivered: Counter = field(default_factory=Counter)  # inline results: sent/retried/failed
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the poll-once report."""
        if self.skipped and not self.source:
            return "already evaluated for " + ", ".join(self.skipped)
        parts = [f"{self.firing} firing"]
        if self.opened:
            parts.append("opened " + ", ".join(self.opened))
        if self.resolved:
            parts.append("resolved " + ", ".join(self.resolved))
        if self.queued:
            parts.append(f"{self.queued} notifications")
        if self.delivered:
            parts.append(", ".join(f"{n} {r}" for r, n in sorted(self.delivered.items())))
        if self.skipped:
            parts.append("already evaluated for " + ", ".join(self.skipped))
        if self.source == "redis":
            parts.append("PostgreSQL away: evaluated from Redis")
        return "; ".join(parts)


@dataclass
class DeliveryResult:
    """One delivery attempt's result: sent, retried, failed, or skipped (not ours to send)."""

    result: str
    retry_in_s: float | None = None


@dataclass
class _Memory:
    """What Redis remembers for one currency."""

    counts: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    last_active: dict[str, dict[str, int]] = field(default_factory=dict)
    mirror: dict[str, Any] | None = None


@dataclass
class _Decision:
    transitions: list[rules.Transition]
    changed: list[Episode]
    notifications: list[Notification]
    state: dict[str, Any]


@dataclass
class _Context:
    settings: Settings
    report: TickReport
    thresholds: rules.Thresholds
    channels: list[str]
    keys: CacheKeys
    observed_at: datetime

    @property
    def linger(self) -> timedelta:
        ticks = rules.ALERTMANAGER_RESOLVE_REPEATS + 2
        return timedelta(seconds=ticks * self.settings.poll_interval_seconds)

    @property
    def memory_ttl_s(self) -> int:
        lookback = int(self.thresholds.lookback.total_seconds())
        return lookback + 3 * self.settings.poll_interval_seconds

    @property
    def hold_s(self) -> int:
        return max(300, 4 * self.settings.poll_interval_seconds)


# --------------------------------------------------------------------------- the step


def run_alert_step(
    settings: Settings,
    report: TickReport,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    delivery: str = INLINE,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
) -> AlertStepReport:
    """Evaluate this tick's alerts, record the episodes, and deliver what they call for."""
    ctx = _Context(
        settings=settings,
        report=report,
        thresholds=rules.Thresholds.from_settings(settings),
        channels=channels.configured_channels(settings),
        keys=CacheKeys(settings.cache_prefix),
        observed_at=report.observed_at,
    )
    step = AlertStepReport()
    fleets = {f.currency: f for f in report.fleets}
    currencies = list(fleets) or list(settings.luxor_currencies)
    queued_ids: list[int] = []
    messages: list[dict[str, Any]] = []
    database_answered = False
    for currency in currencies:
        fleet = stored_names(fleets.get(currency))
        memory = _recall(redis_client, ctx, currency, fleet)
        try:
            done = _database_pass(ctx, engine, currency, fleet, memory)
            database_answered = True
            source = "postgres"
        except sqlalchemy.exc.SQLAlchemyError as exc:
            reason = one_line(exc)
            log.warning(
                "alert store unavailable; evaluating from Redis",
                extra={"tick": iso_z(ctx.observed_at), "currency": currency, "reason": reason},
            )
            step.errors.append(f"PostgreSQL: {reason}")
            if memory is None:
                step.errors.append("Redis: unavailable too; alerts not evaluated")
                continue
            done = _redis_pass(ctx, currency, fleet, memory)
            source = "redis"
        if done is None:
            step.skipped.append(currency)
            _remember(redis_client, ctx, currency, fleet, memory, None)
            continue
        decision, ids, live, dirty = done
        step.source = step.source if step.source == "redis" else source
        _remember(redis_client, ctx, currency, fleet, memory, (decision, live, dirty))
        _tally(step, decision)
        if source == "postgres":
            queued_ids += ids
            step.queued += len(ids)
        else:
            batch = [_message(ctx, n) for n in decision.notifications]
            messages += batch
            step.queued += len(batch)

    if database_answered:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            queued_ids += _sweep(settings, engine, redis_client, ctx.keys, exclude=set(queued_ids))
    _dispatch(settings, engine, redis_client, step, queued_ids, messages, delivery, sleep, client)
    if step.opened or step.resolved or step.queued:
        log.info(
            "alerts evaluated",
            extra={
                "tick": iso_z(ctx.observed_at),
                "opened": ",".join(step.opened) or "-",
                "resolved": ",".join(step.resolved) or "-",
                "firing": step.firing,
                "notifications": step.queued,
                "source": step.source,
            },
        )
    return step


def _tally(step: AlertStepReport, decision: _Decision) -> None:
    for t in decision.transitions:
        name = f"{t.episode.kind} {rules.subject_label(t.episode.currency, t.episode.subaccount)}"
        if t.change == "opened":
            step.opened.append(name)
        elif t.change == "resolved":
            step.resolved.append(name)
        if t.episode.status == FIRING:
            step.firing += 1


def _done(cursor: datetime | None, observed_at: datetime) -> bool:
    return cursor is not None and observed_at <= cursor < observed_at + CLOCK_RESET


def _database_pass(
    ctx: _Context,
    engine: Engine,
    currency: str,
    fleet: FleetSnapshot | None,
    memory: _Memory | None,
) -> tuple[_Decision, list[int], list[Episode], bool] | None:
    observed_at = ctx.observed_at
    with engine.begin() as conn:
        cursor, state = store.lock_cursor(conn, currency)
        if _done(cursor, observed_at):
            return None
        mirror = memory.mirror if memory is not None else None
        if mirror and mirror.get("dirty"):
            mirrored_at = _parse(mirror.get("cursor"))
            if mirrored_at is not None and (cursor is None or mirrored_at > cursor):
                _adopt_mirror(conn, mirror)
                state = dict(mirror.get("state") or {})
                if _done(mirrored_at, observed_at):
                    store.save_cursor(conn, currency, mirrored_at, state)
                    return None
        rows = store.recent_counts(
            conn, currency, observed_at - ctx.thresholds.lookback, observed_at
        )
        episodes = [
            _from_row(r)
            for r in store.live_episodes(conn, currency, resolved_since=observed_at - ctx.linger)
        ]

        def names_at(at: datetime, subaccounts: Sequence[str]) -> dict[str, list[str]]:
            return store.active_workers_at(conn, currency, at, subaccounts)

        decision = _decide(ctx, currency, fleet, rows, episodes, state, names_at)
        refused: set[str] = set()
        for episode in decision.changed:
            if episode.id is None:
                episode.id = store.insert_episode(conn, _row(episode))
                if episode.id is None:
                    refused.add(episode.dedup_key)
                    log.error(
                        "alert episode already open; not opened or paged twice",
                        extra={"dedup_key": episode.dedup_key},
                    )
            else:
                store.update_episode(conn, episode.id, _row(episode))
        decision.notifications = _without(decision.notifications, refused)
        rows_to_queue = [_queue_row(ctx, currency, n) for n in decision.notifications]
        ids = store.queue_notifications(conn, rows_to_queue)
        store.save_cursor(conn, currency, observed_at, decision.state)
    live = _live(episodes, decision, observed_at - ctx.linger)
    return decision, ids, live, False


def _redis_pass(
    ctx: _Context, currency: str, fleet: FleetSnapshot | None, memory: _Memory
) -> tuple[_Decision, list[int], list[Episode], bool] | None:
    mirror = memory.mirror or {}
    if _done(_parse(mirror.get("cursor")), ctx.observed_at):
        return None
    epoch = int(ctx.observed_at.timestamp())
    rows = [
        (name, datetime.fromtimestamp(at, tz=UTC), count)
        for at, counts in memory.counts
        if at < epoch
        for name, count in counts.items()
    ]
    episodes = [_from_doc(doc) for doc in mirror.get("episodes") or []]

    def names_at(at: datetime, subaccounts: Sequence[str]) -> dict[str, list[str]]:
        since = int(at.timestamp())
        return {
            name: [w for w, seen in memory.last_active[name].items() if seen >= since]
            for name in subaccounts
            if name in memory.last_active
        }

    decision = _decide(
        ctx, currency, fleet, rows, episodes, dict(mirror.get("state") or {}), names_at
    )
    by_key = {e.dedup_key: e for e in episodes}
    for episode in decision.changed:
        by_key[episode.dedup_key] = episode
    # Kept whole until PostgreSQL takes them back: nothing decided now may be forgotten.
    return decision, [], list(by_key.values()), True


def _decide(
    ctx: _Context,
    currency: str,
    fleet: FleetSnapshot | None,
    rows: Sequence[tuple[str, datetime, int]],
    episodes: list[Episode],
    state: Mapping[str, Any],
    names_at: Callable[[datetime, Sequence[str]], dict[str, list[str]]],
) -> _Decision:
    observed_at = ctx.observed_at
    failing = dict(state.get("failing_since") or {})
    facts = build_facts(currency, fleet, rows, failing)
    auth = ctx.report.auth_error or (fleet and any(f.error == "auth" for f in fleet.failures))
    refused = [currency] if auth else []
    blind = fleet is None or fleet.listing_error is not None
    signals = rules.evaluate(
        facts, episodes, observed_at, ctx.thresholds, auth_failed=refused, blind=blind
    )
    transitions = rules.advance(episodes, signals, observed_at)
    name_workers(transitions, fleet, names_at)
    lingering = [e for e in episodes if e.status == RESOLVED]
    notifications, changed = rules.plan_notifications(
        transitions,
        lingering,
        observed_at,
        channels=ctx.channels,
        repeat_minutes=ctx.thresholds.repeat_minutes,
        window_minutes=ctx.thresholds.window_minutes,
        dashboard_url=ctx.settings.alert_dashboard_url,
        runbook_url=ctx.settings.alert_runbook_url,
    )
    new_state = dict(state)
    if fleet is not None:
        new_state["failing_since"] = rules.next_failing_since(failing, facts, observed_at)
    return _Decision(transitions, changed, notifications, new_state)


def _without(notifications: list[Notification], dedup_keys: set[str]) -> list[Notification]:
    if not dedup_keys:
        return notifications
    kept = []
    for notification in notifications:
        events = tuple(e for e in notification.events if e.dedup_key not in dedup_keys)
        if events:
            kept.append(replace(notification, events=events))
    return kept


def _live(episodes: Iterable[Episode], decision: _Decision, since: datetime) -> list[Episode]:
    by_key = {e.dedup_key: e for e in episodes}
    for episode in decision.changed:
        by_key[episode.dedup_key] = episode
    return [
        e
        for e in by_key.values()
        if e.status == FIRING or (e.resolved_at is not None and e.resolved_at >= since)
    ]


def _adopt_mirror(conn: Connection, mirror: Mapping[str, Any]) -> None:
    """Write back what was decided while PostgreSQL was away."""
    for doc in mirror.get("episodes") or []:
        episode = _from_doc(doc)
        episode.id = episode.id or store.episode_id(conn, episode.dedup_key)
        if episode.id is None:
            store.insert_episode(conn, _row(episode))
        else:
            store.update_episode(conn, episode.id, _row(episode))
    log.info("alert decisions made while PostgreSQL was away written back")


# --------------------------------------------------------------------------- facts


def stored_names(fleet: FleetSnapshot | None) -> FleetSnapshot | None:
    """The fleet with names as PostgreSQL stores them (NUL, which text cannot hold, replaced),
    so the rules compare the snapshot with the history like for like."""
    if fleet is None:
        return None
    names = [*fleet.subaccounts, *(f.subaccount for f in fleet.failures)]
    names += [n for s in fleet.snapshots for n in (s.subaccount, *(w.name for w in s.workers))]
    if not any("\x00" in n for n in names):
        return fleet
    return msgspec.structs.replace(
        fleet,
        subaccounts=tuple(_text(n) for n in fleet.subaccounts),
        failures=tuple(
            msgspec.structs.replace(f, subaccount=_text(f.subaccount)) for f in fleet.failures
        ),
        snapshots=tuple(
            msgspec.structs.replace(
                s,
                subaccount=_text(s.subaccount),
                workers=tuple(msgspec.structs.replace(w, name=_text(w.name)) for w in s.workers),
            )
            for s in fleet.snapshots
        ),
    )


def _text(name: str) -> str:
    return name.replace("\x00", "\ufffd")


def build_facts(
    currency: str,
    fleet: FleetSnapshot | None,
    rows: Sequence[tuple[str, datetime, int]],
    failing_since: Mapping[str, str],
) -> list[SubjectFacts]:
    """What this tick knows about each subaccount and the fleet, from the snapshot and the
    earlier ticks' counts."""
    if fleet is None:
        return []
    per_subaccount: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    per_tick: dict[datetime, dict[str, int]] = defaultdict(dict)
    for name, at, active in sorted(rows, key=lambda r: r[1]):
        per_subaccount[name].append((at, active))
        per_tick[at][name] = active
    snapshots = {s.subaccount: s for s in fleet.snapshots}
    failed = {f.subaccount for f in fleet.failures}
    names = list(fleet.subaccounts)
    facts = [
        SubjectFacts(
            currency=currency,
            subaccount=name,
            current=snapshots[name].active if name in snapshots else None,
            history=tuple(per_subaccount.get(name, ())),
            failed=name in failed,
            failing_since=_parse(failing_since.get(name)),
        )
        for name in names
    ]
    complete = fleet.listing_error is None and not fleet.failures
    # Only ticks in which every subaccount of today's fleet answered are comparable: a
    # subaccount missing from one would look like a drop.
    fleet_history = tuple(
        (at, sum(counts[n] for n in names))
        for at, counts in sorted(per_tick.items())
        if names and all(n in counts for n in names)
    )
    facts.append(
        SubjectFacts(
            currency=currency,
            subaccount=None,
            current=sum(s.active for s in fleet.snapshots) if complete else None,
            history=fleet_history,
            failed=fleet.listing_error is not None or (bool(names) and not fleet.snapshots),
            failing_since=_parse(failing_since.get("")),
            last_success_at=max(per_tick) if per_tick else None,
        )
    )
    return facts


def name_workers(
    transitions: Iterable[rules.Transition],
    fleet: FleetSnapshot | None,
    names_at: Callable[[datetime, Sequence[str]], dict[str, list[str]]],
) -> None:
    """Fill `workers_down` of drop episodes: active at the baseline tick, not active now."""
    if fleet is None:
        return
    current = {
        s.subaccount: [w.name for w in s.workers if w.status == "ACTIVE"] for s in fleet.snapshots
    }
    complete = fleet.listing_error is None and not fleet.failures
    wanted: dict[datetime, set[str]] = defaultdict(set)
    drops = []
    for t in transitions:
        episode = t.episode
        at = _parse(episode.details.get("baseline_at"))
        if episode.kind != rules.WORKERS_DROP or at is None:
            continue
        if episode.subaccount is None:
            if not complete:
                continue
            wanted[at].update(fleet.subaccounts)
        elif episode.subaccount in current:
            wanted[at].add(episode.subaccount)
        else:
            continue
        drops.append((episode, at, t.change == "opened"))
    before = {at: names_at(at, sorted(subs)) for at, subs in wanted.items()}
    for episode, at, opened in drops:
        then = before[at]
        if episode.subaccount is None:
            was = [f"{s}/{n}" for s, names in then.items() for n in names]
            now = [f"{s}/{n}" for s, names in current.items() for n in names]
        elif episode.subaccount in then:
            was, now = then[episode.subaccount], current[episode.subaccount]
        else:
            continue
        down, more = rules.workers_down(was, now)
        episode.details["workers_down"] = down
        episode.details["workers_down_more"] = more
        if opened:
            # What the first page said, kept after recovery empties `workers_down`.
            episode.details["workers_down_at_start"] = down
            episode.details["workers_down_more_at_start"] = more


# --------------------------------------------------------------------------- Redis memory


def _recall(
    client: redis.Redis, ctx: _Context, currency: str, fleet: FleetSnapshot | None
) -> _Memory | None:
    names = [s.subaccount for s in fleet.snapshots] if fleet is not None else []
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(ctx.keys.alert_counts(currency))
            pipe.get(ctx.keys.alert_episodes(currency))
            for name in names:
                pipe.get(ctx.keys.alert_last_active(currency, name))
            raw_counts, raw_mirror, *raw_active = pipe.execute()
    except redis.RedisError as exc:
        log.warning("alert memory in Redis unavailable", extra={"reason": one_line(exc)})
        return None
    memory = _Memory()
    counts = cache.load_json(raw_counts)
    if isinstance(counts, list):
        memory.counts = [(int(at), {str(k): int(v) for k, v in c.items()}) for at, c in counts]
    mirror = cache.load_json(raw_mirror)
    memory.mirror = mirror if isinstance(mirror, dict) else None
    for name, raw in zip(names, raw_active, strict=True):
        seen = cache.load_json(raw)
        memory.last_active[name] = seen if isinstance(seen, dict) else {}
    return memory


def _remember(
    client: redis.Redis,
    ctx: _Context,
    currency: str,
    fleet: FleetSnapshot | None,
    memory: _Memory | None,
    outcome: tuple[_Decision, list[Episode], bool] | None,
) -> None:
    if memory is None:
        return
    epoch = int(ctx.observed_at.timestamp())
    oldest = (
        epoch - int(ctx.thresholds.lookback.total_seconds()) - ctx.settings.poll_interval_seconds
    )
    ttl = ctx.memory_ttl_s
    try:
        with client.pipeline(transaction=False) as pipe:
            if fleet is not None and fleet.snapshots:
                counts = {at: c for at, c in memory.counts if oldest <= at}
                counts[epoch] = {s.subaccount: s.active for s in fleet.snapshots}
                pipe.set(
                    ctx.keys.alert_counts(currency),
                    _encode(sorted(counts.items())),
                    ex=ttl,
                )
                for snapshot in fleet.snapshots:
                    seen = {
                        n: at
                        for n, at in memory.last_active.get(snapshot.subaccount, {}).items()
                        if at >= oldest
                    }
                    for worker in snapshot.workers:
                        if worker.status == "ACTIVE":
                            seen[worker.name] = epoch
                    pipe.set(
                        ctx.keys.alert_last_active(currency, snapshot.subaccount),
                        _encode(seen),
                        ex=ttl,
                    )
            if outcome is not None:
                decision, live, dirty = outcome
                mirror = {
                    "cursor": iso_z(ctx.observed_at),
                    "dirty": dirty,
                    "state": decision.state,
                    "episodes": [_doc(e) for e in live],
                }
                pipe.set(ctx.keys.alert_episodes(currency), _encode(mirror))
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("alert memory not written to Redis", extra={"reason": one_line(exc)})


# --------------------------------------------------------------------------- queue and delivery


def _queue_row(ctx: _Context, currency: str, notification: Notification) -> dict[str, Any]:
    now = datetime.now(UTC)
    window = DELIVERY_WINDOW
    if notification.channel == rules.ALERTMANAGER:
        # Alertmanager hears the whole state again next tick; an old copy is worth little.
        window = timedelta(seconds=max(120, 2 * ctx.settings.poll_interval_seconds))
    return {
        "key": notification.key,
        "channel": notification.channel,
        "kind": notification.kind,
        "currency": currency,
        "observed_at": ctx.observed_at,
        "dedup_keys": [e.dedup_key for e in notification.events],
        "body": channels.body_for(
            notification.channel, notification.events, hold_seconds=ctx.hold_s
        ),
        "created_at": now,
        "next_attempt_at": now,
        "deliver_until": now + window,
    }


def _message(ctx: _Context, notification: Notification) -> dict[str, Any]:
    """A notification decided while PostgreSQL is away: carried whole, without secrets."""
    row = _queue_row(ctx, notification.events[0].currency, notification)
    return {
        "channel": row["channel"],
        "kind": row["kind"],
        "body": row["body"],
        "dedup_keys": row["dedup_keys"],
        "deliver_until": iso_z(row["deliver_until"]),
    }


def _sweep(
    settings: Settings,
    engine: Engine,
    redis_client: redis.Redis,
    keys: CacheKeys,
    *,
    exclude: set[int],
) -> list[int]:
    now = datetime.now(UTC)
    for row in store.expire_notifications(engine, now):
        _count(redis_client, keys, row["kind"], row["channel"], "failed")
        log.error(
            "alert delivery given up",
            extra={"channel": row["channel"], "kind": row["kind"], "notification": row["id"]},
        )
    grace = timedelta(seconds=2 * settings.poll_interval_seconds)
    return [i for i in store.due_notifications(engine, now, grace) if i not in exclude]


def _dispatch(
    settings: Settings,
    engine: Engine,
    redis_client: redis.Redis,
    step: AlertStepReport,
    ids: list[int],
    messages: list[dict[str, Any]],
    delivery: str,
    sleep: Callable[[float], None],
    client: httpx.Client | None,
) -> None:
    if not ids and not messages:
        return
    if delivery == CELERY:
        try:
            from tasks.celery_tasks import deliver_alert

            for notification_id in ids:
                deliver_alert.apply_async(kwargs={"notification_id": notification_id})
            for message in messages:
                deliver_alert.apply_async(kwargs={"message": message})
            return
        except KombuError as exc:
            log.warning(
                "alert deliveries not enqueued; delivering inline", extra={"reason": one_line(exc)}
            )

    def one_queued(notification_id: int) -> str:
        return deliver_queued_inline(
            settings,
            engine=engine,
            redis_client=redis_client,
            notification_id=notification_id,
            sleep=sleep,
            client=client,
        )

    def one_message(message: dict[str, Any]) -> str:
        return deliver_message_inline(
            settings, redis_client=redis_client, message=message, sleep=sleep, client=client
        )

    with ThreadPoolExecutor(max_workers=INLINE_THREADS) as pool:
        results = list(pool.map(one_queued, ids)) + list(pool.map(one_message, messages))
    step.delivered.update(r for r in results if r != "skipped")


def deliver_queued(
    settings: Settings,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    notification_id: int,
    retry_delay_s: float,
    client: httpx.Client | None = None,
) -> DeliveryResult:
    """One attempt at a queued notification; a retriable failure is rescheduled after
    `retry_delay_s` (or the receiver's Retry-After) while its delivery window lasts."""
    now = datetime.now(UTC)
    row = store.claim_notification(engine, notification_id, now, CLAIM_LEASE, CLAIM_EARLY)
    if row is None:
        return DeliveryResult("skipped")
    outcome = channels.send(settings, row["channel"], row["body"], client=client)
    attempts = int(row["attempts"]) + 1
    delay = _next_delay_s(retry_delay_s, outcome)
    finished = datetime.now(UTC)
    if outcome.result == channels.SENT:
        result = DeliveryResult("sent")
        store.finish_attempt(
            engine, notification_id, status="sent", attempts=attempts, sent_at=finished
        )
    elif (
        outcome.result == channels.RETRY
        and finished + timedelta(seconds=delay) < row["deliver_until"]
    ):
        result = DeliveryResult("retried", delay)
        store.finish_attempt(
            engine,
            notification_id,
            status="pending",
            attempts=attempts,
            next_attempt_at=finished + timedelta(seconds=delay),
            error=outcome.reason,
        )
    else:
        result = DeliveryResult("failed")
        store.finish_attempt(
            engine, notification_id, status="failed", attempts=attempts, error=outcome.reason
        )
    keys = CacheKeys(settings.cache_prefix)
    _count(redis_client, keys, row["kind"], row["channel"], result.result)
    channels.log_attempt(
        row["channel"],
        row["kind"],
        result.result,
        outcome,
        {"notification": notification_id, "attempt": attempts, "dedup_key": row["dedup_keys"][0]},
    )
    return result


def deliver_queued_inline(
    settings: Settings,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    notification_id: int,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
) -> str:
    """Deliver a queued notification now, with a few quick retries; what is still undelivered
    afterwards stays queued for a later tick."""
    result = DeliveryResult("skipped")
    for attempt, delay in enumerate((*INLINE_DELAYS_S, None)):
        planned = delay if delay is not None else INLINE_LEFTOVER_S
        try:
            result = deliver_queued(
                settings,
                engine=engine,
                redis_client=redis_client,
                notification_id=notification_id,
                retry_delay_s=planned,
                client=client,
            )
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("alert delivery state unavailable", extra={"reason": one_line(exc)})
            return "skipped" if attempt == 0 else "retried"
        if result.result != "retried" or delay is None:
            break
        sleep(min(result.retry_in_s or delay, delay * 2))
    return result.result


def deliver_message(
    settings: Settings,
    *,
    redis_client: redis.Redis,
    message: Mapping[str, Any],
    attempt: int,
    retry_delay_s: float,
    client: httpx.Client | None = None,
) -> DeliveryResult:
    """One attempt at a notification carried in a message (decided while PostgreSQL was away)."""
    outcome = channels.send(settings, message["channel"], message["body"], client=client)
    deadline = _parse(message.get("deliver_until")) or datetime.now(UTC)
    delay = _next_delay_s(retry_delay_s, outcome)
    if outcome.result == channels.SENT:
        result = DeliveryResult("sent")
    elif (
        outcome.result == channels.RETRY and datetime.now(UTC) + timedelta(seconds=delay) < deadline
    ):
        result = DeliveryResult("retried", delay)
    else:
        result = DeliveryResult("failed")
    keys = CacheKeys(settings.cache_prefix)
    _count(redis_client, keys, message["kind"], message["channel"], result.result)
    dedup = (message.get("dedup_keys") or ["-"])[0]
    channels.log_attempt(
        message["channel"],
        message["kind"],
        result.result,
        outcome,
        {"attempt": attempt + 1, "dedup_key": dedup},
    )
    return result


def deliver_message_inline(
    settings: Settings,
    *,
    redis_client: redis.Redis,
    message: Mapping[str, Any],
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
) -> str:
    """Deliver a carried notification now with a few quick retries (nowhere to keep it)."""
    result = DeliveryResult("failed")
    delays = (*INLINE_DELAYS_S, None)
    for attempt, delay in enumerate(delays):
        last = delay is None
        result = deliver_message(
            settings,
            redis_client=redis_client,
            message=message if not last else {**message, "deliver_until": iso_z(datetime.now(UTC))},
            attempt=attempt,
            retry_delay_s=delay or 0.0,
            client=client,
        )
        if result.result != "retried" or last:
            break
        sleep(min(result.retry_in_s or delay, delay * 2))
    return result.result


def _next_delay_s(planned_s: float, outcome: channels.Outcome) -> float:
    if outcome.retry_after_s is None:
        return planned_s
    # The receiver's hint wins, but a receiver asking again and again still backs off.
    return min(TASK_BACKOFF_CAP_S, max(outcome.retry_after_s, planned_s / 8))


def task_backoff_s(retries: int) -> float:
    """Delay before a Celery delivery task's next attempt."""
    return channels.backoff_s(retries, base_s=TASK_BACKOFF_BASE_S, cap_s=TASK_BACKOFF_CAP_S)


def _count(client: redis.Redis, keys: CacheKeys, kind: str, channel: str, result: str) -> None:
    with contextlib.suppress(redis.RedisError):
        health.record_alert_delivery(client, keys, kind, channel, result)


# --------------------------------------------------------------------------- conversions


def _row(episode: Episode) -> dict[str, Any]:
    return {
        "kind": episode.kind,
        "currency": episode.currency,
        "subaccount": episode.subaccount,
        "status": episode.status,
        "started_at": episode.started_at,
        "resolved_at": episode.resolved_at,
        "baseline": episode.baseline,
        "current": episode.current,
        "details": episode.details,
        "notifications": episode.notifications,
        "dedup_key": episode.dedup_key,
    }


def _from_row(row: Mapping[str, Any]) -> Episode:
    return Episode(
        kind=row["kind"],
        currency=row["currency"],
        subaccount=row["subaccount"],
        status=row["status"],
        started_at=row["started_at"],
        resolved_at=row["resolved_at"],
        baseline=row["baseline"],
        current=row["current"],
        details=dict(row["details"] or {}),
        notifications=dict(row["notifications"] or {}),
        id=row["id"],
    )


def _doc(episode: Episode) -> dict[str, Any]:
    doc = _row(episode)
    doc["id"] = episode.id
    doc["started_at"] = iso_z(episode.started_at)
    doc["resolved_at"] = iso_z(episode.resolved_at) if episode.resolved_at else None
    return doc


def _from_doc(doc: Mapping[str, Any]) -> Episode:
    row = dict(doc)
    row["started_at"] = _parse(doc["started_at"])
    row["resolved_at"] = _parse(doc.get("resolved_at"))
    row.setdefault("id", None)
    return _from_row(row)


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
