"""Workers that share a run: who computed what, on which device, and the batches they claim.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``workers``: one row per process working on a run (host, pid, device, the kind of device its latencies come
from, heartbeat). ``run_batches``: the run's batches, planned once, claimed by workers with a lease.
``sample_results.worker_id``: the worker that computed a result (NULL for results stored before).
``tuning_studies.verification_order``: the held-out verification sequence, fixed once per study. Runs stored
before get their batches planned when a worker next opens them. Written by hand to match pilot.store.models.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("local_key", sa.String(length=255), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("device_kind", sa.String(length=255), nullable=False),
        _timestamp("started_at"),
        _timestamp("heartbeat_at"),
        _timestamp("finished_at", nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_workers_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_run_id"), "workers", ["run_id"], unique=False)
    op.create_table(
        "run_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sample_ids", sa.JSON(), nullable=False),
        sa.Column("worker_id", sa.Integer(), nullable=True),
        _timestamp("lease_expires_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("done_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_batches_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"], ["workers.id"], name=op.f("fk_run_batches_worker_id_workers"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_batches")),
        sa.UniqueConstraint("run_id", "position", name=op.f("uq_run_batches_run_id_position")),
    )
    # SQLite cannot add a foreign key to a table in place: batch mode copies sample_results (named constraints kept).
    with op.batch_alter_table("sample_results") as batch:
        batch.add_column(sa.Column("worker_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_sample_results_worker_id_workers"), "workers", ["worker_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index(op.f("ix_sample_results_worker_id"), ["worker_id"], unique=False)
    with op.batch_alter_table("tuning_studies") as batch:
        batch.add_column(sa.Column("verification_order", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tuning_studies") as batch:
        batch.drop_column("verification_order")
    with op.batch_alter_table("sample_results") as batch:
        batch.drop_index(op.f("ix_sample_results_worker_id"))
        batch.drop_constraint(op.f("fk_sample_results_worker_id_workers"), type_="foreignkey")
        batch.drop_column("worker_id")
    op.drop_table("run_batches")
    op.drop_index(op.f("ix_workers_run_id"), table_name="workers")
    op.drop_table("workers")
