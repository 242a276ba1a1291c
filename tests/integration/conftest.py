"""Real services for integration tests: PostgreSQL, Redis, the simulator over HTTP.

A service that does not answer fails the run with a message; nothing here skips.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from models.store import make_engine, upgrade_schema
from worker.luxor.simulator import RunningSimulator, SimulatorConfig

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/luxor_etl_test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/14")
# Every table the pipeline writes: reset before each test, searched for leaked secrets.
STATE_TABLES = (
    "subaccount_ticks",
    "subaccount_rollups_hourly",
    "alerts",
    "alert_cursors",
    "alert_notifications",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def database_url() -> str:
    """A freshly created, migrated test database."""
    url = make_url(DATABASE_URL)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed at {DATABASE_URL}: {exc.orig}", pytrace=False)
    finally:
        admin.dispose()
    engine = make_engine(DATABASE_URL)
    upgrade_schema(engine)
    engine.dispose()
    return DATABASE_URL


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(STATE_TABLES)} RESTART IDENTITY"))
    yield engine
    engine.dispose()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is needed at {REDIS_URL}: {exc}", pytrace=False)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[RunningSimulator]:
    """The simulator on an ephemeral port; options via @pytest.mark.sim(...)."""
    marker = request.node.get_closest_marker("sim")
    options: dict[str, Any] = {"subaccounts": 3, "workers": 120, "drift_interval_s": 0.0}
    options.update(marker.kwargs if marker else {})
    with RunningSimulator(SimulatorConfig(port=0, **options)) as sim:
        yield sim


def arm_fault(sim: RunningSimulator, **fault: Any) -> None:
    response = httpx.post(f"{sim.control_url}/faults", json=fault, timeout=5)
    response.raise_for_status()


def etl_env(database_url: str, sim: RunningSimulator | None, **extra: str) -> dict[str, str]:
    """Environment for a `luxor-etl` process, with nothing inherited that could leak in."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "POLL_INTERVAL_SECONDS": "3600",
        "LUXOR_TIMEOUT_SECONDS": "2",
    }
    if sim is not None:
        env.update(LUXOR_BASE_URL=sim.base_url, LUXOR_API_KEY=sim.api_key)
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fetch_truth(sim: RunningSimulator, currency: str = "BTC") -> dict[str, list[dict]]:
    """Every subaccount's workers, read straight from the simulator over HTTP."""
    headers = {"authorization": sim.api_key}
    with httpx.Client(headers=headers, timeout=10) as http:
        names = [
            s["name"]
            for s in http.get(
                f"{sim.base_url}/pool/subaccounts", params={"page_size": 1000}
            ).json()["subaccounts"]
        ]
        truth: dict[str, list[dict]] = {}
        for name in names:
            workers: list[dict] = []
            url: str | None = f"{sim.base_url}/pool/workers/{currency}"
            params: dict | None = {"subaccount_names": name, "page_size": 100}
            while url:
                body = http.get(url, params=params).json()
                workers += body["workers"]
                url, params = body["pagination"]["next_page_url"], None
            truth[name] = workers
        return truth


def _redis_value(client: redis.Redis, key: bytes) -> bytes:
    kind = client.type(key)
    if kind == b"string":
        return client.get(key) or b""
    if kind == b"hash":
        return b" ".join(k + b"=" + v for k, v in client.hgetall(key).items())
    if kind == b"list":
        return b" ".join(client.lrange(key, 0, -1))
    if kind == b"set":
        return b" ".join(client.smembers(key))
    if kind == b"zset":
        return b" ".join(client.zrange(key, 0, -1))
    return b""


def assert_secrets_absent(
    secrets: Sequence[str],
    *,
    outputs: Sequence[subprocess.CompletedProcess],
    engine: Engine,
    redis_client: redis.Redis,
) -> None:
    """No secret in any command output, any row the pipeline stored, or any Redis key or value."""
    with engine.connect() as conn:
        rows = " ".join(
            str(row[0])
            for table in STATE_TABLES
            for row in conn.execute(sa.text(f"SELECT t::text FROM {table} t"))
        )
    cached = [key + b" " + _redis_value(redis_client, key) for key in redis_client.scan_iter("*")]
    for secret in secrets:
        for out in outputs:
            assert secret not in out.stdout + out.stderr
        assert secret not in rows
        assert all(secret.encode() not in value for value in cached)
