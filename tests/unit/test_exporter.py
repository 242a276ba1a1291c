"""The exporter's collector against fakeredis: values equal the cache, absent means unknown."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_cache import KEYS, fleet, snap
from worker import cache, health
from worker.exporter import CacheCollector, build_wsgi_app, healthz, label_value
from worker.settings import load_settings

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def settings():
    return load_settings(cache_prefix="luxor", poll_interval_seconds=60)


def scrape(r, settings) -> dict[str, dict[tuple, float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(r, settings))
    text = generate_latest(registry).decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_fleet_gauges_equal_the_cache(r, settings) -> None:
    NOW = datetime.now(UTC).replace(microsecond=0)
    cache.publish_fleet(
        r,
        fleet(NOW, [snap("site-a", NOW, 40, 2), snap("site-b", NOW, 5, 1)]),
        keys=KEYS,
        ttl_seconds=300,
    )
    m = scrape(r, settings)
    workers = m["luxor_workers"]
    assert workers[(("currency", "BTC"), ("status", "active"), ("subaccount", "site-a"))] == 40
    assert workers[(("currency", "BTC"), ("status", "inactive"), ("subaccount", "site-b"))] == 1
    assert (
        m["luxor_hashrate_hashes_per_second"][(("currency", "BTC"), ("subaccount", "site-a"))]
        == 40e14
    )
    expected_age_s = time.time() - NOW.timestamp()
    assert m["luxor_cache_age_seconds"][(("currency", "BTC"),)] == pytest.approx(
        expected_age_s, abs=2
    )


def test_unknown_is_absent_not_zero(r, settings) -> None:
    m = scrape(r, settings)
    assert "luxor_workers" not in m
    assert "luxor_cache_age_seconds" not in m


def test_a_subaccount_leaving_the_cache_leaves_metrics(r, settings) -> None:
    cache.publish_fleet(
        r, fleet(NOW, [snap("site-a", NOW), snap("site-b", NOW)]), keys=KEYS, ttl_seconds=300
    )
    assert len(scrape(r, settings)["luxor_workers"]) == 4
    r.delete("luxor:v1:BTC:subaccount:site-b")
    cache.publish_fleet(
        r, fleet(NOW, [snap("site-a", NOW)], ["site-b"]), keys=KEYS, ttl_seconds=300
    )
    subaccounts = {dict(k)["subaccount"] for k in scrape(r, settings)["luxor_workers"]}
    assert subaccounts == {"site-a"}


def test_stale_subaccounts_are_flagged(r, settings) -> None:
    cache.publish_fleet(
        r, fleet(NOW, [snap("site-a", NOW), snap("site-b", NOW)]), keys=KEYS, ttl_seconds=300
    )
    cache.publish_fleet(
        r, fleet(NOW, [snap("site-a", NOW)], ["site-b"]), keys=KEYS, ttl_seconds=300
    )
    stale = scrape(r, settings)["luxor_subaccount_stale"]
    assert stale[(("currency", "BTC"), ("subaccount", "site-b"))] == 1.0
    assert stale[(("currency", "BTC"), ("subaccount", "site-a"))] == 0.0


def test_pipeline_health_counters_and_histogram(r, settings) -> None:
    ticks = [health.TickHealth("BTC", 0.7, ["site-a"], ["site-a"], 1_800_000_000.0)]
    health.record_tick(r, KEYS, ticks, Counter({("workers", "200"): 3, ("workers", "429"): 1}))
    health.record_tick(r, KEYS, [health.TickHealth("BTC", 3.0, [], None, 0.0)], Counter())
    health.record_alert_delivery(r, KEYS, "workers_drop", "slack", "sent")
    m = scrape(r, settings)
    buckets = m["luxor_poll_duration_seconds_bucket"]
    assert buckets[(("currency", "BTC"), ("le", "1.0"))] == 1
    assert buckets[(("currency", "BTC"), ("le", "5.0"))] == 2
    assert m["luxor_poll_duration_seconds_count"][(("currency", "BTC"),)] == 2
    assert m["luxor_poll_duration_seconds_sum"][(("currency", "BTC"),)] == pytest.approx(3.7)
    assert m["luxor_api_requests_total"][(("code", "429"), ("endpoint", "workers"))] == 1
    assert (
        m["luxor_poll_last_success_timestamp_seconds"][
            (("currency", "BTC"), ("subaccount", "site-a"))
        ]
        == 1_800_000_000.0
    )
    assert (
        m["luxor_alerts_total"][
            (("channel", "slack"), ("kind", "workers_drop"), ("result", "sent"))
        ]
        == 1
    )


def test_long_labels_are_cut_but_stay_distinct() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(label_value(a)) == 128 and label_value(a) != label_value(b)
    assert label_value("site-a") == "site-a"


def test_healthz_follows_cache_age_and_redis(r, settings) -> None:
    assert healthz(r, settings)[0] is False
    now = datetime.now(UTC)
    cache.publish_fleet(r, fleet(now, [snap("site-a", now)]), keys=KEYS, ttl_seconds=300)
    assert healthz(r, settings) == (True, "ok")
    app = build_wsgi_app(r, settings)
    statuses = []
    body = app({"PATH_INFO": "/healthz"}, lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK"] and body == [b"ok\n"]
