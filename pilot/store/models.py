"""ORM models of the result store: datasets, models, runs, arms, per-sample results, summaries, tuning studies.

The schema is created by the Alembic migrations in the ``migrations`` package (``pilot.store.upgrade``), never by
``Base.metadata.create_all``; a test checks that the two agree. Keep this module free of torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names on every backend; migrations/versions/*.py spell out the same names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES = ("pending", "running", "interrupted", "failed", "completed")
INVALID_PREDICTION = "invalid"

SHA256_LENGTH = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite keeps no time zone (values come back naive) and PostgreSQL returns the session's zone; both are normalised
    to UTC here. Naive datetimes passed in are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores the literal; a fixed UTC value without offset sorts and compares correctly as text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "manifest_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    manifest_path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    size: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="dataset")

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, name={self.name!r}, size={self.size!r})"


class ModelRecord(Base):
    """A model a run used: ``name`` is "demo" or the path given on the command line."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("path", "config_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    config_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    model_class: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="model")

    def __repr__(self) -> str:
        return f"ModelRecord(id={self.id!r}, name={self.name!r}, model_class={self.model_class!r})"


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'interrupted', 'failed', 'completed')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), index=True)
    machine: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    dataset: Mapped[Dataset] = relationship(back_populates="runs")
    model: Mapped[ModelRecord] = relationship(back_populates="runs")
    arms: Mapped[list[Arm]] = relationship(
        back_populates="run", order_by="Arm.position", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class Arm(Base):
    __tablename__ = "arms"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    strategy: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)

    run: Mapped[Run] = relationship(back_populates="arms")
    results: Mapped[list[SampleResult]] = relationship(
        back_populates="arm", cascade="all, delete-orphan", passive_deletes=True
    )
    summary: Mapped[ArmSummary | None] = relationship(
        back_populates="arm", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Arm(id={self.id!r}, name={self.name!r}, strategy={self.strategy!r})"


class SampleResult(Base):
    """One sample through one arm. (arm_id, sample_id) is unique: a rerun skips or fails on samples already stored."""

    __tablename__ = "sample_results"
    __table_args__ = (UniqueConstraint("arm_id", "sample_id", name="uq_result_arm_sample"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"))
    sample_id: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(255))
    prediction: Mapped[str | None] = mapped_column(String(255))
    answer_text: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    prefill_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    batch_size: Mapped[int] = mapped_column(Integer)
    paper_tflops: Mapped[float | None] = mapped_column(Float)
    full_tflops: Mapped[float | None] = mapped_column(Float)
    visual_tokens: Mapped[int | None] = mapped_column(Integer)
    visual_tokens_kept: Mapped[int | None] = mapped_column(Integer)
    tokens_per_layer: Mapped[list[int] | None] = mapped_column(JSON)
    kept_indices: Mapped[list[list[int]] | None] = mapped_column(JSON)
    # Per image, its grid of visual tokens in visual-token order: [rows, cols] ([rows, cols, 1] when each row ends
    # with a newline token); kept_indices count through them. None: a square grid (runs before revision 0002).
    image_grids: Mapped[list[list[int]] | None] = mapped_column(JSON)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Open-ended tasks (revision 0005; None before: label). ``references``: the row's reference answers (json: one
    # object's text); ``scores``: its task's per-sample metrics (pilot.scoring), None without references.
    task: Mapped[str | None] = mapped_column(String(16))
    references: Mapped[list[str] | None] = mapped_column(JSON)
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Generation as served: output tokens to end of sequence, time to first token, time per later token, the KV
    # cache held at the last token, "stop" or "length" (cut at max_new_tokens), and whether the bytes were UTF-8.
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tpot_ms: Mapped[float | None] = mapped_column(Float)
    kv_cache_bytes: Mapped[int | None] = mapped_column(BigInteger)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    utf8_valid: Mapped[bool | None] = mapped_column(Boolean)
    # The worker that computed it (None: stored before revision 0004); the report counts results per worker and
    # compares latencies from one kind of device only.
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"), index=True)

    arm: Mapped[Arm] = relationship(back_populates="results")

    def __repr__(self) -> str:
        return f"SampleResult(arm_id={self.arm_id!r}, sample_id={self.sample_id!r}, prediction={self.prediction!r})"


class Worker(Base):
    """One process working on a run (``pilot run`` started N times: by hand, torchrun, a Slurm array, an indexed Job).

    Its heartbeat keeps its claims (``RunBatch.lease_expires_at``); a worker whose heartbeat stops for a lease, or
    whose process is gone from its own machine, is dead and its claims go to the others. ``local_key`` names the
    machine and PID namespace the ``pid`` belongs to: a worker may test the PIDs of workers with its own key only.
    """

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))  # "host/pid", "host/rank3/pid" under a launcher
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    local_key: Mapped[str] = mapped_column(String(255))
    rank: Mapped[int | None] = mapped_column(Integer)  # the launcher's rank, array task or completion index
    device: Mapped[str] = mapped_column(String(64))  # "cuda:1", "cpu"
    # What latencies depend on: the GPU's name, or the CPU's and its thread count. One kind per comparison.
    device_kind: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # How it ended: "done", "interrupted", "failed", "dead" (found gone by another worker); None while it works.
    outcome: Mapped[str | None] = mapped_column(String(16))

    def __repr__(self) -> str:
        return f"Worker(id={self.id!r}, name={self.name!r}, device={self.device!r})"


