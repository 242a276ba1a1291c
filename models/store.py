"""The database side of the pipeline: engine, migrations, the bulk write path, a few reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url

from models.tables import subaccount_ticks

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
TICK_COLUMNS = tuple(c.name for c in subaccount_ticks.columns)
KEY_COLUMNS = ("currency", "subaccount", "observed_at")


def make_engine(url: str, *, statement_timeout_s: float = 30.0) -> Engine:
    """An engine with bounded connects and statements (a soft time limit cannot stop libpq)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(url, connect_args={"timeout": 30})
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=4,
        connect_args={
            "connect_timeout": 5,
            "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
            "application_name": "luxor-etl",
        },
    )


def create_database_if_missing(url: str) -> bool:
    """Create the PostgreSQL database named in `url` if it does not exist; True if created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    admin = sa.create_engine(
        parsed.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        with admin.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": parsed.database},
            )
            if exists:
                return False
            quoted = admin.dialect.identifier_preparer.quote_identifier(parsed.database)
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` on this engine."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None before the first migration."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.scalar(sa.text("SELECT version_num FROM alembic_version"))


def write_subaccount_ticks(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> int:
    """Upsert subaccount-tick rows in one transaction, keyed by (currency, subaccount, observed_at).

    Running the same tick again replaces its rows: never a duplicate, never a mix.
    """
    if not rows:
        return 0
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(subaccount_ticks)
    statement = statement.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS),
        set_={name: statement.excluded[name] for name in TICK_COLUMNS if name not in KEY_COLUMNS},
    )
    with engine.begin() as conn:
        conn.execute(statement, list(rows))
    return len(rows)


def recent_active_counts(
    engine: Engine, currency: str, since: Any, subaccounts: Iterable[str] | None = None
) -> list[tuple[str, Any, int]]:
    """(subaccount, observed_at, active) rows since a moment, oldest first."""
    query = (
        sa.select(
            subaccount_ticks.c.subaccount, subaccount_ticks.c.observed_at, subaccount_ticks.c.active
        )
        .where(subaccount_ticks.c.currency == currency, subaccount_ticks.c.observed_at >= since)
        .order_by(subaccount_ticks.c.observed_at)
    )
    if subaccounts is not None:
        query = query.where(subaccount_ticks.c.subaccount.in_(list(subaccounts)))
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]
