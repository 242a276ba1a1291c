"""The Redis cache dashboards read: key scheme (schema v1), the tick's writer, and readers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import msgspec
import redis

from worker.snapshot import FleetSnapshot, SubaccountSnapshot, WorkerSample, iso_z

SCHEMA_VERSION = 1
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def key_segment(name: str) -> str:
    """A subaccount name as a key segment: percent-encoded, so ':' or '*' cannot forge keys."""
    return quote(name, safe="")


@dataclass(frozen=True)
class CacheKeys:
    """Every Redis key this project writes, for one prefix."""

    prefix: str = "luxor"

    def summary(self, currency: str) -> str:
        return f"{self.prefix}:v1:{currency}:summary"

    def subaccounts(self, currency: str) -> str:
        return f"{self.prefix}:v1:{currency}:subaccounts"

    def subaccount(self, currency: str, name: str) -> str:
        return f"{self.prefix}:v1:{currency}:subaccount:{key_segment(name)}"

    # Internal keys: not part of the dashboard contract.
    def tick_lock(self) -> str:
        return f"{self.prefix}:internal:tick-lock"

    def heartbeat(self, component: str) -> str:
        return f"{self.prefix}:internal:heartbeat:{component}"

    def last_tick(self) -> str:
        return f"{self.prefix}:internal:last-tick"

    def known_subaccounts(self, currency: str) -> str:
        return f"{self.prefix}:internal:{currency}:known-subaccounts"

    def staging(self, token: str, currency: str, name: str) -> str:
        """A fresh subaccount value written before its tick commits (see stage_subaccounts)."""
        return f"{self.prefix}:internal:staging:{token}:{currency}:{key_segment(name)}"

    def alert_counts(self, currency: str) -> str:
        """Recent active counts per subaccount, for the alert rules while PostgreSQL is away."""
        return f"{self.prefix}:internal:{currency}:alert-counts"

    def alert_last_active(self, currency: str, name: str) -> str:
        """When each worker of a subaccount was last seen ACTIVE, for the same purpose."""
        return f"{self.prefix}:internal:{currency}:alert-last-active:{key_segment(name)}"

    def alert_episodes(self, currency: str) -> str:
        """A copy of the live alert episodes, kept in step with PostgreSQL."""
        return f"{self.prefix}:internal:{currency}:alert-episodes"


@dataclass
class Publication:
    """What a tick wrote to the cache."""

    fresh: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None


def worker_doc(worker: WorkerSample) -> dict[str, Any]:
    return {
        "id": worker.id,
        "name": worker.name,
        "status": worker.status,
        "hashrate": worker.hashrate_hs,
        "efficiency": worker.efficiency,
        "stale_shares": worker.stale_shares,
        "rejected_shares": worker.rejected_shares,
        "last_share_time": iso_z(worker.last_share_time) if worker.last_share_time else None,
        "firmware": worker.firmware,
    }


def subaccount_doc(snapshot: SubaccountSnapshot) -> dict[str, Any]:
    """The list entry of one subaccount (the per-subaccount key adds `workers`)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "currency": snapshot.currency,
        "subaccount": snapshot.subaccount,
        "observed_at": iso_z(snapshot.observed_at),
        "active": snapshot.active,
        "inactive": snapshot.inactive,
        "hashrate": snapshot.hashrate_hs,
        "stale": False,
    }


def subaccount_json(snapshot: SubaccountSnapshot) -> bytes:
    """The `…:subaccount:{name}` value: the list entry plus every worker."""
    head = subaccount_doc(snapshot)
    workers = snapshot.workers
    if isinstance(workers, tuple):
        # A WorkerSample encodes to exactly worker_doc's JSON (names, order, UTC seconds).
        return _encode(head)[:-1] + b',"workers":' + _encode(workers) + b"}"
    return _encode(head | {"workers": [worker_doc(w) for w in workers]})


@dataclass(frozen=True)
class StagedEntry:
    """A subaccount's fresh cache value, written under a staging key until the commit."""

    entry: dict[str, Any]  # the list entry (no workers)
    staging_key: str


def stage_subaccounts(
    client: redis.Redis,
    snapshots: Iterable[SubaccountSnapshot],
    *,
    keys: CacheKeys,
    token: str,
    ttl_seconds: int,
) -> dict[str, StagedEntry]:
    """Write fresh subaccount values under staging keys in one pipeline, invisible to readers.

    `commit_fleet` later renames them into place in the tick's single MULTI/EXEC, so a tick
    can write its cache in chunks while readers still never see two ticks mixed.
    """
    staged: dict[str, StagedEntry] = {}
    with client.pipeline(transaction=False) as pipe:
        for snapshot in snapshots:
            key = keys.staging(token, snapshot.currency, snapshot.subaccount)
            pipe.set(key, subaccount_json(snapshot), ex=ttl_seconds)
            staged[snapshot.subaccount] = StagedEntry(subaccount_doc(snapshot), key)
        pipe.execute()
    return staged


