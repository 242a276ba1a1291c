"""Alert channels: the body each one expects, and one HTTP attempt to send it.

Bodies are built from `AlertEvent`s and hold no secret; the routing key, the Slack URL and the
webhook signature are added only when a request is sent, so queued notifications (database
rows, broker messages) never carry them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker.alerts.rules import (
    ALERT_NAMES,
    ALERTMANAGER,
    FIRING,
    RESOLVED,
    AlertEvent,
)

log = logging.getLogger("luxor_etl.alerts")

SIGNATURE_HEADER = "X-Luxor-Signature"
USER_AGENT = "luxor-etl-alerts/1"
REQUEST_TIMEOUT_S = 10.0
PAGERDUTY_SUMMARY_MAX = 1024
SLACK_MAX_EVENT_BLOCKS = 40
SLACK_SECTION_MAX = 2900
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")

SENT, RETRY, FAILED = "sent", "retry", "failed"


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: sent, retry (network, 429, 5xx) or failed (other 4xx)."""

    result: str
    status_code: int | None = None
    reason: str = ""
    retry_after_s: float | None = None


def configured_channels(settings: Any) -> list[str]:
    """The channels whose setting is present, in a fixed order."""
    channels = []
    if settings.alert_webhook_url:
        channels.append("webhook")
    if settings.alertmanager_url:
        channels.append(ALERTMANAGER)
    if settings.pagerduty_routing_key is not None:
        channels.append("pagerduty")
    if settings.slack_webhook_url is not None:
        channels.append("slack")
    return channels


# --------------------------------------------------------------------------- bodies


def webhook_body(event: AlertEvent) -> dict[str, Any]:
    """The generic webhook's JSON: the event itself."""
    return event.to_json()


def alertmanager_body(events: Sequence[AlertEvent], *, hold_seconds: int) -> list[dict[str, Any]]:
    """`POST /api/v2/alerts`: firing alerts end `hold_seconds` after this tick unless re-sent;
    resolved ones carry their episode's original startsAt and an endsAt in the past."""
    body = []
    for event in events:
        labels = {
            "alertname": ALERT_NAMES.get(event.kind, "LuxorAlert"),
            "currency": event.currency,
            "subaccount": event.subaccount if event.subaccount is not None else "fleet",
            "severity": event.severity,
            "kind": event.kind,
            "source": "luxor-etl",
        }
        annotations = {"summary": event.summary, "dedup_key": event.dedup_key}
        if event.baseline is not None:
            annotations["baseline"] = str(event.baseline)
        if event.current is not None:
            annotations["current"] = str(event.current)
        if event.workers_down:
            more = f" (+{event.workers_down_more} more)" if event.workers_down_more else ""
            annotations["workers_down"] = ", ".join(event.workers_down) + more
        if event.runbook_url:
            annotations["runbook_url"] = event.runbook_url
        if event.dashboard_url:
            annotations["dashboard_url"] = event.dashboard_url
        observed = _parse(event.observed_at)
        if event.status == RESOLVED:
            ends = _parse(event.resolved_at or event.observed_at)
            # Never before startsAt: Alertmanager refuses such an alert outright.
            ends = max(ends, _parse(event.started_at))
        else:
            ends = observed + timedelta(seconds=hold_seconds)
        alert = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": event.started_at,
            "endsAt": _iso(ends),
        }
        if event.dashboard_url:
            alert["generatorURL"] = event.dashboard_url
        body.append(alert)
    return body


def pagerduty_body(event: AlertEvent) -> dict[str, Any]:
    """A PagerDuty Events v2 event, without the routing key (added when sent)."""
    if event.status == RESOLVED:
        return {"event_action": "resolve", "dedup_key": event.dedup_key}
    severity = event.severity if event.severity in PAGERDUTY_SEVERITIES else "warning"
    where = event.subaccount if event.subaccount is not None else "fleet"
    details: dict[str, Any] = {
        "kind": event.kind,
        "currency": event.currency,
        "subaccount": event.subaccount,
        "baseline": event.baseline,
        "current": event.current,
        "delta": event.delta,
        "percent": event.percent,
        "started_at": event.started_at,
        "observed_at": event.observed_at,
        "workers_down": list(event.workers_down),
        "workers_down_more": event.workers_down_more,
    }
    body: dict[str, Any] = {
        "event_action": "trigger",
        "dedup_key": event.dedup_key,
        "client": "luxor-etl",
        "payload": {
            "summary": _clip(event.summary, PAGERDUTY_SUMMARY_MAX),
            "source": f"luxor-etl/{event.currency}/{where}"[:255],
            "severity": severity,
            "timestamp": event.observed_at,
            "component": where[:255],
            "group": event.currency,
            "class": event.kind,
            "custom_details": details,
        },
    }
    links = [
        {"href": url, "text": text}
        for url, text in ((event.dashboard_url, "Dashboard"), (event.runbook_url, "Runbook"))
        if url
    ]
    if links:
        body["links"] = links
    if event.dashboard_url:
        body["client_url"] = event.dashboard_url
    return body


