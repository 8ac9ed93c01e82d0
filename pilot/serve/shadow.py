"""Shadow A/B on live traffic: a sampled share of requests, after they are answered, also run through the other
arm while the server is idle; both answers go to the pilot store as a run of their own.

The run is a pilot run like any other: dataset ``live:<model>:<served arm>``, two arms (the baseline first), the
same result fields ``pilot run`` stores (answer, TTFT/TPOT, paper and full TFLOPs, visual tokens kept, KV cache),
each request a label-free open-ended sample (``task`` text, no reference) whose id is the request id. So
``pilot report RUN`` shows agreement and ``anls_vs_baseline`` of the pruned arm, ``pilot plan RUN --metric
anls_vs_baseline`` sizes the shadow sample, and the dashboard lists the run. Prompts and images are not stored.

A writer thread stores the pairs in batches (a transaction per batch, both arms together), writes the summaries
every ``summary_every`` pairs and at the end, and marks the run completed when the server stops. A pair is logged
``shadow_computed`` when its shadow answer exists and ``shadow_stored`` once committed; a graceful stop stores
every computed pair.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import torch
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pilot.generation import generate_batch, machine_info, result_rows
from pilot.models import LoadedModel
from pilot.runner import RunSettings
from pilot.serve import logs
from pilot.serve.batcher import Job, Preempted, item_of, model_lock, preemptible, quick_thread_switches
from pilot.serve.metrics import ServeMetrics
from pilot.store import get_or_create, with_retries
from pilot.store import models as db
from pilot.summaries import BASELINE, store_summaries
from pilot.workers import device_kind

LIVE_MANIFEST = "live traffic (pilot serve)"
# Sampled requests keep their decoded images until their shadow answer: at most this much memory (a 2048 x 2048
# image is 12 MiB decoded), whatever --shadow-queue-max allows.
SHADOW_QUEUE_MAX_BYTES = 1 << 30


def live_dataset_name(model: str, arm: str) -> str:
    return f"live:{model}:{arm}"[:255]


@dataclass
class ShadowJob:
    id: str
    prompt: str
    images: list[Image.Image]
    max_tokens: int
    served_row: dict  # the served arm's result row of this request


class LiveRun:
    """The store's run of the live traffic: its two arms pair results by request id."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, name: str, served_arm_id: int,
                 shadow_arm_id: int, worker_id: int) -> None:
        self.sessions = sessions
        self.run_id = run_id
        self.name = name
        self.served_arm_id = served_arm_id
        self.shadow_arm_id = shadow_arm_id
        self.worker_id = worker_id

    @classmethod
    def open(cls, sessions: sessionmaker[Session], *, name: str | None, loaded: LoadedModel, model_label: str,
             served_arm: str, shadow_arm: str, device: torch.device, settings: dict) -> LiveRun:
        """A new run (named ``live-<model>-<time>-<id>`` unless ``name``), or the run ``name`` with these arms and
        this model, continued (replicas behind one gateway can share a run on PostgreSQL)."""

        def unit() -> LiveRun:
            with sessions() as session:
                model_row, _ = get_or_create(session, db.ModelRecord, path=str(loaded.path),
                                             config_sha256=loaded.config_hash,
                                             defaults={"name": loaded.name, "model_class": loaded.model_class})
                run = session.scalar(select(db.Run).where(db.Run.name == name)) if name else None
                now = datetime.now(UTC)
                if run is not None:
                    _check_continued(run, loaded, served_arm, shadow_arm)
                    run.status, run.finished_at, run.heartbeat_at = "running", None, now
                else:
                    stamp = now.strftime("%Y%m%d-%H%M%S")
                    name_ = name or f"live-{model_label}-{stamp}-{uuid.uuid4().hex[:6]}"
                    dataset = db.Dataset(name=live_dataset_name(model_label, served_arm),
                                         manifest_sha256=hashlib.sha256(name_.encode()).hexdigest(),
                                         manifest_path=LIVE_MANIFEST, size=0, labels=[])
                    fingerprint = hashlib.sha256(json.dumps({"live": name_, **settings}, sort_keys=True,
                                                            default=str).encode()).hexdigest()
                    run = db.Run(name=name_, dataset=dataset, model_id=model_row.id, settings=settings,
                                 settings_sha256=fingerprint, machine=machine_info(device), status="running",
                                 started_at=now, heartbeat_at=now)
                    session.add(run)
                    session.flush()
                    # The baseline first, as in a pilot run: reports and the dashboard compare the other arm with it.
                    arms = sorted([served_arm, shadow_arm], key=lambda arm: arm != BASELINE)
                    for position, arm in enumerate(arms):
                        session.add(db.Arm(run_id=run.id, name=arm, strategy=arm, position=position))
                    session.flush()
                host = socket.gethostname()
                worker = db.Worker(run_id=run.id, name=f"{host}/serve/{os.getpid()}"[:255], host=host[:255],
                                   pid=os.getpid(), local_key=f"{host}|serve"[:255], device=str(device),
                                   device_kind=device_kind(device), started_at=now, heartbeat_at=now)
                session.add(worker)
                session.commit()
                arm_ids = {arm.strategy: arm.id for arm in session.scalars(
                    select(db.Arm).where(db.Arm.run_id == run.id))}
                return cls(sessions, run.id, run.name, arm_ids[served_arm], arm_ids[shadow_arm], worker.id)

        return with_retries(unit)

    @staticmethod
    def check(sessions: sessionmaker[Session], name: str | None, loaded: LoadedModel, served_arm: str,
              shadow_arm: str) -> None:
        """Before serving: a ``--run-name`` that names a run of other arms or another model is an error."""
        if name is None:
            return
        with sessions() as session:
            run = session.scalar(select(db.Run).where(db.Run.name == name))
            if run is not None:
                _check_continued(run, loaded, served_arm, shadow_arm)

    def store(self, pairs: Sequence[tuple[dict, dict]]) -> None:
        """Both arms' rows of ``pairs`` in one transaction (rows already stored are skipped: a retried commit)."""

        def unit() -> None:
            with self.sessions() as session:
                ids = [served["sample_id"] for served, _ in pairs]
                arm_ids = (self.served_arm_id, self.shadow_arm_id)
                stored = set(session.execute(select(db.SampleResult.arm_id, db.SampleResult.sample_id).where(
                    db.SampleResult.arm_id.in_(arm_ids), db.SampleResult.sample_id.in_(ids))).all())
                for served, shadow in pairs:
                    for arm_id, row in zip(arm_ids, (served, shadow), strict=True):
                        if (arm_id, row["sample_id"]) not in stored:
                            session.add(db.SampleResult(arm_id=arm_id, worker_id=self.worker_id, **row))
                session.flush()
                paired = session.scalar(select(func.count()).select_from(db.SampleResult).where(
                    db.SampleResult.arm_id == self.shadow_arm_id))
                # The dataset grows with the traffic: its size is the pairs stored, so progress reads complete.
                run = session.get(db.Run, self.run_id)
                run.dataset.size = int(paired)
                now = datetime.now(UTC)
                run.heartbeat_at = now
                session.execute(update(db.Worker).where(db.Worker.id == self.worker_id).values(heartbeat_at=now))
                session.commit()

        with_retries(unit)

    def write_summaries(self) -> None:
        with_retries(lambda: store_summaries(self.sessions, self.run_id, []))

    def finish(self) -> None:
        """Summaries written, the run completed (so ``pilot report`` reads them), this server's worker done."""
        self.write_summaries()

        def unit() -> None:
            with self.sessions() as session:
                now = datetime.now(UTC)
                session.execute(update(db.Run).where(db.Run.id == self.run_id).values(
                    status="completed", finished_at=now, heartbeat_at=now))
                session.execute(update(db.Worker).where(db.Worker.id == self.worker_id).values(
                    finished_at=now, heartbeat_at=now, outcome="done"))
                session.commit()

        with_retries(unit)


