"""One tick: list subaccounts, fetch their workers, then persist, cache and report.

`luxor-etl poll-once` and the Celery task both run `run_tick`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis
from sqlalchemy.engine import Engine

from models.store import write_subaccount_ticks
from tasks.alerts import INLINE, AlertStepReport, run_alert_step
from tasks.writer import TickWriter
from worker import cache, health
from worker.errors import (
    LuxorAuthError,
    LuxorBadResponse,
    LuxorError,
    LuxorUnavailable,
    one_line,
)
from worker.luxor.client import LuxorClient
from worker.ratelimit import SharedRateLimiter
from worker.settings import Settings
from worker.snapshot import (
    FleetSnapshot,
    SubaccountFailure,
    SubaccountSnapshot,
    iso_z,
    tick_time,
)

log = logging.getLogger("luxor_etl.tick")

# The tick lock lapses this long after its holder dies (it is renewed while the tick runs).
TICK_LOCK_TTL_S = 15
SKIPPED_BUSY = "another tick is running"
SKIPPED_DONE = "tick already completed"

# The share of the poll interval a tick may spend fetching before it gives up on the rest.
TICK_DEADLINE_SHARE = 0.8


@dataclass
class TickReport:
    """What one tick did, for the CLI table, the logs and the exit code.

    `fleets` keep every subaccount's counts and each worker's name and status; the other
    worker fields are released once written (see tasks/writer.py).
    """

    observed_at: datetime
    fleets: list[FleetSnapshot] = field(default_factory=list)
    publications: dict[str, cache.Publication] = field(default_factory=dict)
    rows_written: int = 0
    replayed_rows: int = 0
    parked: bool = False
    store_error: str | None = None
    cache_error: str | None = None
    auth_error: str | None = None
    skipped: str | None = None
    duration_s: float = 0.0
    alerts: AlertStepReport | None = None

    @property
    def failures(self) -> list[SubaccountFailure]:
        return [f for fleet in self.fleets for f in fleet.failures]

    @property
    def exit_code(self) -> int:
        if self.auth_error or any(f.error == "auth" for f in self.failures):
            return 2
        if self.skipped or self.failures or self.store_error or self.cache_error:
            return 1
        return 0


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, LuxorAuthError):
        return "auth"
    if isinstance(exc, LuxorUnavailable):
        return "unavailable"
    if isinstance(exc, LuxorBadResponse):
        return "bad_response"
    if isinstance(exc, LuxorError):
        return "rejected"
    return "internal"


def shared_limiter(settings: Settings) -> SharedRateLimiter:
    """The request budget every worker process and host shares through Redis."""
    return SharedRateLimiter(
        settings.redis_url,
        settings.cache_prefix,
        per_second=settings.luxor_rate_limit_per_second,
        burst=settings.luxor_rate_limit_burst,
    )


def luxor_client(
    settings: Settings,
    limiter: SharedRateLimiter,
    *,
    max_connections: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_request: Callable[[str, str], None] | None = None,
) -> LuxorClient:
    """A Luxor client configured from the settings, paced by the shared limiter."""
    return LuxorClient(
        settings.api_key,
        settings.luxor_base_url,
        page_size=settings.luxor_page_size,
        timeout_s=settings.luxor_timeout_seconds,
        max_attempts=settings.luxor_max_attempts,
        max_connections=max_connections or settings.luxor_concurrency,
        transport=transport,
        on_request=on_request,
        before_request=limiter.acquire,
        on_throttled=limiter.pause,
    )


async def collect(
    settings: Settings,
    observed_at: datetime,
    known_subaccounts: Callable[[str], list[str]],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_request: Callable[[str, str], None] | None = None,
    deadline_s: float | None = None,
    on_snapshot: Callable[[SubaccountSnapshot], SubaccountSnapshot] | None = None,
    subaccounts: Sequence[str] | None = None,
) -> list[FleetSnapshot]:
    """Fetch every configured currency and subaccount; failures become gaps, never zeros.

    `on_snapshot` receives each subaccount as soon as all its pages are in, so writers can
    start before the slowest subaccount is done; what it returns is what the fleet keeps.
    `subaccounts` skips the listing (a chunk of a tick the coordinator already listed).
    """
    limiter = shared_limiter(settings)
    client = luxor_client(settings, limiter, transport=transport, on_request=on_request)
    async with client, contextlib.aclosing(limiter):
        listing_error: str | None = None
        try:
            names = (
                list(subaccounts) if subaccounts is not None else await client.list_subaccounts()
            )
        except LuxorAuthError:
            raise
        except LuxorError as exc:
            listing_error = f"listing subaccounts failed: {exc}"
            log.warning("subaccount listing failed", extra={"reason": str(exc)})
            names = []
        allowed = settings.luxor_subaccounts
        if allowed:
            invisible = sorted(set(allowed) - set(names))
            if invisible and listing_error is None:
                log.warning(
                    "LUXOR_SUBACCOUNTS names subaccounts the key cannot see",
                    extra={"subaccounts": ",".join(invisible)},
                )
            names = [n for n in names if n in set(allowed)]

        semaphore = asyncio.Semaphore(settings.luxor_concurrency)

        async def fetch(currency: str, name: str) -> SubaccountSnapshot | SubaccountFailure:
            async with semaphore:
                try:
                    snapshot = await client.fetch_subaccount(currency, name, observed_at)
                except LuxorError as exc:
                    return SubaccountFailure(currency, name, str(exc), _error_kind(exc))
            # No await between here and the return: a deadline cannot cancel a subaccount
            # that was already handed over.
            if on_snapshot is not None and listing_error is None:
                return on_snapshot(snapshot)
            return snapshot

        fleets: list[FleetSnapshot] = []
        for currency in settings.luxor_currencies:
            if listing_error is None:
                targets = names
            else:
                targets = [n for n in known_subaccounts(currency) if not allowed or n in allowed]
            results = await _gather_with_deadline(
                [fetch(currency, name) for name in targets], targets, currency, deadline_s
            )
            fleets.append(_fleet(currency, observed_at, targets, results, listing_error))
        return fleets


async def _gather_with_deadline(
    coroutines: Sequence[Any], names: Sequence[str], currency: str, deadline_s: float | None
) -> list[SubaccountSnapshot | SubaccountFailure]:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    results: list[SubaccountSnapshot | SubaccountFailure] = []
    for task, name in zip(tasks, names, strict=True):
        if task in done:
            results.append(task.result())
        else:
            results.append(
                SubaccountFailure(
                    currency, name, "tick deadline reached before it finished", "unavailable"
                )
            )
    return results


def _fleet(
    currency: str,
    observed_at: datetime,
    names: Sequence[str],
    results: Sequence[SubaccountSnapshot | SubaccountFailure],
    listing_error: str | None,
) -> FleetSnapshot:
    snapshots = tuple(r for r in results if isinstance(r, SubaccountSnapshot))
    failures = [r for r in results if isinstance(r, SubaccountFailure)]
    if listing_error is not None:
        failures = [SubaccountFailure(currency, n, listing_error, "unavailable") for n in names]
        snapshots = ()
    return FleetSnapshot(
        currency=currency,
        observed_at=observed_at,
        subaccounts=tuple(sorted(names)),
        snapshots=snapshots,
        failures=tuple(sorted(failures, key=lambda f: f.subaccount)),
        listing_error=listing_error,
    )


def tick_rows(snapshot: SubaccountSnapshot) -> dict[str, Any]:
    """The `subaccount_ticks` row of one subaccount snapshot."""
    workers = snapshot.workers
    return {
        "currency": snapshot.currency,
        "subaccount": _pg_text(snapshot.subaccount),
        "observed_at": snapshot.observed_at,
        "active": snapshot.active,
        "inactive": snapshot.inactive,
        "hashrate": snapshot.hashrate_hs,
        "worker_names": _pg_texts([w.name for w in workers]),
        "worker_active": [w.status == "ACTIVE" for w in workers],
        "worker_hashrates": [w.hashrate_hs for w in workers],
        "worker_efficiencies": [w.efficiency for w in workers],
        "worker_stale_shares": [w.stale_shares for w in workers],
        "worker_rejected_shares": [w.rejected_shares for w in workers],
        "worker_last_share_epochs": [
            int(w.last_share_time.timestamp()) if w.last_share_time else None for w in workers
        ],
    }


def _pg_texts(values: list[str]) -> list[str]:
    # One C-level scan; names with a NUL are rare.
    return [_pg_text(v) for v in values] if "\x00" in "".join(values) else values


def _pg_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL (the cache keeps the name exactly as Luxor sent it).
    return value.replace("\x00", "\ufffd")


def run_tick(
    settings: Settings,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    now: datetime | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_request: Callable[[str, str], None] | None = None,
) -> TickReport:
    """Run one whole tick. Never raises for Luxor, PostgreSQL or Redis trouble: it reports it."""
    started = time.monotonic()
    observed_at = tick_time(now or datetime.now(UTC), settings.poll_interval_seconds)
    report = TickReport(observed_at=observed_at)
    keys = cache.CacheKeys(settings.cache_prefix)

    def known(currency: str) -> list[str]:
        try:
            return cache.known_subaccounts(redis_client, keys, currency)
        except redis.RedisError:
            return list(settings.luxor_subaccounts)

    api_requests: Counter[tuple[str, str]] = Counter()

    def count_request(endpoint: str, code: str) -> None:
        api_requests[endpoint, code] += 1
        if on_request is not None:
            on_request(endpoint, code)

    # Subaccounts are stored and staged in chunks as they complete, while others still fetch.
    writer = TickWriter(
        settings,
        engine=engine,
        redis_client=redis_client,
        observed_at=observed_at,
        write_rows=write_subaccount_ticks,
        rows_of=tick_rows,
    )
    try:
        report.fleets = _run_returning(
            collect(
                settings,
                observed_at,
                known,
                transport=transport,
                on_request=count_request,
                deadline_s=settings.poll_interval_seconds * TICK_DEADLINE_SHARE,
                on_snapshot=writer.add,
            )
        )
    except LuxorAuthError as exc:
        writer.abandon()
        report.auth_error = str(exc)
        log.error("luxor refused the API key", extra={"tick": iso_z(observed_at)})
        with contextlib.suppress(redis.RedisError):
            health.record_tick(redis_client, keys, [], api_requests)
        report.duration_s = time.monotonic() - started
        return report

    writer.finish()
    report.rows_written = writer.rows_written
    report.replayed_rows = writer.replayed_rows
    report.store_error = writer.store_error
    report.parked = writer.parked
    report.cache_error = writer.cache_error
    return finish_tick(
        settings,
        redis_client=redis_client,
        report=report,
        staged=writer.staged,
        api_requests=api_requests,
        started=started,
    )


def finish_tick(
    settings: Settings,
    *,
    redis_client: redis.Redis,
    report: TickReport,
    staged: Mapping[str, Mapping[str, cache.StagedEntry]],
    api_requests: Counter[tuple[str, str]],
    started: float,
) -> TickReport:
    """Publish a tick whose rows are stored and whose fresh cache values are staged: the cache
    commit (one MULTI/EXEC per currency), the health counters, and the tick's log lines."""
    keys = cache.CacheKeys(settings.cache_prefix)
    observed_at = report.observed_at
    try:
        if report.cache_error is not None:
            raise redis.RedisError(report.cache_error)
        for fleet in report.fleets:
            report.publications[fleet.currency] = cache.commit_fleet(
                redis_client,
                currency=fleet.currency,
                observed_at=fleet.observed_at,
                subaccounts=fleet.subaccounts,
                listing_error=fleet.listing_error,
                staged=staged.get(fleet.currency, {}),
                failed=[f.subaccount for f in fleet.failures],
                keys=keys,
                ttl_seconds=settings.cache_ttl_seconds,
            )
            if fleet.listing_error is None:
                cache.remember_subaccounts(redis_client, keys, fleet.currency, fleet.subaccounts)
        finished_at = time.time()
        health.record_tick(
            redis_client,
            keys,
            [
                health.TickHealth(
                    currency=fleet.currency,
                    duration_s=time.monotonic() - started,
                    succeeded=[s.subaccount for s in fleet.snapshots],
                    listed=fleet.subaccounts if fleet.listing_error is None else None,
                    succeeded_at_s=finished_at,
                )
                for fleet in report.fleets
            ],
            api_requests,
        )
    except redis.RedisError as exc:
        report.cache_error = one_line(exc)
        log.error(
            "writing the cache failed",
            extra={"tick": iso_z(observed_at), "reason": report.cache_error},
        )

    report.duration_s = time.monotonic() - started
    for failure in report.failures:
        log.warning(
            "subaccount fetch failed",
            extra={
                "tick": iso_z(observed_at),
                "currency": failure.currency,
                "subaccount": failure.subaccount,
                "error": failure.error,
                "reason": failure.reason,
            },
        )
    log.info(
        "tick done",
        extra={
            "tick": iso_z(observed_at),
            "subaccounts_ok": sum(len(f.snapshots) for f in report.fleets),
            "subaccounts_failed": len(report.failures),
            "rows": report.rows_written,
            "duration_s": round(report.duration_s, 3),
        },
    )
    return report


