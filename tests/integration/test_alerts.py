"""Alerts end to end: simulator over HTTP, real PostgreSQL and Redis, real HTTP receivers.

Ticks run in-process one minute apart with explicit times, and through `luxor-etl poll-once`.
One recording receiver on loopback stands in for all four channels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from models.store import make_engine
from tasks.alerts import run_alert_step
from tasks.tick import run_tick_locked
from tests.integration.conftest import (
    REDIS_URL,
    arm_fault,
    assert_secrets_absent,
    etl_env,
    free_port,
    run_cli,
)
from worker import cache, health
from worker.alerts.channels import SIGNATURE_HEADER, verify
from worker.settings import load_settings
from worker.snapshot import tick_time

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec-test-7f3a9c"
ROUTING_KEY = "pd-routing-key-51c2e8"
SLACK_PATH = "/slack/T000/B000/xoxb-secret-part"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --------------------------------------------------------------------------- receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Receiver:
    """Records every POST; answers `fail[path]` errors first, then 200 (Alertmanager's
    endpoint refuses an endsAt before startsAt, as the real one does)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    fail: dict[str, list[int | tuple[int, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def got(self, path: str, ok_only: bool = True) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path) and (r.status < 300 or not ok_only)
            ]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            path = self.path
            status, answer, retry_after = 200, b"ok", None
            with receiver.lock:
                for prefix, codes in receiver.fail.items():
                    if path.startswith(prefix) and codes:
                        status, answer = codes.pop(0), b"try again"
                        if isinstance(status, tuple):
                            status, retry_after = status
                        break
            if status == 200 and path.endswith("/api/v2/alerts"):
                for alert in json.loads(raw):
                    if alert.get("endsAt") and alert["endsAt"] < alert["startsAt"]:
                        status, answer = 400, b'"start time must be before end time"'
            if status == 200 and path.startswith("/pd"):
                status, answer = 202, b'{"status":"success","message":"Event processed"}'
            with receiver.lock:
                receiver.requests.append(Received(path, dict(self.headers), raw, status))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            if retry_after is not None:
                self.send_header("retry-after", retry_after)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def channel_env(receiver: Receiver) -> dict[str, str]:
    return {
        "ALERT_WEBHOOK_URL": f"{receiver.url}/webhook",
        "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ALERTMANAGER_URL": f"{receiver.url}/am",
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_EVENTS_URL": f"{receiver.url}/pd/v2/enqueue",
        "SLACK_WEBHOOK_URL": f"{receiver.url}{SLACK_PATH}",
        "ALERT_DASHBOARD_URL": "https://grafana.example.com/d/luxor",
        "ALERT_RUNBOOK_URL": "https://runbooks.example.com/luxor-etl/workers-drop",
    }


def make_settings(engine, sim, receiver: Receiver | None, **extra: str):
    env = etl_env(
        engine.url.render_as_string(hide_password=False),
        sim,
        POLL_INTERVAL_SECONDS="60",
        LUXOR_MAX_ATTEMPTS="1",
        **(channel_env(receiver) if receiver else {}),
        **extra,
    )
    return load_settings(**{k.lower(): v for k, v in env.items() if k not in ("PATH", "HOME")})


def control(sim, action: str, **body: Any) -> dict:
    response = httpx.post(f"{sim.control_url}/{action}", json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def tick(settings, engine, client, minute: int, **kwargs: Any):
    return run_tick_locked(settings, engine=engine, redis_client=client, now=at(minute), **kwargs)


def episodes(engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM alerts ORDER BY id"))
        return [dict(r._mapping) for r in rows]


def webhook_events(receiver: Receiver) -> list[dict]:
    return [r.json for r in receiver.got("/webhook")]


# --------------------------------------------------------------------------- tests


def test_a_drop_pages_every_channel_once_names_the_workers_and_resolves(
    db, redis_client, simulator, receiver
):
    settings = make_settings(db, simulator, receiver)
    for minute in (0, 1):
        assert tick(settings, db, redis_client, minute).exit_code == 0
    assert receiver.requests == [] and episodes(db) == []

    down = control(simulator, "workers/down", subaccount="site-00", count=20)["affected"]
    assert len(down) == 20
    report = tick(settings, db, redis_client, 2)
    assert report.alerts.opened == ["workers_drop BTC site-00"]

    [event] = webhook_events(receiver)
    assert event["status"] == "firing" and event["kind"] == "workers_drop"
    assert event["currency"] == "BTC" and event["subaccount"] == "site-00"
    assert event["baseline"] - event["current"] == 20 == -event["delta"]
    assert sorted(event["workers_down"]) == sorted(down) and event["workers_down_more"] == 0
    assert event["started_at"] == event["observed_at"] == "2026-12-03T10:02:00Z"
    assert event["resolved_at"] is None and event["severity"] == "critical"
    assert event["dashboard_url"] == "https://grafana.example.com/d/luxor"
    dedup = event["dedup_key"]
    assert dedup == f"luxor-etl:workers_drop:BTC:site-00:{int(at(2).timestamp())}"
    assert set(event) >= {
        "version", "status", "kind", "severity", "currency", "subaccount", "baseline",
        "current", "delta", "percent", "started_at", "resolved_at", "observed_at",
        "workers_down", "workers_down_more", "dedup_key", "summary",
    }  # fmt: skip

    [hook] = receiver.got("/webhook")
    assert verify(WEBHOOK_SECRET, hook.raw, hook.headers[SIGNATURE_HEADER])
    assert not verify("another-secret", hook.raw, hook.headers[SIGNATURE_HEADER])

    [pd] = receiver.got("/pd")
    assert pd.json["routing_key"] == ROUTING_KEY and pd.json["event_action"] == "trigger"
    assert pd.json["dedup_key"] == dedup and pd.json["payload"]["severity"] == "critical"
    assert sorted(pd.json["payload"]["custom_details"]["workers_down"]) == sorted(down)
    assert len(pd.json["payload"]["summary"]) <= 1024

    [slack] = receiver.got("/slack")
    assert "site-00" in slack.json["text"] and slack.json["blocks"]

    [am] = receiver.got("/am/api/v2/alerts")
    [alert] = am.json
    assert alert["labels"] == {
        "alertname": "LuxorWorkersDrop",
        "currency": "BTC",
        "subaccount": "site-00",
        "severity": "critical",
        "kind": "workers_drop",
        "source": "luxor-etl",
    }
    starts_at = alert["startsAt"]
    assert starts_at == "2026-12-03T10:02:00Z" and alert["endsAt"] > starts_at

    # Still down: Alertmanager hears it again, nobody is paged again.
    tick(settings, db, redis_client, 3)
    assert len(receiver.got("/am")) == 2
    assert [len(receiver.got(p)) for p in ("/webhook", "/pd", "/slack")] == [1, 1, 1]

    control(simulator, "workers/up", subaccount="site-00", names=down)
    tick(settings, db, redis_client, 4)  # one good tick is not enough
    assert [len(receiver.got(p)) for p in ("/webhook", "/pd", "/slack")] == [1, 1, 1]
    assert episodes(db)[0]["status"] == "firing"

    report = tick(settings, db, redis_client, 5)
    assert report.alerts.resolved == ["workers_drop BTC site-00"]
    resolved = webhook_events(receiver)[1]
    assert resolved["status"] == "resolved" and resolved["dedup_key"] == dedup
    assert resolved["resolved_at"] == "2026-12-03T10:05:00Z"
    second = receiver.got("/webhook")[1]
    assert verify(WEBHOOK_SECRET, second.raw, second.headers[SIGNATURE_HEADER])
    pd_resolve = receiver.got("/pd")[1].json
    assert pd_resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": dedup,
    }
    assert "resolved" in receiver.got("/slack")[1].json["text"]
    am_resolve = receiver.got("/am")[-1].json[0]
    assert am_resolve["startsAt"] == starts_at  # the episode's, not the resolving tick's
    assert am_resolve["endsAt"] == "2026-12-03T10:05:00Z"

    for minute in (6, 7, 8, 9):
        tick(settings, db, redis_client, minute)
    am_posts = [r.json[0] for r in receiver.got("/am")]
    assert len(am_posts) == 6  # firing on ticks 2, 3, 4; the resolve on ticks 5, 6, 7
    assert all(a["endsAt"] == "2026-12-03T10:05:00Z" for a in am_posts[3:])
    assert all(a["startsAt"] == starts_at for a in am_posts)
    assert [len(receiver.got(p)) for p in ("/webhook", "/pd", "/slack")] == [2, 2, 2]
    assert all(r.status < 300 for r in receiver.requests)

    [row] = episodes(db)
    assert row["status"] == "resolved" and row["dedup_key"] == dedup
    assert row["current"] == row["baseline"] and row["resolved_at"] == at(5)
    assert row["details"]["workers_down"] == []  # none still down
    assert sorted(row["details"]["workers_down_at_start"]) == sorted(down)
    counts = health.read_counter(redis_client, cache.CacheKeys(settings.cache_prefix), "alerts")
    assert counts[("workers_drop", "webhook", "sent")] == 2
    assert counts[("workers_drop", "pagerduty", "sent")] == 2
    assert counts[("workers_drop", "alertmanager", "sent")] == 6


def test_no_page_under_the_threshold_but_a_slow_bleed_is_caught(
    db, redis_client, simulator, receiver
):
    settings = make_settings(db, simulator, receiver)
    tick(settings, db, redis_client, 0)
    control(simulator, "workers/down", subaccount="site-00", count=2)  # under ALERT_DROP_MIN
    control(simulator, "workers/down", subaccount="site-01", count=5)  # under 10 %
    tick(settings, db, redis_client, 1)
    tick(settings, db, redis_client, 2)
    assert receiver.requests == [] and episodes(db) == []

    # site-02 bleeds two workers a minute: paged once, when the window's peak is 10 % away.
    for minute in range(3, 12):
        control(simulator, "workers/down", subaccount="site-02", count=2)
        tick(settings, db, redis_client, minute)
    [row] = episodes(db)
    assert row["kind"] == "workers_drop" and row["subaccount"] == "site-02"
    assert row["baseline"] - row["current"] >= 0.1 * row["baseline"]
    assert len(webhook_events(receiver)) == 1 and len(receiver.got("/pd")) == 1


def test_a_failing_receiver_is_retried_until_it_lands_and_a_4xx_is_not(
    db, redis_client, simulator, receiver
):
    receiver.fail = {"/webhook": [500, 500], "/slack": [503], "/pd": [400]}
    settings = make_settings(db, simulator, receiver)
    tick(settings, db, redis_client, 0)
    control(simulator, "workers/down", subaccount="site-01", count=30)
    started = time.monotonic()
    report = tick(settings, db, redis_client, 1)
    assert time.monotonic() - started < 10
    assert report.exit_code == 0  # delivery trouble never fails the tick

    hooks = receiver.got("/webhook", ok_only=False)
    assert [r.status for r in hooks] == [500, 500, 200]
    assert hooks[0].raw == hooks[2].raw  # the same notification, not a new one
    assert [r.status for r in receiver.got("/pd", ok_only=False)] == [400]  # never retried
    assert [r.status for r in receiver.got("/slack", ok_only=False)] == [503, 200]

    with db.connect() as conn:
        rows = {
            r.channel: r
            for r in conn.execute(sa.text("SELECT * FROM alert_notifications ORDER BY id"))
        }
    assert (rows["webhook"].status, rows["webhook"].attempts) == ("sent", 3)
    assert (rows["pagerduty"].status, rows["pagerduty"].attempts) == ("failed", 1)
    assert "HTTP 400" in rows["pagerduty"].last_error
    counts = health.read_counter(redis_client, cache.CacheKeys(settings.cache_prefix), "alerts")
    assert counts[("workers_drop", "webhook", "retried")] == 2
    assert counts[("workers_drop", "webhook", "sent")] == 1
    assert counts[("workers_drop", "pagerduty", "failed")] == 1
    assert report.alerts.delivered == {"sent": 3, "failed": 1}


def test_a_repeated_or_concurrent_tick_pages_once(db, redis_client, simulator, receiver):
    settings = make_settings(db, simulator, receiver)
    tick(settings, db, redis_client, 0)
    # 12 of about 114 active: over 10 % of the subaccount, under 10 % of the fleet.
    control(simulator, "workers/down", subaccount="site-00", count=12)
    tick(settings, db, redis_client, 1)
    again = tick(settings, db, redis_client, 1)  # a redelivered tick
    assert again.alerts.skipped == ["BTC"] and again.alerts.queued == 0
    assert len(webhook_events(receiver)) == 1

    # Two workers run the alert step of the same tick at once, each with its own connections.
    control(simulator, "workers/down", subaccount="site-02", count=12)
    from tasks.tick import run_tick

    report = run_tick(settings, engine=db, redis_client=redis_client, now=at(2))
    results = []

    def step() -> None:
        engine = make_engine(settings.database_url)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            results.append(run_alert_step(settings, report, engine=engine, redis_client=client))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.opened for r in results) == [[], [], [], ["workers_drop BTC site-02"]]
    opened = [e for e in webhook_events(receiver) if e["subaccount"] == "site-02"]
    assert len(opened) == 1 and len(receiver.got("/pd")) == 2 and len(receiver.got("/slack")) == 2
    assert len([e for e in episodes(db) if e["status"] == "firing"]) == 2


def test_state_survives_a_restart(db, redis_client, simulator, receiver):
    settings = make_settings(db, simulator, receiver)
    tick(settings, db, redis_client, 0)
    down = control(simulator, "workers/down", subaccount="site-01", count=25)["affected"]
    tick(settings, db, redis_client, 1)
    [first] = webhook_events(receiver)
    db.dispose()
    redis_client.close()

    # A new worker process: new connections, nothing carried over in memory.
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for minute in (2, 3):
            tick(settings, engine, client, minute)
        assert len(webhook_events(receiver)) == 1 and len(receiver.got("/pd")) == 1
        control(simulator, "workers/up", subaccount="site-01", names=down)
        for minute in (4, 5):
            tick(settings, engine, client, minute)
    finally:
        engine.dispose()
        client.close()
    resolved = webhook_events(receiver)[-1]
    assert resolved["status"] == "resolved" and resolved["dedup_key"] == first["dedup_key"]
    assert resolved["started_at"] == first["started_at"]


def test_a_still_firing_page_repeats_only_after_alert_repeat_minutes(
    db, redis_client, simulator, receiver
):
    settings = make_settings(db, simulator, receiver, ALERT_REPEAT_MINUTES="3")
    tick(settings, db, redis_client, 0)
    control(simulator, "workers/down", subaccount="site-00", count=30)
    sent_per_tick = []
    for minute in range(1, 9):
        tick(settings, db, redis_client, minute)
        sent_per_tick.append(len(receiver.got("/pd")))
    assert sent_per_tick == [1, 1, 1, 2, 2, 2, 3, 3]  # ticks 1, 4 and 7
    dedup = {r.json["dedup_key"] for r in receiver.got("/pd")}
    assert len(dedup) == 1  # PagerDuty folds the repeats into one incident
    assert len(receiver.got("/am")) == 8  # Alertmanager hears it every tick


def test_the_fleet_compares_only_complete_ticks_and_names_workers_by_subaccount(
    db, redis_client, simulator, receiver
):
    settings = make_settings(db, simulator, receiver, ALERT_DROP_PERCENT="1")
    tick(settings, db, redis_client, 0)
    # A subaccount that fails is unknown: neither it nor the fleet looks like a drop.
    arm_fault(simulator, kind="503", probability=1.0, subaccount="site-01")
    assert tick(settings, db, redis_client, 1).exit_code == 1
    assert episodes(db) == [] and receiver.requests == []
    httpx.delete(f"{simulator.control_url}/faults", timeout=5).raise_for_status()
    tick(settings, db, redis_client, 2)

    # Two workers per subaccount: under ALERT_DROP_MIN each, six across the fleet.
    down = []
    for name in ("site-00", "site-01", "site-02"):
        affected = control(simulator, "workers/down", subaccount=name, count=2)["affected"]
        down += [f"{name}/{w}" for w in affected]
    tick(settings, db, redis_client, 3)
    [event] = webhook_events(receiver)
    assert event["subaccount"] is None and event["baseline"] - event["current"] == 6
    assert sorted(event["workers_down"]) == sorted(down)
    assert event["dedup_key"].endswith(f":fleet:{int(at(3).timestamp())}")
    assert receiver.got("/am")[0].json[0]["labels"]["subaccount"] == "fleet"


def test_data_stale_and_auth_failed_page_and_resolve(db, redis_client, simulator, receiver):
    settings = make_settings(db, simulator, receiver, ALERT_STALE_MINUTES="2")
    tick(settings, db, redis_client, 0)
    arm_fault(simulator, kind="500", probability=1.0, subaccount="site-02")
    tick(settings, db, redis_client, 1)
    assert webhook_events(receiver) == []
    tick(settings, db, redis_client, 2)
    [stale] = webhook_events(receiver)
    assert (stale["kind"], stale["subaccount"], stale["severity"]) == (
        "data_stale",
        "site-02",
        "error",
    )
    assert "10:00:00Z" in stale["summary"]
    httpx.delete(f"{simulator.control_url}/faults", timeout=5).raise_for_status()
    tick(settings, db, redis_client, 3)
    tick(settings, db, redis_client, 4)
    assert webhook_events(receiver)[-1]["status"] == "resolved"

    refused = make_settings(db, simulator, receiver, LUXOR_API_KEY="wrong-key-9911")
    report = tick(refused, db, redis_client, 5)
    assert report.exit_code == 2 and report.alerts.opened == ["auth_failed BTC fleet"]
    assert webhook_events(receiver)[-1]["kind"] == "auth_failed"
    tick(refused, db, redis_client, 6)
    assert len(webhook_events(receiver)) == 3  # still refused: no second page
    report = tick(settings, db, redis_client, 7)
    assert report.alerts.resolved == ["auth_failed BTC fleet"]
    last = webhook_events(receiver)[-1]
    assert (last["kind"], last["status"]) == ("auth_failed", "resolved")
    for r in receiver.requests:
        assert b"wrong-key-9911" not in r.raw


def test_postgres_away_still_pages_from_redis_and_hands_back_the_episode(
    db, redis_client, simulator, receiver
):
    settings = make_settings(db, simulator, receiver)
    for minute in (0, 1):
        tick(settings, db, redis_client, minute)
    nowhere_url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    away = make_settings(db, simulator, receiver, DATABASE_URL=nowhere_url)
    nowhere = make_engine(away.database_url)
    down = control(simulator, "workers/down", subaccount="site-00", count=30)["affected"]
    report = tick(away, nowhere, redis_client, 2)
    assert report.store_error and report.alerts.source == "redis"
    [event] = webhook_events(receiver)
    assert event["subaccount"] == "site-00" and sorted(event["workers_down"]) == sorted(down)
    tick(away, nowhere, redis_client, 3)
    assert len(webhook_events(receiver)) == 1
    nowhere.dispose()

    # PostgreSQL is back: it takes over the episode; no second page, the same dedup key.
    tick(settings, db, redis_client, 4)
    assert len(webhook_events(receiver)) == 1
    [row] = episodes(db)
    assert row["status"] == "firing" and row["dedup_key"] == event["dedup_key"]
    control(simulator, "workers/up", subaccount="site-00", names=down)
    for minute in (5, 6):
        tick(settings, db, redis_client, minute)
    resolved = webhook_events(receiver)[-1]
    assert resolved["status"] == "resolved" and resolved["dedup_key"] == event["dedup_key"]
    assert episodes(db)[0]["status"] == "resolved"


def test_poll_once_pages_end_to_end_and_status_lists_the_alert(
    db, redis_client, simulator, receiver
):
    receiver.fail = {"/webhook": [500, 500]}
    settings = make_settings(db, simulator, receiver)
    now = tick_time(datetime.now(UTC), 60)
    for minutes_ago in (2, 1):
        run_tick_locked(
            settings,
            engine=db,
            redis_client=redis_client,
            now=now - timedelta(minutes=minutes_ago),
        )
    down = control(simulator, "workers/down", subaccount="site-00", count=20)["affected"]
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        POLL_INTERVAL_SECONDS="60",
        **channel_env(receiver),
    )
    result = run_cli(env, "poll-once")
    assert result.returncode == 0, result.stderr
    assert "alerts: 1 firing; opened workers_drop BTC site-00" in result.stdout
    assert "4 notifications; 4 sent" in result.stdout

    [event] = webhook_events(receiver)
    assert sorted(event["workers_down"]) == sorted(down)
    assert [r.status for r in receiver.got("/webhook", ok_only=False)] == [500, 500, 200]
    hook = receiver.got("/webhook")[0]
    assert verify(WEBHOOK_SECRET, hook.raw, hook.headers[SIGNATURE_HEADER])
    assert [len(receiver.got(p)) for p in ("/pd", "/slack", "/am")] == [1, 1, 1]
    assert "alert delivery" in result.stderr and "result=retried" in result.stderr

    shown = run_cli(env, "status")
    assert shown.returncode == 0
    assert "firing alerts (1):" in shown.stdout
    assert f"workers_drop BTC site-00 since {event['started_at']}" in shown.stdout
    as_json = json.loads(run_cli(env, "status", "--json").stdout)
    [firing] = as_json["BTC"]["firing_alerts"]
    assert firing["dedup_key"] == event["dedup_key"]
    assert sorted(firing["workers_down"]) == sorted(down)

    # The episode outlives the process: the next ticks resolve it under the same key.
    control(simulator, "workers/up", subaccount="site-00", names=down)
    observed = datetime.fromisoformat(event["observed_at"].replace("Z", "+00:00"))
    for minutes in (1, 2):
        run_tick_locked(
            settings,
            engine=db,
            redis_client=redis_client,
            now=observed + timedelta(minutes=minutes),
        )
    resolved = webhook_events(receiver)[-1]
    assert resolved["status"] == "resolved" and resolved["dedup_key"] == event["dedup_key"]
    assert "firing alerts: none" in run_cli(env, "status").stdout

    # No secret in any output, stored row or cache value.
    assert_secrets_absent(
        (WEBHOOK_SECRET, ROUTING_KEY, SLACK_PATH.rsplit("/", 1)[1]),
        outputs=(result, shown),
        engine=db,
        redis_client=redis_client,
    )