def _check_continued(run: db.Run, loaded: LoadedModel, served_arm: str, shadow_arm: str) -> None:
    if {arm.strategy for arm in run.arms} != {served_arm, shadow_arm} or run.model.config_sha256 != loaded.config_hash:
        raise ValueError(f"--run-name {run.name}: that run has arms {', '.join(arm.strategy for arm in run.arms)} "
                         f"on model {run.model.name}; this server would add other arms or another model: pick "
                         "another name")


def _image_bytes(images: Sequence[Image.Image]) -> int:
    return sum(image.width * image.height * len(image.getbands()) for image in images)


def live_run_settings(model: str, served_arm: str, shadow_arm: str, *, batch_size: int, device: str, dtype: str,
                      max_new_tokens: int, serve: dict) -> dict:
    """The run's settings as a pilot run's (reports read them), plus ``serve``: how the traffic was served."""
    arms = sorted([served_arm, shadow_arm], key=lambda arm: arm != BASELINE)
    settings = RunSettings(model=model, dataset=live_dataset_name(model, served_arm), arms=arms,
                           batch_size=batch_size, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                           task="text", no_labels=True, warmup_batches=0)
    return {**asdict(settings), "serve": serve}


class StoreWriter:
    """A thread that stores computed pairs in batches, while no live request is being served (``live_idle``): once
    the oldest has waited ``flush_s`` (or, with traffic that never pauses, ``MAX_DEFER_FLUSHES`` times that); the
    summaries every ``summary_every`` pairs, likewise; at ``close`` everything left, the summaries and the end."""

    MAX_DEFER_FLUSHES = 30

    def __init__(self, live_run: LiveRun, metrics: ServeMetrics, *, flush_s: float = 1.0, summary_every: int = 100,
                 live_idle: Callable[[], bool] = lambda: True) -> None:
        self.live_run = live_run
        self.metrics = metrics
        self.live_idle = live_idle
        self.flush_s = flush_s
        self.summary_every = summary_every
        self._inbox: queue.Queue = queue.Queue()
        self._unsaved: list[tuple[dict, dict]] = []
        self._oldest_at: float | None = None
        self._since_summary = 0
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.lost = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pilot-serve-store", daemon=True)
        self._thread.start()

    def put(self, pairs: list[tuple[dict, dict]]) -> None:
        self._inbox.put(pairs)

    def close(self, timeout_s: float | None = None) -> None:
        self._inbox.put(None)  # the end
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        ending = False
        while not ending:
            try:  # a short wait when pairs are due: the next live-idle moment is looked for every 10 ms
                item = self._inbox.get(timeout=self.flush_s if self._oldest_at is None else 0.01)
            except queue.Empty:
                item = []
            if item is None:
                ending = True
            elif item:
                self._unsaved += item
                self._oldest_at = self._oldest_at or time.monotonic()
            age_s = 0.0 if self._oldest_at is None else time.monotonic() - self._oldest_at
            if self._unsaved and (ending or (age_s >= self.flush_s and self.live_idle())
                                  or age_s >= self.flush_s * self.MAX_DEFER_FLUSHES):
                self._flush()
            if self._since_summary >= self.summary_every and self.live_idle():
                self._summarise()
        while not self._inbox.empty():  # put after the end: stored too
            self._unsaved += self._inbox.get_nowait() or []
        if self._unsaved:
            self._flush()
        if self._unsaved:
            self.lost = len(self._unsaved)
            logs.event("shadow_results_lost", logs.logging.ERROR, count=self.lost,
                       request_ids=[served["sample_id"] for served, _ in self._unsaved])
        try:
            self.live_run.finish()
            logs.event("shadow_run_finished", run_id=self.live_run.run_id, run=self.live_run.name, pairs=self.stored)
        except Exception as error:  # noqa: BLE001 - the pairs are stored; `pilot report` computes from them
            logs.event("shadow_summaries_failed", logs.logging.ERROR, error=f"{type(error).__name__}: {error}")

    def _flush(self) -> None:
        pairs = self._unsaved
        try:
            with quick_thread_switches():  # a live request arriving meanwhile is not held up for long
                self.live_run.store(pairs)
        except Exception as error:  # noqa: BLE001 - kept for the next try (the store may be back by then)
            logs.event("shadow_store_failed", logs.logging.ERROR, error=f"{type(error).__name__}: {error}",
                       pending=len(pairs))
            self._oldest_at = time.monotonic()
            return
        self._unsaved, self._oldest_at = [], None
        self.stored += len(pairs)
        self.metrics.shadow_stored.inc(len(pairs))
        logs.event("shadow_stored", run_id=self.live_run.run_id, count=len(pairs),
                   request_ids=[served["sample_id"] for served, _ in pairs])
        self._since_summary += len(pairs)

    def _summarise(self) -> None:
        self._since_summary = 0
        try:
            with quick_thread_switches():
                self.live_run.write_summaries()
        except Exception as error:  # noqa: BLE001 - the next ones, or the end, write them
            logs.event("shadow_summaries_failed", logs.logging.ERROR, error=f"{type(error).__name__}: {error}")


