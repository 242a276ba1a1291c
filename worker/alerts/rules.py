"""Alert rules: from recent counts and the live episodes to decisions and events, without I/O.

A *subject* is one (currency, subaccount) or a currency's whole fleet (subaccount None). Each
tick, `evaluate` turns what the tick knows about every subject into signals (condition true,
false or unknown), `advance` moves the episodes (open, keep firing, resolve), and
`plan_notifications` decides which channel hears about which episode.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from worker.snapshot import iso_z

WORKERS_DROP = "workers_drop"
WORKERS_SURGE = "workers_surge"
DATA_STALE = "data_stale"
AUTH_FAILED = "auth_failed"
TEST = "test"

FIRING = "firing"
RESOLVED = "resolved"

SEVERITY = {
    WORKERS_DROP: "critical",
    AUTH_FAILED: "critical",
    DATA_STALE: "error",
    WORKERS_SURGE: "warning",
    TEST: "info",
}
ALERT_NAMES = {
    WORKERS_DROP: "LuxorWorkersDrop",
    WORKERS_SURGE: "LuxorWorkersSurge",
    DATA_STALE: "LuxorDataStale",
    AUTH_FAILED: "LuxorAuthFailed",
    TEST: "LuxorAlertTest",
}
# Ticks in a row the condition must be false before an episode resolves (no flapping pages);
# a key that works again is proof enough at once.
RESOLVE_AFTER_TICKS = {AUTH_FAILED: 1}
DEFAULT_RESOLVE_AFTER_TICKS = 2
WORKERS_DOWN_LIMIT = 100
ALERTMANAGER_RESOLVE_REPEATS = 3
EVENT_VERSION = 1

# Channels fed one event per request; Slack and Alertmanager get one request per tick.
PAGING_CHANNELS = ("webhook", "pagerduty", "slack")
ALERTMANAGER = "alertmanager"
CHANNELS = ("webhook", "alertmanager", "pagerduty", "slack")

SubjectKey = tuple[str, str, str | None]  # (kind, currency, subaccount)


@dataclass(frozen=True)
class Thresholds:
    """The alert settings the rules need."""

    drop_min: int = 3
    drop_percent: float = 10.0
    window_minutes: int = 15
    stale_minutes: int = 10
    repeat_minutes: int = 60
    surge_enabled: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> Thresholds:
        """The thresholds of a Settings object."""
        return cls(
            drop_min=settings.alert_drop_min,
            drop_percent=settings.alert_drop_percent,
            window_minutes=settings.alert_window_minutes,
            stale_minutes=settings.alert_stale_minutes,
            repeat_minutes=settings.alert_repeat_minutes,
            surge_enabled=settings.alert_surge_enabled,
        )

    @property
    def lookback(self) -> timedelta:
        """How far back the rules read: the drop window or the stale limit, the longer."""
        return timedelta(minutes=max(self.window_minutes, self.stale_minutes))


@dataclass(frozen=True)
class SubjectFacts:
    """What one tick knows about one subject."""

    currency: str
    subaccount: str | None
    current: int | None  # active workers now; None when unknown (fetch failed, fleet incomplete)
    history: tuple[
        tuple[datetime, int], ...
    ] = ()  # earlier ticks within the lookback, oldest first
    failed: bool = False  # the fetch failed this tick
    failing_since: datetime | None = None  # first failed tick of the current failure streak
    last_success_at: datetime | None = None  # when history alone cannot tell (the fleet)

    @property
    def last_success(self) -> datetime | None:
        """The last tick this subject was fetched successfully, as far as the facts know."""
        if self.last_success_at is not None:
            return self.last_success_at
        return self.history[-1][0] if self.history else None


@dataclass(frozen=True)
class Signal:
    """One rule's verdict on one subject this tick; condition None means unknown."""

    kind: str
    currency: str
    subaccount: str | None
    condition: bool | None
    baseline: int | None = None
    current: int | None = None
    baseline_at: datetime | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> SubjectKey:
        """(kind, currency, subaccount): what an open episode is unique by."""
        return (self.kind, self.currency, self.subaccount)