def slack_body(events: Sequence[AlertEvent]) -> dict[str, Any]:
    """One Slack message for a tick's events: a plain `text` and the same in blocks."""
    firing = [e for e in events if e.status == FIRING]
    resolved = [e for e in events if e.status == RESOLVED]
    test = any(e.kind == "test" for e in events)
    parts = []
    if firing:
        parts.append(f"{len(firing)} firing")
    if resolved:
        parts.append(f"{len(resolved)} resolved")
    currencies = ", ".join(sorted({e.currency for e in events}))
    title = f"{'[TEST] ' if test else ''}luxor-etl {currencies}: {', '.join(parts) or 'no'} alert"
    title += "s" if len(events) != 1 else ""
    lines = [f"{_status_word(e)} {e.summary}" for e in events]
    text = _clip(title + "\n" + "\n".join(lines), 3900)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(title, 150)}}
    ]
    for event in events[:SLACK_MAX_EVENT_BLOCKS]:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack_section(event)}}
        )
    if len(events) > SLACK_MAX_EVENT_BLOCKS:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"+{len(events) - SLACK_MAX_EVENT_BLOCKS} more alerts",
                    }
                ],
            }
        )
    links = []
    for url, label in (
        (next((e.dashboard_url for e in events if e.dashboard_url), None), "Dashboard"),
        (next((e.runbook_url for e in events if e.runbook_url), None), "Runbook"),
    ):
        if url:
            links.append(f"<{_slack_escape(url)}|{label}>")
    if links:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(links)}]}
        )
    return {"text": text, "blocks": blocks}


def _status_word(event: AlertEvent) -> str:
    if event.kind == "test":
        return "TEST"
    return "FIRING" if event.status == FIRING else "RESOLVED"


def _slack_section(event: AlertEvent) -> str:
    icon = ":rotating_light:" if event.status == FIRING else ":white_check_mark:"
    where = event.subaccount if event.subaccount is not None else "whole fleet"
    head = (
        f"{icon} *{_status_word(event)}* `{event.kind}` {event.severity} - "
        f"*{_slack_escape(event.currency)} / {_slack_escape(where)}*"
    )
    lines = [head, _slack_escape(event.summary)]
    if event.workers_down:
        more = f" (+{event.workers_down_more} more)" if event.workers_down_more else ""
        names = ", ".join(event.workers_down)
        lines.append(f"Down: {_slack_escape(names)}{more}")
    lines.append(f"since {event.started_at} · dedup `{_slack_escape(event.dedup_key)}`")
    return _clip("\n".join(lines), SLACK_SECTION_MAX)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def body_for(
    channel: str, events: Sequence[AlertEvent], *, hold_seconds: int = 300
) -> dict[str, Any] | list[dict[str, Any]]:
    """The secret-free body of a notification for its channel."""
    if channel == "webhook":
        return webhook_body(events[0])
    if channel == "pagerduty":
        return pagerduty_body(events[0])
    if channel == "slack":
        return slack_body(events)
    if channel == ALERTMANAGER:
        return alertmanager_body(events, hold_seconds=hold_seconds)
    raise ValueError(f"unknown alert channel {channel!r}")


# --------------------------------------------------------------------------- sending