class ShadowRunner:
    """Sampling, the queue of sampled requests, their shadow batches (worker thread) and the store writer."""

    def __init__(self, loaded: LoadedModel, arm: str, *, rate: float, seed: int, batch_size: int, queue_max: int,
                 device: torch.device, metrics: ServeMetrics, writer: StoreWriter | None) -> None:
        self.loaded = loaded
        self.arm = arm
        self.rate = rate
        self.batch_size = batch_size
        # Halved when a live request stops a shadow batch, doubled back (to batch_size) when one completes: the
        # batches shrink to what fits the gaps between live requests.
        self.current_batch_size = batch_size
        self.queue_max = queue_max
        self.device = device
        self.metrics = metrics
        self.writer = writer  # set when the server starts (the live run is opened then)
        self._rng = random.Random(seed)
        self._pending: deque[ShadowJob] = deque()
        self._pending_bytes = 0
        self.sampled = self.computed = 0  # requests sampled; shadow answers computed

    @property
    def pending(self) -> int:
        return len(self._pending)

    def sample(self) -> bool:
        """Whether an answered request also goes through the shadow arm (worker thread)."""
        chosen = self._rng.random() < self.rate
        if chosen:
            self.sampled += 1
            self.metrics.shadow_sampled.inc()
        return chosen

    def offer(self, job: Job, served_row: dict) -> None:
        """An answered, sampled request: queued for an idle moment (dropped, and counted, when the queue is full)."""
        size = _image_bytes(job.images)
        if len(self._pending) >= self.queue_max or self._pending_bytes + size > SHADOW_QUEUE_MAX_BYTES:
            self.metrics.shadow_dropped.labels("queue_full").inc()
            return
        self._pending.append(ShadowJob(job.id, job.prompt, job.images, job.max_tokens, served_row))
        self._pending_bytes += size
        self.metrics.shadow_pending.set(len(self._pending))

    def run_batch(self, prepare: Callable[[Sequence], dict], should_yield: Callable[[], bool],
                  live_since: Callable[[], float | None] = lambda: None) -> None:
        """One shadow batch; stopped (and queued again, in order) as soon as ``should_yield`` says so. ``live_since``:
        when the live request that stops it arrived (the delay it had is measured)."""
        jobs = [self._pending.popleft() for _ in range(min(self.current_batch_size, len(self._pending)))]
        try:
            rows = self._compute(jobs, prepare, should_yield)
        except Preempted:
            arrived = live_since()
            if arrived is not None:
                self.metrics.shadow_yield_seconds.observe(max(0.0, time.perf_counter() - arrived))
            self._pending.extendleft(reversed(jobs))
            self.metrics.shadow_preempted.inc()
            self.current_batch_size = max(1, self.current_batch_size // 2)
            return
        finally:
            self.metrics.shadow_pending.set(len(self._pending))
        self.current_batch_size = min(self.batch_size, self.current_batch_size * 2)
        self._pending_bytes -= sum(_image_bytes(job.images) for job in jobs)
        pairs = [(job.served_row, row) for job, row in zip(jobs, rows, strict=True) if row is not None]
        for served, shadow in pairs:
            agree = served["prediction"] == shadow["prediction"]
            self.metrics.record_shadow_answer(agree)
            logs.event("shadow_computed", request_id=served["sample_id"], agree=agree)
        self.computed += len(pairs)
        self.metrics.shadow_computed.inc(len(pairs))
        if pairs:
            self.writer.put(pairs)

    def _compute(self, jobs: list[ShadowJob], prepare, should_yield) -> list[dict | None]:
        try:
            if should_yield():  # before the processor's work, which no layer check interrupts
                raise Preempted
            inputs = prepare(jobs)
            with model_lock(self.loaded.model), preemptible(self.loaded.model, should_yield):
                generation = generate_batch(self.loaded, self.arm, inputs, [job.max_tokens for job in jobs],
                                            self.device)
            return result_rows(self.loaded, [item_of(job.id) for job in jobs], inputs, generation, [])
        except Preempted:
            raise
        except Exception as error:  # noqa: BLE001 - a shadow failure never reaches a client
            if len(jobs) > 1:
                return [self._compute([job], prepare, should_yield)[0] for job in jobs]
            self.metrics.shadow_dropped.labels("error").inc()
            logs.event("shadow_failed", logs.logging.ERROR, request_id=jobs[0].id,
                       error=f"{type(error).__name__}: {error}")
            return [None]

    def drain(self, prepare: Callable[[Sequence], dict], deadline: float) -> None:
        """At shutdown: pending shadow work until ``deadline`` (perf_counter seconds)."""
        while self._pending and time.perf_counter() < deadline:
            self.run_batch(prepare, should_yield=lambda: time.perf_counter() > deadline)

    def close(self, timeout_s: float | None = None) -> None:
        """Store every computed pair and finish the run; sampled requests never computed are counted."""
        if self._pending:
            self.metrics.shadow_dropped.labels("shutdown").inc(len(self._pending))
            logs.event("shadow_not_computed", count=len(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
        self.writer.close(timeout_s)

