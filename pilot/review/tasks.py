"""Blind review tasks from a run, reviewers with personal links, and judgements: everything that writes.

A task pairs the baseline's answer to one sample with one pruned arm's; which of the two is shown as A is drawn
at random per task and stored (``pruned_side``), and nothing a reviewer sees names an arm. Tasks are inserted in a
random order, so their ids tell nothing either.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pilot.review.stats import sample_size
from pilot.store import models as db

BASELINE = "baseline"
SOURCES = ("dashboard", "label-studio", "jsonl")


class ReviewError(ValueError):
    """Bad review input (no such task, an unknown choice, a revoked token): one clear line."""


def answer_of(result: db.SampleResult) -> str:
    """What the reviewer reads: the generated text, else the parsed label."""
    text = result.answer_text if result.answer_text is not None else result.prediction
    return (text or "").strip()


def stratum_of(result: db.SampleResult) -> str:
    """The slice a pair is stratified by: the row's task and, for a labelled row, its label."""
    task = result.task or "label"
    return f"{task}/{result.label}" if result.label else task


@dataclass(frozen=True)
class Pair:
    arm: db.Arm
    sample_id: str
    baseline: db.SampleResult
    pruned: db.SampleResult

    @property
    def changed(self) -> bool:
        return answer_of(self.baseline) != answer_of(self.pruned)


def pairs(session: Session, run: db.Run) -> dict[int, list[Pair]]:
    """Per pruned arm id, the samples both the baseline and the arm answered without error."""
    baseline = baseline_arm(run)
    base = {r.sample_id: r for r in session.scalars(select(db.SampleResult).where(
        db.SampleResult.arm_id == baseline.id, db.SampleResult.error.is_(None)))}
    result: dict[int, list[Pair]] = {}
    for arm in run.arms:
        if arm.id == baseline.id:
            continue
        rows = session.scalars(select(db.SampleResult).where(
            db.SampleResult.arm_id == arm.id, db.SampleResult.error.is_(None)).order_by(db.SampleResult.sample_id))
        result[arm.id] = [Pair(arm, r.sample_id, base[r.sample_id], r) for r in rows if r.sample_id in base]
    return result


def baseline_arm(run: db.Run) -> db.Arm:
    arm = next((a for a in run.arms if a.strategy == BASELINE), None)
    if arm is None:
        raise ReviewError(f"run {run.name!r} has no baseline arm: review compares the baseline with a pruned arm")
    return arm


def dataset_items(run: db.Run) -> dict:
    """Sample id -> its dataset item (question, image) from the run's dataset when it is readable here, else {}."""
    from pilot.data.hf import open_dataset
    from pilot.data.manifest import ManifestError

    settings = run.settings or {}
    options = {option: settings[key] for key, option in (("task", "task"), ("image_column", "image_column"),
               ("question_column", "question_column"), ("answer_column", "answer_column"),
               ("dataset_split", "split")) if settings.get(key)}
    try:
        dataset = open_dataset(run.dataset.manifest_path, labels=list(run.dataset.labels) or None,
                               prompt_template=settings.get("prompt_template"), **options)
    except (ManifestError, OSError, TypeError, ValueError):
        return {}
    return {item.id: item for item in dataset.items}