@dataclass
class Episode:
    """One alert episode (a row of `alerts`), firing until it resolves."""

    kind: str
    currency: str
    subaccount: str | None
    status: str
    started_at: datetime
    resolved_at: datetime | None = None
    baseline: float | None = None
    current: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notifications: dict[str, dict[str, Any]] = field(default_factory=dict)
    id: int | None = None

    @property
    def key(self) -> SubjectKey:
        """(kind, currency, subaccount): what an open episode is unique by."""
        return (self.kind, self.currency, self.subaccount)

    @property
    def dedup_key(self) -> str:
        """The episode's key for every channel, the same for trigger and resolve."""
        return dedup_key(self.kind, self.currency, self.subaccount, self.started_at)

    def copy(self) -> Episode:
        """A deep copy, so rules never change their input."""
        return replace(
            self,
            details=copy.deepcopy(self.details),
            notifications=copy.deepcopy(self.notifications),
        )


@dataclass(frozen=True)
class Transition:
    """An episode after this tick and what happened to it."""

    episode: Episode
    change: str  # "opened", "firing", "resolved"


@dataclass(frozen=True)
class AlertEvent:
    """The one alert event every channel is fed from (the generic webhook's JSON)."""

    status: str
    kind: str
    severity: str
    currency: str
    subaccount: str | None
    baseline: int | None
    current: int | None
    delta: int | None
    percent: float | None
    started_at: str
    resolved_at: str | None
    observed_at: str
    workers_down: tuple[str, ...]
    workers_down_more: int
    dedup_key: str
    summary: str
    dashboard_url: str | None = None
    runbook_url: str | None = None
    version: int = EVENT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The webhook body: every field of the event, in a stable order."""
        return {
            "version": self.version,
            "status": self.status,
            "kind": self.kind,
            "severity": self.severity,
            "currency": self.currency,
            "subaccount": self.subaccount,
            "baseline": self.baseline,
            "current": self.current,
            "delta": self.delta,
            "percent": self.percent,
            "started_at": self.started_at,
            "resolved_at": self.resolved_at,
            "observed_at": self.observed_at,
            "workers_down": list(self.workers_down),
            "workers_down_more": self.workers_down_more,
            "dedup_key": self.dedup_key,
            "summary": self.summary,
            "dashboard_url": self.dashboard_url,
            "runbook_url": self.runbook_url,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AlertEvent:
        """The event back from its webhook JSON."""
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        fields["workers_down"] = tuple(fields.get("workers_down") or ())
        return cls(**fields)


@dataclass(frozen=True)
class Notification:
    """One request to one channel: a single event, or a tick's batch for Slack/Alertmanager."""

    channel: str
    action: str  # "trigger", "resolve", "batch"
    events: tuple[AlertEvent, ...]
    key: str  # deterministic: the same tick never queues it twice

    @property
    def kind(self) -> str:
        """The alert kind for metrics: the events' one kind, or "mixed"."""
        kinds = {e.kind for e in self.events}
        return kinds.pop() if len(kinds) == 1 else "mixed"


# --------------------------------------------------------------------------- conditions


def drop_condition(baseline: int, current: int, min_workers: int, min_percent: float) -> bool:
    """True when `current` is below `baseline` by at least `min_workers` and `min_percent` %."""
    lost = baseline - current
    if baseline <= 0 or lost < min_workers:
        return False
    return lost * 100.0 / baseline >= min_percent


def surge_condition(baseline: int, current: int, min_workers: int, min_percent: float) -> bool:
    """True when `current` is above `baseline` by at least `min_workers` and `min_percent` %."""
    gained = current - baseline
    if gained < min_workers:
        return False
    return baseline <= 0 or gained * 100.0 / baseline >= min_percent


def peak(history: Iterable[tuple[datetime, int]]) -> tuple[datetime, int] | None:
    """The highest count and its tick (the latest tick among equals), or None without history."""
    best: tuple[datetime, int] | None = None
    for at, count in history:
        if best is None or count >= best[1]:
            best = (at, count)
    return best


def trough(history: Iterable[tuple[datetime, int]]) -> tuple[datetime, int] | None:
    """The lowest count and its tick (the latest tick among equals), or None without history."""
    best: tuple[datetime, int] | None = None
    for at, count in history:
        if best is None or count <= best[1]:
            best = (at, count)
    return best


