"""The dashboard's store: where it is, a read-only connection to it, and the runs it holds.

No Streamlit and no torch here (tests/test_layers.py checks the dashboard's modules import no torch).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from pilot.store import models as db
from pilot.store.session import DEFAULT_URL, normalise_url
from pilot.summaries import BASELINE, build_report
from pilot.summaries import list_runs as _list_runs

ENV_VAR = "PILOT_DB"
IN_PROGRESS = ("pending", "running")
UNFINISHED = ("pending", "running", "interrupted", "failed")


def resolve_db_url(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The store URL: ``--db URL`` (or ``--db=URL``) in ``argv``, else ``$PILOT_DB``, else ``sqlite:///pilot.db``.

    A bare file path becomes a SQLite URL (``pilot.store.normalise_url``).
    """
    argv = list(argv or [])
    environ = os.environ if environ is None else environ
    url = None
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            url = argv[i + 1]
        elif arg.startswith("--db="):
            url = arg.split("=", 1)[1]
    url = url or environ.get(ENV_VAR) or DEFAULT_URL
    return normalise_url(url)


def display_url(url: str) -> str:
    """The URL with any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url


class StoreUnavailable(RuntimeError):
    """The store cannot be shown: ``kind`` is "missing" (no file), "empty" (no tables) or "unreachable"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def connect(url: str) -> Engine:
    """A read-only engine for the store; raises ``StoreUnavailable`` with a clear message when it cannot be read.

    SQLite opens the file with ``mode=ro`` (never creates it, never migrates it); PostgreSQL sessions default to
    read-only transactions. The dashboard never commits either way.
    """
    url = normalise_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise StoreUnavailable(
                "missing",
                f"No database file at {path.absolute()}. Run `pilot run` or `pilot demo` first, or point the "
                f"dashboard at your store with `pilot dashboard --db URL` (or ${ENV_VAR}).",
            )
        uri = path.absolute().as_uri() + "?mode=ro"

        def creator() -> sqlite3.Connection:
            connection = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
            connection.execute("PRAGMA busy_timeout=30000")
            return connection

        engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)
    elif make_url(url).get_backend_name() == "postgresql":
        engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                               connect_args={"options": "-c default_transaction_read_only=on", "connect_timeout": 5})
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        tables = set(inspect(engine).get_table_names())
    except Exception as error:  # noqa: BLE001 - any driver error means we cannot show the store
        engine.dispose()
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise StoreUnavailable(
            "unreachable", f"Cannot read the database {display_url(url)}: {detail[0] if detail else error}"
        ) from error
    if "runs" not in tables:
        engine.dispose()
        raise StoreUnavailable(
            "empty",
            f"The database {display_url(url)} has no pilot tables yet. Run `pilot run` or `pilot demo` to fill it.",
        )
    return engine


def reader(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never flush on their own; the dashboard only reads."""
    return sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)


def has_table(engine: Engine, name: str) -> bool:
    return name in set(inspect(engine).get_table_names())


def list_runs(engine: Engine) -> list[dict]:
    with reader(engine)() as session:
        return _list_runs(session)


def default_run_id(runs: Sequence[dict]) -> int | None:
    """The latest completed pilot run, else the latest completed run, else the latest run, else None.

    A pilot run compares arms on the whole dataset; the tuner's runs (a baseline-only run on the
    tuning split, verifications on the held-out split) are one click away, not the landing page.
    """
    if not runs:
        return None
    completed = [r for r in runs if r["status"] == "completed"]
    compared = [r for r in completed if any(a != BASELINE for a in r.get("arms") or [])]
    pilots = [r for r in compared if not r.get("split")]
    return max(pilots or compared or completed or runs, key=lambda r: r["run_id"])["run_id"]


def default_study(runs: Sequence[dict], studies: Sequence[dict]) -> str | None:
    """The tuning study to land on, or None for the run view: the latest study with a verified recommendation,
    when its held-out verification is newer than the latest pilot run (as after ``make demo``: the pilot run
    first, then the tuner's verdict, which is what a reader wants to see first)."""
    recommended = [s for s in studies if s.get("recommended_strategy") and s.get("verification_run_id")]
    if not recommended:
        return None
    latest = max(recommended, key=lambda s: s["verification_run_id"])
    pilot = default_run_id(runs)
    pilot_runs = [r for r in runs if r["run_id"] == pilot and not r.get("split")]
    if pilot_runs and pilot >= latest["verification_run_id"]:
        return None
    return latest["name"]


def load_report(engine: Engine, run_id: int) -> dict:
    with reader(engine)() as session:
        return build_report(session, run_id)


def run_info(engine: Engine, run_id: int) -> dict:
    """Status, settings, machine and per-arm progress (results stored vs expected) of one run."""
    with reader(engine)() as session:
        run = session.get(db.Run, run_id)
        if run is None:
            raise ValueError(f"no run {run_id}")
        counts = dict(session.execute(
            select(db.SampleResult.arm_id, func.count()).join(db.Arm).where(db.Arm.run_id == run_id)
            .group_by(db.SampleResult.arm_id)).all())
        errors = dict(session.execute(
            select(db.SampleResult.arm_id, func.count()).join(db.Arm)
            .where(db.Arm.run_id == run_id, db.SampleResult.error.is_not(None))
            .group_by(db.SampleResult.arm_id)).all())
        settings = dict(run.settings or {})
        size = run.dataset.size
        limit = settings.get("limit")
        expected = min(size, int(limit)) if limit else size
        arms = [{"name": arm.name, "strategy": arm.strategy, "stored": int(counts.get(arm.id, 0)),
                 "errors": int(errors.get(arm.id, 0)), "expected": expected} for arm in run.arms]
        return {
            "run_id": run.id, "name": run.name, "status": run.status, "error": run.error,
            "settings": settings, "machine": dict(run.machine or {}),
            "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
            "heartbeat_at": run.heartbeat_at,
            "dataset": run.dataset.name, "dataset_size": size, "labels": list(run.dataset.labels),
            "manifest_path": run.dataset.manifest_path, "model": run.model.name,
            "arms": arms, "stored": sum(a["stored"] for a in arms), "expected": expected * len(arms),
        }


def stamp(info: dict) -> tuple:
    """What changes when a run's results change: a cache key."""
    finished = info["finished_at"].isoformat() if info.get("finished_at") else None
    return info["status"], finished, info["stored"]
