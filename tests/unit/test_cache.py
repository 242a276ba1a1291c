"""The cache writer and readers against fakeredis: contract JSON, TTLs, stale and missing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import fakeredis
import pytest

from worker import cache
from worker.snapshot import (
    FleetSnapshot,
    SubaccountFailure,
    SubaccountSnapshot,
    WorkerSample,
)

KEYS = cache.CacheKeys("luxor")
T1 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
T2 = datetime(2026, 12, 3, 10, 1, tzinfo=UTC)


def sample(name: str, status: str = "ACTIVE", hashrate: float | None = 1e14) -> WorkerSample:
    return WorkerSample(
        id=f"id-{name}",
        name=name,
        status=status,
        hashrate_hs=hashrate,
        efficiency=0.998,
        stale_shares=0.0,
        rejected_shares=0.001,
        last_share_time=datetime(2026, 12, 3, 9, 59, 41, tzinfo=UTC),
        firmware="fw",
    )


def snap(name: str, at: datetime, active: int = 2, inactive: int = 1) -> SubaccountSnapshot:
    workers = tuple(sample(f"{name}-a{i}") for i in range(active)) + tuple(
        sample(f"{name}-i{i}", "INACTIVE", 0.0) for i in range(inactive)
    )
    return SubaccountSnapshot("BTC", name, at, active, inactive, active * 1e14, workers)


def fleet(at: datetime, ok: list[SubaccountSnapshot], failed: list[str] = ()) -> FleetSnapshot:
    names = sorted([s.subaccount for s in ok] + list(failed))
    failures = tuple(
        SubaccountFailure("BTC", n, "HTTP 503 after 5 attempts", "unavailable") for n in failed
    )
    return FleetSnapshot("BTC", at, tuple(names), tuple(ok), failures)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def load(r: fakeredis.FakeRedis, key: str):
    return json.loads(r.get(key))


def test_a_fresh_tick_writes_the_contract_keys_with_ttl(r) -> None:
    cache.publish_fleet(
        r, fleet(T1, [snap("site-a", T1), snap("site-b", T1, 5, 0)]), keys=KEYS, ttl_seconds=300
    )
    summary = load(r, "luxor:v1:BTC:summary")
    assert summary == {
        "schema_version": 1,
        "currency": "BTC",
        "observed_at": "2026-12-03T10:00:00Z",
        "active": 7,
        "inactive": 1,
        "hashrate": 7e14,
        "subaccounts": 2,
        "stale_subaccounts": [],
        "missing_subaccounts": [],
    }
    entry = load(r, "luxor:v1:BTC:subaccount:site-a")
    assert entry["stale"] is False and entry["active"] == 2 and len(entry["workers"]) == 3
    assert entry["workers"][0] == {
        "id": "id-site-a-a0",
        "name": "site-a-a0",
        "status": "ACTIVE",
        "hashrate": 1e14,
        "efficiency": 0.998,
        "stale_shares": 0.0,
        "rejected_shares": 0.001,
        "last_share_time": "2026-12-03T09:59:41Z",
        "firmware": "fw",
    }
    listing = load(r, "luxor:v1:BTC:subaccounts")
    assert [e["subaccount"] for e in listing] == ["site-a", "site-b"]
    assert all("workers" not in e for e in listing)
    for key in ("summary", "subaccounts", "subaccount:site-a", "subaccount:site-b"):
        assert 295 <= r.ttl(f"luxor:v1:BTC:{key}") <= 300


def test_a_failed_subaccount_keeps_its_old_entry_marked_stale_without_new_ttl(r) -> None:
    cache.publish_fleet(
        r, fleet(T1, [snap("site-a", T1), snap("site-b", T1)]), keys=KEYS, ttl_seconds=300
    )
    r.expire("luxor:v1:BTC:subaccount:site-b", 120)  # time passes for the old entry
    result = cache.publish_fleet(
        r, fleet(T2, [snap("site-a", T2, 3, 0)], ["site-b"]), keys=KEYS, ttl_seconds=300
    )
    assert result.stale == ["site-b"] and result.missing == []
    stale = load(r, "luxor:v1:BTC:subaccount:site-b")
    assert stale["stale"] is True and stale["observed_at"] == "2026-12-03T10:00:00Z"
    assert r.ttl("luxor:v1:BTC:subaccount:site-b") <= 120
    summary = load(r, "luxor:v1:BTC:summary")
    assert summary["stale_subaccounts"] == ["site-b"]
    assert summary["active"] == 3 + 2  # fresh site-a plus the last known site-b
    assert summary["observed_at"] == "2026-12-03T10:01:00Z"
    listing = {e["subaccount"]: e for e in load(r, "luxor:v1:BTC:subaccounts")}
    assert listing["site-b"]["stale"] is True


def test_a_subaccount_without_any_cached_value_is_missing_and_not_counted(r) -> None:
    result = cache.publish_fleet(
        r, fleet(T1, [snap("site-a", T1)], ["site-c"]), keys=KEYS, ttl_seconds=300
    )
    assert result.missing == ["site-c"]
    summary = load(r, "luxor:v1:BTC:summary")
    assert summary["missing_subaccounts"] == ["site-c"]
    assert summary["active"] == 2 and summary["subaccounts"] == 2
    assert r.get("luxor:v1:BTC:subaccount:site-c") is None


def test_a_tick_where_everything_failed_renews_nothing(r) -> None:
    cache.publish_fleet(r, fleet(T1, [snap("site-a", T1)]), keys=KEYS, ttl_seconds=300)
    r.expire("luxor:v1:BTC:summary", 100)
    cache.publish_fleet(r, fleet(T2, [], ["site-a"]), keys=KEYS, ttl_seconds=300)
    summary = load(r, "luxor:v1:BTC:summary")
    assert summary["observed_at"] == "2026-12-03T10:00:00Z"
    assert summary["stale_subaccounts"] == ["site-a"]
    assert r.ttl("luxor:v1:BTC:summary") <= 100


def test_nothing_known_writes_no_summary_rather_than_zeros(r) -> None:
    result = cache.publish_fleet(r, fleet(T1, [], ["site-a"]), keys=KEYS, ttl_seconds=300)
    assert result.summary is None
    assert r.get("luxor:v1:BTC:summary") is None


def test_a_known_empty_workspace_is_a_real_zero(r) -> None:
    cache.publish_fleet(r, fleet(T1, []), keys=KEYS, ttl_seconds=300)
    assert load(r, "luxor:v1:BTC:summary")["active"] == 0


def test_an_expired_stale_entry_is_not_resurrected_without_ttl(r) -> None:
    cache.publish_fleet(r, fleet(T1, [snap("site-a", T1)]), keys=KEYS, ttl_seconds=300)
    real_mget = r.mget

    def mget_then_expire(keys):
        values = real_mget(keys)
        r.delete(*keys)  # the old entries expire between the read and the write
        return values

    r.mget = mget_then_expire
    cache.publish_fleet(r, fleet(T2, [snap("site-b", T2)], ["site-a"]), keys=KEYS, ttl_seconds=300)
    assert r.get("luxor:v1:BTC:subaccount:site-a") is None


@pytest.mark.parametrize(
    "name", ["a:b", "x*", "site b", "矿机", "100%", "a/b", "{tag}", "../etc", 'q"uote']
)
def test_hostile_subaccount_names_cannot_forge_keys(r, name: str) -> None:
    key = KEYS.subaccount("BTC", name)
    assert key.startswith("luxor:v1:BTC:subaccount:")
    segment = key.removeprefix("luxor:v1:BTC:subaccount:")
    assert ":" not in segment and "*" not in segment and " " not in segment
    cache.publish_fleet(r, fleet(T1, [snap(name, T1)]), keys=KEYS, ttl_seconds=300)
    assert cache.read_subaccount(r, KEYS, "BTC", name)["subaccount"] == name


def test_plain_names_keep_their_spelling_in_keys() -> None:
    assert KEYS.subaccount("BTC", "site-a_1.x") == "luxor:v1:BTC:subaccount:site-a_1.x"


def test_readers_say_unknown_as_none(r) -> None:
    assert cache.read_summary(r, KEYS, "BTC") is None
    assert cache.read_subaccounts(r, KEYS, "BTC") is None
    r.set("luxor:v1:BTC:summary", b"{broken")
    assert cache.read_summary(r, KEYS, "BTC") is None
