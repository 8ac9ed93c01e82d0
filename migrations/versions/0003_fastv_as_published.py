"""FastV as published: stored FastV arms keep their meaning.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Until this revision ``fastv:after=K,keep=R`` scored with the next layer's projections and
renumbered positions (compact) unless ``positions=original`` was given. Now the bare form means
what FastV's authors run: layer K's own attention map and original positions. Arms stored before
say so explicitly: ``score=next`` always, ``positions=compact`` where no numbering was written.
The rewrite touches the arm's name and strategy, its stored summary, and the run's settings (and
their fingerprint, so that only a run asking for the old meaning resumes such a run). Written
without the application's code, which changes after a migration is written.
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

arms = sa.table("arms", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("strategy", sa.Text))
runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("settings", sa.JSON),
                sa.column("settings_sha256", sa.String))
summaries = sa.table("arm_summaries", sa.column("arm_id", sa.Integer), sa.column("kpis", sa.JSON))


def to_explicit(strategy: str) -> str:
    """A FastV string of the old meaning, written so that it keeps it: score=next, numbering explicit."""
    kind, _, rest = strategy.partition(":")
    if kind.strip().lower() != "fastv":
        return strategy
    settings = [part for part in rest.split(",") if part]
    if any(part.startswith("score=") for part in settings):
        return strategy  # already explicit
    if not any(part.startswith("positions=") for part in settings):
        settings.append("positions=compact")
    settings.append("score=next")
    return "fastv:" + ",".join(settings)


def to_implicit(strategy: str) -> str:
    """The reverse: drop score=next, and positions=compact (the old default)."""
    kind, _, rest = strategy.partition(":")
    if kind != "fastv" or "score=next" not in rest.split(","):
        return strategy
    settings = [part for part in rest.split(",") if part not in ("score=next", "positions=compact")]
    return "fastv:" + ",".join(settings)


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _rewrite(rewrite) -> None:
    connection = op.get_bind()
    for arm_id, name, strategy in connection.execute(sa.select(arms.c.id, arms.c.name, arms.c.strategy)).all():
        new_strategy = rewrite(strategy)
        if new_strategy == strategy:
            continue
        new_name = rewrite(name)
        connection.execute(arms.update().where(arms.c.id == arm_id).values(name=new_name, strategy=new_strategy))
        for (kpis,) in connection.execute(sa.select(summaries.c.kpis).where(summaries.c.arm_id == arm_id)).all():
            kpis = dict(kpis or {})
            kpis.update({key: rewrite(kpis[key]) for key in ("name", "strategy") if isinstance(kpis.get(key), str)})
            connection.execute(summaries.update().where(summaries.c.arm_id == arm_id).values(kpis=kpis))
    for run_id, settings in connection.execute(sa.select(runs.c.id, runs.c.settings)).all():
        if not isinstance(settings, dict) or not isinstance(settings.get("arms"), list):
            continue
        new_arms = [rewrite(arm) for arm in settings["arms"]]
        if new_arms != settings["arms"]:
            settings = {**settings, "arms": new_arms}
            connection.execute(runs.update().where(runs.c.id == run_id).values(
                settings=settings, settings_sha256=_fingerprint(settings)))


def upgrade() -> None:
    _rewrite(to_explicit)


def downgrade() -> None:
    _rewrite(to_implicit)
