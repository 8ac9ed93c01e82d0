"""Per-arm KPIs from the store: computed once a run completes, read by `pilot report` and the dashboard.

No torch here: the dashboard imports it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pilot.metrics import Outcome, arm_kpis, compare
from pilot.review import review_summary
from pilot.store import models as db

BASELINE = "baseline"
ERROR_MESSAGES_SHOWN = 5
"""Distinct error messages a report lists (most frequent first); ``n_errors`` counts them all."""


def outcomes(session: Session, arm_id: int) -> list[Outcome]:
    rows = session.execute(select(
        db.SampleResult.sample_id, db.SampleResult.label, db.SampleResult.prediction, db.SampleResult.prefill_ms,
        db.SampleResult.total_ms, db.SampleResult.paper_tflops, db.SampleResult.full_tflops,
        db.SampleResult.visual_tokens_kept, db.SampleResult.error, db.SampleResult.task, db.SampleResult.scores,
        db.SampleResult.answer_text, db.SampleResult.output_tokens, db.SampleResult.ttft_ms, db.SampleResult.tpot_ms,
        db.SampleResult.kv_cache_bytes, db.SampleResult.finish_reason, db.SampleResult.utf8_valid,
    ).where(db.SampleResult.arm_id == arm_id).order_by(db.SampleResult.sample_id))
    return [Outcome(*row) for row in rows]


def device_kinds(session: Session, run_id: int) -> dict[str, int]:
    """Results per kind of device that computed them (results stored before workers were recorded: not counted)."""
    return dict(session.execute(
        select(db.Worker.device_kind, func.count()).join(db.SampleResult, db.SampleResult.worker_id == db.Worker.id)
        .where(db.Worker.run_id == run_id).group_by(db.Worker.device_kind)).all())


def latency_device(kinds: dict[str, int]) -> str | None:
    """With results from several kinds of device, the kind latencies are compared on: the one with most results."""
    return max(sorted(kinds), key=kinds.__getitem__) if len(kinds) > 1 else None


def _like_with_like(session: Session, run: db.Run, per_arm: dict[int, list[Outcome]]) -> str | None:
    """Keep latencies from one kind of device only (a GPU's milliseconds beside a CPU's mean nothing).

    Results from other kinds keep their answers and FLOPs but lose their latencies here, so percentiles and the
    paired ratios to baseline both compare like with like. Returns that kind, or None when there was one kind.
    """
    reference = latency_device(device_kinds(session, run.id))
    if reference is None:
        return None
    other = set(session.execute(
        select(db.SampleResult.arm_id, db.SampleResult.sample_id)
        .join(db.Worker, db.SampleResult.worker_id == db.Worker.id)
        .where(db.Worker.run_id == run.id, db.Worker.device_kind != reference)).all())
    for arm_id, rows in per_arm.items():
        per_arm[arm_id] = [replace(o, prefill_ms=None, total_ms=None) if (arm_id, o.sample_id) in other else o
                           for o in rows]
    return reference


def arm_reports(session: Session, run: db.Run, labels: list[str]) -> list[dict]:
    """Every arm's KPIs, pruned arms with ``vs_baseline`` (paired, bootstrap CI, McNemar)."""
    per_arm = {arm.id: outcomes(session, arm.id) for arm in run.arms}
    reference = _like_with_like(session, run, per_arm)
    baseline = next((arm for arm in run.arms if arm.strategy == BASELINE), None)
    reports = []
    for arm in run.arms:
        kpis = arm_kpis(per_arm[arm.id], labels)
        if reference is not None:
            kpis["latency_device"] = reference  # latencies (and their ratios) from this kind of device only
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
        write_summaries(session, session.get(db.Run, run_id), labels)
        session.commit()


def write_summaries(session: Session, run: db.Run, labels: list[str]) -> None:
    """Every arm's KPIs into ``arm_summaries``, in the caller's transaction (the caller commits)."""
    for report in arm_reports(session, run, labels):
        arm = next(a for a in run.arms if a.name == report["name"])
        summary = session.get(db.ArmSummary, arm.id) or db.ArmSummary(arm_id=arm.id)
        summary.kpis = report
        summary.updated_at = datetime.now(UTC)
        session.add(summary)


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
        "arms": arms, "workers": workers(session, run.id), **_latency_note(session, run.id),
        "matched_to": run.settings.get("matched_to") or {},  # control arm -> its TransPrune arm (--controls)
        "review": review_summary(session, run),  # blind human review (pilot.review); None without review tasks
        **error_messages(session, run),
    }


def error_messages(session: Session, run: db.Run, shown: int = ERROR_MESSAGES_SHOWN) -> dict:
    """``n_errors`` (failed results, all arms) and ``errors``: the ``shown`` most frequent messages, each with its
    ``count``, the ``arms`` it occurred in and up to three ``sample_ids``."""
    rows = session.execute(select(db.SampleResult.error, db.Arm.name, db.SampleResult.sample_id)
                           .join(db.Arm, db.Arm.id == db.SampleResult.arm_id)
                           .where(db.Arm.run_id == run.id, db.SampleResult.error.is_not(None))
                           .order_by(db.Arm.position, db.SampleResult.id)).all()
    by_message: dict[str, dict] = {}
    for message, arm, sample_id in rows:
        entry = by_message.setdefault(message, {"message": message, "count": 0, "arms": [], "sample_ids": []})
        entry["count"] += 1
        if arm not in entry["arms"]:
            entry["arms"].append(arm)
        if len(entry["sample_ids"]) < 3 and sample_id not in entry["sample_ids"]:
            entry["sample_ids"].append(sample_id)
    ranked = sorted(by_message.values(), key=lambda entry: -entry["count"])  # stable: first seen first on ties
    return {"n_errors": len(rows), "errors": ranked[:shown]}


def workers(session: Session, run_id: int) -> list[dict]:
    """Who computed the run: per worker its id, host, device and how many results it stored."""
    rows = session.execute(
        select(db.Worker, func.count(db.SampleResult.id))
        .outerjoin(db.SampleResult, db.SampleResult.worker_id == db.Worker.id)
        .where(db.Worker.run_id == run_id).group_by(db.Worker.id).order_by(db.Worker.id)).all()
    return [{"worker": worker.name, "worker_id": worker.id, "host": worker.host, "rank": worker.rank,
             "device": worker.device, "device_kind": worker.device_kind, "results": count,
             "outcome": worker.outcome} for worker, count in rows]


def _latency_note(session: Session, run_id: int) -> dict:
    """``devices`` and ``latency_note`` when results came from several kinds of device; else nothing."""
    kinds = device_kinds(session, run_id)
    reference = latency_device(kinds)
    if reference is None:
        return {}
    counts = "; ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    return {"devices": kinds, "latency_device": reference,
            "latency_note": f"results came from {len(kinds)} kinds of device ({counts}); latencies and their "
                            f"ratios to baseline use the {reference} results only"}


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