def test_alerts_test_reaches_every_channel_and_reports_each(db, redis_client, receiver):
    env = etl_env(db.url.render_as_string(hide_password=False), None, **channel_env(receiver))
    result = run_cli(env, "alerts", "test")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == [
        "webhook",
        "alertmanager",
        "pagerduty",
        "slack",
    ]
    assert all(" sent (HTTP 2" in line for line in lines[:4])
    assert "4 of 4 channels reached" in lines[4]
    [hook] = webhook_events(receiver)
    assert hook["kind"] == "test" and hook["summary"].startswith("[TEST]")
    assert hook["severity"] == "info"
    assert receiver.got("/pd")[0].json["payload"]["summary"].startswith("[TEST]")
    assert receiver.got("/slack")[0].json["text"].startswith("[TEST]")
    assert receiver.got("/am")[0].json[0]["labels"]["alertname"] == "LuxorAlertTest"
    for secret in (WEBHOOK_SECRET, ROUTING_KEY):
        assert secret not in result.stdout + result.stderr

    receiver.fail = {"/pd": [400]}
    failing = run_cli(env, "alerts", "test")
    assert failing.returncode == 1
    assert "pagerduty     FAILED: HTTP 400" in failing.stdout
    assert "3 of 4 channels reached" in failing.stdout

    bare = etl_env(db.url.render_as_string(hide_password=False), None)
    none = run_cli(bare, "alerts", "test")
    assert none.returncode == 2 and "no alert channel is configured" in none.stderr
    broken = run_cli({**bare, "ALERTMANAGER_URL": "alertmanager:9093"}, "alerts", "test")
    assert broken.returncode == 2
    assert broken.stderr.strip().startswith("luxor-etl: configuration error: ALERTMANAGER_URL:")


