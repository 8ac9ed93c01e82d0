"""Engines, sessions, schema upgrades and retries for the result store (SQLite or PostgreSQL).

Every command that touches the store calls ``open_store(url)``: it upgrades the schema to the newest Alembic revision
(idempotent, safe with several processes starting at once) and hands back a ``sessionmaker``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")
M = TypeVar("M")

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///pilot.db"
# Optuna keeps its own "alembic_version" table in the same database: ours has another name, and we never touch theirs.
VERSION_TABLE = "pilot_alembic_version"
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10
# Any fixed 64-bit key: serialises concurrent `upgrade` calls on one PostgreSQL database.
_PG_MIGRATION_LOCK_KEY = 0x7069_6C6F_7473_746F  # "pilotsto"


def normalise_url(url: str | None) -> str:
    """A SQLAlchemy URL from what the user typed.

    None or "" -> ``DEFAULT_URL``; a bare file path (no "://") -> ``sqlite:///<path>``; ``postgresql://`` and
    ``postgres://`` -> ``postgresql+psycopg://`` (psycopg 3 is the driver we install).
    """
    if not url:
        return DEFAULT_URL
    if "://" not in url:
        return f"sqlite:///{os.path.expanduser(url)}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def _create_engine(url: str, **kwargs: Any) -> Engine:
    if not _is_sqlite(url):
        if "connect_timeout" not in make_url(url).query:  # a host that drops packets: an answer within seconds
            kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **kwargs.get("connect_args", {})}
        return create_engine(url, pool_pre_ping=True, **kwargs)
    path = _sqlite_file(url)
    if path is not None and str(path.parent) not in ("", "."):
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def make_engine(url: str | None = None) -> Engine:
    """An engine for the store. SQLite: WAL, foreign keys on, 30 s busy timeout. PostgreSQL: ``pool_pre_ping``."""
    return _create_engine(normalise_url(url))


def _migration_engine(url: str) -> Engine:
    """A single-connection engine whose transactions really are transactions, DDL included.

    pysqlite runs DDL outside any transaction and only begins one before DML; here we take control (the SQLAlchemy
    recipe) and open every transaction with BEGIN IMMEDIATE, so two processes upgrading one file queue up on the
    write lock instead of both creating the tables.
    """
    engine = _create_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(url: str | None = None) -> Config:
    """An ``alembic.config.Config`` for our migrations, built in code (no alembic.ini); works from an install."""
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        # ConfigParser interpolates "%": escape it (percent-encoded passwords).
        config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class StoreUnreachable(RuntimeError):
    """The store cannot be opened (server down, wrong host, port, user or path); one line naming ``--db``."""


def _unreachable(url: str, error: DBAPIError) -> StoreUnreachable:
    detail = str(error.orig if error.orig is not None else error).strip().splitlines()
    shown = make_url(url).render_as_string(hide_password=True)
    fix = ("check the path and that this user may write there" if _is_sqlite(url) else
           "start the server, or fix the host, port, user or database name in the URL")
    return StoreUnreachable(f"--db {shown}: cannot connect ({detail[0] if detail else 'no answer'}); {fix}")


def upgrade(url: str | None = None) -> None:
    """Bring the schema to the newest revision. Idempotent; concurrent callers serialise on a lock.

    A store that cannot be reached raises ``StoreUnreachable`` (one line), not the driver's traceback.
    """
    from alembic import command

    url = normalise_url(url)
    engine = _migration_engine(url)
    try:
        try:
            connection = engine.connect()
        except (OperationalError, InterfaceError) as error:
            raise _unreachable(url, error) from None
        with connection, connection.begin():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK_KEY})")
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


@contextmanager
def schema_lock(url: str | None = None):
    """Hold the schema lock that ``upgrade`` takes, e.g. while Optuna creates its own tables.

    PostgreSQL: a session-level advisory lock, so concurrent workers create schemas one at a time
    (two creating Optuna's enum types at once collide). SQLite serialises writers by itself.
    """
    url = normalise_url(url)
    if not url.startswith("postgresql"):
        yield
        return
    engine = _create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK_KEY})")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK_KEY})")
                connection.commit()
    finally:
        engine.dispose()


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None for a database we never upgraded)."""
    from alembic.runtime.migration import MigrationContext

    engine = _create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def open_store(url: str | None = None) -> sessionmaker[Session]:
    """Upgrade the schema, then a session factory (``expire_on_commit=False``); its engine is ``factory.kw["bind"]``."""
    upgrade(url)
    return sessionmaker(bind=make_engine(url), expire_on_commit=False)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic autogenerate filter: only our own tables (Optuna's and the version tables share the database)."""
    if type_ == "table":
        from pilot.store.models import Base

        return name in Base.metadata.tables
    return True


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: lost or refused connections, locked databases, serialisation failures."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 6,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    log: Callable[[str], Any] | None = None,
) -> T:
    """``fn()``, retried with exponential backoff and jitter on transient database errors (``is_transient``).

    ``fn`` must be a whole unit of work that opens its own session (``with factory() as session: ...; commit()``):
    after a dropped connection the old session is unusable, and the retry needs a fresh one. Other errors
    (IntegrityError, ...) propagate at once; the last transient error is re-raised after ``attempts`` tries.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except DBAPIError as error:
            if attempt >= attempts or not is_transient(error):
                raise
            delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1))
            delay = min(max_delay_s, delay + random.uniform(0, delay / 2))
            detail = str(error.orig if error.orig is not None else error).strip().splitlines()
            message = (f"database error ({type(error).__name__}: {detail[0] if detail else ''}); "
                       f"retry {attempt}/{attempts - 1} in {delay:.2f}s")
            logger.warning(message)
            if log is not None:
                log(message)
            time.sleep(delay)
    raise AssertionError("unreachable")


def get_or_create(session: Session, model_cls: type[M], defaults: dict[str, Any] | None = None,
                  **unique_fields: Any) -> tuple[M, bool]:
    """``(instance, created)``: the row matching ``unique_fields``, or a new one with ``defaults`` added (flushed).

    Safe under a race with another process: if the insert hits a unique constraint, the session is rolled back and
    the winner's row selected. That rollback discards anything else pending in the session, so call this on a session
    with nothing else uncommitted (e.g. first thing in a unit of work). The caller commits.
    """
    statement = select(model_cls).filter_by(**unique_fields)
    instance = session.scalars(statement).one_or_none()
    if instance is not None:
        return instance, False
    instance = model_cls(**unique_fields, **(defaults or {}))
    session.add(instance)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        existing = session.scalars(statement).one_or_none()
        if existing is None:  # some other constraint failed: not a race
            raise
        return existing, False
    return instance, True
