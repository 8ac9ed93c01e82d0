"""Blind human review: reviewers, review tasks (baseline vs pruned answer, sides drawn at random) and judgements.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-04

``reviewers``: named people, the SHA-256 of their link's token (never the token), revocation time.
``review_tasks``: one pair per (run, pruned arm, sample), its kind (changed or check), stratum and weight, the side
the pruned answer is shown on, the reviewers wanted. ``review_judgements``: every choice ever made (A, B, tie,
both_wrong), its source and, for imports, a digest that makes a second import of one file add nothing.
Written by hand to match pilot.store.models.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviewers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviewers")),
        sa.UniqueConstraint("name", name=op.f("uq_reviewers_name")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_reviewers_token_sha256")),
    )
    op.create_table(
        "review_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("baseline_arm_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("stratum", sa.String(length=255), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("pruned_side", sa.String(length=1), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("question", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("pruned_side IN ('A', 'B')", name=op.f("ck_review_tasks_pruned_side")),
        sa.CheckConstraint("kind IN ('changed', 'check')", name=op.f("ck_review_tasks_kind")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_review_tasks_run_id_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["arm_id"], ["arms.id"], name=op.f("fk_review_tasks_arm_id_arms"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["baseline_arm_id"], ["arms.id"], name=op.f("fk_review_tasks_baseline_arm_id_arms"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_tasks")),
        sa.UniqueConstraint("run_id", "arm_id", "sample_id", name=op.f("uq_review_tasks_run_id_arm_id_sample_id")),
    )
    op.create_index(op.f("ix_review_tasks_run_id"), "review_tasks", ["run_id"], unique=False)
    op.create_table(
        "review_judgements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_key", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie', 'both_wrong')", name=op.f("ck_review_judgements_choice")),
        sa.ForeignKeyConstraint(["task_id"], ["review_tasks.id"],
                                name=op.f("fk_review_judgements_task_id_review_tasks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewer_id"], ["reviewers.id"],
                                name=op.f("fk_review_judgements_reviewer_id_reviewers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_judgements")),
        sa.UniqueConstraint("source_key", name=op.f("uq_review_judgements_source_key")),
    )
    op.create_index(op.f("ix_review_judgements_task_id"), "review_judgements", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_review_judgements_task_id"), table_name="review_judgements")
    op.drop_table("review_judgements")
    op.drop_index(op.f("ix_review_tasks_run_id"), table_name="review_tasks")
    op.drop_table("review_tasks")
    op.drop_table("reviewers")