def sign(secret: str, body: bytes, timestamp_s: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` for the webhook's signature header."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_s},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300) -> bool:
    """Check a signature header the way a receiver should (constant time, bounded age)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp_s = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp_s) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp_s).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def request_for(settings: Any, channel: str, body: Any) -> tuple[str, bytes, dict[str, str]]:
    """URL, raw body and headers of a notification, with the channel's secrets filled in."""
    headers = {"content-type": "application/json", "user-agent": USER_AGENT}
    if channel not in configured_channels(settings):
        raise ValueError(f"channel {channel} is not configured")
    if channel == "webhook":
        # Queued bodies come back from JSONB with their keys reordered; send the documented order.
        raw = _encode(AlertEvent.from_json(body).to_json() if "dedup_key" in body else body)
        if settings.alert_webhook_secret is not None:
            secret = settings.alert_webhook_secret.get_secret_value()
            headers[SIGNATURE_HEADER] = sign(secret, raw, int(time.time()))
        return settings.alert_webhook_url, raw, headers
    if channel == ALERTMANAGER:
        return f"{settings.alertmanager_url.rstrip('/')}/api/v2/alerts", _encode(body), headers
    if channel == "pagerduty":
        key = settings.pagerduty_routing_key.get_secret_value()
        ordered = {"routing_key": key, "event_action": body.get("event_action"), **body}
        return settings.pagerduty_events_url, _encode(ordered), headers
    if channel == "slack":
        return settings.slack_webhook_url.get_secret_value(), _encode(body), headers
    raise ValueError(f"unknown alert channel {channel!r}")


def send(settings: Any, channel: str, body: Any, *, client: httpx.Client | None = None) -> Outcome:
    """One attempt to deliver a body; never raises for HTTP or network trouble."""
    try:
        url, raw, headers = request_for(settings, channel, body)
    except ValueError as exc:
        return Outcome(FAILED, reason=str(exc))
    own = client is None
    http = client or httpx.Client(timeout=REQUEST_TIMEOUT_S)
    try:
        response = http.post(url, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(RETRY, reason=redact(settings, f"{type(exc).__name__}: {exc}"))
    finally:
        if own:
            http.close()
    return classify(settings, response)


def classify(settings: Any, response: httpx.Response) -> Outcome:
    """Retriable (429, 5xx) or fatal (other 4xx), the decision made here and nowhere else."""
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(SENT, code)
    excerpt = " ".join(response.text.split())[:200]
    reason = redact(settings, f"HTTP {code}" + (f": {excerpt}" if excerpt else ""))
    if code == 429 or code >= 500 or code == 408:
        return Outcome(RETRY, code, reason, retry_after(response))
    return Outcome(FAILED, code, reason)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a `Retry-After` header asks for (seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def redact(settings: Any, text: str) -> str:
    """Text with every secret and channel URL replaced, safe for logs and the database."""
    hidden = list(settings.secrets()) if hasattr(settings, "secrets") else []
    for name in ("alert_webhook_url", "alertmanager_url", "pagerduty_events_url"):
        value = getattr(settings, name, None)
        if value:
            hidden.append(str(value))
    for value in sorted(hidden, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text


def backoff_s(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter: about base * 2**attempt, at most `cap_s`."""
    delay = min(cap_s, base_s * (2**attempt))
    return delay * (0.8 + 0.4 * (rng or random).random())


def deliver_with_retries(
    settings: Any,
    channel: str,
    body: Any,
    *,
    delays_s: Sequence[float] = (0.5, 1.0, 2.0),
    sleep: Callable[[float], None] = time.sleep,
    on_attempt: Callable[[Outcome, bool], None] | None = None,
    client: httpx.Client | None = None,
) -> Outcome:
    """Send now, retrying a few times after `delays_s` (a `Retry-After` is honoured up to the
    next delay's double); `on_attempt(outcome, final)` sees every attempt."""
    outcome = Outcome(FAILED, reason="not attempted")
    for attempt in range(len(delays_s) + 1):
        outcome = send(settings, channel, body, client=client)
        final = outcome.result != RETRY or attempt == len(delays_s)
        if on_attempt is not None:
            on_attempt(outcome, final)
        if final:
            return outcome
        delay = delays_s[attempt]
        if outcome.retry_after_s is not None:
            delay = min(max(delay, outcome.retry_after_s), delay * 2)
        sleep(delay)
    return outcome


def log_attempt(
    channel: str, kind: str, result: str, outcome: Outcome, dedup: Mapping[str, Any]
) -> None:
    """One log line per delivery attempt, with no URL or secret in it."""
    extra = {
        "channel": channel,
        "kind": kind,
        "result": result,
        "status_code": outcome.status_code if outcome.status_code is not None else "-",
        **dedup,
    }
    if outcome.reason:
        extra["reason"] = outcome.reason
    level = logging.INFO if result == "sent" else logging.WARNING
    log.log(level, "alert delivery", extra=extra)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