def _run_returning(coroutine: Any) -> Any:
    """`asyncio.run(coroutine)`, without Python 3.11's repr of the result.

    On the main thread, asyncio.run's SIGINT bookkeeping formats the main task (result
    included) into an error message it then discards: ~0.4 s twice for a 100k-worker fleet.
    """
    box: list[Any] = []

    async def main() -> None:
        box.append(await coroutine)

    asyncio.run(main())
    return box[0]


def run_tick_locked(
    settings: Settings,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    skip_completed: bool = False,
    now: datetime | None = None,
    alert_delivery: str = INLINE,
    **kwargs: Any,
) -> TickReport:
    """`run_tick` under a Redis lock, so two beats or a slow tick never run two at once.

    With `skip_completed`, a tick whose `observed_at` already completed (a second beat, a
    redelivery) is skipped. If Redis is down the tick still runs: its writes are idempotent.
    Then the alert step: `alert_delivery` is "celery" inside a worker, "inline" elsewhere.
    """
    from redis.exceptions import LockError

    keys = cache.CacheKeys(settings.cache_prefix)
    lock = redis_client.lock(keys.tick_lock(), timeout=TICK_LOCK_TTL_S, blocking=False)
    observed_at = tick_time(now or datetime.now(UTC), settings.poll_interval_seconds)
    try:
        acquired: bool | None = lock.acquire()
    except redis.RedisError as exc:
        log.warning("tick lock unavailable; running unlocked", extra={"reason": one_line(exc)})
        acquired = None
    if acquired is False:
        log.info("another tick is running; skipped", extra={"tick": iso_z(observed_at)})
        return TickReport(observed_at=observed_at, skipped=SKIPPED_BUSY)
    renewer = _LockRenewer(lock) if acquired else None
    try:
        if skip_completed and acquired and _completed(redis_client, keys) >= iso_z(observed_at):
            log.info("tick already completed; skipped", extra={"tick": iso_z(observed_at)})
            return TickReport(observed_at=observed_at, skipped=SKIPPED_DONE)
        report = run_tick(settings, engine=engine, redis_client=redis_client, now=now, **kwargs)
        complete_tick(
            settings,
            report,
            engine=engine,
            redis_client=redis_client,
            alert_delivery=alert_delivery,
        )
        return report
    finally:
        if renewer is not None:
            renewer.stop()
        if acquired:
            # Expired or Redis gone: the lock's TTL ends it.
            with contextlib.suppress(LockError, redis.RedisError):
                lock.release()


