"""The `luxor-etl` command line; errors become one line and a non-zero exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from worker.errors import ConfigError, LuxorEtlError
from worker.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG = 0, 1, 2


def fail(message: str, code: int = EXIT_PARTIAL) -> None:
    click.echo(f"luxor-etl: {message}", err=True)
    sys.exit(code)


def edge(func: F) -> F:
    """Turn the project's errors into one readable line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(f"configuration error: {exc}", EXIT_CONFIG)
        except LuxorEtlError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def settings_with_logging(*, need_key: bool = False) -> Settings:
    from worker.logs import setup_logging

    settings = load_settings()
    if need_key:
        settings.api_key  # noqa: B018 - fail at start, not at the first tick
    setup_logging(settings.secrets())
    return settings


def printable(text: str, width: int = 40) -> str:
    """A name from the API, safe for a terminal: control characters escaped, length bounded."""
    safe = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    return safe if len(safe) <= width else safe[: width - 1] + "…"


def human_hashrate(hs: float | None) -> str:
    if hs is None:
        return "-"
    for unit, scale in (("EH/s", 1e18), ("PH/s", 1e15), ("TH/s", 1e12), ("GH/s", 1e9)):
        if hs >= scale:
            return f"{hs / scale:.2f} {unit}"
    return f"{hs:.0f} H/s"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """luxor-etl: keeps mining dashboards, metrics and alerts fed from the Luxor pool."""


@main.command()
@edge
def migrate() -> None:
    """Create the database if it does not exist, then upgrade it to the newest schema."""
    import sqlalchemy.exc

    from models.store import (
        create_database_if_missing,
        current_revision,
        make_engine,
        upgrade_schema,
    )

    settings = settings_with_logging()
    try:
        created = create_database_if_missing(settings.database_url)
        engine = make_engine(settings.database_url)
        upgrade_schema(engine)
        revision = current_revision(engine)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        fail(f"migrate failed: {_db_error(exc)}")
    note = " (database created)" if created else ""
    click.echo(f"database {engine.url.database} at schema revision {revision}{note}")


def _db_error(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split())[:300]


@main.command("poll-once")
@click.option("--json", "as_json", is_flag=True, help="Print the tick report as JSON.")
@edge
def poll_once(as_json: bool) -> None:
    """Run one whole tick here (no broker); exit 0 all ok, 1 some failed, 2 config/auth."""
    import redis

    from models.store import make_engine
    from tasks.tick import run_tick_locked

    settings = settings_with_logging(need_key=True)
    engine = make_engine(
        settings.database_url, statement_timeout_s=settings.database_statement_timeout_seconds
    )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    report = run_tick_locked(settings, engine=engine, redis_client=client, alert_delivery="inline")
    if as_json:
        click.echo(json.dumps(_report_json(report), indent=2))
    else:
        click.echo(_report_table(report))
    sys.exit(report.exit_code)


def _report_rows(report: Any) -> list[list[str]]:
    rows = []
    for fleet in report.fleets:
        publication = report.publications.get(fleet.currency)
        stale = set(publication.stale) if publication else set()
        for snap in fleet.snapshots:
            rows.append(
                [
                    fleet.currency,
                    printable(snap.subaccount),
                    str(snap.active),
                    str(snap.inactive),
                    human_hashrate(snap.hashrate_hs),
                    "ok",
                ]
            )
        for failure in fleet.failures:
            shown = "stale (cache kept)" if failure.subaccount in stale else "missing"
            rows.append(
                [
                    fleet.currency,
                    printable(failure.subaccount),
                    "-",
                    "-",
                    "-",
                    f"FAILED {failure.error}: {printable(failure.reason, 70)}; {shown}",
                ]
            )
    return rows


def _report_table(report: Any) -> str:
    lines = [f"tick {report.observed_at:%Y-%m-%dT%H:%M:%SZ}"]
    if report.skipped:
        lines.append(f"skipped: {report.skipped}")
        return "\n".join(lines)
    if report.auth_error:
        lines.append(f"auth error: {report.auth_error}")
        return "\n".join(lines)
    header = ["currency", "subaccount", "active", "inactive", "hashrate", "status"]
    lines.append(table(_report_rows(report), header))
    ok = sum(len(f.snapshots) for f in report.fleets)
    lines.append(
        f"{ok} ok, {len(report.failures)} failed; {report.rows_written} subaccount rows "
        f"stored in {report.duration_s:.2f}s"
    )
    if report.store_error:
        lines.append(f"PostgreSQL: {report.store_error}")
    if report.cache_error:
        lines.append(f"Redis: {report.cache_error}")
    if report.alerts is not None:
        lines.append(f"alerts: {printable(report.alerts.line(), 400)}")
        lines += [f"alerts: {printable(e, 300)}" for e in report.alerts.errors]
    return "\n".join(lines)


