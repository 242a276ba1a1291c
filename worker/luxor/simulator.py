"""A local Luxor V2 pool API on loopback, with a generated fleet, drift and fault injection.

The API under ``/api/v2`` follows the contract in ``luxor-api-v2.md``; the control API under
``/_sim`` (no auth) lets tests and drills take workers down, bring them back and arm faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import random
import signal
import socket
import struct
import threading
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

API_PREFIX = "/api/v2"
CONTROL_PREFIX = "/_sim"

LUXOR_CURRENCIES = ("BTC", "LTC_DOGE", "SC", "ZEC", "ZEN", "LTC", "DOGE")
ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"

FAULT_KINDS = (
    "429",
    "429_retry_after",
    "500",
    "502",
    "503",
    "html",
    "reset",
    "timeout",
    "hang",
    "truncated",
    "malformed",
    "wrong_types",
    "missing_fields",
    "loop_pagination",
    "repeat_page",
    "shift_items",
    "401",
    "400",
)
# Faults a well-behaved client is expected to survive by retrying.
RETRIABLE_FAULT_KINDS = (
    "429",
    "429_retry_after",
    "500",
    "502",
    "503",
    "html",
    "reset",
    "malformed",
    "truncated",
    "timeout",
)
PAGING_FAULT_KINDS = frozenset({"loop_pagination", "repeat_page", "shift_items"})
BODY_FAULT_KINDS = frozenset({"truncated", "malformed", "wrong_types", "missing_fields"})
# Delay of "timeout" faults that come from the `faults` option (chaos runs stay fast).
CHAOS_TIMEOUT_DELAY_S = 2.0
HANG_S = 3600.0
CLOCK_PERIOD_S = 30.0
HASHRATE_JITTER = 0.025

# Hostile subaccount names avoid commas (the list separator of `subaccount_names`) and
# leading/trailing blanks; everything else that tends to break quoting is fair game.
HOSTILE_SUBACCOUNT_NAMES = (
    'site "north": 1/2',
    "矿机-1 <script>alert(1)</script>",
    "100%*{x} a+b&c=d?e#f",
    "long-" + "x" * 195,
    'na:me\\"x',
    "luxor:v1:BTC:summary",
    "Ünïcødé ✓ 🚀",
    "semi;colon 'single' `tick`",
)
HOSTILE_WORKER_NAMES = (
    'rig "one"',
    "rig two",
    "rig:3",
    "rack/4",
    "50%",
    "rig*",
    "{rig}",
    "矿机-1",
    "<script>alert(1)</script>",
    "w" * 200,
    'a:b\\"c',
    "rig,comma",
    "emoji 🚀",
)
FIRMWARES = (
    "Braiins OS 24.09.1",
    "LuxOS 2024.11.1",
    "Antminer S21 2024-03-07",
    "VNish 1.2.6",
    "WhatsMiner 20240521",
)
HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

_MASK64 = (1 << 64) - 1


@dataclass
class SimulatorConfig:
    """Options of the simulated API and its fleet."""

    subaccounts: int = 3
    workers: int = 50  # per subaccount (and per currency)
    seed: int = 1
    latency_ms: float = 0.0
    api_key: str = "sim-key"
    currencies: tuple[str, ...] = ("BTC",)
    max_page_size: int = 100
    reject_page_size_over: int | None = None
    inactive_fraction: float = 0.05
    drift_interval_s: float = 30.0
    hostile_names: bool = False
    faults: str | None = None  # e.g. "0.3" or "429:0.1,500:0.05"
    host: str = "127.0.0.1"
    port: int = 8099  # 0 = ephemeral
    string_hashrate_fraction: float = 0.3
    drift_fraction: float = 0.01


# --------------------------------------------------------------------------- fleet


def _uuid(n: int) -> str:
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _unit(seed: int, epoch: int) -> float:
    """Deterministic value in [-1, 1) for a worker and drift epoch (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return (x >> 11) / float(1 << 52) - 1.0


class Worker:
    """One simulated miner; its JSON is rendered lazily and cached per fleet generation."""

    __slots__ = (
        "base_hashrate",
        "cache",
        "cache_gen",
        "currency",
        "efficiency",
        "firmware",
        "head",
        "jseed",
        "last_share_ts",
        "mid",
        "name",
        "omit_share_time",
        "rejected_shares",
        "share_lag",
        "stale_shares",
        "status",
        "string_hashrate",
        "subaccount",
        "uid",
    )

    def __init__(self) -> None:
        self.cache: str | None = None
        self.cache_gen = -1
        self.head: str | None = None
        self.mid = ""


class Bucket:
    """The workers of one subaccount for one currency, in listing order."""

    __slots__ = (
        "_by_name",
        "_filtered",
        "_hashrate",
        "active",
        "next_index",
        "version",
        "workers",
    )

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.active = 0
        self.version = 0
        self.next_index = 0
        self._filtered: dict[str, tuple[int, list[Worker]]] = {}
        self._by_name: dict[str, Worker] | None = None
        self._hashrate: tuple[int, int, float] = (-1, -1, 0.0)

    @property
    def inactive(self) -> int:
        return len(self.workers) - self.active

    def by_name(self) -> dict[str, Worker]:
        if self._by_name is None:
            self._by_name = {w.name: w for w in self.workers}
        return self._by_name

    def append(self, w: Worker) -> None:
        self.workers.append(w)
        if w.status == ACTIVE:
            self.active += 1
        if self._by_name is not None:
            self._by_name[w.name] = w
        self.version += 1

    def remove(self, gone: Sequence[Worker]) -> None:
        ids = {id(w) for w in gone}
        self.workers = [w for w in self.workers if id(w) not in ids]
        self.active = sum(1 for w in self.workers if w.status == ACTIVE)
        self._by_name = None
        self.version += 1

    def set_status(self, w: Worker, status: str, now: float) -> bool:
        if w.status == status:
            return False
        if status == INACTIVE:
            w.last_share_ts = now - w.share_lag
            self.active -= 1
        else:
            w.omit_share_time = False
            self.active += 1
        w.status = status
        w.cache = None
        self.version += 1
        return True

    def hashrate(self, epoch: int) -> float:
        """Sum of the active workers' hashrate at a drift epoch (cached per version)."""
        version, cached_epoch, value = self._hashrate
        if version == self.version and cached_epoch == epoch:
            return value
        value = 0.0
        for w in self.workers:
            if w.status == ACTIVE:
                hr = w.base_hashrate
                if epoch:
                    hr *= 1.0 + HASHRATE_JITTER * _unit(w.jseed, epoch)
                value += hr
        self._hashrate = (self.version, epoch, value)
        return value

    def filtered(self, status: str | None) -> list[Worker]:
        if status is None:
            return self.workers
        hit = self._filtered.get(status)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        items = [w for w in self.workers if w.status == status]
        self._filtered[status] = (self.version, items)
        return items


class Subaccount:
    """A subaccount with one bucket of workers per currency."""

    __slots__ = ("buckets", "created_at", "id", "name", "site_id")

    def __init__(self, sid: int, name: str, site_id: str, created_at: str) -> None:
        self.id = sid
        self.name = name
        self.site_id = site_id
        self.created_at = created_at
        self.buckets: dict[str, Bucket] = {}

    def to_dict(self, origin: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "site_id": self.site_id,
            "created_at": self.created_at,
            "url": f"{origin}{API_PREFIX}/pool/subaccounts/{quote(self.name, safe='')}",
        }


class SimError(Exception):
    """A request the simulator refuses; rendered as a Luxor error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Fleet:
    """The in-memory truth behind the API. Every access holds ``lock`` (thread-safe)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.regenerate()

    # ---- generation

    def regenerate(self) -> None:
        """Rebuild the fleet from the seed (same seed, same fleet)."""
        # A big fleet is millions of small objects; collector passes mid-build only cost time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self.lock:
                self._generate()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _generate(self) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        self.rng = random.Random(cfg.seed * 1_000_003 + 7)
        self.epoch = 0
        self.gen = 0
        self.drifts = 0
        self.clock_ts = time.time()
        self._iso_cache: dict[int, str] = {}
        self._iso_gen = -1
        self.subaccounts: dict[str, Subaccount] = {}
        self._order: list[Subaccount] = []
        self._next_sub_id = 1
        self._site_ids: list[str] = []
        for i in range(cfg.subaccounts):
            if cfg.hostile_names and i < len(HOSTILE_SUBACCOUNT_NAMES):
                name = HOSTILE_SUBACCOUNT_NAMES[i]
            else:
                name = f"site-{i:02d}"
            self._add_subaccount(name, cfg.workers, rng)

    def _add_subaccount(self, name: str, workers: int, rng: random.Random) -> Subaccount:
        sid = self._next_sub_id
        self._next_sub_id += 1
        site_index = (sid - 1) // 4
        while len(self._site_ids) <= site_index:
            self._site_ids.append(_uuid(rng.getrandbits(128)))
        created = 1_577_836_800 + rng.randrange(4 * 365 * 86400)  # 2020..2023
        sub = Subaccount(sid, name, self._site_ids[site_index], _iso(created))
        for cur in self.config.currencies:
            bucket = Bucket()
            for _ in range(workers):
                bucket.append(self._new_worker(rng, sub.name, cur, bucket, None))
            sub.buckets[cur] = bucket
        self.subaccounts[name] = sub
        self._order.append(sub)
        return sub

    def _new_worker(
        self,
        rng: random.Random,
        sub_name: str,
        currency: str,
        bucket: Bucket,
        status: str | None,
    ) -> Worker:
        cfg = self.config
        r = rng.random
        index = bucket.next_index
        bucket.next_index += 1
        if cfg.hostile_names and index < len(HOSTILE_WORKER_NAMES):
            name = HOSTILE_WORKER_NAMES[index]
        else:
            name = f"rig-{index:05d}"
            if bucket._by_name is not None or status is not None:
                taken = bucket.by_name()
                while name in taken:
                    index = bucket.next_index
                    bucket.next_index += 1
                    name = f"rig-{index:05d}"
        w = Worker()
        w.uid = rng.getrandbits(128)
        w.name = name
        w.subaccount = sub_name
        w.currency = currency
        w.firmware = FIRMWARES[int(r() * len(FIRMWARES))]
        w.base_hashrate = 1.0e14 * (0.93 + 0.14 * r())
        w.string_hashrate = r() < cfg.string_hashrate_fraction
        w.efficiency = 0.95 + 0.05 * r()
        w.stale_shares = 0.002 * r()
        w.rejected_shares = 0.003 * r()
        w.share_lag = 50.0 * r()
        w.jseed = w.uid >> 65
        if status is None:
            status = INACTIVE if r() < cfg.inactive_fraction else ACTIVE
        w.status = status
        w.omit_share_time = False
        w.last_share_ts = None
        if status == INACTIVE:
            never = r()
            if never < 0.1:
                w.omit_share_time = True  # never shared: field absent
            elif never >= 0.2:
                w.last_share_ts = self.clock_ts - 600 - r() * 3 * 86400
            # 0.1..0.2: never shared, field present as null
        return w

    # ---- rendering

    def worker_dict(self, w: Worker) -> dict[str, Any]:
        """The worker as the API sends it now."""
        active = w.status == ACTIVE
        hr: float | int | str
        if active:
            hr = w.base_hashrate
            if self.epoch:
                hr *= 1.0 + HASHRATE_JITTER * _unit(w.jseed, self.epoch)
            hr = str(round(hr)) if w.string_hashrate else hr
        else:
            hr = "0" if w.string_hashrate else 0
        d: dict[str, Any] = {
            "id": _uuid(w.uid),
            "currency_type": w.currency,
            "subaccount_name": w.subaccount,
            "name": w.name,
            "firmware": w.firmware,
            "hashrate": hr,
            "efficiency": w.efficiency,
            "stale_shares": w.stale_shares,
            "rejected_shares": w.rejected_shares,
        }
        ts = self.clock_ts - w.share_lag if active else w.last_share_ts
        if ts is not None:
            d["last_share_time"] = _iso(ts)
        elif not w.omit_share_time:
            d["last_share_time"] = None
        d["status"] = w.status
        return d

    def render(self, w: Worker) -> str:
        """The worker's JSON, equal to dumping ``worker_dict`` but built from cached parts."""
        if w.cache is not None and w.cache_gen == self.gen:
            return w.cache
        if w.head is None:
            w.head = (
                f'{{"id":"{_uuid(w.uid)}","currency_type":{_dumps(w.currency)}'
                f',"subaccount_name":{_dumps(w.subaccount)},"name":{_dumps(w.name)}'
                f',"firmware":{_dumps(w.firmware)},"hashrate":'
            )
            w.mid = (
                f',"efficiency":{w.efficiency!r},"stale_shares":{w.stale_shares!r}'
                f',"rejected_shares":{w.rejected_shares!r}'
            )
        if w.status == ACTIVE:
            hr = w.base_hashrate
            if self.epoch:
                hr *= 1.0 + HASHRATE_JITTER * _unit(w.jseed, self.epoch)
            hr_json = f'"{round(hr)}"' if w.string_hashrate else repr(hr)
            tail = (
                f',"last_share_time":"{self._iso(self.clock_ts - w.share_lag)}","status":"ACTIVE"}}'
            )
        else:
            hr_json = '"0"' if w.string_hashrate else "0"
            if w.last_share_ts is not None:
                tail = f',"last_share_time":"{self._iso(w.last_share_ts)}","status":"INACTIVE"}}'
            elif w.omit_share_time:
                tail = ',"status":"INACTIVE"}'
            else:
                tail = ',"last_share_time":null,"status":"INACTIVE"}'
        w.cache = w.head + hr_json + w.mid + tail
        w.cache_gen = self.gen
        return w.cache

    def _iso(self, ts: float) -> str:
        # Active workers share a handful of distinct seconds per generation.
        if self._iso_gen != self.gen:
            self._iso_cache.clear()
            self._iso_gen = self.gen
        key = int(ts)
        text = self._iso_cache.get(key)
        if text is None:
            text = self._iso_cache[key] = _iso(key)
        return text

    # ---- reads (thread-safe)

    def subaccount_names(self) -> list[str]:
        with self.lock:
            return [s.name for s in self._order]

    def ordered(self, site_id: str | None = None) -> list[Subaccount]:
        with self.lock:
            if site_id is None:
                return list(self._order)
            return [s for s in self._order if s.site_id == site_id]

    def get(self, name: str) -> Subaccount:
        sub = self.subaccounts.get(name)
        if sub is None:
            raise SimError(404, "not_found", f"Subaccount not found: {name}")
        return sub

    def workers(self, subaccount: str, currency: str | None = None) -> list[dict[str, Any]]:
        """Every worker of a subaccount as the API would send it now."""
        with self.lock:
            bucket = self._bucket(subaccount, currency)
            return [self.worker_dict(w) for w in bucket.workers]

    def totals(self, subaccount: str, currency: str | None = None) -> tuple[int, int]:
        """(active, inactive) of a subaccount."""
        with self.lock:
            bucket = self._bucket(subaccount, currency)
            return bucket.active, bucket.inactive

    def worker_count(self) -> int:
        with self.lock:
            return sum(len(b.workers) for s in self._order for b in s.buckets.values())

    def state(self) -> dict[str, Any]:
        """Per subaccount and currency: worker count, active, inactive, total hashrate."""
        with self.lock:
            rows = []
            totals: dict[str, dict[str, Any]] = {}
            for sub in self._order:
                for cur, b in sub.buckets.items():
                    row = {
                        "name": sub.name,
                        "id": sub.id,
                        "currency": cur,
                        "workers": len(b.workers),
                        "active": b.active,
                        "inactive": b.inactive,
                        "hashrate": b.hashrate(self.epoch),
                    }
                    rows.append(row)
                    t = totals.setdefault(
                        cur, {"workers": 0, "active": 0, "inactive": 0, "hashrate": 0.0}
                    )
                    for key in ("workers", "active", "inactive", "hashrate"):
                        t[key] += row[key]
            return {
                "seed": self.config.seed,
                "epoch": self.epoch,
                "drifts": self.drifts,
                "clock": _iso(self.clock_ts),
                "currencies": list(self.config.currencies),
                "subaccount_count": len(self._order),
                "subaccounts": rows,
                "totals": totals,
            }

    def _bucket(self, subaccount: str, currency: str | None) -> Bucket:
        sub = self.get(subaccount)
        cur = currency or self.config.currencies[0]
        bucket = sub.buckets.get(cur)
        if bucket is None:
            raise SimError(400, "invalid_request", f"Currency not simulated: {cur}")
        return bucket

    # ---- mutations

    def advance_clock(self) -> None:
        """Move last_share_time of active workers forward without any other change."""
        with self.lock:
            self.clock_ts = time.time()
            self.gen += 1

    def drift(self) -> int:
        """Flip a small fraction of workers and jitter hashrates; returns flips made."""
        with self.lock:
            self.epoch += 1
            self.drifts += 1
            self.clock_ts = now = time.time()
            self.gen += 1
            buckets = [b for s in self._order for b in s.buckets.values() if b.workers]
            if not buckets:
                return 0
            cum: list[int] = []
            total = 0
            inactive = 0
            for b in buckets:
                total += len(b.workers)
                inactive += b.inactive
                cum.append(total)
            flips = max(1, round(total * self.config.drift_fraction))
            if self.config.drift_fraction <= 0:
                flips = 0
            target = self.config.inactive_fraction
            rng = self.rng
            flipped = 0
            for _ in range(flips):
                f = inactive / total
                # Bringing workers up with probability f/(f+target) keeps the inactive
                # share hovering around inactive_fraction instead of random-walking away.
                up = rng.random() < (f / (f + target) if f + target > 0 else 0.0)
                want = INACTIVE if up else ACTIVE
                for _attempt in range(64):
                    k = rng.randrange(total)
                    bi = bisect_right(cum, k)
                    b = buckets[bi]
                    w = b.workers[k - (cum[bi - 1] if bi else 0)]
                    if w.status == want:
                        b.set_status(w, ACTIVE if up else INACTIVE, now)
                        inactive += -1 if up else 1
                        flipped += 1
                        break
            return flipped

    def _pick(
        self, bucket: Bucket, names: list[str] | None, count: int | None, status: str | None
    ) -> list[Worker]:
        if names is not None:
            table = bucket.by_name()
            unknown = [n for n in names if n not in table]
            if unknown:
                raise SimError(404, "not_found", f"Unknown workers: {unknown}")
            return [table[n] for n in dict.fromkeys(names)]
        cands = bucket.workers if status is None else bucket.filtered(status)
        k = min(count or 0, len(cands))
        return [cands[i] for i in sorted(self.rng.sample(range(len(cands)), k))]

    def set_status(
        self,
        subaccount: str,
        status: str,
        *,
        count: int | None = None,
        names: list[str] | None = None,
        currency: str | None = None,
    ) -> list[str]:
        """Take workers down (INACTIVE) or bring them up (ACTIVE); returns affected names."""
        with self.lock:
            bucket = self._bucket(subaccount, currency)
            other = ACTIVE if status == INACTIVE else INACTIVE
            chosen = self._pick(bucket, names, count, other)
            now = self.clock_ts
            return [w.name for w in chosen if bucket.set_status(w, status, now)]

    def remove_workers(
        self,
        subaccount: str,
        *,
        count: int | None = None,
        names: list[str] | None = None,
        currency: str | None = None,
    ) -> list[str]:
        with self.lock:
            bucket = self._bucket(subaccount, currency)
            chosen = self._pick(bucket, names, count, None)
            bucket.remove(chosen)
            return [w.name for w in chosen]

    def add_workers(
        self,
        subaccount: str,
        count: int,
        *,
        currency: str | None = None,
        status: str = ACTIVE,
    ) -> list[str]:
        with self.lock:
            bucket = self._bucket(subaccount, currency)
            cur = currency or self.config.currencies[0]
            added = []
            for _ in range(count):
                w = self._new_worker(self.rng, subaccount, cur, bucket, status)
                if status == INACTIVE:
                    w.last_share_ts = self.clock_ts - w.share_lag
                bucket.append(w)
                added.append(w.name)
            return added

    def add_subaccount(self, name: str, workers: int | None = None) -> Subaccount:
        with self.lock:
            if name in self.subaccounts:
                raise SimError(409, "conflict", f"Subaccount exists: {name}")
            count = self.config.workers if workers is None else workers
            return self._add_subaccount(name, count, self.rng)

    def remove_subaccount(self, name: str) -> None:
        with self.lock:
            sub = self.get(name)
            del self.subaccounts[name]
            self._order.remove(sub)


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """An armed fault: fires on matching API requests, ``count`` times or with a probability."""

    id: int
    kind: str
    count: int | None = 1
    probability: float | None = None
    endpoint: str | None = None
    subaccount: str | None = None
    page: int | None = None
    retry_after_s: float = 1.0
    delay_s: float | None = None
    fields: list[str] | None = None
    origin: str = "api"
    injected: int = 0

    def matches(self, endpoint: str, subaccounts: Sequence[str], page: int | None) -> bool:
        if self.endpoint is not None:
            group = "subaccounts" if endpoint in ("subaccounts", "subaccount") else endpoint
            if group != self.endpoint:
                return False
        if self.subaccount is not None and self.subaccount not in subaccounts:
            return False
        if self.page is not None and page != self.page:
            return False
        if self.kind in PAGING_FAULT_KINDS:
            if endpoint not in ("workers", "subaccounts"):
                return False
            # Repeating or shifting needs an earlier page to repeat from.
            if self.kind != "loop_pagination" and (page is None or page < 2):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_fault_spec(spec: str | None) -> list[tuple[str, float]]:
    """Parse the ``faults`` option: ``"0.3"`` or ``"429:0.1,500:0.05"``."""
    if spec is None or not spec.strip():
        return []
    spec = spec.strip()
    try:
        p = float(spec)
    except ValueError:
        pass
    else:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"fault probability must be within 0..1: {spec}")
        return [("random", p)]
    out = []
    for part in spec.split(","):
        kind, sep, prob = part.strip().rpartition(":")
        if not sep or kind not in FAULT_KINDS:
            kinds = ", ".join(FAULT_KINDS)
            raise ValueError(f"invalid fault spec {part.strip()!r}; kinds: {kinds}")
        try:
            p = float(prob)
        except ValueError:
            raise ValueError(f"invalid fault probability in {part.strip()!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"fault probability must be within 0..1: {part.strip()!r}")
        out.append((kind, p))
    return out


# --------------------------------------------------------------------------- HTTP


# Per-request state shared by the middleware and the handlers (each request runs in its own
# task, so each has its own context).
_fault: ContextVar[Fault | None] = ContextVar("sim_fault", default=None)
_outcome: ContextVar[str | None] = ContextVar("sim_outcome", default=None)


def _json_response(obj: Any, status: int = 200) -> web.Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json_response({"error": {"code": code, "message": message}}, status)


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise SimError(400, "invalid_request", f"{name} must be an integer >= 1")
    return int(raw)


def _lenient_page(request: web.Request) -> int | None:
    raw = request.query.get("page_number", "1")
    return int(raw) if raw.isascii() and raw.isdigit() else None


def _requested_names(request: web.Request) -> list[str]:
    names: dict[str, None] = {}
    for raw in request.query.getall("subaccount_names", []):
        for name in raw.split(","):
            if name:
                names[name] = None
    return list(names)


def _origin(request: web.Request) -> str:
    return f"{request.url.scheme}://{request.url.raw_authority}"


class Simulator:
    """State of one simulator instance: config, fleet, armed faults and counters."""

    def __init__(self, config: SimulatorConfig) -> None:
        if config.subaccounts < 0 or config.workers < 0 or config.max_page_size < 1:
            raise ValueError("subaccounts and workers must be >= 0, max_page_size >= 1")
        self.initial_config = config
        self.config = dataclasses.replace(config)
        self._config_faults = parse_fault_spec(config.faults)
        if not config.currencies or any(c not in LUXOR_CURRENCIES for c in config.currencies):
            raise ValueError(f"currencies must be among {', '.join(LUXOR_CURRENCIES)}")
        self.fleet = Fleet(self.config)
        self.fault_rng = random.Random(config.seed ^ 0x5EED)
        self.faults: list[Fault] = []
        self._fault_ids = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        self.injected: Counter[str] = Counter()
        self._arm_config_faults()
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._clock_task: asyncio.Task[None] | None = None

    # ---- faults

    def _arm_config_faults(self) -> None:
        for kind, p in self._config_faults:
            self.arm(
                kind=kind, count=None, probability=p, origin="config", delay_s=CHAOS_TIMEOUT_DELAY_S
            )

    def arm(self, **fields: Any) -> Fault:
        self._fault_ids += 1
        fault = Fault(id=self._fault_ids, **fields)
        self.faults.append(fault)
        return fault

    def _select_fault(
        self, endpoint: str, subaccounts: Sequence[str], page: int | None
    ) -> Fault | None:
        for fault in self.faults:
            if not fault.matches(endpoint, subaccounts, page):
                continue
            if fault.probability is not None:
                if self.fault_rng.random() >= fault.probability:
                    continue
            else:
                fault.count = (fault.count or 0) - 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            fault.injected += 1
            if fault.kind != "random":
                return fault
            kind = self.fault_rng.choice(RETRIABLE_FAULT_KINDS)
            return Fault(
                id=fault.id,
                kind=kind,
                count=None,
                delay_s=CHAOS_TIMEOUT_DELAY_S,
                origin=fault.origin,
            )
        return None

    # ---- app wiring

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app[SIMULATOR_KEY] = self
        r = app.router
        pool = f"{API_PREFIX}/pool"
        r.add_get(f"{pool}/subaccounts", self._subaccounts, name="subaccounts")
        r.add_get(f"{pool}/subaccounts/{{name:[^/]+}}", self._subaccount, name="subaccount")
        r.add_get(f"{pool}/workers/{{currency_type}}", self._workers, name="workers")
        c = CONTROL_PREFIX
        r.add_get(f"{c}/state", self._c_state)
        r.add_get(f"{c}/stats", self._c_stats)
        r.add_post(f"{c}/reset", self._c_reset)
        r.add_post(f"{c}/drift", self._c_drift)
        r.add_post(f"{c}/config", self._c_config)
        r.add_post(f"{c}/workers/down", self._c_workers_down)
        r.add_post(f"{c}/workers/up", self._c_workers_up)
        r.add_post(f"{c}/workers/remove", self._c_workers_remove)
        r.add_post(f"{c}/workers/add", self._c_workers_add)
        r.add_post(f"{c}/subaccounts/add", self._c_subaccounts_add)
        r.add_post(f"{c}/subaccounts/remove", self._c_subaccounts_remove)
        r.add_get(f"{c}/faults", self._c_faults_list)
        r.add_post(f"{c}/faults", self._c_faults_arm)
        r.add_delete(f"{c}/faults", self._c_faults_clear)
        r.add_delete(f"{c}/faults/{{id}}", self._c_faults_delete)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._clock_task = asyncio.create_task(self._clock_loop())

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._stop is not None:
            self._stop.set()  # ends hanging and delayed requests

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task

    async def _clock_loop(self) -> None:
        assert self._wake is not None
        while True:
            interval = self.config.drift_interval_s
            period = interval if interval > 0 else CLOCK_PERIOD_S
            try:
                await asyncio.wait_for(self._wake.wait(), period)
            except TimeoutError:
                if interval > 0:
                    self.fleet.drift()
                else:
                    self.fleet.advance_clock()
            else:
                self._wake.clear()  # interval changed: start a new period

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when the full time elapsed."""
        if self._stop is None:
            await asyncio.sleep(seconds)
            return True
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    # ---- API middleware: latency, auth, faults, counters, error bodies

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/") and request.path != API_PREFIX:
            try:
                return await handler(request)
            except SimError as exc:
                return _error(exc.status, exc.code, exc.message)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return _error(exc.status, "not_found" if exc.status == 404 else "error", exc.reason)
        route = request.match_info.route
        endpoint = route.name or "other"
        status = "aborted"  # stays so when the client disconnects first
        try:
            resp = await self._api(request, handler, endpoint)
            status = str(resp.status)
            return resp
        finally:
            self.requests[(endpoint, _outcome.get() or status)] += 1

    async def _api(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        endpoint: str,
    ) -> web.StreamResponse:
        cfg = self.config
        if cfg.latency_ms > 0:
            await asyncio.sleep(cfg.latency_ms / 1000.0)
        key = request.headers.get("authorization")
        if key != cfg.api_key:
            return _error(401, "unauthorized", "Missing or invalid API key")
        if endpoint == "other":  # no such route or method: aiohttp raises 404 or 405
            try:
                return await handler(request)
            except web.HTTPException as exc:
                code = "not_found" if exc.status == 404 else "invalid_request"
                return _error(exc.status, code, exc.reason)
        if endpoint == "workers":
            subs: Sequence[str] = _requested_names(request)
        elif endpoint == "subaccount":
            subs = (request.match_info["name"],)
        else:
            subs = ()
        fault = self._select_fault(endpoint, subs, _lenient_page(request))
        if fault is not None:
            self.injected[fault.kind] += 1
            early = await self._transport_fault(request, fault)
            if early is not None:
                return early
            _fault.set(fault)
        try:
            resp = await handler(request)
        except SimError as exc:
            return _error(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, "invalid_request", exc.reason)
        if fault is not None and fault.kind in BODY_FAULT_KINDS and resp.status == 200:
            return self._body_fault(resp, fault, endpoint)
        return resp

    async def _transport_fault(
        self, request: web.Request, fault: Fault
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "429":
            return _error(429, "rate_limited", "Too Many Requests")
        if kind == "429_retry_after":
            ra = fault.retry_after_s
            resp = _error(429, "rate_limited", "Too Many Requests")
            resp.headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            return resp
        if kind == "500":
            return _error(500, "internal_error", "Internal server error")
        if kind == "502":
            return _error(502, "bad_gateway", "Bad gateway")
        if kind == "503":
            return _error(503, "service_unavailable", "Service unavailable")
        if kind == "html":
            return web.Response(status=502, text=HTML_502, content_type="text/html")
        if kind == "401":
            return _error(401, "unauthorized", "Missing or invalid API key")
        if kind == "400":
            return _error(400, "invalid_request", "Invalid parameters provided")
        if kind == "reset":
            _outcome.set("reset")
            return self._reset(request)
        if kind == "hang":
            _outcome.set("hang")
            await self._sleep(fault.delay_s if fault.delay_s is not None else HANG_S)
            return self._reset(request)
        if kind == "timeout":
            completed = await self._sleep(fault.delay_s if fault.delay_s is not None else 30.0)
            if not completed:
                return self._reset(request)
        return None

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 turns the close into a TCP RST, like a crashed proxy.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # Writing to the aborted transport fails and aiohttp drops the response quietly.
        return web.Response(status=599)

    def _body_fault(self, resp: web.Response, fault: Fault, endpoint: str) -> web.Response:
        body = resp.body
        assert isinstance(body, bytes)
        kind = fault.kind
        if kind == "truncated":
            return web.Response(body=body[: len(body) // 2], content_type="application/json")
        if kind == "malformed":
            broken = body.replace(b":", b"=", 1) + b",]"
            return web.Response(body=broken, content_type="application/json")
        obj = json.loads(body)
        if kind == "wrong_types":
            if endpoint == "workers":
                obj["total_active"] = "lots"
                obj["total_inactive"] = None
                obj["workers"] = {str(i): w for i, w in enumerate(obj["workers"])}
                obj["pagination"]["page_number"] = "one"
            elif endpoint == "subaccounts":
                obj["subaccounts"] = {s["name"]: s for s in obj["subaccounts"]}
                obj["pagination"] = "none"
            else:
                obj["id"] = "zero"
                obj["name"] = 42
        else:
            defaults = {
                "workers": ["workers", "total_active"],
                "subaccounts": ["subaccounts"],
                "subaccount": ["name"],
            }
            for name in fault.fields or defaults.get(endpoint, []):
                obj.pop(name, None)
        return _json_response(obj)

    # ---- API handlers

    def _paging(self, request: web.Request) -> tuple[int, int]:
        page = _int_param(request, "page_number", 1)
        size = _int_param(request, "page_size", 10)
        limit = self.config.reject_page_size_over
        if limit is not None and size > limit:
            raise SimError(400, "invalid_request", f"page_size must be at most {limit}")
        return page, min(size, self.config.max_page_size)

    @staticmethod
    def _pagination(
        request: web.Request, page: int, size: int, count: int, total: int, fault: Fault | None
    ) -> dict[str, Any]:
        def link(n: int) -> str:
            return str(request.url.update_query({"page_number": str(n), "page_size": str(size)}))

        offset = (page - 1) * size
        nxt: str | None = link(page + 1) if offset + size < total else None
        if fault is not None and fault.kind == "loop_pagination":
            nxt = link(page)
        return {
            "page_number": page,
            "page_size": size,
            "item_count": count,
            "previous_page_url": link(page - 1) if page > 1 else None,
            "next_page_url": nxt,
        }

    @staticmethod
    def _start(page: int, size: int, fault: Fault | None) -> int:
        offset = (page - 1) * size
        if fault is not None and fault.kind == "repeat_page":
            return max(0, offset - size)
        if fault is not None and fault.kind == "shift_items":
            # One item of the previous page shows up again, so the last item of this
            # page is never seen by a client that pages naively.
            return max(0, offset - 1)
        return offset

    async def _workers(self, request: web.Request) -> web.Response:
        currency = request.match_info["currency_type"]
        if currency not in LUXOR_CURRENCIES:
            raise SimError(400, "invalid_request", f"Unknown currency_type: {currency}")
        page, size = self._paging(request)
        status = request.query.get("status")
        if status is not None:
            status = status.upper()
            if status not in (ACTIVE, INACTIVE):
                raise SimError(400, "invalid_request", "status must be ACTIVE or INACTIVE")
        names = _requested_names(request)
        site_id = request.query.get("site_id")
        fault = _fault.get()
        fleet = self.fleet
        with fleet.lock:
            if names:
                subs = [fleet.get(n) for n in names]
                if site_id is not None:
                    subs = [s for s in subs if s.site_id == site_id]
            else:
                subs = fleet.ordered(site_id)
            segments: list[list[Worker]] = []
            total_active = total_inactive = 0
            for sub in subs:
                bucket = sub.buckets.get(currency)
                if bucket is None:
                    continue
                total_active += bucket.active
                total_inactive += bucket.inactive
                segments.append(bucket.filtered(status))
            total = sum(len(s) for s in segments)
            start = self._start(page, size, fault)
            items: list[str] = []
            for seg in segments:
                if len(items) >= size:
                    break
                if start >= len(seg):
                    start -= len(seg)
                    continue
                for w in seg[start : start + size - len(items)]:
                    items.append(fleet.render(w))
                start = 0
        head = {
            "currency_type": currency,
            "subaccounts": [{"id": s.id, "name": s.name} for s in subs],
            "total_inactive": total_inactive,
            "total_active": total_active,
        }
        pagination = self._pagination(request, page, size, len(items), total, fault)
        dumps = json.dumps
        body = (
            dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
            + ',"workers":['
            + ",".join(items)
            + '],"pagination":'
            + dumps(pagination, ensure_ascii=False, separators=(",", ":"))
            + "}"
        )
        return web.Response(body=body.encode(), content_type="application/json")

    async def _subaccounts(self, request: web.Request) -> web.Response:
        page, size = self._paging(request)
        fault = _fault.get()
        subs = self.fleet.ordered(request.query.get("site_id"))
        start = self._start(page, size, fault)
        origin = _origin(request)
        chunk = [s.to_dict(origin) for s in subs[start : start + size]]
        pagination = self._pagination(request, page, size, len(chunk), len(subs), fault)
        return _json_response({"subaccounts": chunk, "pagination": pagination})

    async def _subaccount(self, request: web.Request) -> web.Response:
        with self.fleet.lock:
            sub = self.fleet.get(request.match_info["name"])
        return _json_response(sub.to_dict(_origin(request)))

    # ---- control API

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            raise SimError(400, "invalid_request", "body must be JSON") from None
        if not isinstance(body, dict):
            raise SimError(400, "invalid_request", "body must be a JSON object")
        return body

    @staticmethod
    def _opt_int(body: dict[str, Any], key: str, minimum: int = 0) -> int | None:
        value = body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SimError(400, "invalid_request", f"{key} must be an integer >= {minimum}")
        return value

    def _target(self, body: dict[str, Any]) -> tuple[str, str, list[str] | None, int | None]:
        sub = body.get("subaccount")
        if not isinstance(sub, str):
            raise SimError(400, "invalid_request", "subaccount (string) is required")
        currency = body.get("currency") or self.config.currencies[0]
        if currency not in self.config.currencies:
            raise SimError(400, "invalid_request", f"currency not simulated: {currency}")
        names = body.get("names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise SimError(400, "invalid_request", "names must be a list of strings")
        count = self._opt_int(body, "count")
        if names is None and count is None:
            raise SimError(400, "invalid_request", "give count or names")
        return sub, currency, names, count

    def _affected(self, sub: str, currency: str, names: list[str]) -> web.Response:
        active, inactive = self.fleet.totals(sub, currency)
        return _json_response(
            {
                "subaccount": sub,
                "currency": currency,
                "affected": names,
                "active": active,
                "inactive": inactive,
                "workers": active + inactive,
            }
        )

    async def _c_workers_status(self, request: web.Request, status: str) -> web.Response:
        sub, currency, names, count = self._target(await self._body(request))
        done = self.fleet.set_status(sub, status, count=count, names=names, currency=currency)
        return self._affected(sub, currency, done)

    async def _c_workers_down(self, request: web.Request) -> web.Response:
        return await self._c_workers_status(request, INACTIVE)

    async def _c_workers_up(self, request: web.Request) -> web.Response:
        return await self._c_workers_status(request, ACTIVE)

    async def _c_workers_remove(self, request: web.Request) -> web.Response:
        sub, currency, names, count = self._target(await self._body(request))
        done = self.fleet.remove_workers(sub, count=count, names=names, currency=currency)
        return self._affected(sub, currency, done)

    async def _c_workers_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        sub, currency, _names, count = self._target({**body, "names": None})
        status = str(body.get("status", ACTIVE)).upper()
        if status not in (ACTIVE, INACTIVE):
            raise SimError(400, "invalid_request", "status must be ACTIVE or INACTIVE")
        done = self.fleet.add_workers(sub, count or 0, currency=currency, status=status)
        return self._affected(sub, currency, done)

    async def _c_subaccounts_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name or "," in name:
            raise SimError(400, "invalid_request", "name must be a non-empty string without ','")
        sub = self.fleet.add_subaccount(name, self._opt_int(body, "workers"))
        return _json_response(
            {
                "subaccount": sub.to_dict(_origin(request)),
                "workers": sum(len(b.workers) for b in sub.buckets.values()),
            }
        )

    async def _c_subaccounts_remove(self, request: web.Request) -> web.Response:
        name = (await self._body(request)).get("name")
        if not isinstance(name, str):
            raise SimError(400, "invalid_request", "name (string) is required")
        self.fleet.remove_subaccount(name)
        return _json_response({"removed": name})

    async def _c_faults_arm(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        kind = str(body.get("kind", ""))
        if kind not in FAULT_KINDS:
            raise SimError(400, "invalid_request", f"kind must be one of {', '.join(FAULT_KINDS)}")
        probability = body.get("probability")
        if probability is not None:
            if (
                isinstance(probability, bool)
                or not isinstance(probability, int | float)
                or not (0.0 <= probability <= 1.0)
            ):
                raise SimError(400, "invalid_request", "probability must be within 0..1")
            count = None
        else:
            count = self._opt_int(body, "count", 1) or 1
        endpoint = body.get("endpoint")
        if endpoint not in (None, "workers", "subaccounts"):
            raise SimError(400, "invalid_request", "endpoint must be workers, subaccounts or null")
        subaccount = body.get("subaccount")
        if subaccount is not None and not isinstance(subaccount, str):
            raise SimError(400, "invalid_request", "subaccount must be a string")
        fields = body.get("fields")
        if fields is not None and not isinstance(fields, list):
            raise SimError(400, "invalid_request", "fields must be a list")
        numbers = {}
        for key in ("retry_after_s", "delay_s"):
            value = body.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise SimError(400, "invalid_request", f"{key} must be a number >= 0")
                numbers[key] = float(value)
        fault = self.arm(
            kind=kind,
            count=count,
            probability=None if probability is None else float(probability),
            endpoint=endpoint,
            subaccount=subaccount,
            page=self._opt_int(body, "page", 1),
            fields=fields,
            **numbers,
        )
        return _json_response({"fault": fault.to_dict()})

    async def _c_faults_list(self, request: web.Request) -> web.Response:
        return _json_response({"faults": [f.to_dict() for f in self.faults]})

    async def _c_faults_clear(self, request: web.Request) -> web.Response:
        cleared = len(self.faults)
        self.faults.clear()
        return _json_response({"cleared": cleared})

    async def _c_faults_delete(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        before = len(self.faults)
        self.faults = [f for f in self.faults if str(f.id) != raw]
        if len(self.faults) == before:
            raise SimError(404, "not_found", f"No armed fault {raw}")
        return _json_response({"cleared": 1})

    def stats(self) -> dict[str, Any]:
        """API request counts by endpoint and response code, and faults injected by kind."""
        requests: dict[str, dict[str, int]] = {}
        for (endpoint, code), n in sorted(self.requests.items()):
            requests.setdefault(endpoint, {})[code] = n
        return {
            "requests": requests,
            "requests_total": sum(self.requests.values()),
            "faults_injected": dict(self.injected),
        }

    async def _c_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats())

    async def _c_state(self, request: web.Request) -> web.Response:
        state = self.fleet.state()
        state["faults"] = [f.to_dict() for f in self.faults]
        state["requests"] = self.stats()
        state["config"] = self._runtime_config()
        return _json_response(state)

    def _runtime_config(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "latency_ms": cfg.latency_ms,
            "max_page_size": cfg.max_page_size,
            "reject_page_size_over": cfg.reject_page_size_over,
            "drift_interval_s": cfg.drift_interval_s,
        }

    async def _c_config(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        cfg = self.config
        for key in ("latency_ms", "drift_interval_s"):
            if key in body:
                value = body[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise SimError(400, "invalid_request", f"{key} must be a number >= 0")
                setattr(cfg, key, float(value))
        if "max_page_size" in body:
            cfg.max_page_size = self._opt_int(body, "max_page_size", 1) or cfg.max_page_size
        if "reject_page_size_over" in body:
            cfg.reject_page_size_over = self._opt_int(body, "reject_page_size_over", 1)
        if "drift_interval_s" in body and self._wake is not None:
            self._wake.set()
        return _json_response(self._runtime_config())

    async def _c_drift(self, request: web.Request) -> web.Response:
        flipped = self.fleet.drift()
        return _json_response({"flipped": flipped, "epoch": self.fleet.epoch})

    async def _c_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response({"reset": True, "workers": self.fleet.worker_count()})

    def reset(self) -> None:
        """Back to the initial state: config, fleet from the seed, faults, counters."""
        initial = self.initial_config
        for f in dataclasses.fields(initial):
            setattr(self.config, f.name, getattr(initial, f.name))
        self.fleet.regenerate()
        self.faults.clear()
        self.fault_rng = random.Random(initial.seed ^ 0x5EED)
        self.requests.clear()
        self.injected.clear()
        self._arm_config_faults()
        if self._wake is not None:
            self._wake.set()


SIMULATOR_KEY = web.AppKey("simulator", Simulator)


def build_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application (``app[SIMULATOR_KEY]`` holds its state)."""
    return Simulator(config).build()


def _make_runner(app: web.Application) -> web.AppRunner:
    # Cancelling handlers on disconnect ends "hang"/"timeout" faults once the client gives up.
    return web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)


