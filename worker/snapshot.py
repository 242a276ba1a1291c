"""The immutable value one tick produces and hands to the writers (store, cache, alerts)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import overload

import msgspec


# gc=False: only scalars inside, so no cycles; a million of them no longer slow every
# full garbage collection down.
class WorkerSample(msgspec.Struct, frozen=True, gc=False, rename={"hashrate_hs": "hashrate"}):
    """One worker as seen in one tick; None means the API did not say.

    Encoded with msgspec it is the cache's worker object (SPEC.md), field for field.
    """

    id: str
    name: str
    status: str  # "ACTIVE" or "INACTIVE"
    hashrate_hs: float | None
    efficiency: float | None
    stale_shares: float | None
    rejected_shares: float | None
    last_share_time: datetime | None
    firmware: str | None

    def __post_init__(self) -> None:
        # UTC, whole seconds: what the cache shows and the database keeps.
        moment = self.last_share_time
        if moment is not None and (moment.tzinfo is not UTC or moment.microsecond):
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            moment = moment.astimezone(UTC).replace(microsecond=0)
            msgspec.structs.force_setattr(self, "last_share_time", moment)


class WorkerNames(Sequence[WorkerSample]):
    """Written workers reduced to name and status (other fields None), packed in two values.

    What a tick keeps of a subaccount after writing it: the alert step reads names and
    statuses, and a million-worker fleet then costs ~11 bytes per worker instead of ~300.
    """

    __slots__ = ("_count", "_names", "_statuses")

    def __init__(self, workers: Iterable[WorkerSample]) -> None:
        names: list[str] = []
        statuses = bytearray()
        for worker in workers:
            names.append(worker.name)
            statuses.append(_STATUS_CODES.get(worker.status, 0))
        self._count = len(names)
        self._names = _pack_names(names)
        self._statuses = bytes(statuses)

    @classmethod
    def from_packed(cls, count: int, names: bytes, statuses: bytes) -> WorkerNames:
        """Rebuild from `packed()`, e.g. after passing through Redis between processes."""
        kept = cls(())
        kept._count, kept._names, kept._statuses = count, names, statuses
        return kept

    def packed(self) -> tuple[int, bytes, bytes]:
        return self._count, self._names, self._statuses

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> WorkerSample: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[WorkerSample, ...]: ...

    def __getitem__(self, index: int | slice) -> WorkerSample | tuple[WorkerSample, ...]:
        workers = tuple(self)
        return workers[index]

    def __iter__(self) -> Iterator[WorkerSample]:
        statuses = self._statuses
        for i, name in enumerate(_unpack_names(self._names)):
            status = _STATUS_NAMES[statuses[i]]
            yield WorkerSample(name, name, status, None, None, None, None, None, None)

    def __repr__(self) -> str:
        return f"WorkerNames({self._count} workers)"


_STATUS_CODES = {"ACTIVE": 1, "INACTIVE": 2}
_STATUS_NAMES = ("", "ACTIVE", "INACTIVE")
_pack_names = msgspec.msgpack.Encoder().encode
_unpack_names = msgspec.msgpack.Decoder(list[str]).decode


class SubaccountSnapshot(msgspec.Struct, frozen=True):
    """A complete, validated view of one subaccount at one tick.

    `workers` is a tuple of full samples, or `WorkerNames` once the tick has written them.
    """

    currency: str
    subaccount: str
    observed_at: datetime
    active: int
    inactive: int
    hashrate_hs: float
    workers: Sequence[WorkerSample]


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
