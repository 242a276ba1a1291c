"""Writes a tick's subaccounts in chunks while the rest are still being fetched.

Each chunk goes to PostgreSQL (one binary COPY) and to Redis staging keys (one pipeline) on a
single background thread, in arrival order; the tick then commits the cache in one
MULTI/EXEC (`cache.commit_fleet`). A subaccount reaches a chunk only once all its pages were
fetched and validated, so nothing partial is ever written.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import msgspec
import redis
import sqlalchemy.exc
from sqlalchemy.engine import Engine

from worker import cache, outbox
from worker.errors import one_line
from worker.settings import Settings
from worker.snapshot import SubaccountSnapshot, WorkerNames, iso_z

log = logging.getLogger("luxor_etl.tick")

# Workers per chunk: each chunk is one transaction (one commit to wait for), so ingest runs at
# 79% of a raw COPY with 10k-worker chunks and 89% with 20k, while the last chunk, written
# after the final fetch, still adds little to the tick.
CHUNK_WORKERS = 20_000
# Chunks written or waiting at once.
MAX_QUEUED_CHUNKS = 2


class TickWriter:
    """Collects complete subaccounts (`add`) and writes them in chunks (`finish` waits)."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine,
        redis_client: redis.Redis,
        observed_at: datetime,
        write_rows: Callable[[Engine, list[dict[str, Any]]], int],
        rows_of: Callable[[SubaccountSnapshot], dict[str, Any]],
        chunk_workers: int = CHUNK_WORKERS,
        token: str | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._redis = redis_client
        self._keys = cache.CacheKeys(settings.cache_prefix)
        self._tick = iso_z(observed_at)
        self._write_rows = write_rows
        self._rows_of = rows_of
        self._chunk_workers = max(1, chunk_workers)
        self.token = token or f"{self._tick}.{uuid.uuid4().hex[:12]}"
        # Staged keys outlive a tick that runs up to its deadline and then commits.
        self._staging_ttl_s = settings.cache_ttl_seconds + settings.poll_interval_seconds + 60
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tick-writer")
        self._futures: list[Future[None]] = []
        self._buffer: list[SubaccountSnapshot] = []
        self._buffered_workers = 0
        self._drained = False
        self._unwritten: list[dict[str, Any]] = []

        self.staged: dict[str, dict[str, cache.StagedEntry]] = defaultdict(dict)
        self.rows_written = 0
        self.replayed_rows = 0
        self.store_error: str | None = None
        self.cache_error: str | None = None
        self.parked = False

    def add(self, snapshot: SubaccountSnapshot) -> SubaccountSnapshot:
        """Take one complete subaccount; a full chunk is handed to the writer thread.

        Returns what the tick keeps of it: counts, and each worker's name and status (all the
        alert step reads), so a large fleet is not held in memory twice over.
        """
        self._buffer.append(snapshot)
        self._buffered_workers += max(1, len(snapshot.workers))
        if self._buffered_workers >= self._chunk_workers:
            self._submit()
        return kept(snapshot)

    def finish(self) -> None:
        """Write what is left, wait for every chunk, and park rows PostgreSQL did not take."""
        if self._buffer:
            self._submit()
        try:
            for future in self._futures:
                future.result()
        finally:
            self._executor.shutdown(wait=True)
        if not self._drained and self.store_error is None:
            try:
                self._drain()
            except sqlalchemy.exc.SQLAlchemyError as exc:
                self.store_error = one_line(exc)
                log.error(
                    "writing snapshots failed",
                    extra={"tick": self._tick, "reason": self.store_error},
                )
        if self._unwritten:
            self._park()

    def abandon(self) -> None:
        """Stop without writing what is buffered (the tick was refused before any fetch)."""
        self._buffer = []
        self._executor.shutdown(wait=True)

    def _submit(self) -> None:
        chunk, self._buffer, self._buffered_workers = self._buffer, [], 0
        # Backpressure: when writing falls behind fetching, queued chunks would hold the
        # fleet in memory after all; wait for the oldest instead (the loop pauses briefly).
        pending = [f for f in self._futures if not f.done()]
        if len(pending) >= MAX_QUEUED_CHUNKS:
            pending[0].result()
        self._futures.append(self._executor.submit(self._write, chunk))

    def _write(self, chunk: list[SubaccountSnapshot]) -> None:
        rows = [self._rows_of(s) for s in chunk]
        self._store(rows)
        if self.cache_error is not None:
            return
        try:
            staged = cache.stage_subaccounts(
                self._redis,
                chunk,
                keys=self._keys,
                token=self.token,
                ttl_seconds=self._staging_ttl_s,
            )
        except redis.RedisError as exc:
            self.cache_error = one_line(exc)
            log.error(
                "writing the cache failed", extra={"tick": self._tick, "reason": self.cache_error}
            )
            return
        for snapshot in chunk:
            self.staged[snapshot.currency][snapshot.subaccount] = staged[snapshot.subaccount]

    def _store(self, rows: list[dict[str, Any]]) -> None:
        # Once PostgreSQL failed in this tick, the rest is kept for the outbox rather than
        # paying a connect timeout per chunk.
        if self.store_error is not None:
            self._unwritten.extend(rows)
            return
        try:
            if not self._drained:
                self._drain()
            self.rows_written += self._write_rows(self._engine, rows)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self.store_error = one_line(exc)
            log.error(
                "writing snapshots failed", extra={"tick": self._tick, "reason": self.store_error}
            )
            self._unwritten.extend(rows)

    def _drain(self) -> None:
        """Parked ticks first, oldest first; without Redis they wait for the next tick."""
        self._drained = True
        try:
            self.replayed_rows = outbox.drain(
                self._redis, self._keys, lambda batch: self._write_rows(self._engine, batch)
            )
        except redis.RedisError:
            return
        if self.replayed_rows:
            log.info(
                "parked snapshots written", extra={"tick": self._tick, "rows": self.replayed_rows}
            )

    def _park(self) -> None:
        rows, self._unwritten = self._unwritten, []
        try:
            outbox.park(self._redis, self._keys, rows, self._settings.outbox_limit_ticks)
        except redis.RedisError as exc:
            log.error(
                "PostgreSQL and Redis both unreachable: this tick's snapshots are lost",
                extra={"tick": self._tick, "reason": one_line(exc)},
            )
            return
        self.parked = True
        log.warning("snapshots parked in the outbox", extra={"tick": self._tick, "rows": len(rows)})


def kept(snapshot: SubaccountSnapshot) -> SubaccountSnapshot:
    """The snapshot with its workers reduced to names and statuses (`WorkerNames`)."""
    return msgspec.structs.replace(snapshot, workers=WorkerNames(snapshot.workers))
