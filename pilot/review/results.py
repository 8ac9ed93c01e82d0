"""The review results of a run, from the store: per pruned arm the outcome shares among its reviewed changed
pairs, the share of all requests that get worse, agreement, position bias, flagged reviewers and the budget's
verdict. ``review_summary`` is the report's ``review`` key (None for a run without review tasks)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from pilot.review import stats
from pilot.review.tasks import latest_choices, pairs
from pilot.store import models as db

DEFAULT_MAX_WORSE = 0.01  # "at most 1% of answers get worse"


def _has_tables(session: Session) -> bool:
    """Whether the store has the review tables (the dashboard reads stores it does not upgrade)."""
    return inspect(session.connection()).has_table(db.ReviewTask.__tablename__)


def review_summary(session: Session, run: db.Run, max_worse: float = DEFAULT_MAX_WORSE) -> dict | None:
    """The review results of ``run`` (see the module); None when it has no review tasks."""
    if not _has_tables(session):
        return None
    tasks = session.scalars(select(db.ReviewTask).where(db.ReviewTask.run_id == run.id)
                            .order_by(db.ReviewTask.id)).all()
    if not tasks:
        return None
    latest = latest_choices(session, run.id)
    names = dict(session.execute(select(db.Reviewer.id, db.Reviewer.name)).all())
    by_task: dict[int, dict[int, str]] = defaultdict(dict)  # task -> reviewer -> choice that stands
    for (task_id, reviewer_id), judgement in latest.items():
        by_task[task_id][reviewer_id] = judgement.choice
    history = session.scalar(select(func.count()).select_from(db.ReviewJudgement).join(db.ReviewTask)
                             .where(db.ReviewTask.run_id == run.id))
    all_pairs = pairs(session, run)
    arms = []
    for arm in run.arms:
        arm_tasks = [t for t in tasks if t.arm_id == arm.id]
        if not arm_tasks:
            continue
        arms.append(_arm_summary(arm, arm_tasks, by_task, all_pairs.get(arm.id, []), names, max_worse))
    reviewers = _reviewers(tasks, by_task, names)
    return {"max_worse": max_worse, "tasks": len(tasks), "judgements": len(latest), "judgements_in_history": history,
            "arms": arms, "reviewers": reviewers,
            "flagged_reviewers": [r["reviewer"] for r in reviewers if r["flags"]]}


def _arm_summary(arm: db.Arm, tasks: list[db.ReviewTask], by_task: dict[int, dict[int, str]], arm_pairs: list,
                 names: dict[int, str], max_worse: float) -> dict:
    changed_tasks = [t for t in tasks if t.kind == "changed"]
    reviewed = [t for t in changed_tasks if by_task.get(t.id)]
    units = [{"outcomes": [stats.outcome(c, t.pruned_side) for c in by_task[t.id].values()], "weight": t.weight}
             for t in reviewed]
    shares = stats.outcome_shares(units)
    bias = stats.position_bias([list(by_task.get(t.id, {}).values()) for t in tasks])
    alpha_units = [{names[r]: stats.outcome(c, t.pruned_side) for r, c in by_task[t.id].items()} for t in reviewed]
    changed = sum(p.changed for p in arm_pairs)
    paired = len(arm_pairs)
    judgements = sum(len(u["outcomes"]) for u in units)
    plan = stats.budget_plan(changed, paired, shares["pruned_worse"], max_worse, len(reviewed),
                             judgements / len(reviewed) if reviewed else float(tasks[0].overlap))
    checks = [t for t in tasks if t.kind == "check"]
    check_choices = [c for t in checks for c in by_task.get(t.id, {}).values()]
    result = {"arm": arm.name, "strategy": arm.strategy, "tasks": len(changed_tasks), "reviewed": len(reviewed),
              "n_judgements": judgements, "pairs": paired, "changed": changed,
              "changed_share": changed / paired if paired else None,
              "changed_share_ci": list(stats.wilson(changed / paired, paired)) if paired else None}
    for name, share in shares.items():
        result[name] = share.share
        result[f"{name}_ci"] = list(share.ci) if share.ci else None
    result.update({
        "alpha": stats.krippendorff_alpha(alpha_units),
        "position_bias": bias["share_a"], "position_bias_ci": bias["ci"],
        "worse_of_all": plan["worse_of_all"], "worse_of_all_ci": plan["worse_of_all_ci"],
        "budget": {k: plan[k] for k in ("max_worse", "verdict", "more_tasks", "more_judgements")},
        "checks": len(checks), "check_judgements": len(check_choices),
        "check_slips": sum(c in ("A", "B") for c in check_choices),
    })
    return result


def _reviewers(tasks: list[db.ReviewTask], by_task: dict[int, dict[int, str]], names: dict[int, str]) -> list[dict]:
    kinds = {t.id: t.kind for t in tasks}
    sides = {t.id: t.pruned_side for t in tasks}
    choices: dict[int, list[str]] = defaultdict(list)
    checks: dict[int, list[str]] = defaultdict(list)
    for task_id, judged in by_task.items():
        for reviewer_id, choice in judged.items():
            (checks if kinds[task_id] == "check" else choices)[reviewer_id].append(choice)
    result = []
    for reviewer_id in sorted(set(choices) | set(checks), key=lambda r: names[r]):
        mine, mine_checks = choices[reviewer_id], checks[reviewer_id]
        sided = [c for c in mine if c in ("A", "B")]
        shared = [(task_id, judged) for task_id, judged in sorted(by_task.items()) if reviewer_id in judged]
        chance = stats.agrees_by_chance(
            [stats.outcome(judged[reviewer_id], sides[task_id]) for task_id, judged in shared],
            [[stats.outcome(c, sides[task_id]) for r, c in judged.items() if r != reviewer_id]
             for task_id, judged in shared], seed=reviewer_id)
        flags = stats.reviewer_flags(mine, mine_checks) + ([chance] if chance else [])
        result.append({"reviewer": names[reviewer_id], "judgements": len(mine) + len(mine_checks),
                       "share_a": sum(c == "A" for c in sided) / len(sided) if sided else None,
                       "checks": len(mine_checks), "check_slips": sum(c in ("A", "B") for c in mine_checks),
                       "flags": flags})
    return result
