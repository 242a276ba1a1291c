"""Alembic environment: runs against the connection or URL `luxor-etl migrate` passes in."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from models.tables import metadata

config = context.config


def _include_object(obj, name, type_, reflected, compare_to):
    # Daily partitions are created at run time, not by migrations.
    return not (type_ == "table" and name and "_p20" in name)


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
        with create_engine(url).begin() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
