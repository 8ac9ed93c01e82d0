"""A/B replay: the same samples through the baseline and every pruned arm, results into the store.

Nothing lost, nothing twice: each batch's results are committed as it finishes, under a unique
(arm, sample) key; a rerun of the same settings on the same data (or ``--resume RUN``) skips what is stored and
retries the samples that failed (their error rows are replaced by the new results). A run remembers the digest of
the data it read (``Dataset.sha256`` on its dataset row): changed data is a new run, and resuming a run on changed
data is refused. Arms are interleaved per batch (the starting arm rotates) so machine drift hits all alike.
SIGTERM (``kill``, Slurm, Kubernetes) stops a run as Ctrl-C does: marked interrupted, resumable.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from pilot.data.hf import open_dataset
from pilot.data.manifest import Dataset, Item
from pilot.data.split import PARTS, stratified_split
from pilot.data.synthetic import DEMO_DATASET_SEED, DEMO_DATASET_SIZE, demo_manifest_path
from pilot.generation import TASK_MAX_NEW_TOKENS, machine_info, prepare_batch, run_arm_batch
from pilot.generation import error_rows as _error_rows  # _work calls it by its old name
from pilot.models import LoadedModel, load
from pilot.progress import Progress
from pilot.pruning import parse
from pilot.store import get_or_create, open_store, with_retries
from pilot.store import models as db
from pilot.summaries import build_report, find_run, write_summaries
from pilot.workers import (
    Launcher,
    RunWorker,
    SharingError,
    detect_launcher,
    device_kind,
    finish_run,
    lease_seconds,
    plan_batches,
    reopen_failed_batches,
    resolve_device,
    start_run,
    stop_run,
)

DEFAULT_BATCH_SIZE = 8
"""Samples per batch in ``pilot run`` and ``pilot tune`` alike (``--batch-size``)."""


class RunError(RuntimeError):
    """The run cannot go on (too many errors, bad settings, changed data); the message says why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as at Ctrl-C, marked interrupted."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so that the run
    is marked interrupted and its worker leaves its claims, as at Ctrl-C. Elsewhere (a thread): a no-op, since only
    the main thread may set signal handlers. SIGHUP is left alone: ``nohup`` ignores it on purpose."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RunSettings:
    """What a run does; also the fingerprint that lets a rerun find its unfinished run."""

    model: str = "demo"
    dataset: str | None = None  # manifest path; None: the demo dataset
    arms: list[str] = field(default_factory=lambda: ["baseline", "transprune"])
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int | None = None  # None: each task's default (TASK_MAX_NEW_TOKENS)
    task: str | None = None  # every row's task (label, text, json); None: the manifest's, else label
    # Hugging Face datasets (pilot.data.hf): the columns to read and the split; None: image, question, answer.
    image_column: str | None = None
    question_column: str | None = None
    answer_column: str | None = None
    dataset_split: str | None = None
    id_column: str | None = None  # the column of the ids (manifests and Hugging Face datasets); None: id, else default
    labels: list[str] | None = None
    prompt_template: str | None = None
    no_labels: bool = False  # ignore the manifest's labels: compare the arms with the baseline's answers only
    controls: str | None = None  # "matched": add each TransPrune arm's controls at the same paper TFLOPs
    matched_to: dict | None = None  # filled from ``controls``: control arm -> its TransPrune arm (pilot.controls)
    max_error_rate: float = 0.2  # stop when more than this share of samples fail (after 20)
    warmup_batches: int = 1
    split: str | None = None  # "tune" or "heldout": one part of a stratified split (the tuner's)
    split_fraction: float = 0.5  # share held out
    split_seed: int = 0

    def fingerprint(self) -> str:
        data = asdict(self)
        for later in ("no_labels", "controls", "matched_to", "task", "image_column", "question_column",
                      "answer_column", "dataset_split", "id_column"):  # added later: older runs keep theirs
            if not data.get(later):
                data.pop(later, None)
        if data["max_new_tokens"] is None:  # the per-task default; runs before it stored 4 (the label default)
            data["max_new_tokens"] = TASK_MAX_NEW_TOKENS["label"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict, source: str = "settings") -> RunSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        settings = cls(**data)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.arms:
            raise ValueError("give at least one --arm")
        canonical = [str(parse(arm)) for arm in self.arms]  # raises ValueError naming a bad arm
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"arms repeat: {self.arms}")
        self.arms = canonical
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.limit is not None and self.limit < 1:  # 0 and -1 used to run everything, silently
            raise ValueError(f"--limit {self.limit}: give a number of samples >= 1, or leave --limit out for all")
        if self.split not in (None, *PARTS):
            raise ValueError(f"split {self.split!r}: use one of {PARTS}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype {self.dtype!r}: use float32, bfloat16 or float16")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: give a number >= 1, or leave it out for "
                             f"each task's default ({', '.join(f'{k} {v}' for k, v in TASK_MAX_NEW_TOKENS.items())})")
        if self.task not in (None, *TASK_MAX_NEW_TOKENS):
            raise ValueError(f"--task {self.task!r}: use one of {', '.join(TASK_MAX_NEW_TOKENS)}")
        if self.controls not in (None, "matched"):
            raise ValueError(f"--controls {self.controls!r}: use matched (or leave it out)")
        if self.controls == "matched":
            from pilot.controls import expand_for_model

            self.arms, self.matched_to = expand_for_model(self.arms, self.model)


