"""Workers that share a run: the same ``pilot run ... --name X --db postgresql://...`` started N times splits the work.

A run's samples are cut into batches once (``RunBatch`` rows, planned by the first worker to open the run). A
worker claims one batch at a time with ``SELECT ... FOR UPDATE SKIP LOCKED`` (two workers never get the same batch)
and holds it for a lease that a heartbeat thread pushes on; it computes every arm the batch still lacks on its own
device, commits each arm's results under the unique (arm, sample) key, and marks the batch done. A worker that dies
stops renewing: its lease runs out and another worker takes the batch (at once when the dead worker was on the same
machine: its PID is gone). The summaries are written once, under a lock on the run row, by whichever worker sees
that no batch is left. With one worker this is the single-process run: the same batches, in the same order, each
starting at the same arm, so the answers are the same.

SQLite has one writer: a second worker on a SQLite store is refused with a message (use PostgreSQL), before it
touches anything. Times come from the database on PostgreSQL, so the machines' clocks need not agree.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from pilot.store import models as db
from pilot.store import with_retries

if TYPE_CHECKING:
    import torch

LEASE_ENV = "PILOT_LEASE_S"
# Long enough that a busy database or a slow batch never loses a live worker its claim (the heartbeat renews it
# every quarter lease, from its own thread); short enough that a dead worker's batch waits at most a minute.
DEFAULT_LEASE_S = 60.0


class SharingError(RuntimeError):
    """Workers cannot share this run as asked (SQLite, a changed dataset); the message says what to do."""


# ----------------------------------------------------------------------------------- launchers and devices


@dataclass(frozen=True)
class Launcher:
    """What started this process, as its environment tells: rank and world size where the launcher gives them."""

    name: str | None = None  # None: started by hand
    rank: int | None = None
    local_rank: int | None = None  # this worker's index among the workers on its machine
    world_size: int | None = None  # None: not told (a Kubernetes indexed Job)

    @property
    def several(self) -> bool:
        """The launcher starts more than one worker (or does not say how many)."""
        return self.name is not None and (self.world_size is None or self.world_size > 1)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def detect_launcher(env: Mapping[str, str] | None = None) -> Launcher:
    """torchrun / ``accelerate launch`` (RANK, WORLD_SIZE, LOCAL_RANK), a Slurm array, ``srun`` with several tasks,
    a Kubernetes indexed Job (JOB_COMPLETION_INDEX), or none."""
    env = os.environ if env is None else env
    if _int(env.get("WORLD_SIZE")) is not None and _int(env.get("RANK")) is not None:
        return Launcher("torchrun", _int(env["RANK"]), _int(env.get("LOCAL_RANK")), _int(env["WORLD_SIZE"]))
    if (_int(env.get("SLURM_ARRAY_TASK_COUNT")) or 1) > 1:
        return Launcher("a Slurm array", _int(env.get("SLURM_ARRAY_TASK_ID")), None,
                        _int(env["SLURM_ARRAY_TASK_COUNT"]))
    if (_int(env.get("SLURM_STEP_NUM_TASKS")) or 1) > 1:
        return Launcher("srun", _int(env.get("SLURM_PROCID")), _int(env.get("SLURM_LOCALID")),
                        _int(env["SLURM_STEP_NUM_TASKS"]))
    if _int(env.get("JOB_COMPLETION_INDEX")) is not None:
        return Launcher("a Kubernetes indexed Job", _int(env["JOB_COMPLETION_INDEX"]), None, None)
    return Launcher()


def resolve_device(requested: str, launcher: Launcher | None = None) -> torch.device:
    """The device this worker computes on, or a one-line ``ValueError`` naming ``--device``.

    ``cuda`` without an index: ``cuda:LOCAL_RANK`` under a launcher (modulo the GPUs this process sees, so one GPU
    per task, as Slurm's ``--gpus-per-task`` gives, is ``cuda:0``), else ``cuda:0``.
    """
    import torch

    launcher = launcher or detect_launcher()
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {requested}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                raise ValueError(f"--device {requested}: this torch is built without CUDA; use --device cpu, or "
                                 "install a CUDA build of torch")
            raise ValueError(f"--device {requested}: torch sees no CUDA GPU on this machine; use --device cpu, or "
                             "run where a GPU is visible (check CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count()
        if device.index is None:
            return torch.device("cuda", (launcher.local_rank or 0) % count)
        if device.index >= count:
            raise ValueError(f"--device {requested}: this machine shows {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested}: no Apple GPU (MPS) here; use --device cpu")
    return device


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_kind(device: torch.device) -> str:
    """What latencies depend on: the GPU's name, or the CPU's model and torch's thread count."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {cpu_name()}, {torch.get_num_threads()} threads"[:255]


def lease_seconds(env: Mapping[str, str] | None = None) -> float:
    """The claim lease: ``PILOT_LEASE_S`` (seconds), default 60."""
    env = os.environ if env is None else env
    text = env.get(LEASE_ENV)
    if not text:
        return DEFAULT_LEASE_S
    try:
        lease = float(text)
    except ValueError:
        lease = 0.0
    if not lease > 0:
        raise ValueError(f"{LEASE_ENV}={text}: give the claim lease in seconds, e.g. {LEASE_ENV}=60")
    return lease


def _local_key() -> str:
    """This machine (boot) and PID namespace: workers with the same key can test each other's PIDs."""
    parts = [socket.gethostname()]
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("")
    return "|".join(parts)[:255]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


# ----------------------------------------------------------------------------------- the run's batches


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _now(session: Session) -> datetime:
    """The database's clock on PostgreSQL (machines' clocks may disagree), this machine's on SQLite."""
    if _is_sqlite(session):
        return datetime.now(UTC)
    value = session.scalar(select(func.now()))
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _lock_run(session: Session, run_id: int) -> db.Run:
    """Lock the run row for this transaction: planning, joining and finishing a run go one worker at a time."""
    if _is_sqlite(session):
        # SQLite locks the whole database at the first write; writing first makes the reads after it current.
        session.execute(update(db.Run).where(db.Run.id == run_id).values(heartbeat_at=db.Run.heartbeat_at))
    return session.scalars(select(db.Run).where(db.Run.id == run_id).with_for_update()
                           .execution_options(populate_existing=True)).one()


def _undone(session: Session, run_id: int) -> int:
    return session.scalar(select(func.count()).select_from(db.RunBatch).where(
        db.RunBatch.run_id == run_id, db.RunBatch.done_at.is_(None))) or 0


def plan_batches(sessions: sessionmaker[Session], run_id: int, batches: list[list[str]],
                 arm_ids: list[int]) -> int:
    """Plan the run's batches (sample ids, in order) once; returns how many are not done yet.

    The first worker writes the plan; the others check that theirs is the same (the same settings on the same
    dataset give the same batches). A run stored before workers existed gets its plan now, its complete batches
    marked done.
    """

    def unit() -> int:
        with sessions() as session:
            _lock_run(session, run_id)
            stored = session.execute(select(db.RunBatch.position, db.RunBatch.sample_ids)
                                     .where(db.RunBatch.run_id == run_id).order_by(db.RunBatch.position)).all()
            if stored:
                if [list(ids) for _, ids in stored] != batches:
                    raise SharingError(f"run {run_id} was planned with other samples or batches than this worker "
                                       "reads (the dataset or manifest changed since?); start a new run (--name)")
                undone = _undone(session, run_id)
                session.rollback()
                return undone
            have = set(session.execute(select(db.SampleResult.arm_id, db.SampleResult.sample_id)
                                       .where(db.SampleResult.arm_id.in_(arm_ids))).all())
            now = _now(session)
            undone = 0
            for position, ids in enumerate(batches):
                complete = all((arm_id, sample_id) in have for arm_id in arm_ids for sample_id in ids)
                undone += not complete
                session.add(db.RunBatch(run_id=run_id, position=position, sample_ids=ids, attempts=0,
                                        done_at=now if complete else None))
            session.commit()
            return undone

    return with_retries(unit)


def reopen_failed_batches(sessions: sessionmaker[Session], run_id: int, arm_ids: list[int],
                          lease_s: float = DEFAULT_LEASE_S) -> int:
    """Mark undone the done batches holding a failed (arm, sample), so that this rerun retries them; returns how many.

    Only when no other worker of the run is alive (one that is would be retrying its own failures again); a
    completed run goes back to pending, so that its summaries are written again once the retries are stored.
    """

    def unit() -> int:
        with sessions() as session:
            run = _lock_run(session, run_id)
            now = _now(session)
            alive = session.scalar(select(func.count()).select_from(db.Worker).where(
                db.Worker.run_id == run_id, db.Worker.finished_at.is_(None),
                db.Worker.heartbeat_at > now - timedelta(seconds=lease_s)))
            failed = set(session.scalars(select(db.SampleResult.sample_id).where(
                db.SampleResult.arm_id.in_(arm_ids), db.SampleResult.error.is_not(None))))
            if alive or not failed:
                session.rollback()
                return 0
            reopened = 0
            for batch in session.scalars(select(db.RunBatch).where(db.RunBatch.run_id == run_id,
                                                                   db.RunBatch.done_at.is_not(None))):
                if failed.intersection(batch.sample_ids):
                    batch.done_at, batch.worker_id, batch.lease_expires_at = None, None, None
                    reopened += 1
            if reopened and run.status == "completed":
                run.status, run.finished_at = "pending", None
            session.commit()
            return reopened

    return with_retries(unit)


def start_run(sessions: sessionmaker[Session], run_id: int) -> None:
    """Mark the run running, unless nothing is left (another worker may have completed it meanwhile)."""

    def unit() -> None:
        with sessions() as session:
            run = _lock_run(session, run_id)
            if _undone(session, run_id):
                run.status, run.error = "running", None
                run.started_at = run.started_at or _now(session)
            session.commit()

    with_retries(unit)


def finish_run(sessions: sessionmaker[Session], run_id: int, write_summaries: Callable[[Session, db.Run], None],
               lease_s: float = DEFAULT_LEASE_S) -> bool:
    """Write the summaries and complete the run, once: True for the worker that did it.

    Under the run's lock, only when no batch is left and the run is not completed yet; the next worker to get the
    lock finds it completed. Workers of the run that went silent for a lease are marked dead.
    """

    def unit() -> bool:
        with sessions() as session:
            run = _lock_run(session, run_id)
            if run.status == "completed" or _undone(session, run_id):
                session.rollback()
                return False
            write_summaries(session, run)
            now = _now(session)
            run.status, run.error, run.finished_at = "completed", None, now
            session.execute(update(db.Worker).where(
                db.Worker.run_id == run_id, db.Worker.finished_at.is_(None),
                db.Worker.heartbeat_at < now - timedelta(seconds=lease_s)).values(finished_at=now, outcome="dead"))
            session.commit()
            return True

    return with_retries(unit)


def stop_run(sessions: sessionmaker[Session], run_id: int, status: str, error: str | None,
             lease_s: float = DEFAULT_LEASE_S) -> None:
    """Mark the run interrupted or failed, unless completed; "interrupted" only when no other worker goes on."""

    def unit() -> None:
        with sessions() as session:
            run = _lock_run(session, run_id)
            if run.status == "completed":
                session.rollback()
                return
            now = _now(session)
            if status == "interrupted":
                others = session.scalar(select(func.count()).select_from(db.Worker).where(
                    db.Worker.run_id == run_id, db.Worker.finished_at.is_(None),
                    db.Worker.heartbeat_at > now - timedelta(seconds=lease_s)))
                if others:  # the run goes on in them
                    session.rollback()
                    return
            run.status, run.error, run.finished_at = status, error, now
            session.commit()

    with_retries(unit)


# ----------------------------------------------------------------------------------- one worker


@dataclass(frozen=True)
class Claim:
    """A batch this worker holds: its position in the run (the arms start rotated by it) and its samples."""

    id: int
    position: int
    sample_ids: list[str]
    attempts: int


class RunWorker:
    """This process as a worker of one run: joins it, claims batches, heartbeats, leaves.

    ``with RunWorker(...) as worker: for claim in worker.claims(): ...; worker.done(claim)``; leaving the block
    releases unfinished claims (others take them at once) and records how the worker ended.
    """

    def __init__(self, sessions: sessionmaker[Session], run_id: int, device: str, kind: str, *,
                 launcher: Launcher | None = None, lease_s: float | None = None,
                 log: Callable[[str], None] | None = None):
        self.sessions = sessions
        self.run_id = run_id
        self.device = device
        self.kind = kind
        self.launcher = launcher or detect_launcher()
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.log = log or (lambda message: None)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.local_key = _local_key()
        rank = "" if self.launcher.rank is None else f"/rank{self.launcher.rank}"
        self.name = f"{self.host}{rank}/{self.pid}"[:255]
        self.id: int | None = None
        self.outcome = "done"
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    # -- joining and leaving

    def __enter__(self) -> RunWorker:
        self.id = with_retries(self._join)
        self._beats = threading.Thread(target=self._heartbeat, name=f"pilot-heartbeat-{self.id}", daemon=True)
        self._beats.start()
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None and self.outcome == "done":
            self.outcome = "interrupted" if issubclass(error_type, KeyboardInterrupt) else "failed"
        self._stop.set()
        if self._beats is not None:
            self._beats.join(timeout=10)
        try:
            with_retries(self._leave)
        except Exception as leave_error:  # noqa: BLE001 - never hide the error that ended the worker
            if error_type is None:
                raise
            self.log(f"could not record the worker's end ({type(leave_error).__name__}); its claims expire instead")

    def _alive(self, worker: db.Worker, now: datetime) -> bool:
        """Alive: a fresh heartbeat, and on this machine a PID that still runs."""
        if worker.local_key == self.local_key and not _pid_alive(worker.pid):
            return False
        return worker.heartbeat_at > now - timedelta(seconds=self.lease_s)

    def _bury(self, session: Session, now: datetime) -> list[db.Worker]:
        """Mark the run's workers that died on this machine dead and free their claims; the live others."""
        live = []
        for worker in session.scalars(select(db.Worker).where(db.Worker.run_id == self.run_id,
                                                               db.Worker.finished_at.is_(None),
                                                               db.Worker.id != self.id)):
            if worker.local_key == self.local_key and not _pid_alive(worker.pid):
                worker.finished_at, worker.outcome = now, "dead"
                session.execute(update(db.RunBatch).where(db.RunBatch.worker_id == worker.id,
                                                          db.RunBatch.done_at.is_(None))
                                .values(worker_id=None, lease_expires_at=None))
                self.log(f"worker {worker.name} is gone: its batches go to the others")
            elif self._alive(worker, now):
                live.append(worker)
        return live

    def _join(self) -> int:
        with self.sessions() as session:
            run = _lock_run(session, self.run_id)
            now = _now(session)
            live = self._bury(session, now)
            if live and _is_sqlite(session):
                other = live[0]
                raise SharingError(
                    f"run {run.id} ({run.name}) is being computed by worker {other.name} on {other.device}, and a "
                    "SQLite store has one writer: let it finish, or share a run among workers with "
                    "--db postgresql://user@host/db")
            worker = db.Worker(run_id=self.run_id, name=self.name, host=self.host[:255], pid=self.pid,
                               local_key=self.local_key, rank=self.launcher.rank, device=self.device,
                               device_kind=self.kind, started_at=now, heartbeat_at=now)
            session.add(worker)
            session.commit()
            return worker.id

    def _leave(self) -> None:
        with self.sessions() as session:
            now = _now(session)
            session.execute(update(db.RunBatch).where(db.RunBatch.worker_id == self.id, db.RunBatch.done_at.is_(None))
                            .values(worker_id=None, lease_expires_at=None))
            session.execute(update(db.Worker).where(db.Worker.id == self.id)
                            .values(finished_at=now, heartbeat_at=now, outcome=self.outcome))
            session.commit()

    # -- heartbeat

    def _heartbeat(self) -> None:
        """Renew this worker's claims every quarter lease, from its own thread (a long batch keeps its claim)."""
        while not self._stop.wait(self.lease_s / 4):
            try:
                with_retries(self._renew, attempts=3)
            except Exception as error:  # noqa: BLE001 - a missed beat costs at most this lease; keep beating
                self.log(f"worker heartbeat failed ({type(error).__name__}: {str(error).splitlines()[0]})")

    def _renew(self) -> None:
        with self.sessions() as session:
            now = _now(session)
            session.execute(update(db.Worker).where(db.Worker.id == self.id).values(heartbeat_at=now))
            session.execute(update(db.RunBatch).where(db.RunBatch.worker_id == self.id, db.RunBatch.done_at.is_(None))
                            .values(lease_expires_at=now + timedelta(seconds=self.lease_s)))
            session.commit()
        # Separately: the dashboard's "last seen"; it waits behind a worker finishing the run, holding nothing else.
        with self.sessions() as session:
            session.execute(update(db.Run).where(db.Run.id == self.run_id).values(heartbeat_at=now))
            session.commit()

    # -- claims

    def claims(self) -> Iterator[Claim]:
        """Batches for this worker until none is left; waits while other workers hold the last ones (one of them
        may die: its claim comes back when its lease runs out)."""
        idle = 0  # polls since the last claim: the wait grows from 0.1 s to 2 s, so the end of a run is seen soon
        while True:
            claim = with_retries(self._claim)
            if claim is not None:
                idle = 0
                yield claim
                continue
            wait = with_retries(self._wait)
            if wait is None:
                return
            time.sleep(min(wait, 0.1 * 2**idle))
            idle = min(idle + 1, 5)

    def _claim(self) -> Claim | None:
        with self.sessions() as session:
            now = _now(session)
            batch = session.scalars(
                select(db.RunBatch)
                .where(db.RunBatch.run_id == self.run_id, db.RunBatch.done_at.is_(None),
                       or_(db.RunBatch.worker_id.is_(None), db.RunBatch.lease_expires_at < now))
                .order_by(db.RunBatch.position).limit(1)
                .with_for_update(skip_locked=True)  # a batch another worker is claiming right now is skipped
            ).first()
            if batch is None:
                session.rollback()
                return None
            if batch.worker_id is not None:
                self.log(f"batch {batch.position}: its worker's lease ran out; this worker takes it")
            batch.worker_id, batch.lease_expires_at = self.id, now + timedelta(seconds=self.lease_s)
            batch.attempts += 1
            claim = Claim(batch.id, batch.position, list(batch.sample_ids), batch.attempts)
            session.commit()
            return claim

    def _wait(self) -> float | None:
        """Seconds until a held batch may come free (a lease running out), or None when every batch is done."""
        with self.sessions() as session:
            now = _now(session)
            self._bury(session, now)
            session.commit()
            leases = session.scalars(select(db.RunBatch.lease_expires_at).where(
                db.RunBatch.run_id == self.run_id, db.RunBatch.done_at.is_(None))).all()
        if not leases:
            return None
        free = [lease for lease in leases if lease is None or lease <= now]
        if free:
            return 0.0
        soonest = min(leases) - now
        return max(0.05, min(soonest.total_seconds() + 0.05, 2.0, self.lease_s / 4))

    def done(self, claim: Claim) -> None:
        """Every (arm, sample) of the batch is stored (by this worker, or by one that held it before)."""

        def unit() -> None:
            with self.sessions() as session:
                now = _now(session)
                session.execute(update(db.RunBatch).where(db.RunBatch.id == claim.id, db.RunBatch.done_at.is_(None))
                                .values(done_at=now, worker_id=self.id, lease_expires_at=None))
                session.commit()

        with_retries(unit)
