"""A durable outbox in Redis for snapshot rows PostgreSQL could not take.

Each element is one tick's rows (msgpack, compressed). The next tick that reaches PostgreSQL
writes them first, oldest first; writes are upserts keyed by observed_at, so a replay after a
crash is harmless. The outbox is bounded; overflow drops the oldest tick, loudly.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis

from worker.cache import CacheKeys

log = logging.getLogger("luxor_etl.outbox")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def outbox_key(keys: CacheKeys) -> str:
    return f"{keys.prefix}:internal:outbox"


def dropped_key(keys: CacheKeys) -> str:
    return f"{keys.prefix}:internal:outbox-dropped"


def park(
    client: redis.Redis, keys: CacheKeys, rows: Sequence[Mapping[str, Any]], max_ticks: int
) -> int:
    """Keep one tick's rows for later; returns how many old ticks overflow dropped."""
    blob = zlib.compress(_encode(list(rows)), 1)
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(outbox_key(keys), blob)
        pipe.llen(outbox_key(keys))
        _, depth = pipe.execute()
    overflow = max(0, depth - max_ticks)
    if overflow:
        with client.pipeline(transaction=True) as pipe:
            for _ in range(overflow):
                pipe.rpop(outbox_key(keys))
            pipe.incrby(dropped_key(keys), overflow)
            pipe.execute()
        log.error(
            "outbox full: oldest ticks dropped, their snapshots are lost",
            extra={"dropped_ticks": overflow, "max_ticks": max_ticks},
        )
    return overflow


def drain(
    client: redis.Redis, keys: CacheKeys, write: Callable[[list[dict[str, Any]]], int]
) -> int:
    """Write every parked tick, oldest first; returns rows written. Stops at the first error."""
    written = 0
    while True:
        blob = client.lindex(outbox_key(keys), -1)
        if blob is None:
            return written
        written += write(_decode(zlib.decompress(blob)))
        # Remove exactly the element written; a concurrent park only adds at the head.
        client.lrem(outbox_key(keys), -1, blob)


def depth(client: redis.Redis, keys: CacheKeys) -> int:
    return int(client.llen(outbox_key(keys)))


def dropped(client: redis.Redis, keys: CacheKeys) -> int:
    return int(client.get(dropped_key(keys)) or 0)