def create_tasks(session: Session, run: db.Run, *, overlap: int = 2, precision: float | None = None,
                 checks: float = 0.1, arms: Sequence[str] | None = None, seed: int = 0) -> dict:
    """Review tasks for the run's changed (baseline, pruned) pairs, in the caller's transaction (it commits).

    Every changed pair, or with ``precision`` a sample per pruned arm of ``stats.sample_size`` pairs, allocated to
    the strata (``stratum_of``) in proportion to their size (at least one each) and weighted back by stratum size.
    ``checks``: pairs with equal answers added, as a share of the changed tasks of each arm (at least one when
    there are any), to screen reviewers. Pairs that already have a task are kept as they are (a second call adds
    only what is missing). Returns per arm what was created.
    """
    if overlap < 1:
        raise ReviewError(f"--overlap {overlap}: each task needs at least one reviewer")
    if not 0 <= checks < 1:
        raise ReviewError(f"--checks {checks}: give a share between 0 and 1 (e.g. 0.1)")
    baseline = baseline_arm(run)
    by_arm = pairs(session, run)
    wanted = {a.name for a in run.arms if a.id != baseline.id} if not arms else set(arms)
    unknown = wanted - {a.name for a in run.arms}
    if unknown:
        raise ReviewError(f"run {run.name!r} has no arm {sorted(unknown)[0]!r}; its arms: "
                          f"{', '.join(a.name for a in run.arms)}")
    existing = set(session.execute(select(db.ReviewTask.arm_id, db.ReviewTask.sample_id)
                                   .where(db.ReviewTask.run_id == run.id)).all())
    rng = random.Random(f"{seed}/{run.id}")
    known = dataset_items(run)
    new: list[db.ReviewTask] = []
    summary = {}
    for arm_id, arm_pairs in by_arm.items():
        arm = arm_pairs[0].arm if arm_pairs else session.get(db.Arm, arm_id)
        if arm.name not in wanted:
            continue
        changed = [p for p in arm_pairs if p.changed]
        strata: dict[str, list[Pair]] = defaultdict(list)
        for pair in changed:
            strata[stratum_of(pair.pruned)].append(pair)
        n = len(changed) if precision is None else sample_size(precision, len(changed))
        chosen: list[tuple[Pair, float]] = []
        for _stratum, members in sorted(strata.items()):
            take = len(members) if n >= len(changed) else max(1, round(n * len(members) / len(changed)))
            take = min(take, len(members))
            picked = rng.sample(sorted(members, key=lambda p: p.sample_id), take)
            chosen += [(pair, len(members) / take) for pair in picked]
        equal = [p for p in arm_pairs if not p.changed]
        n_checks = min(len(equal), math.ceil(checks * len(chosen))) if checks and chosen else 0
        picked_checks = rng.sample(sorted(equal, key=lambda p: p.sample_id), n_checks)
        added = {"changed": 0, "check": 0}
        for kind, items in (("changed", chosen), ("check", [(p, 1.0) for p in picked_checks])):
            for pair, weight in items:
                if (arm_id, pair.sample_id) in existing:
                    continue
                new.append(db.ReviewTask(
                    run_id=run.id, arm_id=arm_id, baseline_arm_id=baseline.id, sample_id=pair.sample_id, kind=kind,
                    stratum=stratum_of(pair.pruned), weight=weight, pruned_side=rng.choice("AB"), overlap=overlap,
                    question=getattr(known.get(pair.sample_id), "question", None)))
                added[kind] += 1
        summary[arm.name] = {"pairs": len(arm_pairs), "changed": len(changed), "strata": len(strata),
                             "tasks": added["changed"], "checks": added["check"]}
    rng.shuffle(new)  # ids in a random order: they tell neither the arm nor the kind
    session.add_all(new)
    session.flush()
    return summary


# ---------------------------------------------------------------- reviewers


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(session: Session, name: str) -> str:
    """A new personal token for reviewer ``name`` (created when new; a revoked or earlier link stops working).
    Only the token's SHA-256 is stored: the caller shows the token once."""
    name = name.strip()
    if not name:
        raise ReviewError("a reviewer needs a name")
    token = secrets.token_urlsafe(24)
    reviewer = session.scalar(select(db.Reviewer).where(db.Reviewer.name == name))
    if reviewer is None:
        reviewer = db.Reviewer(name=name)
        session.add(reviewer)
    reviewer.token_sha256 = token_digest(token)
    reviewer.revoked_at = None
    session.flush()
    return token


def revoke(session: Session, name: str) -> db.Reviewer:
    reviewer = session.scalar(select(db.Reviewer).where(db.Reviewer.name == name))
    if reviewer is None:
        raise ReviewError(f"no reviewer {name!r}; `pilot review reviewers` lists them")
    reviewer.revoked_at = datetime.now(UTC)
    session.flush()
    return reviewer


def reviewer_for_token(session: Session, token: str | None) -> db.Reviewer:
    """The reviewer whose link holds ``token``; ``ReviewError`` for a missing, unknown or revoked one."""
    if not token:
        raise ReviewError("this page needs a personal review link (`pilot review invite NAME` makes one)")
    reviewer = session.scalar(select(db.Reviewer).where(db.Reviewer.token_sha256 == token_digest(token)))
    if reviewer is None:
        raise ReviewError("this review link is not valid (mistyped, or replaced by a newer invitation)")
    if reviewer.revoked_at is not None:
        raise ReviewError(f"this review link was revoked on {reviewer.revoked_at:%Y-%m-%d %H:%M} UTC; ask for a "
                          "new one")
    return reviewer


def reviewer_named(session: Session, name: str) -> db.Reviewer:
    """The reviewer ``name`` (created without a token: imported judgements come from another tool's users)."""
    reviewer = session.scalar(select(db.Reviewer).where(db.Reviewer.name == name))
    if reviewer is None:
        reviewer = db.Reviewer(name=name)
        session.add(reviewer)
        session.flush()
    return reviewer


# ---------------------------------------------------------------- judgements