def select_items(dataset: Dataset, settings: RunSettings) -> list[Item]:
    """The run's samples: its split part (if any), then the first ``limit``."""
    items = list(dataset.items)
    if settings.split is not None:
        part = stratified_split(items, settings.split_fraction, settings.split_seed)
        items = [item for item in items if part[item.id] == settings.split]
    return items[: settings.limit] if settings.limit else items


def load_dataset(settings: RunSettings) -> Dataset:
    """The run's dataset (a manifest, a Hugging Face dataset: ``pilot.data.hf``), or the demo's with its labels."""
    labels = settings.labels
    if settings.dataset is None and labels is None:
        from pilot.data.synthetic import LABELS

        labels = list(LABELS)
    source = settings.dataset or str(demo_dataset_path())
    columns = {key: value for key, value in (("image_column", settings.image_column),
                                              ("question_column", settings.question_column),
                                              ("answer_column", settings.answer_column)) if value}
    return open_dataset(source, task=settings.task, split=settings.dataset_split, labels=labels,
                        prompt_template=settings.prompt_template, no_labels=settings.no_labels,
                        id_column=settings.id_column, **columns)


def demo_dataset_path() -> Path:
    """The demo dataset (seed 0, never used in training), generated once into the user's cache."""
    from pilot.data import synthetic

    manifest = demo_manifest_path()
    if not manifest.is_file():
        synthetic.write_dataset(manifest.parent, DEMO_DATASET_SIZE, DEMO_DATASET_SEED)
    return manifest


def demo_text_dataset_path() -> Path:
    """The demo's open-ended task over the same images (``synthetic.write_text_manifest``), written once."""
    from pilot.data import synthetic

    folder = demo_dataset_path().parent
    manifest = folder / "manifest-text.csv"
    return manifest if manifest.is_file() else synthetic.write_text_manifest(folder)