def _report_json(report: Any) -> dict[str, Any]:
    return {
        "observed_at": f"{report.observed_at:%Y-%m-%dT%H:%M:%SZ}",
        "exit_code": report.exit_code,
        "skipped": report.skipped,
        "auth_error": report.auth_error,
        "store_error": report.store_error,
        "cache_error": report.cache_error,
        "rows_written": report.rows_written,
        "duration_s": round(report.duration_s, 3),
        "subaccounts": [
            {
                "currency": s.currency,
                "subaccount": s.subaccount,
                "active": s.active,
                "inactive": s.inactive,
                "hashrate": s.hashrate_hs,
                "workers": len(s.workers),
            }
            for f in report.fleets
            for s in f.snapshots
        ],
        "failures": [
            {
                "currency": f.currency,
                "subaccount": f.subaccount,
                "error": f.error,
                "reason": f.reason,
            }
            for f in report.failures
        ],
        "alerts": None
        if report.alerts is None
        else {
            "source": report.alerts.source,
            "opened": report.alerts.opened,
            "resolved": report.alerts.resolved,
            "firing": report.alerts.firing,
            "notifications": report.alerts.queued,
            "delivered": dict(report.alerts.delivered),
            "errors": report.alerts.errors,
        },
    }


def _celery(argv: list[str]) -> None:
    settings_with_logging(need_key=True)
    from worker.celery_app import app

    app.start(argv)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@edge
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker with the project's app (extra arguments go to Celery)."""
    _celery(["worker", "--loglevel=INFO", *celery_args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@edge
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat, which schedules a tick every POLL_INTERVAL_SECONDS."""
    _celery(["beat", "--loglevel=INFO", *celery_args])


@main.command()
@edge
def exporter() -> None:
    """Serve Prometheus metrics on METRICS_ADDR:METRICS_PORT (/metrics, /healthz)."""
    from worker.exporter import serve

    settings = settings_with_logging()
    serve(settings)


@main.command()
@click.option("--subaccounts", default=3, show_default=True, help="Subaccounts in the fleet.")
@click.option("--workers", default=50, show_default=True, help="Workers per subaccount.")
@click.option("--seed", default=1, show_default=True, help="Seed of the generated fleet.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Added to every response.")
@click.option("--port", default=8099, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-key", default="sim-key", show_default=True, help="The key it accepts.")
@click.option("--max-page-size", default=100, show_default=True, help="Server-side page cap.")
@click.option("--faults", default=None, help='Random faults: "0.3" or "429:0.1,500:0.05".')
@click.option("--hostile-names", is_flag=True, help="Mix hostile subaccount and worker names in.")
@click.option("--drift-interval", default=30.0, show_default=True, help="Seconds; 0 = frozen.")
@edge
def simulate(**options: Any) -> None:
    """Serve a local Luxor V2 API with a generated fleet and a /_sim/ control API."""
    from worker.luxor.simulator import SimulatorConfig, serve

    drift = options.pop("drift_interval")
    serve(SimulatorConfig(drift_interval_s=drift, **options))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what the dashboard sees as JSON.")
@click.option("--health", is_flag=True, help="Exit 0 only if ticks are completing on time.")
@edge
def status(as_json: bool, health: bool) -> None:
    """What the dashboard sees now: summary, cache age, stale/missing subaccounts, alerts."""
    import redis

    from worker import cache

    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
    keys = cache.CacheKeys(settings.cache_prefix)
    try:
        if health:
            beat = client.get(keys.heartbeat("tick"))
            if beat is None:
                fail("unhealthy: no tick completed recently")
            click.echo(f"healthy: last tick completed at {beat.decode()}")
            return
        views = {
            c: (cache.read_summary(client, keys, c), cache.read_subaccounts(client, keys, c))
            for c in settings.luxor_currencies
        }
    except redis.RedisError as exc:
        fail(f"Redis at REDIS_URL is unreachable: {exc}")
    now = datetime.now(UTC)
    firing, alerts_error = _firing_alerts(settings)
    if as_json:
        doc = {
            c: {
                "summary": s,
                "subaccounts": rows,
                "firing_alerts": None
                if firing is None
                else [_alert_json(a) for a in firing if a["currency"] == c],
            }
            for c, (s, rows) in views.items()
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for currency, (summary, listing) in views.items():
        click.echo(_status_text(currency, summary, listing, now))
    click.echo(_alerts_text(firing, alerts_error))


def _firing_alerts(settings: Settings) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Firing episodes from the database, or None and why when it does not answer."""
    import sqlalchemy.exc

    from models.alert_store import firing_alerts
    from models.store import make_engine

    engine = make_engine(settings.database_url, statement_timeout_s=5)
    try:
        return firing_alerts(engine), None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return None, _db_error(exc)
    finally:
        engine.dispose()


def _alert_json(alert: dict[str, Any]) -> dict[str, Any]:
    details = alert["details"] or {}
    return {
        "kind": alert["kind"],
        "currency": alert["currency"],
        "subaccount": alert["subaccount"],
        "started_at": f"{alert['started_at']:%Y-%m-%dT%H:%M:%SZ}",
        "baseline": alert["baseline"],
        "current": alert["current"],
        "workers_down": details.get("workers_down", []),
        "workers_down_more": details.get("workers_down_more", 0),
        "dedup_key": alert["dedup_key"],
    }


def _alerts_text(firing: list[dict[str, Any]] | None, error: str | None) -> str:
    if firing is None:
        return f"firing alerts: unknown (PostgreSQL at DATABASE_URL: {printable(error or '', 200)})"
    if not firing:
        return "firing alerts: none"
    lines = [f"firing alerts ({len(firing)}):"]
    for alert in firing:
        doc = _alert_json(alert)
        where = printable(doc["subaccount"]) if doc["subaccount"] is not None else "fleet"
        line = f"  {doc['kind']} {doc['currency']} {where} since {doc['started_at']}"
        if doc["baseline"] is not None and doc["current"] is not None:
            line += f": {doc['current']:.0f} active, was {doc['baseline']:.0f}"
        if doc["workers_down"]:
            shown = ", ".join(printable(n, 60) for n in doc["workers_down"][:5])
            rest = max(0, len(doc["workers_down"]) - 5) + doc["workers_down_more"]
            line += f"; down: {shown}" + (f" (+{rest} more)" if rest > 0 else "")
        lines.append(line)
    return "\n".join(lines)


@main.group()
def alerts() -> None:
    """On-call alerts: check the configured channels."""


@alerts.command("test")
@edge
def alerts_test() -> None:
    """Send a clearly marked test alert to every configured channel; exit 1 if one fails."""
    import contextlib
    import socket

    import redis

    from worker import cache, health
    from worker.alerts import channels, rules

    settings = settings_with_logging()
    configured = channels.configured_channels(settings)
    if not configured:
        fail(
            "configuration error: no alert channel is configured; set ALERT_WEBHOOK_URL, "
            "ALERTMANAGER_URL, PAGERDUTY_ROUTING_KEY or SLACK_WEBHOOK_URL",
            EXIT_CONFIG,
        )
    event = rules.test_event(
        settings.luxor_currencies[0],
        datetime.now(UTC),
        source=socket.gethostname(),
        dashboard_url=settings.alert_dashboard_url,
        runbook_url=settings.alert_runbook_url,
    )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    keys = cache.CacheKeys(settings.cache_prefix)
    failed = []
    for channel in configured:
        body = channels.body_for(channel, [event], hold_seconds=300)

        def counted(outcome: channels.Outcome, final: bool, channel: str = channel) -> None:
            result = {channels.SENT: "sent", channels.FAILED: "failed"}.get(outcome.result)
            result = result or ("failed" if final else "retried")
            channels.log_attempt(channel, rules.TEST, result, outcome, {})
            with contextlib.suppress(redis.RedisError):
                health.record_alert_delivery(client, keys, rules.TEST, channel, result)

        outcome = channels.deliver_with_retries(
            settings, channel, body, delays_s=(0.5, 1.0), on_attempt=counted
        )
        if outcome.result == channels.SENT:
            click.echo(f"{channel:<13} sent (HTTP {outcome.status_code})")
        else:
            failed.append(channel)
            click.echo(f"{channel:<13} FAILED: {printable(outcome.reason, 200)}")
    click.echo(
        f"test alert {event.dedup_key}: {len(configured) - len(failed)} of "
        f"{len(configured)} channels reached"
    )
    sys.exit(EXIT_PARTIAL if failed else EXIT_OK)


def _status_text(currency: str, summary: dict | None, listing: list | None, now: datetime) -> str:
    if summary is None:
        return f"{currency}: unknown — no fleet summary in the cache (no recent successful tick)"
    observed = datetime.strptime(summary["observed_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    age = (now - observed).total_seconds()
    lines = [
        f"{currency}: {summary['active']} active, {summary['inactive']} inactive, "
        f"{human_hashrate(summary['hashrate'])} across {summary['subaccounts']} subaccounts "
        f"(observed {summary['observed_at']}, cache age {age:.0f}s)"
    ]
    if summary["stale_subaccounts"]:
        names = ", ".join(printable(n) for n in summary["stale_subaccounts"])
        lines.append(f"  stale (last fetch failed, older numbers shown): {names}")
    if summary["missing_subaccounts"]:
        names = ", ".join(printable(n) for n in summary["missing_subaccounts"])
        lines.append(f"  missing (unknown, left out of the totals): {names}")
    rows = [
        [
            printable(e["subaccount"]),
            str(e["active"]),
            str(e["inactive"]),
            human_hashrate(e["hashrate"]),
            e["observed_at"],
            "stale" if e["stale"] else "ok",
        ]
        for e in listing or []
    ]
    if rows:
        header = ["subaccount", "active", "inactive", "hashrate", "observed_at", "state"]
        lines.append(table(rows, header))
    return "\n".join(lines)


@main.command()
@click.option("--interval", default=10, show_default=True, help="Tick period for the demo.")
@click.option("--subaccounts", default=5, show_default=True)
@click.option("--workers", default=200, show_default=True, help="Workers per subaccount.")
@edge
def demo(interval: int, subaccounts: int, workers: int) -> None:
    """Simulator + migrate + worker + beat + exporter on this machine; Ctrl-C stops all."""
    from worker.demo import run_demo

    run_demo(interval_s=interval, subaccounts=subaccounts, workers=workers)


if __name__ == "__main__":
    main()
