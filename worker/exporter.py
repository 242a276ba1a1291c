"""Prometheus exporter: metric families built fresh from Redis on each scrape; no Luxor calls."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer

from worker import cache, health, outbox
from worker.settings import Settings

log = logging.getLogger("luxor_etl.exporter")

MAX_LABEL_CHARS = 128
FROM_CACHE = "Read from the Redis cache the tick refreshes every POLL_INTERVAL_SECONDS."


def label_value(name: str) -> str:
    """A subaccount name as a label: bounded length, still unique when cut."""
    if len(name) <= MAX_LABEL_CHARS:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_LABEL_CHARS - 9]}~{digest}"


def _age_seconds(observed_at: str, now: float) -> float:
    moment = datetime.strptime(observed_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, now - moment.timestamp())


class CacheCollector:
    """Builds every family from the cache on each scrape, so vanished series vanish."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.keys = cache.CacheKeys(settings.cache_prefix)
        self.currencies = settings.luxor_currencies

    def describe(self) -> list[Metric]:
        return []  # families depend on the cache; nothing fixed to describe

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        workers = GaugeMetricFamily(
            "luxor_workers",
            f"Workers per subaccount by status, as Luxor totals them. {FROM_CACHE}",
            labels=["currency", "subaccount", "status"],
        )
        hashrate = GaugeMetricFamily(
            "luxor_hashrate_hashes_per_second",
            f"Sum of the workers' hashrate per subaccount, H/s. {FROM_CACHE}",
            labels=["currency", "subaccount"],
        )
        stale = GaugeMetricFamily(
            "luxor_subaccount_stale",
            f"1 when a subaccount's last fetch failed and older numbers are shown. {FROM_CACHE}",
            labels=["currency", "subaccount"],
        )
        age = GaugeMetricFamily(
            "luxor_cache_age_seconds",
            "Seconds since the newest data in the fleet summary was observed; absent when "
            "the summary has expired (unknown).",
            labels=["currency"],
        )
        last_success = GaugeMetricFamily(
            "luxor_poll_last_success_timestamp_seconds",
            "Unix time of the last successful fetch of a subaccount, recorded by the workers.",
            labels=["currency", "subaccount"],
        )
        durations = HistogramMetricFamily(
            "luxor_poll_duration_seconds",
            "Wall time of whole ticks, recorded by the workers.",
            labels=["currency"],
        )
        for currency in self.currencies:
            summary = cache.read_summary(self.client, self.keys, currency)
            if summary is not None:
                age.add_metric([currency], _age_seconds(summary["observed_at"], now))
            for entry in cache.read_subaccounts(self.client, self.keys, currency) or []:
                name = label_value(entry["subaccount"])
                workers.add_metric([currency, name, "active"], entry["active"])
                workers.add_metric([currency, name, "inactive"], entry["inactive"])
                hashrate.add_metric([currency, name], entry["hashrate"])
                stale.add_metric([currency, name], 1.0 if entry.get("stale") else 0.0)
            for name, when in health.read_last_success(self.client, self.keys, currency).items():
                last_success.add_metric([currency, label_value(name)], when)
            recorded = health.read_poll_durations(self.client, self.keys, currency)
            if recorded is not None:
                buckets, total = recorded
                durations.add_metric([currency], buckets, total)
        yield from (workers, hashrate, stale, age, last_success, durations)

        requests = CounterMetricFamily(
            "luxor_api_requests",
            "Luxor API requests by endpoint and HTTP status (timeout/network for no answer).",
            labels=["endpoint", "code"],
        )
        for (endpoint, code), count in health.read_counter(
            self.client, self.keys, "api_requests"
        ).items():
            requests.add_metric([endpoint, code], count)
        alerts = CounterMetricFamily(
            "luxor_alerts",
            "Alert notifications by kind, channel and result (sent/failed/retried).",
            labels=["kind", "channel", "result"],
        )
        for labels, count in health.read_counter(self.client, self.keys, "alerts").items():
            if len(labels) == 3:
                alerts.add_metric(list(labels), count)
        yield from (requests, alerts)

        depth = GaugeMetricFamily(
            "luxor_outbox_depth_ticks",
            "Ticks of snapshots parked in Redis while PostgreSQL was unreachable.",
        )
        depth.add_metric([], outbox.depth(self.client, self.keys))
        dropped = CounterMetricFamily(
            "luxor_outbox_dropped_ticks",
            "Parked ticks dropped because the outbox was full (OUTBOX_MAX_TICKS): lost snapshots.",
        )
        dropped.add_metric([], outbox.dropped(self.client, self.keys))
        yield from (depth, dropped)


def healthz(client: redis.Redis, settings: Settings) -> tuple[bool, str]:
    """Healthy while Redis answers and every currency's cache is at most two ticks old."""
    keys = cache.CacheKeys(settings.cache_prefix)
    limit = settings.poll_interval_seconds * 2
    now = time.time()
    try:
        for currency in settings.luxor_currencies:
            summary = cache.read_summary(client, keys, currency)
            if summary is None:
                return False, f"{currency}: no fleet summary in the cache"
            age = _age_seconds(summary["observed_at"], now)
            if age > limit + settings.poll_interval_seconds:
                return False, f"{currency}: cache is {age:.0f}s old (limit {limit}s)"
    except redis.RedisError as exc:
        return False, f"Redis unreachable: {exc}"
    return True, "ok"


def build_wsgi_app(client: redis.Redis, settings: Settings) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(client, settings))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, reason = healthz(client, settings)
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{reason}\n".encode()]
        if path in ("/metrics", "/"):
            try:
                return metrics_app(environ, start_response)
            except redis.RedisError as exc:
                log.warning("scrape failed: Redis unreachable", extra={"reason": str(exc)})
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"Redis unreachable\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(settings: Settings) -> None:
    """Serve /metrics and /healthz until interrupted."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
    server = make_server(
        settings.metrics_addr,
        settings.metrics_port,
        build_wsgi_app(client, settings),
        ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    log.info(
        "exporter listening",
        extra={"addr": settings.metrics_addr, "port": settings.metrics_port},
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