def _commit_rows(sessions, arm_id: int, rows: list[dict]) -> int:
    """Insert rows not stored yet (a retried commit, or another worker, may have stored them); a stored error row
    is replaced by the new result of its sample (a rerun retries the samples that failed)."""
    with sessions() as session:
        ids = [row["sample_id"] for row in rows]
        stored = dict(session.execute(select(db.SampleResult.sample_id, db.SampleResult.error).where(
            db.SampleResult.arm_id == arm_id, db.SampleResult.sample_id.in_(ids))).all())
        failed = [sample_id for sample_id, error in stored.items() if error is not None]
        if failed:  # in the same transaction as the new rows: a crash in between loses nothing
            session.execute(delete(db.SampleResult).where(
                db.SampleResult.arm_id == arm_id, db.SampleResult.sample_id.in_(failed),
                db.SampleResult.error.is_not(None)))
        new = [db.SampleResult(arm_id=arm_id, **row) for row in rows
               if row["sample_id"] not in stored or row["sample_id"] in failed]
        session.add_all(new)
        try:
            session.commit()
            return len(new)
        except IntegrityError:  # a concurrent writer stored some meanwhile: add ours one by one
            session.rollback()
        added = 0
        for row in rows:
            session.add(db.SampleResult(arm_id=arm_id, **row))
            try:
                session.commit()
                added += 1
            except IntegrityError:  # that one is stored already: the unique key keeps exactly one
                session.rollback()
        return added


def _same_data(run: db.Run, dataset: Dataset) -> None:
    """Refuse to resume ``run`` on data other than it read: stored results would mix two versions of the data."""
    stored = run.dataset.manifest_sha256
    if stored != dataset.sha256:
        raise RunError(
            f"run {run.id} ({run.name}) read other data than {dataset.manifest} holds now (digest {stored[:12]}, "
            f"now {dataset.sha256[:12]}): the dataset changed since, and resuming would mix two versions of it; "
            "run the new data as a new run (another --name, or the same command without --name and --resume)"
        )


def _find_or_create_run(sessions, settings: RunSettings, dataset: Dataset, loaded: LoadedModel, name: str | None,
                        resume: str | None, log: Callable[[str], None] | None = None) -> tuple[int, bool]:
    """The run to fill: --resume RUN, a run with this name, or an unfinished run with these settings on the same
    data (its digest); a named or resumed run that read other data is refused."""
    fingerprint = settings.fingerprint()
    with sessions() as session:
        if resume is not None:
            run = find_run(session, resume)
            _same_data(run, dataset)
            return run.id, True
        if name is not None:
            run = session.scalar(select(db.Run).where(db.Run.name == name))
            if run is not None:
                # Its workers may compute on different devices (cuda:0, cuda:1, a CPU); everything else must match.
                if replace(settings, device=run.settings.get("device", settings.device)).fingerprint() \
                        != run.settings_sha256:
                    raise RunError(f"a run named {name!r} exists with other settings; pick another --name "
                                   f"or `pilot run --resume {run.id}`")
                _same_data(run, dataset)
                return run.id, True
        else:
            unfinished = list(session.scalars(select(db.Run).where(
                db.Run.settings_sha256 == fingerprint, db.Run.status != "completed").order_by(db.Run.id.desc())))
            same = next((run for run in unfinished if run.dataset.manifest_sha256 == dataset.sha256), None)
            if same is not None:
                return same.id, True
            if unfinished and log is not None:
                log(f"run {unfinished[0].id} has these settings but read another version of the data (digest "
                    f"{unfinished[0].dataset.manifest_sha256[:12]}, now {dataset.sha256[:12]}): starting a new run")
        dataset_row, _ = get_or_create(session, db.Dataset, name=dataset.name, manifest_sha256=dataset.sha256,
                                       defaults={"manifest_path": str(dataset.manifest), "size": len(dataset),
                                                 "labels": list(dataset.labels)})
        model_row, _ = get_or_create(session, db.ModelRecord, path=str(loaded.path),
                                     config_sha256=loaded.config_hash,
                                     defaults={"name": loaded.name, "model_class": loaded.model_class})
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        tag = hashlib.sha256(f"{fingerprint} {dataset.sha256}".encode()).hexdigest()[:6]  # settings and data
        run = db.Run(name=name or f"{dataset.name}-{stamp}-{tag}", dataset_id=dataset_row.id,
                     model_id=model_row.id, settings=asdict(settings), settings_sha256=fingerprint,
                     machine=machine_info(torch.device(settings.device)), status="pending")
        try:
            session.add(run)
            session.flush()
            for position, arm in enumerate(settings.arms):
                session.add(db.Arm(run_id=run.id, name=arm, strategy=arm, position=position))
            session.commit()
        except IntegrityError:  # another worker created the same named run first: join it
            session.rollback()
            if name is None:
                raise
            return _find_or_create_run(sessions, settings, dataset, loaded, name, resume, log)
        return run.id, False


