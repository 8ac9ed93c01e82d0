"""Initial schema: datasets, models, runs, arms, sample results, arm summaries, tuning studies.

Revision ID: 0001
Revises:
Create Date: 2025-11-28

Written by hand to match pilot.store.models (constraint names from its NAMING_CONVENTION, spelled out with op.f()).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("manifest_path", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", "manifest_sha256", name=op.f("uq_datasets_name_manifest_sha256")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("config_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_class", sa.String(length=255), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("path", "config_sha256", name=op.f("uq_models_path_config_sha256")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("settings_sha256", sa.String(length=64), nullable=False),
        sa.Column("machine", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        _timestamp("heartbeat_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'interrupted', 'failed', 'completed')", name=op.f("ck_runs_status")
        ),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_runs_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_runs_model_id_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_runs_name")),
    )
    op.create_index(op.f("ix_runs_settings_sha256"), "runs", ["settings_sha256"], unique=False)
    op.create_table(
        "arms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("strategy", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_arms_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arms")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_arms_run_id_name")),
    )
    op.create_table(
        "sample_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Text(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("prediction", sa.String(length=255), nullable=True),
        sa.Column("answer_text", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("prefill_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("paper_tflops", sa.Float(), nullable=True),
        sa.Column("full_tflops", sa.Float(), nullable=True),
        sa.Column("visual_tokens", sa.Integer(), nullable=True),
        sa.Column("visual_tokens_kept", sa.Integer(), nullable=True),
        sa.Column("tokens_per_layer", sa.JSON(), nullable=True),
        sa.Column("kept_indices", sa.JSON(), nullable=True),
        sa.Column("peak_memory_mb", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["arm_id"], ["arms.id"], name=op.f("fk_sample_results_arm_id_arms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sample_results")),
        sa.UniqueConstraint("arm_id", "sample_id", name=op.f("uq_result_arm_sample")),
    )
    op.create_table(
        "arm_summaries",
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("kpis", sa.JSON(), nullable=False),
        _timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["arm_id"], ["arms.id"], name=op.f("fk_arm_summaries_arm_id_arms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("arm_id", name=op.f("pk_arm_summaries")),
    )
    op.create_table(
        "tuning_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("optuna_study_name", sa.String(length=255), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("baseline_run_id", sa.Integer(), nullable=True),
        sa.Column("verification_run_id", sa.Integer(), nullable=True),
        sa.Column("recommended_strategy", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["baseline_run_id"], ["runs.id"], name=op.f("fk_tuning_studies_baseline_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["verification_run_id"],
            ["runs.id"],
            name=op.f("fk_tuning_studies_verification_run_id_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tuning_studies")),
        sa.UniqueConstraint("name", name=op.f("uq_tuning_studies_name")),
    )


def downgrade() -> None:
    op.drop_table("tuning_studies")
    op.drop_table("arm_summaries")
    op.drop_table("sample_results")
    op.drop_table("arms")
    op.drop_index(op.f("ix_runs_settings_sha256"), table_name="runs")
    op.drop_table("runs")
    op.drop_table("models")
    op.drop_table("datasets")