def record(session: Session, task_id: int, reviewer: db.Reviewer, choice: str, *, comment: str | None = None,
           source: str = "dashboard", source_key: str | None = None, run_id: int | None = None) -> str:
    """Store one judgement (the caller commits). Returns "added", "replaced" (the reviewer had judged this task:
    the later one stands, both are kept) or "duplicate" (this imported record is stored already: nothing added)."""
    if choice not in db.REVIEW_CHOICES:
        raise ReviewError(f"choice {choice!r} is not one of {', '.join(db.REVIEW_CHOICES)}")
    if source not in SOURCES:
        raise ReviewError(f"unknown source {source!r}")
    task = session.get(db.ReviewTask, task_id)
    if task is None or (run_id is not None and task.run_id != run_id):
        where = f" of run {run_id}" if run_id is not None else ""
        raise ReviewError(f"no review task {task_id}{where}")
    if reviewer.revoked_at is not None and source == "dashboard":
        raise ReviewError(f"reviewer {reviewer.name!r}: link revoked")
    if source_key is not None and session.scalar(
            select(db.ReviewJudgement.id).where(db.ReviewJudgement.source_key == source_key)) is not None:
        return "duplicate"
    before = session.scalar(select(func.count()).select_from(db.ReviewJudgement).where(
        db.ReviewJudgement.task_id == task_id, db.ReviewJudgement.reviewer_id == reviewer.id))
    session.add(db.ReviewJudgement(task_id=task_id, reviewer_id=reviewer.id, choice=choice,
                                   comment=(comment or "").strip() or None, source=source, source_key=source_key))
    session.flush()
    return "replaced" if before else "added"


def record_key(source: str, record: dict) -> str:
    """A digest of an imported record (its canonical JSON): the same record imported again is recognised."""
    return hashlib.sha256(f"{source}:{json.dumps(record, sort_keys=True, default=str)}".encode()).hexdigest()


# ---------------------------------------------------------------- the review page's reads


def latest_choices(session: Session, run_id: int) -> dict[tuple[int, int], db.ReviewJudgement]:
    """(task id, reviewer id) -> the judgement that stands: the reviewer's latest on the task."""
    rows = session.scalars(select(db.ReviewJudgement).join(db.ReviewTask)
                           .where(db.ReviewTask.run_id == run_id).order_by(db.ReviewJudgement.id))
    return {(j.task_id, j.reviewer_id): j for j in rows}


def runs_with_tasks(session: Session) -> list[int]:
    return list(session.scalars(select(db.ReviewTask.run_id).distinct().order_by(db.ReviewTask.run_id)))


def progress(session: Session, run_id: int, reviewer: db.Reviewer) -> dict:
    """How far the reviewer and the run are: tasks the reviewer judged, tasks still open to them, all tasks."""
    tasks = session.scalars(select(db.ReviewTask).where(db.ReviewTask.run_id == run_id)).all()
    latest = latest_choices(session, run_id)
    counts: dict[int, int] = defaultdict(int)
    for task_id, _ in latest:
        counts[task_id] += 1
    mine = {t for t, r in latest if r == reviewer.id}
    open_ = [t for t in tasks if t.id not in mine and counts[t.id] < t.overlap]
    return {"judged": len(mine & {t.id for t in tasks}), "open": len(open_), "tasks": len(tasks)}


def next_task(session: Session, run_id: int, reviewer: db.Reviewer) -> db.ReviewTask | None:
    """The next task for the reviewer: one they have not judged that still lacks reviewers (its overlap), those
    with the fewest judgements first, in an order of their own (so two reviewers do not walk in step)."""
    tasks = session.scalars(select(db.ReviewTask).where(db.ReviewTask.run_id == run_id)).all()
    latest = latest_choices(session, run_id)
    counts: dict[int, int] = defaultdict(int)
    for task_id, _ in latest:
        counts[task_id] += 1
    candidates = [t for t in tasks if (t.id, reviewer.id) not in latest and counts[t.id] < t.overlap]
    if not candidates:
        return None

    def order(task: db.ReviewTask) -> tuple[int, str]:
        return counts[task.id], hashlib.sha256(f"{reviewer.id}/{task.id}".encode()).hexdigest()

    return min(candidates, key=order)


def task_view(session: Session, task: db.ReviewTask) -> dict:
    """What the reviewer sees of a task, and nothing that tells the arms apart: the question, the reference
    answers, answers A and B."""
    pruned = session.scalar(select(db.SampleResult).where(db.SampleResult.arm_id == task.arm_id,
                                                          db.SampleResult.sample_id == task.sample_id))
    baseline = session.scalar(select(db.SampleResult).where(db.SampleResult.arm_id == task.baseline_arm_id,
                                                            db.SampleResult.sample_id == task.sample_id))
    if pruned is None or baseline is None:
        raise ReviewError(f"review task {task.id}: its answers are no longer stored")
    a, b = (pruned, baseline) if task.pruned_side == "A" else (baseline, pruned)
    return {"task_id": task.id, "sample_id": task.sample_id, "question": task.question,
            "references": list(baseline.references or []), "answer_a": answer_of(a), "answer_b": answer_of(b)}
