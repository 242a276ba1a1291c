"""A Luxor request budget shared through Redis by every worker process and host.

A token bucket (`LUXOR_RATE_LIMIT_PER_SECOND`, `LUXOR_RATE_LIMIT_BURST`) paces requests, and
a shared pause set from a 429's `Retry-After` holds back every worker, not just the one that
was told. Redis trouble never stops a tick: the limiter then lets requests through.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis
import redis.asyncio

log = logging.getLogger("luxor_etl.ratelimit")

# How long an unpaced limiter trusts its last look at the shared pause.
PAUSE_RECHECK_S = 0.1

# Returns milliseconds to wait: the shared pause if one is set, else until a token is free.
_TAKE_TOKEN = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return pause end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate <= 0 then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ms', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""

# Extends the shared pause, never shortens it.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""


class SharedRateLimiter:
    """`await acquire()` before each request; `await pause(seconds)` after a 429."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        per_second: float,
        burst: int,
        max_wait_s: float = 60.0,
    ) -> None:
        self._client = redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        self._bucket = f"{prefix}:internal:ratelimit:bucket"
        self._pause = f"{prefix}:internal:ratelimit:pause"
        self._per_second = per_second
        self._burst = max(1, burst)
        self._max_wait_s = max_wait_s
        self._take = self._client.register_script(_TAKE_TOKEN)
        self._set_pause = self._client.register_script(_PAUSE)
        self._warned = False
        self._clear_until = 0.0
        self._looking = asyncio.Lock()

    async def acquire(self) -> None:
        if self._per_second > 0:
            await self._acquire()
            return
        # Unpaced, only the shared pause matters: one look at it (one at a time) serves every
        # request for a short while; a 1,000-request tick would otherwise make 1,000 calls.
        if time.monotonic() < self._clear_until:
            return
        async with self._looking:
            if time.monotonic() >= self._clear_until:
                await self._acquire()

    async def _acquire(self) -> None:
        waited_s = 0.0
        while waited_s < self._max_wait_s:
            try:
                wait_ms = int(
                    await self._take(
                        keys=[self._bucket, self._pause], args=[self._per_second, self._burst]
                    )
                )
            except redis.RedisError as exc:
                self._warn(exc)
                self._clear_until = time.monotonic() + PAUSE_RECHECK_S
                return
            if wait_ms <= 0:
                if self._per_second <= 0:
                    self._clear_until = time.monotonic() + PAUSE_RECHECK_S
                return
            delay_s = min(wait_ms / 1000, self._max_wait_s - waited_s)
            await asyncio.sleep(delay_s)
            waited_s += delay_s

    async def pause(self, seconds: float) -> None:
        self._clear_until = 0.0
        try:
            await self._set_pause(keys=[self._pause], args=[max(1, int(seconds * 1000))])
        except redis.RedisError as exc:
            self._warn(exc)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "shared rate limit unavailable; requests not paced", extra={"reason": str(exc)}
            )
