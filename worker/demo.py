"""`luxor-etl demo`: the whole pipeline on one machine, with embedded fallbacks for the stores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click

from worker.settings import load_settings

DEMO_DIR = Path("demo-data")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.5):
            return True
    except OSError:
        return False


def _postgres_answers(url: str) -> bool:
    import sqlalchemy as sa

    from models.store import create_database_if_missing

    parts = urlsplit(url.replace("+psycopg", ""))
    if not _answers(parts.hostname or "localhost", parts.port or 5432):
        return False
    try:
        create_database_if_missing(url)
        with sa.create_engine(url, connect_args={"connect_timeout": 3}).connect():
            return True
    except sa.exc.SQLAlchemyError:
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1.5).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def _embedded_redis() -> Iterator[str]:
    from threading import Thread

    from fakeredis import TcpFakeServer

    port = _free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()


def run_demo(*, interval_s: int, subaccounts: int, workers: int) -> None:
    from models.store import make_engine, upgrade_schema
    from worker.cli import _status_text
    from worker.luxor.simulator import RunningSimulator, SimulatorConfig

    settings = load_settings()
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        database_url = settings.database_url
        if database_url.startswith("postgresql") and not _postgres_answers(database_url):
            DEMO_DIR.mkdir(exist_ok=True)
            database_url = f"sqlite:///{(DEMO_DIR / 'luxor.db').resolve()}"
            click.echo(f"PostgreSQL does not answer at DATABASE_URL; using {database_url}")
        redis_url = settings.redis_url
        broker_url = settings.broker_url
        if not _redis_answers(redis_url):
            redis_url = broker_url = stack.enter_context(_embedded_redis())
            click.echo(f"Redis does not answer at REDIS_URL; using an embedded one at {redis_url}")

        sim = stack.enter_context(
            RunningSimulator(
                SimulatorConfig(subaccounts=subaccounts, workers=workers, port=0, seed=7)
            )
        )
        metrics_port = settings.metrics_port
        env.update(
            LUXOR_BASE_URL=sim.base_url,
            LUXOR_API_KEY=sim.api_key,
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=broker_url,
            POLL_INTERVAL_SECONDS=str(interval_s),
            METRICS_PORT=str(metrics_port),
        )
        env.pop("LUXOR_API_KEY_FILE", None)
        click.echo(f"simulated Luxor: {sim.base_url} ({subaccounts} x {workers} workers)")
        click.echo(f"control API:     {sim.control_url}/state")

        upgrade_schema(make_engine(database_url))
        click.echo("schema migrated")

        exe = [sys.executable, "-m", "worker.cli"]
        commands = {
            "worker": [*exe, "worker", "--concurrency=1", "--pool=solo"],
            "beat": [*exe, "beat"],
            "exporter": [*exe, "exporter"],
        }
        processes = {
            name: subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
            for name, cmd in commands.items()
        }
        stack.callback(_stop, processes)
        click.echo(
            f"worker, beat and exporter started; metrics on "
            f"http://{settings.metrics_addr}:{metrics_port}/metrics; Ctrl-C stops everything"
        )
        _watch(
            redis_url,
            settings.cache_prefix,
            settings.luxor_currencies,
            interval_s,
            processes,
            _status_text,
        )


def _watch(redis_url, prefix, currencies, interval_s, processes, status_text) -> None:
    from datetime import UTC, datetime

    import redis

    from worker import cache

    client = redis.Redis.from_url(redis_url)
    keys = cache.CacheKeys(prefix)
    last_seen = None
    while True:
        for name, process in processes.items():
            if process.poll() is not None:
                raise SystemExit(f"luxor-etl: demo {name} exited with {process.returncode}")
        summary = cache.read_summary(client, keys, currencies[0])
        if summary and summary["observed_at"] != last_seen:
            last_seen = summary["observed_at"]
            listing = cache.read_subaccounts(client, keys, currencies[0])
            click.echo(status_text(currencies[0], summary, listing, datetime.now(UTC)))
        time.sleep(min(2, interval_s))


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
