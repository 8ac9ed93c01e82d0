"""Scaling benchmark: one pilot run computed by one worker, then by two, on the demo; samples per second.

    python bench/scale.py                         # fresh PostgreSQL database on 127.0.0.1:5432, all 600 demo samples
    python bench/scale.py --limit 120 --workers 1 2 --repeats 2 --db postgresql://user@host/db
    python bench/scale.py --controls matched      # a longer job: the pilot with its control arms

Each worker is the same ``pilot run --name NAME --db URL`` process, started together as a launcher would, with
``--threads`` torch threads (one by default: two workers on a 2-core machine, as one GPU each). Two rates per row:

- wall: the run's samples over the time from starting the workers to the last one's exit (model loading, warm-up
  and the wait for the last batch included: what a user waits for);
- steady: samples per second between the first and the last result stored (the work phase alone).

"start s": from starting the workers to the first result stored (imports, model loading, warm-up). Every worker pays
it at the same time, so it does not shrink with more workers and caps the wall speed-up of a short run (Amdahl):
wall speed-up = (start + work) / (start + work / workers).

"cores used": the workers' CPU seconds over the wall time; below the worker count when other processes share the
cores, which then caps the speed-up whatever the workers do.

Speed-ups are against the one-worker row. The database is created for the benchmark and dropped afterwards unless
``--db`` names one. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot.store import models as db  # noqa: E402
from pilot.store import normalise_url, upgrade  # noqa: E402

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def run_once(url: str, workers: int, args: argparse.Namespace, tag: str) -> dict:
    """Start ``workers`` processes on one new run; wait for all; read back what each stored and when."""
    name = f"scale-{workers}w-{tag}"
    command = [sys.executable, "-m", "pilot.cli", "run", "--name", name, "--db", url, "--json",
               "--batch-size", str(args.batch_size)]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.controls:
        command += ["--controls", args.controls]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched_at = datetime.now(UTC)  # results carry the workers' wall clock: the same machine's
    started = time.perf_counter()
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(workers)]
    errors = [process.communicate()[1] for process in processes]
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds the workers got: on a shared machine, fewer than workers x wall when others take the cores.
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    for process, error in zip(processes, errors, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"a worker failed ({process.returncode}):\n{error[-3000:]}")
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            run = connection.execute(select(db.Run.id).where(db.Run.name == name)).scalar_one()
            arm_names = connection.execute(
                select(db.Arm.name).where(db.Arm.run_id == run).order_by(db.Arm.id)).scalars().all()
            arms = len(arm_names)
            results = (select(db.SampleResult.created_at).join(db.Arm).where(db.Arm.run_id == run)).subquery()
            count, first, last = connection.execute(
                select(func.count(), func.min(results.c.created_at), func.max(results.c.created_at))).one()
            per_worker = connection.execute(
                select(func.count(db.SampleResult.id)).join(db.Worker, db.SampleResult.worker_id == db.Worker.id)
                .where(db.Worker.run_id == run).group_by(db.Worker.id).order_by(db.Worker.id)).scalars().all()
    finally:
        engine.dispose()
    samples = count // arms
    steady_s = (last - first).total_seconds()
    # The window opens with the first commit (one batch of one arm): the results after it, over the window.
    steady = (count - args.batch_size) / arms / steady_s if steady_s > 0 else float("nan")
    return {"workers": workers, "samples": samples, "wall_s": wall, "wall_rate": samples / wall,
            "start_s": (first - launched_at).total_seconds(), "steady_rate": steady, "cores": cpu / wall,
            "per_worker": per_worker, "arms": arm_names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="PostgreSQL URL (default: a fresh database on 127.0.0.1:5432, dropped after)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--limit", type=int, help="first N demo samples (default: all 600)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--controls", choices=["matched"],
                        help="add the matched control arms (a longer job: 8 arms instead of 2)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, worker counts interleaved; medians shown")
    args = parser.parse_args()

    from pilot.runner import demo_dataset_path

    demo_dataset_path()  # generated once, before any timing
    load = os.getloadavg()
    owned = None
    url = args.db
    if url is None:
        owned = f"pilot_scale_{uuid.uuid4().hex[:10]}"
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{owned}"')
        url = ADMIN_URL.rsplit("/", 1)[0] + f"/{owned}"
    try:
        upgrade(url)
        # Warm the file cache (imports, checkpoint) so that the first row does not pay for it alone.
        subprocess.run([sys.executable, "-c", "import pilot.runner, pilot.models"], check=True)
        rows: dict[int, list[dict]] = {n: [] for n in args.workers}
        for repeat in range(args.repeats):
            for workers in args.workers:
                row = run_once(url, workers, args, f"{repeat}-{uuid.uuid4().hex[:6]}")
                rows[workers].append(row)
                print(f"round {repeat + 1}: {workers} worker(s): {row['samples']} samples in {row['wall_s']:.1f} s "
                      f"wall, steady {row['steady_rate']:.2f} samples/s, results per worker {row['per_worker']}",
                      file=sys.stderr)
    finally:
        if owned is not None:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{owned}" WITH (FORCE)')
            admin.dispose()

    def median(workers: int, key: str) -> float:
        return statistics.median(row[key] for row in rows[workers])

    base = args.workers[0]
    arms = rows[base][0]["arms"]
    print(f"demo model, {rows[base][0]['samples']} samples x {len(arms)} arms ({', '.join(arms)}), batch size "
          f"{args.batch_size}, {args.threads} thread(s) per worker, {os.cpu_count()} CPU cores, PostgreSQL; "
          f"median of {args.repeats}; load average {load[0]:.1f} before the first round")
    print(f"{'workers':>7} {'wall s':>8} {'start s':>8} {'samples/s':>10} {'speed-up':>9} {'steady/s':>9} "
          f"{'speed-up':>9} {'cores used':>10}  results per worker")
    for workers in args.workers:
        print(f"{workers:>7} {median(workers, 'wall_s'):>8.1f} {median(workers, 'start_s'):>8.1f} "
              f"{median(workers, 'wall_rate'):>10.2f} "
              f"{median(workers, 'wall_rate') / median(base, 'wall_rate'):>8.2f}x "
              f"{median(workers, 'steady_rate'):>9.2f} "
              f"{median(workers, 'steady_rate') / median(base, 'steady_rate'):>8.2f}x "
              f"{median(workers, 'cores'):>10.2f}  {rows[workers][-1]['per_worker']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
