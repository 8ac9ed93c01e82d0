"""Alembic environment for the pilot result store.

The version table is ``pilot_alembic_version``: Optuna keeps its own ``alembic_version`` in the same database, and
autogenerate only looks at our tables (``pilot.store.session.include_name``). ``pilot.store.upgrade`` passes an open
connection in ``config.attributes["connection"]`` (inside its own transaction, under a lock); otherwise the URL comes
from the ``sqlalchemy.url`` option.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from pilot.store.models import Base
from pilot.store.session import VERSION_TABLE, include_name, normalise_url

config = context.config
target_metadata = Base.metadata


def _configure_options(is_sqlite: bool) -> dict:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "render_as_batch": is_sqlite,
        "include_name": include_name,
        "compare_type": True,
    }


def run_migrations_offline() -> None:
    url = normalise_url(config.get_main_option("sqlalchemy.url"))
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_options(connection.dialect.name == "sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = create_engine(normalise_url(config.get_main_option("sqlalchemy.url")), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