def load_run_settings(db_url: str | None, key: str) -> RunSettings:
    sessions = open_store(db_url)
    with sessions() as session:
        return RunSettings.from_dict(find_run(session, key).settings, f"run {key}")


def execute(settings: RunSettings, *, db_url: str | None = None, name: str | None = None,
            resume: str | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
            loaded: LoadedModel | None = None) -> dict:
    """Run (or finish) a pilot run; returns its report dict. Ctrl-C or SIGTERM marks it interrupted.

    ``progress``: a bar on a terminal, else a log line every 30 s (:class:`pilot.progress.Progress`).

    ``loaded``: an already loaded model matching ``settings`` (the tuner reuses its own).
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    if resume is not None:
        settings = load_run_settings(db_url, resume)
    settings.validate()
    launcher = detect_launcher()
    if launcher.several and name is None and resume is None:
        raise RunError(f"{launcher.name} starts several workers: give them one run to share, the same --name NAME "
                       "in each")
    device = resolve_device(settings.device, launcher)  # one line naming --device, before anything loads
    lease_s = lease_seconds()
    sessions = open_store(db_url)
    if launcher.several and sessions.kw["bind"].dialect.name == "sqlite":
        raise SharingError(f"--db {sessions.kw['bind'].url.database}: a SQLite store has one writer, so the workers "
                           f"{launcher.name} starts cannot share a run on it; give every worker the same "
                           "--db postgresql://user@host/db")
    dataset = load_dataset(settings)
    items = select_items(dataset, settings)
    dtype = getattr(torch, settings.dtype)
    loaded = loaded or load(settings.model, device=device, dtype=dtype)
    for arm in settings.arms:
        parse(arm).resolve(loaded.depth)  # a strategy that does not fit the model fails before any work
    run_id, resumed = _find_or_create_run(sessions, settings, dataset, loaded, name, resume, log)
    with sessions() as session:
        arms = list(session.scalars(select(db.Arm).where(db.Arm.run_id == run_id).order_by(db.Arm.position)))
        counts = dict(session.execute(select(db.SampleResult.error.is_(None), func.count()).where(
            db.SampleResult.arm_id.in_([arm.id for arm in arms])).group_by(db.SampleResult.error.is_(None))).all())
    stored, failed = counts.get(True, 0), counts.get(False, 0)
    items_by_id = {item.id: item for item in items}
    batches = [items[i : i + settings.batch_size] for i in range(0, len(items), settings.batch_size)]
    left = plan_batches(sessions, run_id, [[item.id for item in batch] for batch in batches], [a.id for a in arms])
    if resumed and failed:
        left += reopen_failed_batches(sessions, run_id, [a.id for a in arms], lease_s)
    retry = f" ({failed} failed, retried)" if failed else ""
    log(f"run {run_id} ({'resumed' if resumed else 'new'}): {len(items)} samples x {len(arms)} arms, "
        f"{stored} results already stored{retry}, {left} of {len(batches)} batches to do; model {loaded.name} "
        f"on {device}")
    if left:
        with stop_signals_interrupt():
            _work(sessions, run_id, settings, arms, batches, items_by_id, loaded, device, dtype, dataset.labels,
                  len(items) * len(arms) - stored, launcher, lease_s, progress, log)
    # Once: the worker that finds no batch left writes the summaries; the others find the run completed.
    if finish_run(sessions, run_id, lambda session, run: write_summaries(session, run, dataset.labels), lease_s):
        log(f"run {run_id} completed; this worker wrote its summaries")
    with sessions() as session:
        return build_report(session, run_id)


def _work(sessions, run_id: int, settings: RunSettings, arms: list[db.Arm], batches: list[list[Item]],
          items_by_id: dict[str, Item], loaded: LoadedModel, device: torch.device, dtype: torch.dtype,
          labels: Sequence[str], total: int, launcher: Launcher, lease_s: float, progress: bool,
          log: Callable[[str], None]) -> None:
    """This process as one worker of the run: claim batches until none is left (``pilot.workers``)."""
    try:
        with RunWorker(sessions, run_id, str(device), device_kind(device), launcher=launcher, lease_s=lease_s,
                       log=log) as worker:
            start_run(sessions, run_id)
            _warm_up(loaded, arms, batches, settings, device, dtype, labels)
            bar = Progress(total, label=f"run {run_id}", log=log, enabled=progress)
            errors = processed = 0
            first_errors: list[str] = []
            for claim in worker.claims():
                batch = [items_by_id[sample_id] for sample_id in claim.sample_ids]
                with sessions() as session:  # what is stored now: a batch taken over from a dead worker is part done
                    stored = session.execute(select(db.SampleResult.arm_id, db.SampleResult.sample_id).where(
                        db.SampleResult.arm_id.in_([arm.id for arm in arms]),
                        db.SampleResult.sample_id.in_(claim.sample_ids),
                        db.SampleResult.error.is_(None))).all()  # a failed sample is tried again
                done = {arm.id: {sample_id for arm_id, sample_id in stored if arm_id == arm.id} for arm in arms}
                prepared = prepare_batch(loaded, batch, device, dtype)
                order = arms[claim.position % len(arms):] + arms[: claim.position % len(arms)]
                for arm in order:
                    todo = [item for item in prepared.items if item.id not in done[arm.id]]
                    rows = _error_rows({k: v for k, v in prepared.errors.items() if k not in done[arm.id]},
                                       items_by_id)
                    if todo:
                        subset = prepared if len(todo) == len(prepared.items) else prepare_batch(
                            loaded, todo, device, dtype)
                        rows += run_arm_batch(loaded, arm.strategy, subset, labels, settings.max_new_tokens, device)
                    if rows:
                        rows = [{**row, "worker_id": worker.id} for row in rows]
                        with_retries(lambda arm=arm, rows=rows: _commit_rows(sessions, arm.id, rows), log=log)
                        failed = [row["error"] for row in rows if row["error"] is not None]
                        errors += len(failed)
                        first_errors += failed[: 3 - len(first_errors)]
                        processed += len(rows)
                        bar.update(len(rows))
                worker.done(claim)
                if processed >= 20 and errors / processed > settings.max_error_rate:
                    raise RunError(f"{errors} of {processed} results failed (over {settings.max_error_rate:.0%}); "
                                   f"first errors: {first_errors}. Fix the data and rerun: stored results are "
                                   "kept (changed data is a new run; the same data retries the failed samples)")
            bar.close()
    except KeyboardInterrupt as interrupt:
        why = str(interrupt) if isinstance(interrupt, Terminated) else "stopped by the user"
        stop_run(sessions, run_id, "interrupted", why, lease_s)
        log(f"run {run_id} interrupted; finish it with `pilot run --resume {run_id}`")
        raise
    except RunError as error:
        stop_run(sessions, run_id, "failed", str(error), lease_s)
        raise


def _warm_up(loaded, arms, batches, settings, device, dtype, labels) -> None:
    """Run each arm on the first batch, untimed: kernels, caches and allocators settle first."""
    if not batches:
        return
    for batch in batches[: settings.warmup_batches]:
        prepared = prepare_batch(loaded, batch, device, dtype)
        if prepared.items:
            for arm in arms:
                run_arm_batch(loaded, arm.strategy, prepared, labels, settings.max_new_tokens, device)
