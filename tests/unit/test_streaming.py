"""Writing a tick in chunks: staged cache values, what the tick keeps, the chunk writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import fakeredis
import msgspec
import pytest
import sqlalchemy.exc

from tasks.writer import TickWriter, kept
from tests.unit.test_cache import KEYS, T1, fleet, sample, snap
from worker import cache, outbox
from worker.settings import load_settings
from worker.snapshot import WorkerNames, WorkerSample


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def contract_keys(r: fakeredis.FakeRedis) -> dict[str, tuple[object, int]]:
    return {k.decode(): (json.loads(r.get(k)), r.ttl(k)) for k in sorted(r.keys("luxor:v1:*"))}


def test_staging_then_commit_writes_what_publish_fleet_writes(r) -> None:
    ticks = fleet(T1, [snap("site-a", T1), snap("site-b", T1, 5, 0)], ["site-c"])
    direct = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    cache.publish_fleet(direct, ticks, keys=KEYS, ttl_seconds=300)

    staged = cache.stage_subaccounts(
        r, ticks.snapshots[:1], keys=KEYS, token="t1", ttl_seconds=900
    ) | cache.stage_subaccounts(r, ticks.snapshots[1:], keys=KEYS, token="t1", ttl_seconds=900)
    assert not r.keys("luxor:v1:*")  # readers see nothing before the commit
    publication = cache.commit_fleet(
        r,
        currency="BTC",
        observed_at=T1,
        subaccounts=ticks.subaccounts,
        listing_error=None,
        staged=staged,
        failed=["site-c"],
        keys=KEYS,
        ttl_seconds=300,
    )
    assert publication.fresh == ["site-a", "site-b"] and publication.missing == ["site-c"]
    assert contract_keys(r) == contract_keys(direct)
    assert not r.keys("luxor:internal:staging:*")


def test_the_fast_worker_encoding_equals_the_documented_one() -> None:
    moments = [
        datetime(2026, 12, 3, 9, 59, 41, tzinfo=UTC),
        datetime(2026, 12, 3, 10, 59, 41, 500_000, tzinfo=timezone(timedelta(hours=1))),
        None,
    ]
    for moment in moments:
        workers = (sample("a"), msgspec.structs.replace(sample("b"), last_share_time=moment))
        snapshot = msgspec.structs.replace(snap("site-a", T1), workers=workers)
        expected = cache.subaccount_doc(snapshot) | {
            "workers": [cache.worker_doc(w) for w in workers]
        }
        assert json.loads(cache.subaccount_json(snapshot)) == expected


def test_what_the_tick_keeps_is_each_workers_name_and_status() -> None:
    snapshot = snap("site-a", T1, 3, 2)
    slim = kept(snapshot)
    assert (slim.active, slim.inactive, slim.hashrate_hs) == (3, 2, snapshot.hashrate_hs)
    assert [(w.name, w.status) for w in slim.workers] == [
        (w.name, w.status) for w in snapshot.workers
    ]
    assert len(slim.workers) == 5 and slim.workers[4].status == "INACTIVE"
    again = WorkerNames.from_packed(*slim.workers.packed())
    assert list(again) == list(slim.workers)
    odd = WorkerNames([WorkerSample("1", "rig\x00one", "ACTIVE", *[None] * 6)])
    assert [w.name for w in odd] == ["rig\x00one"]


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[dict]] = []
        self.fail = fail

    def __call__(self, engine, rows) -> int:
        if self.fail:
            raise sqlalchemy.exc.OperationalError("COPY", None, Exception("server closed"))
        self.batches.append(list(rows))
        return len(rows)


def writer(r, store: FakeStore, chunk_workers: int) -> TickWriter:
    return TickWriter(
        load_settings(poll_interval_seconds=60),
        engine=None,
        redis_client=r,
        observed_at=T1,
        write_rows=store,
        rows_of=lambda s: {"subaccount": s.subaccount, "workers": len(s.workers)},
        chunk_workers=chunk_workers,
    )


def test_the_writer_writes_complete_subaccounts_in_chunks(r) -> None:
    store = FakeStore()
    w = writer(r, store, chunk_workers=5)
    for name in ("a", "b", "c", "d"):
        w.add(snap(f"site-{name}", T1, 2, 1))  # 3 workers each
    w.finish()
    assert [[row["subaccount"] for row in batch] for batch in store.batches] == [
        ["site-a", "site-b"],
        ["site-c", "site-d"],
    ]
    assert w.rows_written == 4 and w.store_error is None and w.cache_error is None
    assert sorted(w.staged["BTC"]) == ["site-a", "site-b", "site-c", "site-d"]
    value = json.loads(r.get(w.staged["BTC"]["site-c"].staging_key))
    assert value["subaccount"] == "site-c" and len(value["workers"]) == 3


def test_postgres_away_parks_the_whole_tick_once(r) -> None:
    store = FakeStore(fail=True)
    w = writer(r, store, chunk_workers=3)
    for name in ("a", "b", "c"):
        w.add(snap(f"site-{name}", T1, 2, 1))
    w.finish()
    assert w.store_error and w.parked and w.rows_written == 0
    assert outbox.depth(r, KEYS) == 1  # one element per tick, however many chunks
    parked: list[list[dict]] = []
    outbox.drain(r, KEYS, lambda rows: parked.append(rows) or len(rows))
    assert [row["subaccount"] for row in parked[0]] == ["site-a", "site-b", "site-c"]
    assert sorted(w.staged["BTC"]) == ["site-a", "site-b", "site-c"]  # the cache carries on