def complete_tick(
    settings: Settings,
    report: TickReport,
    *,
    engine: Engine,
    redis_client: redis.Redis,
    alert_delivery: str = INLINE,
) -> None:
    """After a tick: the alert step, then the completion marks (last tick, heartbeat)."""
    keys = cache.CacheKeys(settings.cache_prefix)
    # Here rather than in run_tick, whose refused-key path returns early: that tick is
    # the one auth_failed must page from. An alert failure never fails the tick.
    try:
        report.alerts = run_alert_step(
            settings, report, engine=engine, redis_client=redis_client, delivery=alert_delivery
        )
    except Exception:
        log.exception("alert step failed", extra={"tick": iso_z(report.observed_at)})
    if report.cache_error is None and report.auth_error is None:
        try:
            ttl = settings.poll_interval_seconds * 3
            with redis_client.pipeline(transaction=False) as pipe:
                pipe.set(keys.last_tick(), iso_z(report.observed_at))
                pipe.set(keys.heartbeat("tick"), iso_z(datetime.now(UTC)), ex=ttl)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("recording the tick's completion failed", extra={"reason": str(exc)})


class _LockRenewer:
    """Keeps the tick lock alive while this process works; a crash lets it lapse quickly."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tick-lock-renewer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from redis.exceptions import LockError

        while not self._stopped.wait(TICK_LOCK_TTL_S / 3):
            try:
                self._lock.reacquire()
            except (LockError, redis.RedisError) as exc:
                log.warning("tick lock could not be renewed", extra={"reason": one_line(exc)})

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def _completed(redis_client: redis.Redis, keys: cache.CacheKeys) -> str:
    value = redis_client.get(keys.last_tick())
    return value.decode() if isinstance(value, bytes) else (value or "")