def publish_fleet(
    client: redis.Redis, fleet: FleetSnapshot, *, keys: CacheKeys, ttl_seconds: int
) -> Publication:
    """Stage and commit one whole fleet at once (the tick stages in chunks as it fetches)."""
    staged = stage_subaccounts(
        client, fleet.snapshots, keys=keys, token=uuid.uuid4().hex, ttl_seconds=ttl_seconds
    )
    return commit_fleet(
        client,
        currency=fleet.currency,
        observed_at=fleet.observed_at,
        subaccounts=fleet.subaccounts,
        listing_error=fleet.listing_error,
        staged=staged,
        failed=[f.subaccount for f in fleet.failures],
        keys=keys,
        ttl_seconds=ttl_seconds,
    )


def commit_fleet(
    client: redis.Redis,
    *,
    currency: str,
    observed_at: datetime,
    subaccounts: Sequence[str],
    listing_error: str | None,
    staged: Mapping[str, StagedEntry],
    failed: Sequence[str],
    keys: CacheKeys,
    ttl_seconds: int,
) -> Publication:
    """Publish one tick's cache in a single MULTI/EXEC, so readers never see two ticks mixed.

    Staged fresh values are renamed into place. Failed subaccounts keep their previous entry
    (marked stale, TTL untouched) until it expires; without one they are missing. With no
    fresh subaccount at all, the summary and list keep their TTL too, so an outage ages the
    cache out instead of renewing old numbers.
    """
    result = Publication(fresh=list(staged))
    previous = client.mget([keys.subaccount(currency, name) for name in failed]) if failed else []

    entries: dict[str, dict[str, Any]] = {}
    stale_docs: dict[str, dict[str, Any]] = {}
    for name, raw in zip(failed, previous, strict=True):
        doc = load_json(raw)
        if doc is None:
            result.missing.append(name)
            continue
        doc["stale"] = True
        stale_docs[name] = doc
        entries[name] = {k: v for k, v in doc.items() if k != "workers"}
        result.stale.append(name)
    entries.update({name: s.entry for name, s in staged.items()})

    listing = [entries[name] for name in sorted(entries)]
    summary = {
        "schema_version": SCHEMA_VERSION,
        "currency": currency,
        "observed_at": max((e["observed_at"] for e in listing), default=iso_z(observed_at)),
        "active": sum(e["active"] for e in listing),
        "inactive": sum(e["inactive"] for e in listing),
        "hashrate": sum(e["hashrate"] for e in listing),
        "subaccounts": len(subaccounts),
        "stale_subaccounts": sorted(result.stale),
        "missing_subaccounts": sorted(result.missing),
    }
    # An empty listing is a known-empty fleet only when the listing itself succeeded.
    known_empty = not subaccounts and listing_error is None
    result.summary = summary if listing or known_empty else None

    with client.pipeline(transaction=True) as pipe:
        for name, entry in staged.items():
            target = keys.subaccount(currency, name)
            pipe.rename(entry.staging_key, target)
            pipe.expire(target, ttl_seconds)
        for name, doc in stale_docs.items():
            # XX: if the old entry expired meanwhile, do not resurrect it without a TTL.
            pipe.set(keys.subaccount(currency, name), _encode(doc), xx=True, keepttl=True)
        if result.summary is not None:
            fresh = bool(staged) or known_empty
            renew = {"ex": ttl_seconds} if fresh else {"xx": True, "keepttl": True}
            pipe.set(keys.subaccounts(currency), _encode(listing), **renew)
            pipe.set(keys.summary(currency), _encode(summary), **renew)
        pipe.execute()
    return result


def remember_subaccounts(
    client: redis.Redis, keys: CacheKeys, currency: str, names: Iterable[str]
) -> None:
    """Keep the last listing of subaccounts, so a tick whose listing fails knows whom it missed."""
    client.set(keys.known_subaccounts(currency), _encode(sorted(names)))


def known_subaccounts(client: redis.Redis, keys: CacheKeys, currency: str) -> list[str]:
    names = load_json(client.get(keys.known_subaccounts(currency)))
    return [str(n) for n in names] if isinstance(names, list) else []


def read_summary(client: redis.Redis, keys: CacheKeys, currency: str) -> dict[str, Any] | None:
    """The fleet summary, or None when unknown (never zeros)."""
    return load_json(client.get(keys.summary(currency)))


def read_subaccounts(
    client: redis.Redis, keys: CacheKeys, currency: str
) -> list[dict[str, Any]] | None:
    return load_json(client.get(keys.subaccounts(currency)))


def read_subaccount(
    client: redis.Redis, keys: CacheKeys, currency: str, name: str
) -> dict[str, Any] | None:
    return load_json(client.get(keys.subaccount(currency, name)))


def load_json(raw: bytes | str | None) -> Any:
    """A cached JSON value, or None when it is absent or unreadable (unknown, never zero)."""
    if raw is None:
        return None
    try:
        return _decode(raw)
    except msgspec.DecodeError:
        return None
