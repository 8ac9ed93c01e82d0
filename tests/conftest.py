"""Shared fixtures.

Store fixtures: ``postgres_url`` (a factory of fresh PostgreSQL databases, dropped at the end of the session),
``db_url`` (each test on SQLite and on PostgreSQL) and ``fresh_db_url`` (likewise, with an empty database per test).
PostgreSQL tests are skipped when no server answers at 127.0.0.1:5432, unless PILOT_REQUIRE_POSTGRES=1, where they
fail. These fixtures need sqlalchemy and psycopg only: no torch.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"


def _pg_url(database: str) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{database}"


def _pg_unavailable(reason: str) -> None:
    message = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {reason}"
    if os.environ.get("PILOT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (PILOT_REQUIRE_POSTGRES=1, so this is an error, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[Callable[[], str]]:
    """Call it for the URL of a brand-new, empty PostgreSQL database (``pilot_test_<hex>``); all dropped at the end.

    Skips (or fails, with PILOT_REQUIRE_POSTGRES=1) when the server does not answer.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    admin = create_engine(
        PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 3}
    )
    error: str | None = None
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except OperationalError as exc:
        error = str(exc.orig or exc).strip().splitlines()[0]
    created: list[str] = []

    def make() -> str:
        if error is not None:
            _pg_unavailable(error)
        name = f"pilot_test_{uuid.uuid4().hex[:16]}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _pg_url(name)

    yield make
    try:
        if created:
            with admin.connect() as connection:
                for name in created:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def _store_postgres_session_db(postgres_url: Callable[[], str]) -> str:
    return postgres_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A store URL: a SQLite file of this test, or one PostgreSQL database shared by the whole test session."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pilot.db'}"
    return request.getfixturevalue("_store_postgres_session_db")


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A store URL of an empty database of this test alone: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("postgres_url")()


# --- small model and dataset shared by the runner, tuner and dashboard tests ---------------------


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A small random LLaVA saved as a user's checkpoint folder (same format as a real one)."""
    import torch

    from pilot.demo.train import build_model, build_processor, build_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    tokenizer = build_tokenizer()
    build_model(tokenizer, layers=4, hidden=64).save_pretrained(folder)
    build_processor(tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo():
    """The shipped demo model, loaded once for the session (tests detach what they attach)."""
    from pilot.models import load

    return load("demo")


@pytest.fixture(scope="session")
def manifest(tmp_path_factory):
    from pilot.data import synthetic

    folder = tmp_path_factory.mktemp("data")
    return synthetic.write_dataset(folder, 8, seed=5)