class RunBatch(Base):
    """One batch of a run's samples, the unit workers claim: every arm the batch still lacks, on one device.

    Planned once per run (``position`` = the batch's index in the run's sample order; the arms start rotated by it,
    as in a single process). A worker claims a batch with ``SELECT ... FOR UPDATE SKIP LOCKED`` and holds it until
    ``lease_expires_at``, which its heartbeat pushes on; ``done_at`` is set once every (arm, sample) of the batch is
    stored. ``attempts`` > 1: a worker died or lost its lease on it.
    """

    __tablename__ = "run_batches"
    __table_args__ = (UniqueConstraint("run_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    sample_ids: Mapped[list[str]] = mapped_column(JSON)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"RunBatch(run_id={self.run_id!r}, position={self.position!r}, worker_id={self.worker_id!r})"


class ArmSummary(Base):
    __tablename__ = "arm_summaries"

    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"), primary_key=True)
    kpis: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    arm: Mapped[Arm] = relationship(back_populates="summary")


class TuningStudy(Base):
    __tablename__ = "tuning_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    optuna_study_name: Mapped[str] = mapped_column(String(255))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    baseline_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    verification_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    recommended_strategy: Mapped[str | None] = mapped_column(Text)
    # The held-out verification order, fixed once per study by the first worker to select:
    # {"trials": the study's trial target, "order": [trial numbers]}; the others verify the same sequence.
    verification_order: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    baseline_run: Mapped[Run | None] = relationship(foreign_keys=[baseline_run_id])
    verification_run: Mapped[Run | None] = relationship(foreign_keys=[verification_run_id])

    def __repr__(self) -> str:
        return f"TuningStudy(id={self.id!r}, name={self.name!r})"


# ---------------------------------------------------------------- blind human review (pilot.review, revision 0007)

REVIEW_CHOICES = ("A", "B", "tie", "both_wrong")


class Reviewer(Base):
    """A named person who judges review tasks. ``token_sha256``: the SHA-256 of their personal link's token (the
    token itself is shown once, never stored); None for reviewers known only from an import. ``revoked_at``: the
    link no longer writes."""

    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    token_sha256: Mapped[str | None] = mapped_column(String(SHA256_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"Reviewer(id={self.id!r}, name={self.name!r})"


class ReviewTask(Base):
    """One blind pair to judge: the baseline's and a pruned arm's answer to one sample, shown as A and B.

    ``pruned_side`` ("A" or "B") is drawn at random per task and never shown; ``kind`` is "changed" (the answers
    differ) or "check" (they are equal: a screen for reviewers who choose at random). ``weight``: the changed pairs
    of its stratum per task drawn from it (1 when every changed pair is a task); ``overlap``: reviewers wanted."""

    __tablename__ = "review_tasks"
    __table_args__ = (
        UniqueConstraint("run_id", "arm_id", "sample_id"),
        CheckConstraint("pruned_side IN ('A', 'B')", name="pruned_side"),
        CheckConstraint("kind IN ('changed', 'check')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"))
    baseline_arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"))
    sample_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    stratum: Mapped[str] = mapped_column(String(255))
    weight: Mapped[float] = mapped_column(Float)
    pruned_side: Mapped[str] = mapped_column(String(1))
    overlap: Mapped[int] = mapped_column(Integer)
    question: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"ReviewTask(id={self.id!r}, sample_id={self.sample_id!r}, kind={self.kind!r})"


class ReviewJudgement(Base):
    """One reviewer's choice on one task, in the task's sides: "A", "B", "tie" (equally good) or "both_wrong".

    Every judgement is kept; a reviewer's latest on a task (by ``id``) is the one that counts. ``source``:
    "dashboard", "label-studio" or "jsonl"; ``source_key``: a digest of the imported record, so that importing a
    file again adds nothing (None for the dashboard's)."""

    __tablename__ = "review_judgements"
    __table_args__ = (CheckConstraint("choice IN ('A', 'B', 'tie', 'both_wrong')", name="choice"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("review_tasks.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"))
    choice: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    source_key: Mapped[str | None] = mapped_column(String(SHA256_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"ReviewJudgement(task_id={self.task_id!r}, reviewer_id={self.reviewer_id!r}, choice={self.choice!r})"