def test_a_real_alertmanager_takes_the_firing_alert_and_its_resolve(
    db, redis_client, simulator, tmp_path
):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is needed: apt-get install prometheus-alertmanager"
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text('route: {receiver: "null"}\nreceivers: [{name: "null"}]\n')
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v2/alerts"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Alertmanager did not start"
            time.sleep(0.1)
        env = etl_env(
            db.url.render_as_string(hide_password=False),
            simulator,
            POLL_INTERVAL_SECONDS="60",
            LUXOR_MAX_ATTEMPTS="1",
            ALERTMANAGER_URL=f"http://127.0.0.1:{port}",
        )
        settings = load_settings(
            **{k.lower(): v for k, v in env.items() if k not in ("PATH", "HOME")}
        )
        start = tick_time(datetime.now(UTC), 60) - timedelta(minutes=6)

        def run(minute: int) -> None:
            run_tick_locked(
                settings,
                engine=db,
                redis_client=redis_client,
                now=start + timedelta(minutes=minute),
            )

        run(0)
        run(1)
        down = control(simulator, "workers/down", subaccount="site-00", count=25)["affected"]
        run(2)

        def ours() -> list[dict]:
            return [
                a
                for a in httpx.get(api, timeout=5).json()
                if a["labels"].get("source") == "luxor-etl"
            ]

        [alert] = ours()
        assert alert["labels"]["alertname"] == "LuxorWorkersDrop"
        assert alert["labels"]["subaccount"] == "site-00"
        assert alert["status"]["state"] == "active"
        assert alert["startsAt"].startswith(
            (start + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M")
        )
        assert sorted(alert["annotations"]["workers_down"].split(", ")) == sorted(down)

        control(simulator, "workers/up", subaccount="site-00", names=down)
        run(3)
        run(4)  # resolved, with the episode's startsAt: Alertmanager accepts it
        assert ours() == []
        run(5)  # the resolve again
        with db.connect() as conn:
            statuses = conn.execute(
                sa.text("SELECT status, count(*) FROM alert_notifications GROUP BY status")
            ).all()
        assert dict(statuses) == {"sent": 4}  # firing at 2 and 3, resolved at 4 and 5
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_a_celery_worker_delivers_each_notification_with_retries(
    db, redis_client, simulator, receiver, tmp_path, monkeypatch
):
    from tests.integration.conftest import BROKER_URL
    from tests.integration.test_celery import start, stop

    redis.Redis.from_url(BROKER_URL).flushdb()
    receiver.fail = {"/webhook": [(503, "1"), (429, "1")]}
    env = etl_env(
        db.url.render_as_string(hide_password=False),
        simulator,
        POLL_INTERVAL_SECONDS="60",
        LUXOR_MAX_ATTEMPTS="1",
        **channel_env(receiver),
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = make_settings(db, simulator, receiver)
    worker = start(env, "worker", "--concurrency=2", log_path=tmp_path / "worker.log")
    try:
        tick(settings, db, redis_client, 0)
        control(simulator, "workers/down", subaccount="site-02", count=25)
        report = tick(settings, db, redis_client, 1, alert_delivery="celery")
        assert report.alerts.queued == 4 and not report.alerts.delivered  # nothing sent here
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not receiver.got("/webhook"):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        log = (tmp_path / "worker.log").read_text()
        assert [r.status for r in receiver.got("/webhook", ok_only=False)] == [503, 429, 200], log[
            -3000:
        ]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(receiver.requests) < 6:
            time.sleep(0.1)
        assert [len(receiver.got(p)) for p in ("/pd", "/slack", "/am")] == [1, 1, 1]
        with db.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT channel, status, attempts FROM alert_notifications ORDER BY id")
            ).all()
        assert {(c, s, a) for c, s, a in rows} >= {("webhook", "sent", 3)}
        assert all(s == "sent" for _, s, _ in rows)
        assert "luxor.deliver_alert" in log and ROUTING_KEY not in log
    finally:
        stop(worker)