def _urls(host: str, port: int) -> tuple[str, str]:
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}{API_PREFIX}", f"http://{h}:{port}{CONTROL_PREFIX}"


async def _serve(config: SimulatorConfig) -> None:
    app = build_app(config)
    runner = _make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        base, control = _urls(config.host, port)
        sim = app[SIMULATOR_KEY]
        print(
            f"Luxor V2 simulator: {base}  authorization: {config.api_key}  control: {control}"
            f"  ({sim.fleet.worker_count()} workers in {config.subaccounts} subaccounts)",
            flush=True,
        )
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(config: SimulatorConfig) -> None:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config))


class RunningSimulator:
    """The simulator served from a background thread with its own event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.api_key = config.api_key
        self.app = build_app(config)
        self.simulator = self.app[SIMULATOR_KEY]
        self.fleet = self.simulator.fleet
        self.base_url = ""
        self.control_url = ""
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> RunningSimulator:
        self._thread = threading.Thread(target=self._run, name="luxor-simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        runner = _make_runner(self.app)
        try:
            try:
                loop.run_until_complete(self._start(runner))
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                loop.run_until_complete(runner.cleanup())
                return
            self._ready.set()
            assert self._stop is not None
            loop.run_until_complete(self._stop.wait())
            loop.run_until_complete(runner.cleanup())
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start(self, runner: web.AppRunner) -> None:
        self._stop = asyncio.Event()
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self.base_url, self.control_url = _urls(self.config.host, self.port)

    def stats(self) -> dict[str, Any]:
        """Request and fault counters (read from the server thread's state)."""
        return self.simulator.stats()