def in_window(
    history: Iterable[tuple[datetime, int]], observed_at: datetime, minutes: int
) -> list[tuple[datetime, int]]:
    """The ticks of the last `minutes` before `observed_at`."""
    since = observed_at - timedelta(minutes=minutes)
    return [(at, n) for at, n in history if since <= at < observed_at]


# --------------------------------------------------------------------------- evaluation


def evaluate(
    facts: Sequence[SubjectFacts],
    episodes: Iterable[Episode],
    observed_at: datetime,
    thresholds: Thresholds,
    *,
    auth_failed: Sequence[str] = (),
    blind: bool = False,
) -> list[Signal]:
    """Every rule on every subject. `auth_failed` lists currencies whose key was refused;
    `blind` says the tick could not even tell which subaccounts exist (open episodes of
    subjects it has no facts for stay as they are instead of resolving)."""
    firing = {e.key: e for e in episodes if e.status == FIRING}
    signals: list[Signal] = []
    refused = set(auth_failed)
    for currency in refused:
        signals.append(Signal(AUTH_FAILED, currency, None, True))
    fleet_stale: dict[str, bool | None] = {}
    for f in facts:
        if f.subaccount is None:
            stale = _stale(f, observed_at, thresholds)
            fleet_stale[f.currency] = stale
            signals.append(Signal(DATA_STALE, f.currency, None, stale, info=_stale_info(f)))
    for f in facts:
        if f.subaccount is not None:
            # With the whole fleet blind, one page says it; the subaccounts would only repeat it.
            fleet_blind = bool(fleet_stale.get(f.currency)) or bool(
                firing.get((DATA_STALE, f.currency, None))
            )
            stale = None if fleet_blind else _stale(f, observed_at, thresholds)
            signals.append(Signal(DATA_STALE, f.currency, f.subaccount, stale, info=_stale_info(f)))
        signals.append(
            _drop(f, firing.get((WORKERS_DROP, f.currency, f.subaccount)), observed_at, thresholds)
        )
        if thresholds.surge_enabled:
            signals.append(_surge(f, observed_at, thresholds))
    currencies = {f.currency for f in facts} | refused
    for currency in currencies - refused:
        signals.append(Signal(AUTH_FAILED, currency, None, False))
    seen = {s.key for s in signals}
    for key in firing:
        if key in seen:
            continue
        kind, currency, subaccount = key
        # A subject the tick says nothing about: gone from the listing (resolve), or
        # unknown because the listing or the key failed (keep).
        unknown = blind or currency in refused or currency not in currencies
        if kind == WORKERS_SURGE and not thresholds.surge_enabled:
            unknown = False
        signals.append(Signal(kind, currency, subaccount, None if unknown else False))
    return signals


def _stale(f: SubjectFacts, observed_at: datetime, t: Thresholds) -> bool:
    if not f.failed:
        return False
    reference = f.last_success or f.failing_since or observed_at
    return observed_at - reference >= timedelta(minutes=t.stale_minutes)


def _stale_info(f: SubjectFacts) -> dict[str, Any]:
    if not f.failed:
        return {}
    return {
        "last_success_at": iso_z(f.last_success) if f.last_success else None,
        "failing_since": iso_z(f.failing_since) if f.failing_since else None,
    }


def _drop(
    f: SubjectFacts, open_episode: Episode | None, observed_at: datetime, t: Thresholds
) -> Signal:
    if f.current is None:
        return Signal(WORKERS_DROP, f.currency, f.subaccount, None)
    if open_episode is not None and open_episode.baseline is not None:
        # Judged against the level that was lost, so a lasting outage does not resolve by
        # itself once the window has slid past the cliff.
        baseline = int(open_episode.baseline)
        at = _parse(open_episode.details.get("baseline_at")) or open_episode.started_at
        condition = drop_condition(baseline, f.current, t.drop_min, t.drop_percent)
        return Signal(WORKERS_DROP, f.currency, f.subaccount, condition, baseline, f.current, at)
    top = peak(in_window(f.history, observed_at, t.window_minutes))
    if top is None:
        return Signal(WORKERS_DROP, f.currency, f.subaccount, False, None, f.current)
    at, baseline = top
    condition = drop_condition(baseline, f.current, t.drop_min, t.drop_percent)
    return Signal(WORKERS_DROP, f.currency, f.subaccount, condition, baseline, f.current, at)


