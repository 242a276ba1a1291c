"""One validated Settings object, read from the environment and a `.env` file."""

from __future__ import annotations

import contextlib
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigError

KNOWN_CURRENCIES = ("BTC", "LTC_DOGE", "SC", "ZEC", "ZEN", "LTC", "DOGE")
SECRET_FIELDS = frozenset(
    {"luxor_api_key", "alert_webhook_secret", "pagerduty_routing_key", "slack_webhook_url"}
)
_CACHE_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Every setting of SPEC.md; field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    luxor_api_key: SecretStr | None = None
    luxor_api_key_file: Path | None = None
    luxor_base_url: str = "https://app.luxor.tech/api/v2"
    luxor_currencies: CommaList = ("BTC",)
    luxor_subaccounts: CommaList = ()
    luxor_page_size: int = Field(1000, ge=1, le=100_000)
    # Requests in flight; 64 is where a 1,000-page tick at 20 ms stops getting faster
    # (16: 2.2 s, 32: 1.7 s, 64: 1.45 s, 128: 1.48 s; see bench/run.py).
    luxor_concurrency: int = Field(64, ge=1, le=256)
    luxor_timeout_seconds: float = Field(10.0, gt=0, le=300)
    luxor_max_attempts: int = Field(5, ge=1, le=20)
    luxor_rate_limit_per_second: float = Field(0.0, ge=0, le=10_000)  # 0: unpaced
    luxor_rate_limit_burst: int = Field(20, ge=1, le=100_000)

    database_url: str = "postgresql+psycopg://postgres@localhost:5432/luxor_etl"
    database_statement_timeout_seconds: float = Field(30.0, gt=0)
    redis_url: str = "redis://localhost:6379/0"
    celery_broker_url: str | None = None

    poll_interval_seconds: int = Field(60, ge=5, le=86_400)
    cache_ttl_seconds: int = Field(300, ge=10, le=86_400)
    cache_prefix: str = "luxor"
    outbox_max_ticks: int | None = Field(None, ge=1, le=1_000_000)

    # Raw ticks are kept this many days (whole daily partitions dropped), hourly rollups longer.
    retention_days: int = Field(30, ge=1, le=3650)
    rollup_retention_days: int = Field(400, ge=1, le=36_500)
    # Subaccounts per chunk task when a tick is split across Celery workers; 0 = one task.
    tick_chunk_subaccounts: int = Field(0, ge=0, le=100_000)

    metrics_port: int = Field(9808, ge=1, le=65_535)
    metrics_addr: str = "127.0.0.1"

    alert_drop_min: int = Field(3, ge=1, le=1_000_000)
    alert_drop_percent: float = Field(10.0, ge=0, le=100)
    alert_window_minutes: int = Field(15, ge=1, le=1440)
    alert_stale_minutes: int = Field(10, ge=1, le=10_080)
    alert_repeat_minutes: int = Field(60, ge=1, le=10_080)
    alert_surge_enabled: bool = False
    alert_webhook_url: str | None = None
    alert_webhook_secret: SecretStr | None = None
    alertmanager_url: str | None = None
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    slack_webhook_url: SecretStr | None = None
    alert_dashboard_url: str | None = None
    alert_runbook_url: str | None = None

    @field_validator("luxor_currencies", "luxor_subaccounts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("luxor_currencies")
    @classmethod
    def _known_currencies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        currencies = tuple(dict.fromkeys(c.upper() for c in value))
        if not currencies:
            raise ValueError("needs at least one currency")
        unknown = [c for c in currencies if c not in KNOWN_CURRENCIES]
        if unknown:
            raise ValueError(
                f"unknown currency {unknown[0]!r}; known: {', '.join(KNOWN_CURRENCIES)}"
            )
        return currencies

    @field_validator("luxor_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://app.luxor.tech/api/v2")
        return value.rstrip("/")

    @field_validator(
        "alert_webhook_url",
        "alertmanager_url",
        "pagerduty_events_url",
        "alert_dashboard_url",
        "alert_runbook_url",
        mode="before",
    )
    @classmethod
    def _optional_http_url(cls, value: Any, info: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return cls.model_fields[info.field_name].default
        if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value.strip()):
            raise ValueError("must be an http(s) URL")
        return value.strip()

    @field_validator("alert_webhook_secret", "pagerduty_routing_key", "slack_webhook_url")
    @classmethod
    def _optional_secret(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        text = value.get_secret_value().strip()
        if info.field_name == "slack_webhook_url" and not re.match(r"^https?://[^/\s]+", text):
            raise ValueError("must be an http(s) URL (the Slack incoming webhook)")
        return SecretStr(text)

    @field_validator("database_url")
    @classmethod
    def _normalise_dsn(cls, value: str) -> str:
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if value.startswith(("postgresql+psycopg://", "sqlite://", "sqlite+pysqlite://")):
            return value
        raise ValueError("must be a postgresql:// (or sqlite:// for the demo) URL")

    @field_validator("redis_url", "celery_broker_url")
    @classmethod
    def _redis_or_amqp(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^(redis|rediss|amqp|amqps|pyamqp|unix)://", value):
            raise ValueError("must be a redis://, rediss:// or amqp:// URL")
        return value

    @field_validator("cache_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not _CACHE_PREFIX_RE.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _key_sources(self) -> Settings:
        if self.luxor_api_key is not None and self.luxor_api_key_file is not None:
            raise ValueError("LUXOR_API_KEY and LUXOR_API_KEY_FILE are both set; keep one")
        if self.redis_url.startswith(("amqp", "pyamqp")):
            raise ValueError("REDIS_URL must point at Redis, not a message broker")
        return self

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def outbox_limit_ticks(self) -> int:
        """OUTBOX_MAX_TICKS, by default a day of ticks."""
        return self.outbox_max_ticks or max(1, 86_400 // self.poll_interval_seconds)

    @property
    def tick_time_limit_seconds(self) -> int:
        """Hard limit of one tick task; also the tick lock's lifetime."""
        return max(60, self.poll_interval_seconds * 2)

    @cached_property
    def api_key(self) -> str:
        """The Luxor key, from LUXOR_API_KEY or the file LUXOR_API_KEY_FILE names."""
        if self.luxor_api_key_file is not None:
            try:
                raw = self.luxor_api_key_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"LUXOR_API_KEY_FILE: cannot read {self.luxor_api_key_file}: {exc.strerror}"
                ) from None
            source, key = "LUXOR_API_KEY_FILE", raw.strip()
        elif self.luxor_api_key is not None:
            source, key = "LUXOR_API_KEY", self.luxor_api_key.get_secret_value().strip()
        else:
            raise ConfigError("LUXOR_API_KEY: missing (set it, or LUXOR_API_KEY_FILE)")
        if not key:
            raise ConfigError(f"{source}: the key is empty")
        if key.lower().startswith("bearer "):
            raise ConfigError(f"{source}: give the raw key, without the 'Bearer ' prefix")
        if any(ch.isspace() or ord(ch) < 32 for ch in key):
            raise ConfigError(f"{source}: the key contains whitespace or control characters")
        return key

    def secrets(self) -> list[str]:
        """Every secret value configured, for redaction of logs and outputs."""
        values: list[str] = []
        for name in SECRET_FIELDS:
            value = getattr(self, name, None)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value:
                values.append(str(value))
        with contextlib.suppress(ConfigError):
            values.append(self.api_key)
        return [v for v in dict.fromkeys(values) if len(v) >= 4]


def _describe(error: dict[str, Any]) -> str:
    field = str(error["loc"][0]) if error.get("loc") else ""
    message = error.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    if not field:
        return f"configuration: {message}"
    variable = field.upper()
    if field in SECRET_FIELDS or error.get("input") is None or isinstance(error.get("input"), dict):
        return f"{variable}: {message}"
    return f"{variable}: {message} (got {str(error['input'])[:80]!r})"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
