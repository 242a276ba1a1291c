"""One tick split into chunks of subaccounts that several Celery workers fetch in parallel.

The coordinator (the beat's tick task, when TICK_CHUNK_SUBACCOUNTS is set) takes the tick
lock, lists the subaccounts once and queues one chunk task per TICK_CHUNK_SUBACCOUNTS names.
Each chunk fetches, stores and stages its subaccounts exactly as a whole tick does
(tasks/writer.py) and records what it did in the tick's Redis hash. The chunk that completes
the set (SADD and SCARD in one MULTI) publishes the tick, as `run_tick_locked` would: one
cache commit per currency, health, the alert step, the completion marks; then it releases the
lock. No chord and no result backend: a redelivered chunk rewrites the same rows and keys and
cannot publish twice. The shared rate limit (worker/ratelimit.py) paces every chunk together.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis
from sqlalchemy.engine import Engine

from models.store import write_subaccount_ticks
from tasks.alerts import INLINE
from tasks.tick import (
    SKIPPED_BUSY,
    SKIPPED_DONE,
    TICK_DEADLINE_SHARE,
    TickReport,
    _run_returning,
    collect,
    complete_tick,
    finish_tick,
    luxor_client,
    run_tick_locked,
    shared_limiter,
    tick_rows,
)
from tasks.writer import TickWriter
from worker import cache
from worker.errors import LuxorError
from worker.settings import Settings
from worker.snapshot import (
    FleetSnapshot,
    SubaccountFailure,
    SubaccountSnapshot,
    WorkerNames,
    iso_z,
    tick_time,
)

log = logging.getLogger("luxor_etl.tick")

CHUNK_TASK = "luxor.tick_chunk"
SendChunk = Callable[[str, int, list[str]], None]  # (observed_at ISO, chunk index, names)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

# Releases the tick lock only if this tick still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _key(keys: cache.CacheKeys, observed_at: str, part: str) -> str:
    return f"{keys.prefix}:internal:tick:{observed_at}:{part}"


def start_tick(
    settings: Settings,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    send_chunk: SendChunk,
    now: datetime | None = None,
    alert_delivery: str = INLINE,
) -> TickReport:
    """Coordinate one tick: lock, list once, queue the chunks. Without Redis, or when the
    listing fails, the whole tick runs here instead (`run_tick_locked` reports the trouble)."""
    observed_at = tick_time(now or datetime.now(UTC), settings.poll_interval_seconds)
    tick = iso_z(observed_at)
    keys = cache.CacheKeys(settings.cache_prefix)
    token = f"{tick}.{uuid.uuid4().hex[:12]}"
    lock_ttl_ms = settings.tick_time_limit_seconds * 1000

    def whole_tick() -> TickReport:
        return run_tick_locked(
            settings,
            engine=engine,
            redis_client=redis_client,
            skip_completed=True,
            now=now,
            alert_delivery=alert_delivery,
        )

    try:
        if not redis_client.set(keys.tick_lock(), token, nx=True, px=lock_ttl_ms):
            log.info("another tick is running; skipped", extra={"tick": tick})
            return TickReport(observed_at=observed_at, skipped=SKIPPED_BUSY)
        done = redis_client.get(keys.last_tick())
    except redis.RedisError:
        return whole_tick()
    if done is not None and done.decode() >= tick:
        _release(redis_client, keys, token)
        log.info("tick already completed; skipped", extra={"tick": tick})
        return TickReport(observed_at=observed_at, skipped=SKIPPED_DONE)

    try:
        names = _run_returning(_list_subaccounts(settings))
    except LuxorError:
        _release(redis_client, keys, token)
        return whole_tick()
    allowed = settings.luxor_subaccounts
    if allowed:
        names = [n for n in names if n in set(allowed)]
    size = max(1, settings.tick_chunk_subaccounts)
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    if not chunks:
        _release(redis_client, keys, token)
        return whole_tick()

    ttl_s = settings.tick_time_limit_seconds + 60
    manifest = _key(keys, tick, "manifest")
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.delete(manifest, _key(keys, tick, "results"), _key(keys, tick, "done"))
        pipe.hset(
            manifest,
            mapping={
                "token": token,
                "chunks": len(chunks),
                "subaccounts": json.dumps(names),
                "started_at": repr(time.time()),
            },
        )
        pipe.expire(manifest, ttl_s)
        pipe.execute()
    for index, chunk in enumerate(chunks):
        send_chunk(tick, index, chunk)
    log.info(
        "tick split into chunks",
        extra={"tick": tick, "chunks": len(chunks), "subaccounts": len(names)},
    )
    return TickReport(observed_at=observed_at)


async def _list_subaccounts(settings: Settings) -> list[str]:
    limiter = shared_limiter(settings)
    client = luxor_client(settings, limiter, max_connections=2)
    try:
        async with client:
            return await client.list_subaccounts()
    finally:
        await limiter.aclose()


def run_chunk(
    settings: Settings,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    observed_at: str,
    index: int,
    names: Sequence[str],
    alert_delivery: str = INLINE,
) -> str:
    """Fetch, store and stage one chunk; the chunk that completes the tick publishes it."""
    keys = cache.CacheKeys(settings.cache_prefix)
    manifest = {
        k.decode(): v.decode()
        for k, v in redis_client.hgetall(_key(keys, observed_at, "manifest")).items()
    }
    if not manifest:
        log.warning("tick chunk arrived after its tick ended", extra={"tick": observed_at})
        return "expired"
    at = datetime.fromisoformat(observed_at.replace("Z", "+00:00"))
    started_at = float(manifest["started_at"])
    api_requests: Counter[tuple[str, str]] = Counter()

    def count_request(endpoint: str, code: str) -> None:
        api_requests[endpoint, code] += 1

    writer = TickWriter(
        settings,
        engine=engine,
        redis_client=redis_client,
        observed_at=at,
        write_rows=write_subaccount_ticks,
        rows_of=tick_rows,
        token=f"{manifest['token']}.{index}",
    )
    deadline_s = started_at + settings.poll_interval_seconds * TICK_DEADLINE_SHARE - time.time()
    fleets: list[FleetSnapshot] = _run_returning(
        collect(
            settings,
            at,
            lambda currency: list(names),
            on_request=count_request,
            deadline_s=max(1.0, deadline_s),
            on_snapshot=writer.add,
            subaccounts=names,
        )
    )
    writer.finish()
    record = {
        "snapshots": [
            {
                "currency": s.currency,
                "subaccount": s.subaccount,
                "active": s.active,
                "inactive": s.inactive,
                "hashrate": s.hashrate_hs,
                "workers": _packed(s),
                "entry": writer.staged[s.currency][s.subaccount].entry
                if s.subaccount in writer.staged[s.currency]
                else None,
                "staging_key": writer.staged[s.currency][s.subaccount].staging_key
                if s.subaccount in writer.staged[s.currency]
                else None,
            }
            for fleet in fleets
            for s in fleet.snapshots
        ],
        "failures": [
            {
                "currency": f.currency,
                "subaccount": f.subaccount,
                "reason": f.reason,
                "error": f.error,
            }
            for fleet in fleets
            for f in fleet.failures
        ],
        "rows_written": writer.rows_written,
        "replayed_rows": writer.replayed_rows,
        "store_error": writer.store_error,
        "cache_error": writer.cache_error,
        "parked": writer.parked,
        "api_requests": [[e, c, n] for (e, c), n in api_requests.items()],
    }
    ttl_s = settings.tick_time_limit_seconds + 60
    done_key = _key(keys, observed_at, "done")
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.hset(_key(keys, observed_at, "results"), str(index), _encode(record))
        pipe.expire(_key(keys, observed_at, "results"), ttl_s)
        pipe.sadd(done_key, index)
        pipe.scard(done_key)
        pipe.expire(done_key, ttl_s)
        _, _, added, finished, _ = pipe.execute()
    log.info(
        "tick chunk done",
        extra={
            "tick": observed_at,
            "chunk": index,
            "subaccounts_ok": len(record["snapshots"]),
            "subaccounts_failed": len(record["failures"]),
            "rows": writer.rows_written,
        },
    )
    if not added or finished != int(manifest["chunks"]):
        return "chunk done"
    _publish(settings, engine, redis_client, observed_at, manifest, alert_delivery)
    return "tick published"


def _packed(snapshot: SubaccountSnapshot) -> list[Any]:
    workers = snapshot.workers
    if not isinstance(workers, WorkerNames):
        workers = WorkerNames(workers)
    return list(workers.packed())


def _publish(
    settings: Settings,
    engine: Engine,
    redis_client: redis.Redis,
    observed_at: str,
    manifest: dict[str, str],
    alert_delivery: str,
) -> None:
    """Everything `run_tick_locked` does after the fetch, for the whole tick's chunks."""
    keys = cache.CacheKeys(settings.cache_prefix)
    at = datetime.fromisoformat(observed_at.replace("Z", "+00:00"))
    records = [
        _decode(raw) for raw in redis_client.hgetall(_key(keys, observed_at, "results")).values()
    ]
    names = sorted(json.loads(manifest["subaccounts"]))
    report = TickReport(observed_at=at)
    staged: dict[str, dict[str, cache.StagedEntry]] = {}
    api_requests: Counter[tuple[str, str]] = Counter()
    snapshots: dict[str, list[SubaccountSnapshot]] = {c: [] for c in settings.luxor_currencies}
    failures: dict[str, list[SubaccountFailure]] = {c: [] for c in settings.luxor_currencies}
    for record in records:
        for s in record["snapshots"]:
            count, packed_names, statuses = s["workers"]
            snapshots.setdefault(s["currency"], []).append(
                SubaccountSnapshot(
                    currency=s["currency"],
                    subaccount=s["subaccount"],
                    observed_at=at,
                    active=s["active"],
                    inactive=s["inactive"],
                    hashrate_hs=s["hashrate"],
                    workers=WorkerNames.from_packed(count, packed_names, statuses),
                )
            )
            if s["staging_key"] is not None:
                staged.setdefault(s["currency"], {})[s["subaccount"]] = cache.StagedEntry(
                    s["entry"], s["staging_key"]
                )
        for f in record["failures"]:
            failures.setdefault(f["currency"], []).append(
                SubaccountFailure(f["currency"], f["subaccount"], f["reason"], f["error"])
            )
        report.rows_written += record["rows_written"]
        report.replayed_rows += record["replayed_rows"]
        report.store_error = report.store_error or record["store_error"]
        report.cache_error = report.cache_error or record["cache_error"]
        report.parked = report.parked or record["parked"]
        for endpoint, code, n in record["api_requests"]:
            api_requests[endpoint, code] += n
    report.fleets = [
        FleetSnapshot(
            currency=currency,
            observed_at=at,
            subaccounts=tuple(names),
            snapshots=tuple(sorted(snapshots[currency], key=lambda s: s.subaccount)),
            failures=tuple(sorted(failures[currency], key=lambda f: f.subaccount)),
        )
        for currency in snapshots
    ]
    started = time.monotonic() - (time.time() - float(manifest["started_at"]))
    finish_tick(
        settings,
        redis_client=redis_client,
        report=report,
        staged=staged,
        api_requests=api_requests,
        started=started,
    )
    complete_tick(
        settings, report, engine=engine, redis_client=redis_client, alert_delivery=alert_delivery
    )
    _release(redis_client, keys, manifest["token"])
    redis_client.delete(
        _key(keys, observed_at, "manifest"),
        _key(keys, observed_at, "results"),
        _key(keys, observed_at, "done"),
    )


def _release(redis_client: redis.Redis, keys: cache.CacheKeys, token: str) -> None:
    try:
        redis_client.eval(_RELEASE, 1, keys.tick_lock(), token)
    except redis.RedisError as exc:
        log.warning("tick lock release failed; it lapses", extra={"reason": str(exc)})
