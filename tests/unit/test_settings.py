"""Settings: SPEC defaults, normalisation, and one clear line naming a bad variable."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from worker.errors import ConfigError
from worker.settings import load_settings
from worker.snapshot import tick_time


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in (
        "LUXOR_API_KEY",
        "LUXOR_API_KEY_FILE",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "LUXOR_CURRENCIES",
        "LUXOR_SUBACCOUNTS",
        "CACHE_PREFIX",
        "POLL_INTERVAL_SECONDS",
        "LUXOR_PAGE_SIZE",
        "LUXOR_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_spec() -> None:
    s = load_settings()
    assert s.luxor_base_url == "https://app.luxor.tech/api/v2"
    assert s.luxor_currencies == ("BTC",)
    assert s.luxor_subaccounts == ()
    assert s.luxor_page_size == 1000
    assert s.database_url == "postgresql+psycopg://postgres@localhost:5432/luxor_etl"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.broker_url == s.redis_url
    assert (s.poll_interval_seconds, s.cache_ttl_seconds, s.cache_prefix) == (60, 300, "luxor")
    assert (s.metrics_port, s.metrics_addr) == (9808, "127.0.0.1")


def test_lists_dsn_and_broker_are_normalised(monkeypatch) -> None:
    monkeypatch.setenv("LUXOR_CURRENCIES", "btc, LTC_DOGE,btc")
    monkeypatch.setenv("LUXOR_SUBACCOUNTS", "site-a, site-b,")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/x?sslmode=require")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    s = load_settings()
    assert s.luxor_currencies == ("BTC", "LTC_DOGE")
    assert s.luxor_subaccounts == ("site-a", "site-b")
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/x?sslmode=require"
    assert s.broker_url.startswith("amqp://")


def test_env_file_is_read(tmp_path) -> None:
    (tmp_path / ".env").write_text("LUXOR_API_KEY=from-dotenv\nPOLL_INTERVAL_SECONDS=30\n")
    s = load_settings()
    assert s.api_key == "from-dotenv" and s.poll_interval_seconds == 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LUXOR_PAGE_SIZE", "lots"),
        ("LUXOR_PAGE_SIZE", "0"),
        ("POLL_INTERVAL_SECONDS", "-5"),
        ("LUXOR_CURRENCIES", "BTC,DOGECOIN"),
        ("LUXOR_BASE_URL", "ftp://luxor"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "localhost:6379"),
        ("CACHE_PREFIX", "a:b"),
        ("METRICS_PORT", "70000"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{name}:")
    assert "\n" not in str(caught.value)


def test_key_from_file_and_its_errors(tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  file-key-42\n")
    monkeypatch.setenv("LUXOR_API_KEY_FILE", str(key_file))
    assert load_settings().api_key == "file-key-42"
    monkeypatch.setenv("LUXOR_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="LUXOR_API_KEY_FILE: cannot read"):
        load_settings().api_key  # noqa: B018


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "empty"), ("Bearer abc123", "Bearer"), ("abc 123", "whitespace")],
)
def test_bad_keys_are_refused_without_echoing_them(monkeypatch, value: str, message: str) -> None:
    monkeypatch.setenv("LUXOR_API_KEY", value)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings().api_key  # noqa: B018
    assert "abc123" not in str(caught.value)


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="LUXOR_API_KEY: missing"):
        load_settings().api_key  # noqa: B018


def test_cli_prints_one_line_and_exits_2_on_bad_settings(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LUXOR_PAGE_SIZE": "lots", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "poll-once"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "luxor-etl: configuration error: LUXOR_PAGE_SIZE: Input should be a valid integer, "
        "unable to parse string as an integer (got 'lots')"
    ]
    assert "Traceback" not in result.stderr


def test_tick_time_aligns_down_to_the_interval() -> None:
    now = datetime(2026, 12, 3, 10, 0, 59, 999, tzinfo=UTC)
    assert tick_time(now, 60) == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert tick_time(now, 300) == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert tick_time(datetime(2026, 12, 3, 10, 4, 59, tzinfo=UTC), 300).minute == 0