def _surge(f: SubjectFacts, observed_at: datetime, t: Thresholds) -> Signal:
    if f.current is None:
        return Signal(WORKERS_SURGE, f.currency, f.subaccount, None)
    low = trough(in_window(f.history, observed_at, t.window_minutes))
    if low is None:
        return Signal(WORKERS_SURGE, f.currency, f.subaccount, False, None, f.current)
    at, baseline = low
    condition = surge_condition(baseline, f.current, t.drop_min, t.drop_percent)
    return Signal(WORKERS_SURGE, f.currency, f.subaccount, condition, baseline, f.current, at)


def next_failing_since(
    previous: Mapping[str, str], facts: Iterable[SubjectFacts], observed_at: datetime
) -> dict[str, str]:
    """The start of each subject's failure streak ("" is the fleet), for the next tick."""
    result: dict[str, str] = {}
    for f in facts:
        name = "" if f.subaccount is None else f.subaccount
        if f.failed:
            result[name] = previous.get(name) or iso_z(observed_at)
    return result


# --------------------------------------------------------------------------- episodes


def advance(
    episodes: Iterable[Episode], signals: Iterable[Signal], observed_at: datetime
) -> list[Transition]:
    """Open, keep or resolve episodes by this tick's signals; the input is left untouched."""
    firing = {e.key: e for e in episodes if e.status == FIRING}
    tick = iso_z(observed_at)
    transitions: list[Transition] = []
    for signal in signals:
        episode = firing.get(signal.key)
        if episode is None:
            if signal.condition:
                transitions.append(Transition(_open(signal, observed_at), "opened"))
            continue
        episode = episode.copy()
        episode.details["last_observed_at"] = tick
        if signal.condition is None:
            transitions.append(Transition(episode, "firing"))
            continue
        if signal.current is not None:
            episode.current = signal.current
        episode.details.update(_delta(episode.baseline, episode.current))
        episode.details.update(signal.info)
        if signal.condition:
            episode.details["clear_ticks"] = 0
            transitions.append(Transition(episode, "firing"))
            continue
        clear = int(episode.details.get("clear_ticks", 0)) + 1
        episode.details["clear_ticks"] = clear
        if clear >= RESOLVE_AFTER_TICKS.get(episode.kind, DEFAULT_RESOLVE_AFTER_TICKS):
            episode.status = RESOLVED
            episode.resolved_at = observed_at
            transitions.append(Transition(episode, "resolved"))
        else:
            transitions.append(Transition(episode, "firing"))
    return transitions


def _open(signal: Signal, observed_at: datetime) -> Episode:
    details: dict[str, Any] = {
        "clear_ticks": 0,
        "last_observed_at": iso_z(observed_at),
        **_delta(signal.baseline, signal.current),
        **signal.info,
    }
    if signal.baseline_at is not None:
        details["baseline_at"] = iso_z(signal.baseline_at)
    return Episode(
        kind=signal.kind,
        currency=signal.currency,
        subaccount=signal.subaccount,
        status=FIRING,
        started_at=observed_at,
        baseline=signal.baseline,
        current=signal.current,
        details=details,
    )


def _delta(baseline: float | None, current: float | None) -> dict[str, Any]:
    if baseline is None or current is None:
        return {}
    delta = int(current - baseline)
    percent = round(delta * 100.0 / baseline, 1) if baseline else None
    return {"delta": delta, "percent": percent}


def workers_down(
    baseline_active: Iterable[str], current_active: Iterable[str]
) -> tuple[list[str], int]:
    """Names active at the baseline and not active now (inactive or gone): the first 100 sorted,
    and how many more there are."""
    now = set(current_active)
    down = sorted({n for n in baseline_active if n not in now})
    return down[:WORKERS_DOWN_LIMIT], max(0, len(down) - WORKERS_DOWN_LIMIT)


def dedup_key(kind: str, currency: str, subaccount: str | None, started_at: datetime) -> str:
    """One key per episode, the same for its trigger and its resolve."""
    if subaccount is None:
        segment = "fleet"
    else:
        segment = quote(subaccount, safe="")
        if segment == "fleet":
            segment = "%66leet"  # the same name, percent-encoded, apart from the fleet
        if len(segment) > 120:
            digest = hashlib.sha256(subaccount.encode()).hexdigest()[:16]
            segment = f"{segment[:80]}~{digest}"
    return f"luxor-etl:{kind}:{currency}:{segment}:{int(started_at.timestamp())}"


