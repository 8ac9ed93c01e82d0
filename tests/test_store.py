"""The result store: migrations, constraints, cascades, time zones, races and retries, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from pilot.store import (
    DEFAULT_URL,
    VERSION_TABLE,
    Arm,
    ArmSummary,
    Base,
    Dataset,
    ModelRecord,
    Run,
    SampleResult,
    alembic_config,
    current_revision,
    get_or_create,
    head_revision,
    make_engine,
    normalise_url,
    open_store,
    upgrade,
    with_retries,
)
from pilot.store.session import include_name

SHA = "a" * 64


def _new_run(session: Session, arms: tuple[str, ...] = ("baseline", "pruned")) -> Run:
    tag = uuid.uuid4().hex[:12]
    dataset, _ = get_or_create(
        session, Dataset, defaults={"manifest_path": "/data/manifest.csv", "size": 3, "labels": ["ok", "defect"]},
        name=f"inspection-{tag}", manifest_sha256=SHA,
    )
    model, _ = get_or_create(
        session, ModelRecord, defaults={"name": "demo", "model_class": "LlavaForConditionalGeneration"},
        path=f"demo-{tag}", config_sha256=SHA,
    )
    run = Run(name=f"run-{tag}", dataset=dataset, model=model, settings={"batch_size": 2}, settings_sha256=SHA,
              machine={"cpu": "test", "threads": 2})
    # Added out of order: the relationship orders by position.
    for position, name in reversed(list(enumerate(arms))):
        run.arms.append(Arm(name=name, strategy="none" if name == "baseline" else "fastv:after=2,keep=0.5",
                            position=position))
    session.add(run)
    session.flush()
    return run


def _result(arm: Arm, sample_id: str, **extra) -> SampleResult:
    fields = {"label": "ok", "prediction": "ok", "correct": True, "batch_size": 2, "visual_tokens": 36,
              "visual_tokens_kept": 18, "tokens_per_layer": [36, 36, 18], "kept_indices": [[0, 2, 4]]}
    fields.update(extra)
    return SampleResult(arm=arm, sample_id=sample_id, **fields)


def test_normalise_url():
    assert normalise_url(None) == DEFAULT_URL == "sqlite:///pilot.db"
    assert normalise_url("") == DEFAULT_URL
    assert normalise_url("runs/pilot.db") == "sqlite:///runs/pilot.db"
    assert normalise_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///a.db") == "sqlite:///a.db"


def test_store_imports_no_torch():
    code = "import sys, pilot.store, migrations; assert 'torch' not in sys.modules, 'pilot.store imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_upgrade_is_idempotent_and_leaves_optuna_version_table_alone(fresh_db_url):
    engine = create_engine(normalise_url(fresh_db_url), poolclass=NullPool)
    with engine.begin() as connection:  # what Optuna's RDB storage leaves behind
        connection.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('v3.0.0.a')")
    assert current_revision(fresh_db_url) is None

    upgrade(fresh_db_url)
    upgrade(fresh_db_url)
    head = head_revision()
    assert head is not None and current_revision(fresh_db_url) == head

    def optuna_rows():
        with engine.connect() as connection:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()

    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all() == [(head,)]
        assert [c["name"] for c in inspect(connection).get_columns("alembic_version")] == ["version_num"]
    assert optuna_rows() == [("v3.0.0.a",)]

    # Down and up again, through env.py's URL path (no connection passed in).
    command.downgrade(alembic_config(fresh_db_url), "base")
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {"alembic_version", VERSION_TABLE}
    assert current_revision(fresh_db_url) is None
    assert optuna_rows() == [("v3.0.0.a",)]
    upgrade(fresh_db_url)
    assert current_revision(fresh_db_url) == head
    assert optuna_rows() == [("v3.0.0.a",)]
    engine.dispose()


def _schema_differences(url: str, metadata: sa.MetaData) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_name": include_name}
            )
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_models_and_migrations_agree(db_url):
    upgrade(db_url)
    assert _schema_differences(db_url, Base.metadata) == []

    # The comparison does see differences: a model with one more column and a changed type.
    drifted = sa.MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["runs"].append_column(sa.Column("note", sa.Text(), nullable=True))
    drifted.tables["arms"].c.position.type = sa.String(8)
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in _schema_differences(db_url, drifted)}
    assert kinds == {"add_column", "modify_type"}


def test_engine_settings_and_session_factory(db_url):
    factory = open_store(db_url)
    assert factory.kw["expire_on_commit"] is False
    engine = factory.kw["bind"]
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    else:
        assert engine.pool._pre_ping
    engine.dispose()


def test_result_unique_per_arm_and_sample(db_url):
    factory = open_store(db_url)
    with factory() as session:
        run = _new_run(session)
        run_id = run.id
        baseline, pruned = sorted(run.arms, key=lambda arm: arm.position)
        session.add_all([_result(baseline, "img-1"), _result(pruned, "img-1")])  # same sample, other arm: fine
        session.commit()
        session.add(_result(baseline, "img-1", prediction="defect", correct=False))
        with pytest.raises(IntegrityError, match="uq_result_arm_sample|UNIQUE constraint failed"):
            session.commit()
        session.rollback()
        assert session.scalar(select(sa.func.count()).where(SampleResult.arm_id == baseline.id)) == 1
    with factory() as session:  # loaded, arms come in position order (they were added in reverse)
        assert [arm.name for arm in session.get(Run, run_id).arms] == ["baseline", "pruned"]
    factory.kw["bind"].dispose()


def test_run_status_is_checked(db_url):
    factory = open_store(db_url)
    with factory() as session:
        run = _new_run(session)
        session.commit()
        run.status = "finished"
        with pytest.raises(IntegrityError):
            session.commit()
    factory.kw["bind"].dispose()


def test_deleting_a_run_cascades_to_arms_results_and_summaries(db_url):
    factory = open_store(db_url)
    with factory() as session:
        kept = _new_run(session)
        session.add(_result(kept.arms[0], "img-1"))
        run = _new_run(session)
        for arm in run.arms:
            session.add_all([_result(arm, "img-1"), _result(arm, "img-2", error="CUDA OOM", prediction=None)])
            session.add(ArmSummary(arm=arm, kpis={"accuracy": 1.0}))
        session.commit()
        run_id, arm_ids, kept_id = run.id, [arm.id for arm in run.arms], kept.id

    # In the database (ON DELETE CASCADE; SQLite needs foreign keys on), without the ORM loading anything.
    with factory() as session:
        session.execute(sa.delete(Run).where(Run.id == run_id))
        session.commit()
        assert session.scalar(select(sa.func.count()).select_from(Arm).where(Arm.run_id == run_id)) == 0
        assert session.scalar(select(sa.func.count()).where(SampleResult.arm_id.in_(arm_ids))) == 0
        assert session.scalar(select(sa.func.count()).where(ArmSummary.arm_id.in_(arm_ids))) == 0
        assert session.scalar(select(sa.func.count()).where(Arm.run_id == kept_id)) == 2
        assert session.scalar(select(sa.func.count()).select_from(SampleResult).join(Arm)
                              .where(Arm.run_id == kept_id)) == 1

    # Through the ORM.
    with factory() as session:
        session.delete(session.get(Run, kept_id))
        session.commit()
        assert session.scalar(select(sa.func.count()).where(Arm.run_id == kept_id)) == 0
    factory.kw["bind"].dispose()


def test_timestamps_are_aware_utc(db_url):
    factory = open_store(db_url)
    heartbeat = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    with factory() as session:
        run = _new_run(session)
        run.heartbeat_at = heartbeat.astimezone(ZoneInfo("Europe/Berlin"))
        session.commit()
        run_id = run.id
    with factory() as session:
        run = session.get(Run, run_id)
        assert run.heartbeat_at == heartbeat and run.heartbeat_at.utcoffset() == timedelta(0)
        assert run.created_at.tzinfo is not None and abs(datetime.now(UTC) - run.created_at) < timedelta(minutes=5)
        assert run.status == "pending" and run.started_at is None
        stale = session.scalars(select(Run).where(Run.id == run_id, Run.heartbeat_at < datetime.now(UTC))).all()
        assert [r.id for r in stale] == [run_id]
    factory.kw["bind"].dispose()


def test_get_or_create_survives_a_race(db_url):
    factory = open_store(db_url)
    engine = factory.kw["bind"]
    name = f"raced-{uuid.uuid4().hex[:8]}"
    with factory() as session:
        first, created = get_or_create(session, Dataset, defaults={"manifest_path": "m", "size": 1, "labels": []},
                                       name=name, manifest_sha256=SHA)
        assert created
        session.commit()
        again, created = get_or_create(session, Dataset, name=name, manifest_sha256=SHA)
        assert not created and again.id == first.id

    # Another process inserts the same dataset between our SELECT and our INSERT.
    other = f"raced-{uuid.uuid4().hex[:8]}"
    with factory() as session:

        @event.listens_for(session, "before_flush", once=True)
        def _competitor(*_args):
            with engine.begin() as connection:
                connection.execute(sa.insert(Dataset).values(
                    name=other, manifest_sha256=SHA, manifest_path="theirs", size=9, labels=[],
                    created_at=datetime.now(UTC)))

        dataset, created = get_or_create(session, Dataset, defaults={"manifest_path": "ours", "size": 1, "labels": []},
                                         name=other, manifest_sha256=SHA)
        assert not created and dataset.manifest_path == "theirs"
    engine.dispose()


def _operational_error(message: str = "server closed the connection unexpectedly") -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message))


def test_with_retries_retries_then_succeeds():
    calls, logs = [], []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise _operational_error()
        return "done"

    assert with_retries(flaky, base_delay_s=0.001, log=logs.append) == "done"
    assert len(calls) == 3 and len(logs) == 2
    assert "retry 1/5" in logs[0] and "server closed the connection" in logs[0]


def test_with_retries_gives_up_after_attempts():
    calls = []

    def broken():
        calls.append(1)
        raise _operational_error("database is locked")

    with pytest.raises(OperationalError, match="database is locked"):
        with_retries(broken, attempts=3, base_delay_s=0.001, max_delay_s=0.002)
    assert len(calls) == 3


def test_with_retries_does_not_retry_integrity_errors():
    calls = []

    def duplicate():
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        with_retries(duplicate, base_delay_s=0.001)
    assert calls == [1]


def test_commits_survive_a_dropped_postgres_connection(postgres_url):
    url = postgres_url()
    factory = open_store(url)
    engine = factory.kw["bind"]
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def terminate(pid: int) -> None:
        with admin.connect() as connection:
            assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

    def backend_pid(session: Session) -> int:
        return session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

    with factory() as session:
        run = _new_run(session)
        arm_id = run.arms[0].id
        session.add(_result(run.arms[0], "img-1"))
        first_pid = backend_pid(session)
        session.commit()

    # Between two commits the server drops the idle pooled connection.
    terminate(first_pid)
    pids, logs = [], []

    def commit_result(sample_id: str, drop_mid_transaction: bool) -> None:
        with factory() as session:
            pids.append(backend_pid(session))
            if drop_mid_transaction and len(pids) == 1:
                terminate(pids[-1])  # the server goes away with our transaction open
            session.add(_result(session.get(Arm, arm_id), sample_id))
            session.commit()

    with_retries(lambda: commit_result("img-2", False), base_delay_s=0.01, log=logs.append)
    assert pids[0] != first_pid  # the dead connection was not reused

    pids.clear()
    with_retries(lambda: commit_result("img-3", True), base_delay_s=0.01, log=logs.append)
    assert len(pids) == 2 and pids[0] != pids[1]
    assert len(logs) == 1 and "OperationalError" in logs[0]

    with factory() as session:
        stored = session.scalars(select(SampleResult.sample_id).where(SampleResult.arm_id == arm_id)).all()
        assert sorted(stored) == ["img-1", "img-2", "img-3"]
    engine.dispose()
    admin.dispose()
