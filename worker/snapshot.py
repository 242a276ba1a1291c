"""The immutable value one tick produces and hands to the writers (store, cache, alerts)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec


class WorkerSample(msgspec.Struct, frozen=True):
    """One worker as seen in one tick; None means the API did not say."""

    id: str
    name: str
    status: str  # "ACTIVE" or "INACTIVE"
    hashrate_hs: float | None
    efficiency: float | None
    stale_shares: float | None
    rejected_shares: float | None
    last_share_time: datetime | None
    firmware: str | None


class SubaccountSnapshot(msgspec.Struct, frozen=True):
    """A complete, validated view of one subaccount at one tick."""

    currency: str
    subaccount: str
    observed_at: datetime
    active: int
    inactive: int
    hashrate_hs: float
    workers: tuple[WorkerSample, ...]


class SubaccountFailure(msgspec.Struct, frozen=True):
    """A subaccount whose fetch failed this tick: a gap, never a zero."""

    currency: str
    subaccount: str
    reason: str
    error: str  # "auth", "unavailable", "bad_response", "rejected", "internal"


class FleetSnapshot(msgspec.Struct, frozen=True):
    """Everything one tick learnt about one currency."""

    currency: str
    observed_at: datetime
    subaccounts: tuple[str, ...]  # every subaccount this tick was about, sorted
    snapshots: tuple[SubaccountSnapshot, ...]
    failures: tuple[SubaccountFailure, ...]
    listing_error: str | None = None  # set when the subaccount list itself could not be read


def tick_time(now: datetime, interval_seconds: int) -> datetime:
    """The tick's `observed_at`: `now` aligned down to the poll interval, in UTC."""
    epoch = int(now.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(epoch - epoch % interval_seconds, tz=UTC)


def iso_z(moment: datetime) -> str:
    """ISO 8601 UTC with a trailing Z, as Luxor and the cache contract write times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