# --------------------------------------------------------------------------- events


def subject_label(currency: str, subaccount: str | None) -> str:
    """Who an alert is about, for people: "BTC site-00" or "BTC fleet"."""
    return f"{currency} fleet" if subaccount is None else f"{currency} {subaccount}"


def summary(episode: Episode, status: str, window_minutes: int) -> str:
    """One line for a human: what, where, how much, which workers."""
    where = subject_label(episode.currency, episode.subaccount)
    d = episode.details
    base = _int(episode.baseline)
    cur = _int(episode.current)
    if episode.kind == TEST:
        return d.get("summary") or "[TEST] luxor-etl alert test"
    if status == RESOLVED:
        if episode.kind in (WORKERS_DROP, WORKERS_SURGE) and cur is not None:
            return f"Resolved: {where} is back to {cur} active workers (baseline {base})"
        if episode.kind == DATA_STALE:
            return f"Resolved: {where} is fetched from Luxor again"
        if episode.kind == AUTH_FAILED:
            return f"Resolved: Luxor accepts the API key again ({episode.currency})"
        return f"Resolved: {ALERT_NAMES.get(episode.kind, episode.kind)} on {where}"
    if episode.kind == WORKERS_DROP and base is not None and cur is not None:
        text = (
            f"{where}: {base - cur} workers down - {cur} active, was {base} "
            f"in the last {window_minutes} min ({d.get('percent')}%)"
        )
        names = d.get("workers_down") or []
        if names:
            more = int(d.get("workers_down_more") or 0)
            shown = ", ".join(names[:10])
            rest = max(0, len(names) - 10) + more
            text += f"; down: {shown}" + (f" (+{rest} more)" if rest > 0 else "")
        return text
    if episode.kind == WORKERS_SURGE and base is not None and cur is not None:
        return (
            f"{where}: {cur - base} more active workers - {cur} active, was {base} "
            f"in the last {window_minutes} min (+{d.get('percent')}%)"
        )
    if episode.kind == DATA_STALE:
        last = d.get("last_success_at")
        since = f"since {last}" if last else f"for at least {d.get('failing_since') or 'a while'}"
        return (
            f"{where}: no successful fetch from Luxor {since}; "
            "its worker counts are unknown (not zero)"
        )
    if episode.kind == AUTH_FAILED:
        return f"{episode.currency}: the Luxor API refuses the API key; nothing is being collected"
    return f"{ALERT_NAMES.get(episode.kind, episode.kind)} on {where}"


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def event_for(
    episode: Episode,
    observed_at: datetime,
    *,
    window_minutes: int,
    dashboard_url: str | None = None,
    runbook_url: str | None = None,
) -> AlertEvent:
    """The alert event of an episode as it stands at this tick."""
    d = episode.details
    status = episode.status
    base, cur = _int(episode.baseline), _int(episode.current)
    delta = d.get("delta")
    return AlertEvent(
        status=status,
        kind=episode.kind,
        severity=SEVERITY.get(episode.kind, "warning"),
        currency=episode.currency,
        subaccount=episode.subaccount,
        baseline=base,
        current=cur,
        delta=None if delta is None else int(delta),
        percent=d.get("percent"),
        started_at=iso_z(episode.started_at),
        resolved_at=iso_z(episode.resolved_at) if episode.resolved_at else None,
        observed_at=iso_z(observed_at),
        workers_down=tuple(d.get("workers_down") or ()),
        workers_down_more=int(d.get("workers_down_more") or 0),
        dedup_key=episode.dedup_key,
        summary=summary(episode, status, window_minutes),
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
    )


# --------------------------------------------------------------------------- notifications


