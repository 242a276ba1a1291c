"""The pipeline's own health, recorded in Redis by the workers and read by the exporter.

Counters live in Redis hashes (not in process memory) so every worker process and host adds
to the same numbers, and the exporter, a separate process, can publish them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from worker.cache import CacheKeys

POLL_DURATION_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
FIELD_SEPARATOR = "\x1f"  # cannot appear in a label we write, unlike ':' or '|'


def _hash(keys: CacheKeys, name: str) -> str:
    return f"{keys.prefix}:internal:metrics:{name}"


@dataclass
class TickHealth:
    """What one tick adds to the pipeline counters."""

    currency: str
    duration_s: float
    succeeded: Iterable[str]
    listed: Iterable[str] | None  # None when the listing failed: keep what we knew
    succeeded_at_s: float


def record_tick(
    client: redis.Redis, keys: CacheKeys, ticks: Iterable[TickHealth], api_requests: Counter
) -> None:
    """Add one tick's numbers in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for tick in ticks:
            histogram = _hash(keys, f"poll_duration:{tick.currency}")
            for bound in POLL_DURATION_BUCKETS_S:
                if tick.duration_s <= bound:
                    pipe.hincrby(histogram, repr(bound), 1)
            pipe.hincrby(histogram, "+Inf", 1)
            pipe.hincrbyfloat(histogram, "sum", tick.duration_s)
            last_success = _hash(keys, f"last_success:{tick.currency}")
            for name in tick.succeeded:
                pipe.hset(last_success, name, repr(tick.succeeded_at_s))
            if tick.listed is not None:
                pipe.hset(
                    _hash(keys, f"listed:{tick.currency}"),
                    "names",
                    FIELD_SEPARATOR.join(sorted(tick.listed)),
                )
        for (endpoint, code), count in api_requests.items():
            pipe.hincrby(_hash(keys, "api_requests"), f"{endpoint}{FIELD_SEPARATOR}{code}", count)
        pipe.execute()


def record_alert_delivery(
    client: redis.Redis, keys: CacheKeys, kind: str, channel: str, result: str
) -> None:
    client.hincrby(_hash(keys, "alerts"), FIELD_SEPARATOR.join((kind, channel, result)), 1)


def read_poll_durations(
    client: redis.Redis, keys: CacheKeys, currency: str
) -> tuple[list[tuple[str, int]], float] | None:
    raw = client.hgetall(_hash(keys, f"poll_duration:{currency}"))
    if not raw:
        return None
    values = {k.decode(): v.decode() for k, v in raw.items()}
    buckets = [(repr(b), int(values.get(repr(b), 0))) for b in POLL_DURATION_BUCKETS_S]
    buckets.append(("+Inf", int(values.get("+Inf", 0))))
    return buckets, float(values.get("sum", 0.0))


def read_last_success(client: redis.Redis, keys: CacheKeys, currency: str) -> dict[str, float]:
    """Last successful fetch per subaccount still listed (a removed subaccount drops out)."""
    raw = client.hgetall(_hash(keys, f"last_success:{currency}"))
    listed = client.hget(_hash(keys, f"listed:{currency}"), "names")
    names = set(listed.decode().split(FIELD_SEPARATOR)) if listed else None
    result = {k.decode(): float(v) for k, v in raw.items()}
    return {k: v for k, v in result.items() if names is None or k in names}


def read_counter(client: redis.Redis, keys: CacheKeys, name: str) -> dict[tuple[str, ...], float]:
    raw = client.hgetall(_hash(keys, name))
    return {tuple(k.decode().split(FIELD_SEPARATOR)): float(v) for k, v in raw.items()}
