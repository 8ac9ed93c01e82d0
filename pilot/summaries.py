"""Per-arm KPIs from the store: computed once a run completes, read by `pilot report` and the dashboard.

No torch here: the dashboard imports it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pilot.metrics import Outcome, arm_kpis, compare
from pilot.store import models as db

BASELINE = "baseline"


def outcomes(session: Session, arm_id: int) -> list[Outcome]:
    rows = session.execute(select(
        db.SampleResult.sample_id, db.SampleResult.label, db.SampleResult.prediction, db.SampleResult.prefill_ms,
        db.SampleResult.total_ms, db.SampleResult.paper_tflops, db.SampleResult.full_tflops,
        db.SampleResult.visual_tokens_kept, db.SampleResult.error,
    ).where(db.SampleResult.arm_id == arm_id).order_by(db.SampleResult.sample_id))
    return [Outcome(*row) for row in rows]


def arm_reports(session: Session, run: db.Run, labels: list[str]) -> list[dict]:
    """Every arm's KPIs, pruned arms with ``vs_baseline`` (paired, bootstrap CI, McNemar)."""
    per_arm = {arm.id: outcomes(session, arm.id) for arm in run.arms}
    baseline = next((arm for arm in run.arms if arm.strategy == BASELINE), None)
    reports = []
    for arm in run.arms:
        kpis = arm_kpis(per_arm[arm.id], labels)
        kpis["vs_baseline"] = None
        if baseline is not None and arm.id != baseline.id:
            kpis["vs_baseline"] = compare(per_arm[baseline.id], per_arm[arm.id], labels)
        reports.append({"name": arm.name, "strategy": arm.strategy, **kpis})
    return reports


def store_summaries(sessions, run_id: int, labels: list[str]) -> None:
    """Write every arm's KPIs; a concurrent writer (another tuner worker) may have written them."""
    try:
        _write_summaries(sessions, run_id, labels)
    except IntegrityError:
        _write_summaries(sessions, run_id, labels)  # now they exist: update them


def _write_summaries(sessions, run_id: int, labels: list[str]) -> None:
    with sessions() as session:
        run = session.get(db.Run, run_id)
        for report in arm_reports(session, run, labels):
            arm = next(a for a in run.arms if a.name == report["name"])
            summary = session.get(db.ArmSummary, arm.id) or db.ArmSummary(arm_id=arm.id)
            summary.kpis = report
            summary.updated_at = datetime.now(UTC)
            session.add(summary)
        session.commit()


def build_report(session: Session, run_id: int) -> dict:
    """The report of one run: stored summaries when complete, else computed from what is stored."""
    run = session.get(db.Run, run_id)
    if run is None:
        raise ValueError(f"no run {run_id}")
    labels = list(run.dataset.labels)
    stored = {s.arm_id: s.kpis for s in session.scalars(
        select(db.ArmSummary).where(db.ArmSummary.arm_id.in_([a.id for a in run.arms])))}
    if run.status == "completed" and len(stored) == len(run.arms):
        arms = [stored[arm.id] for arm in run.arms]
    else:
        arms = arm_reports(session, run, labels)
    return {
        "run_id": run.id, "name": run.name, "status": run.status,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "dataset": run.dataset.name, "dataset_size": run.dataset.size, "model": run.model.name,
        "machine": run.machine, "batch_size": run.settings.get("batch_size"), "labels": labels,
        "arms": arms,
    }


def find_run(session: Session, key: str | int) -> db.Run:
    """A run by id or name."""
    run = session.get(db.Run, int(key)) if str(key).isdigit() else None
    run = run or session.scalar(select(db.Run).where(db.Run.name == str(key)))
    if run is None:
        raise ValueError(f"no run {key!r} in this database; `pilot runs` lists them")
    return run


def list_runs(session: Session) -> list[dict]:
    runs = session.scalars(select(db.Run).order_by(db.Run.id))
    return [{"run_id": r.id, "name": r.name, "status": r.status,
             "created_at": r.created_at.isoformat() if r.created_at else None,
             "dataset": r.dataset.name, "model": r.model.name, "arms": [a.strategy for a in r.arms],
             "split": (r.settings or {}).get("split")} for r in runs]