def plan_notifications(
    transitions: Sequence[Transition],
    lingering: Iterable[Episode],
    observed_at: datetime,
    *,
    channels: Iterable[str],
    repeat_minutes: int,
    window_minutes: int,
    dashboard_url: str | None = None,
    runbook_url: str | None = None,
) -> tuple[list[Notification], list[Episode]]:
    """Which channel hears about which episode this tick, and the episodes with that recorded.

    Webhook, PagerDuty and Slack: a trigger when an episode opens (or first meets a channel),
    again only after `repeat_minutes`, and one resolve. Alertmanager: every firing episode on
    every tick, and a resolved one on three ticks. `lingering` are episodes resolved on earlier
    ticks, still repeating their Alertmanager resolve.
    """
    enabled = set(channels)
    tick = iso_z(observed_at)
    epoch = int(observed_at.timestamp())
    repeat = timedelta(minutes=repeat_minutes)
    events: dict[str, list[AlertEvent]] = {"slack": [], ALERTMANAGER: []}
    singles: list[Notification] = []
    updated: list[Episode] = []

    def event(episode: Episode) -> AlertEvent:
        return event_for(
            episode,
            observed_at,
            window_minutes=window_minutes,
            dashboard_url=dashboard_url,
            runbook_url=runbook_url,
        )

    firing_keys = {t.episode.key for t in transitions if t.episode.status == FIRING}
    for transition in transitions:
        episode = transition.episode
        sent = episode.notifications
        for channel in PAGING_CHANNELS:
            if channel not in enabled:
                continue
            record = sent.get(channel) or {}
            if episode.status == FIRING:
                last = _parse(record.get("last_at"))
                due = last is None or observed_at - last >= repeat or last > observed_at + repeat
                action = "trigger" if due else None
            else:
                action = "resolve" if record and not record.get("resolved_at") else None
            if action is None:
                continue
            if action == "trigger":
                record = {**record, "last_at": tick, "count": int(record.get("count", 0)) + 1}
                record.setdefault("first_at", tick)
            else:
                record = {**record, "resolved_at": tick}
            sent[channel] = record
            if channel == "slack":
                events["slack"].append(event(episode))
            else:
                key = f"{channel}:{action}:{episode.dedup_key}:{epoch}"
                singles.append(Notification(channel, action, (event(episode),), key))
        if ALERTMANAGER in enabled:
            record = sent.get(ALERTMANAGER) or {}
            if episode.status == FIRING:
                sent[ALERTMANAGER] = {**record, "last_at": tick}
                events[ALERTMANAGER].append(event(episode))
            elif record:
                sent[ALERTMANAGER] = {**record, "last_at": tick, "resolves": 1}
                events[ALERTMANAGER].append(event(episode))
        updated.append(episode)

    if ALERTMANAGER in enabled:
        for old in lingering:
            record = old.notifications.get(ALERTMANAGER) or {}
            resolves = int(record.get("resolves", 0))
            # A newer episode of the same labels now speaks for them in Alertmanager.
            if not record or resolves >= ALERTMANAGER_RESOLVE_REPEATS or old.key in firing_keys:
                continue
            if record.get("last_at") == tick:
                continue
            old = old.copy()
            old.notifications[ALERTMANAGER] = {**record, "last_at": tick, "resolves": resolves + 1}
            events[ALERTMANAGER].append(event(old))
            updated.append(old)

    notifications = list(singles)
    for channel in ("slack", ALERTMANAGER):
        batch = events[channel]
        if batch:
            currency = batch[0].currency
            key = f"{channel}:batch:{currency}:{epoch}"
            notifications.append(Notification(channel, "batch", tuple(batch), key))
    return notifications, updated


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_event(
    currency: str,
    now: datetime,
    *,
    source: str,
    dashboard_url: str | None = None,
    runbook_url: str | None = None,
) -> AlertEvent:
    """A clearly marked test alert, for checking that each channel reaches on-call."""
    text = (
        f"[TEST] luxor-etl alert test from {source}: if you can read this, "
        "this channel reaches on-call. No action needed."
    )
    return AlertEvent(
        status=FIRING,
        kind=TEST,
        severity=SEVERITY[TEST],
        currency=currency,
        subaccount=None,
        baseline=None,
        current=None,
        delta=None,
        percent=None,
        started_at=iso_z(now),
        resolved_at=None,
        observed_at=iso_z(now),
        workers_down=(),
        workers_down_more=0,
        dedup_key=f"luxor-etl:{TEST}:{currency}:{source}:{int(now.timestamp())}",
        summary=text,
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
    )
