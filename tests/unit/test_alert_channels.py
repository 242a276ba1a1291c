"""Channel bodies, the webhook signature, and retriable-versus-fatal delivery (no real sleep)."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from worker.alerts import channels, rules
from worker.alerts.rules import FIRING, RESOLVED, WORKERS_DROP, AlertEvent, Episode
from worker.settings import load_settings

T0 = datetime(2026, 12, 3, 10, 2, tzinfo=UTC)
SECRET = "whsec-unit-0001"
ROUTING_KEY = "pd-routing-key-unit-0001"
SLACK_URL = "https://hooks.slack.example/services/T0/B0/slack-secret-0001"


@pytest.fixture
def settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    return load_settings(
        alert_webhook_url="https://hooks.example.com/luxor?token=url-token-0001",
        alert_webhook_secret=SECRET,
        alertmanager_url="http://alertmanager.example:9093/",
        pagerduty_routing_key=ROUTING_KEY,
        slack_webhook_url=SLACK_URL,
    )


def event(status=FIRING, subaccount="site-00", down=("rig-1", "rig-2"), **extra) -> AlertEvent:
    episode = Episode(
        WORKERS_DROP,
        "BTC",
        subaccount,
        status,
        T0,
        resolved_at=T0 + timedelta(minutes=3) if status == RESOLVED else None,
        baseline=120,
        current=100,
        details={"delta": -20, "percent": -16.7, "workers_down": list(down)},
    )
    observed = T0 + timedelta(minutes=3 if status == RESOLVED else 0)
    return rules.event_for(episode, observed, window_minutes=15, **extra)


def mock_client(*responses) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if queue else httpx.Response(200)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


# --------------------------------------------------------------------------- bodies


def test_configured_channels_follow_their_settings(settings, monkeypatch, tmp_path):
    assert channels.configured_channels(settings) == [
        "webhook",
        "alertmanager",
        "pagerduty",
        "slack",
    ]
    assert channels.configured_channels(load_settings()) == []


def test_the_webhook_body_is_the_event():
    body = channels.webhook_body(event())
    assert body["status"] == "firing" and body["subaccount"] == "site-00"
    assert body["workers_down"] == ["rig-1", "rig-2"] and body["version"] == 1
    assert channels.webhook_body(event(subaccount=None))["subaccount"] is None


def test_alertmanager_firing_and_resolved_keep_the_episode_start():
    [firing] = channels.alertmanager_body([event()], hold_seconds=240)
    assert firing["labels"]["alertname"] == "LuxorWorkersDrop"
    assert firing["labels"]["subaccount"] == "site-00"
    assert firing["startsAt"] == "2026-12-03T10:02:00Z"
    assert firing["endsAt"] == "2026-12-03T10:06:00Z"  # held until re-sent
    assert firing["annotations"]["workers_down"] == "rig-1, rig-2"
    [resolved] = channels.alertmanager_body([event(RESOLVED)], hold_seconds=240)
    assert resolved["startsAt"] == "2026-12-03T10:02:00Z"
    assert resolved["endsAt"] == "2026-12-03T10:05:00Z"
    [fleet] = channels.alertmanager_body([event(subaccount=None)], hold_seconds=60)
    assert fleet["labels"]["subaccount"] == "fleet"
    assert "generatorURL" not in fleet
    [linked] = channels.alertmanager_body(
        [event(dashboard_url="https://grafana.example/d/x")], hold_seconds=60
    )
    assert linked["generatorURL"] == "https://grafana.example/d/x"


def test_pagerduty_trigger_and_resolve(settings):
    long = event(down=[f"rig-{'x' * 150}-{i}" for i in range(100)])
    body = channels.pagerduty_body(long)
    assert "routing_key" not in body  # added only when sent
    assert body["event_action"] == "trigger" and body["dedup_key"] == long.dedup_key
    assert len(body["payload"]["summary"]) <= 1024
    assert body["payload"]["severity"] == "critical"
    assert len(body["payload"]["custom_details"]["workers_down"]) == 100
    assert channels.pagerduty_body(event(RESOLVED)) == {
        "event_action": "resolve",
        "dedup_key": event(RESOLVED).dedup_key,
    }
    url, raw, _ = channels.request_for(settings, "pagerduty", body)
    assert url == "https://events.pagerduty.com/v2/enqueue"
    assert json.loads(raw)["routing_key"] == ROUTING_KEY


def test_slack_escapes_names_and_batches(settings):
    hostile = event(subaccount="<script>&", down=["<b>rig</b>"])
    body = channels.slack_body([hostile, event(RESOLVED)])
    assert "1 firing, 1 resolved" in body["text"]
    section = body["blocks"][1]["text"]["text"]
    assert "&lt;script&gt;&amp;" in section and "<script>" not in section
    assert "&lt;b&gt;rig&lt;/b&gt;" in section
    many = channels.slack_body([event(subaccount=f"s{i}") for i in range(45)])
    assert len(many["blocks"]) <= 50 and "+5 more alerts" in json.dumps(many)
    assert channels.request_for(settings, "slack", body)[0] == SLACK_URL


def test_bodies_hold_no_secret(settings):
    for channel in rules.CHANNELS:
        text = json.dumps(channels.body_for(channel, [event()]))
        for secret in (SECRET, ROUTING_KEY, SLACK_URL, "url-token-0001"):
            assert secret not in text


# --------------------------------------------------------------------------- signature


def test_the_signature_verifies_and_binds_the_body():
    body = b'{"a":1}'
    now = int(time.time())
    header = channels.sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert channels.verify(SECRET, body, header)
    assert not channels.verify(SECRET, b'{"a":2}', header)
    assert not channels.verify("other", body, header)
    assert not channels.verify(SECRET, body, channels.sign(SECRET, body, now - 3600))
    assert not channels.verify(SECRET, body, "garbage")


def test_the_webhook_request_is_signed_over_the_exact_bytes(settings):
    url, raw, headers = channels.request_for(settings, "webhook", channels.webhook_body(event()))
    assert url.startswith("https://hooks.example.com/")
    assert channels.verify(SECRET, raw, headers[channels.SIGNATURE_HEADER])
    unsigned = load_settings(alert_webhook_url="https://hooks.example.com/x")
    _, _, plain = channels.request_for(unsigned, "webhook", {})
    assert channels.SIGNATURE_HEADER not in plain


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize(
    ("response", "result"),
    [
        (httpx.Response(200), "sent"),
        (httpx.Response(202), "sent"),
        (httpx.Response(429, headers={"retry-after": "7"}), "retry"),
        (httpx.Response(500), "retry"),
        (httpx.Response(503), "retry"),
        (httpx.Response(400, text="invalid routing key"), "failed"),
        (httpx.Response(401), "failed"),
        (httpx.Response(404), "failed"),
    ],
)
def test_retriable_versus_fatal(settings, response, result):
    client, _ = mock_client(response)
    outcome = channels.send(settings, "pagerduty", {"event_action": "trigger"}, client=client)
    assert outcome.result == result and outcome.status_code == response.status_code
    if response.status_code == 429:
        assert outcome.retry_after_s == 7.0


def test_network_errors_retry_and_reasons_hold_no_secret(settings):
    client, _ = mock_client(httpx.ConnectError(f"cannot reach {SLACK_URL}"))
    outcome = channels.send(settings, "slack", {"text": "x"}, client=client)
    assert outcome.result == "retry" and SLACK_URL not in outcome.reason
    client, _ = mock_client(httpx.Response(400, text=f"bad key {ROUTING_KEY}"))
    outcome = channels.send(settings, "pagerduty", {}, client=client)
    assert ROUTING_KEY not in outcome.reason and "[redacted]" in outcome.reason


def test_an_unconfigured_channel_fails_without_a_request():
    outcome = channels.send(load_settings(), "pagerduty", {})
    assert outcome.result == "failed" and "not configured" in outcome.reason


def test_inline_retries_back_off_without_sleeping(settings):
    client, seen = mock_client(httpx.Response(500), httpx.Response(503), httpx.Response(200))
    slept: list[float] = []
    attempts: list[tuple[str, bool]] = []
    outcome = channels.deliver_with_retries(
        settings,
        "webhook",
        {"x": 1},
        sleep=slept.append,
        client=client,
        on_attempt=lambda o, final: attempts.append((o.result, final)),
    )
    assert outcome.result == "sent" and len(seen) == 3
    assert slept == [0.5, 1.0]
    assert attempts == [("retry", False), ("retry", False), ("sent", True)]


def test_inline_retries_stop_at_a_4xx_and_give_up_after_a_few(settings):
    client, seen = mock_client(httpx.Response(400))
    slept: list[float] = []
    assert (
        channels.deliver_with_retries(
            settings, "webhook", {}, sleep=slept.append, client=client
        ).result
        == "failed"
    )
    assert len(seen) == 1 and slept == []
    client, seen = mock_client(*[httpx.Response(502)] * 10)
    outcome = channels.deliver_with_retries(
        settings, "webhook", {}, sleep=slept.append, client=client
    )
    assert outcome.result == "retry" and len(seen) == 4 and slept == [0.5, 1.0, 2.0]


def test_retry_after_is_honoured_within_bounds(settings):
    client, _ = mock_client(
        httpx.Response(429, headers={"retry-after": "0.8"}), httpx.Response(200)
    )
    slept: list[float] = []
    channels.deliver_with_retries(settings, "webhook", {}, sleep=slept.append, client=client)
    assert slept == [0.8]
    client, _ = mock_client(
        httpx.Response(429, headers={"retry-after": "3600"}), httpx.Response(200)
    )
    slept.clear()
    channels.deliver_with_retries(settings, "webhook", {}, sleep=slept.append, client=client)
    assert slept == [1.0]  # at most double the planned delay


def test_backoff_grows_exponentially_to_a_cap():
    rng = random.Random(7)
    delays = [channels.backoff_s(n, base_s=10, cap_s=600, rng=rng) for n in range(10)]
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24 and 32 <= delays[2] <= 48
    assert all(d <= 720 for d in delays) and delays[9] >= 480


def test_alert_settings_default_to_the_spec_and_keep_secrets_secret(monkeypatch, tmp_path):
    from worker.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    defaults = load_settings()
    assert rules.Thresholds.from_settings(defaults) == rules.Thresholds(
        drop_min=3, drop_percent=10.0, window_minutes=15, stale_minutes=10, repeat_minutes=60
    )
    assert defaults.pagerduty_events_url == "https://events.pagerduty.com/v2/enqueue"
    assert defaults.alert_surge_enabled is False
    configured = load_settings(
        alert_webhook_secret=SECRET, pagerduty_routing_key=ROUTING_KEY, slack_webhook_url=SLACK_URL
    )
    assert {SECRET, ROUTING_KEY, SLACK_URL} <= set(configured.secrets())
    assert not any(s in repr(configured) for s in (SECRET, ROUTING_KEY, SLACK_URL))
    with pytest.raises(ConfigError, match=r"^ALERT_WEBHOOK_URL: must be an http"):
        load_settings(alert_webhook_url="hooks.example.com")
    with pytest.raises(ConfigError) as bad_slack:
        load_settings(slack_webhook_url="xoxb-not-a-url-0001")
    assert "xoxb-not-a-url-0001" not in str(bad_slack.value)
