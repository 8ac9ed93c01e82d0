"""Serving benchmark: `pilot serve` on the demo model, baseline against the recommended schedule, at 1, 4 and 16
concurrent clients; requests per second and latency percentiles; dynamic batching against one request at a time;
and whether the shadow A/B delays live answers.

    python bench/serve.py                          # the table (about 4 minutes on 2 cores)
    python bench/serve.py --seconds 5 --clients 1 16
    python bench/serve.py --arm 'transprune:...'   # another schedule (default: the demo's verified one)

Each configuration is a fresh `pilot serve` process (``--port 0``); the clients are threads of this process, each
with its own official ``openai`` client, sending the demo's inspection questions with a demo image (a data URL)
back to back for ``--seconds`` per row (paced rows: ``--paced-seconds``), after a short warm-up. Latency is the
client's wall time per request (non-streaming: the whole answer). Rows:

- baseline / recommended, batched (``--max-batch-size 16``, ``--max-wait-ms`` 50 as by default): req/s and
  p50/p95 at each level;
- recommended, one at a time (``--max-batch-size 1``): the same server without batching;
- recommended + shadow (``--shadow baseline --shadow-rate 0.1``): must match the batched row's latencies (the
  shadow arm runs only while the queue is empty, and yields at the next layer when a request arrives);
- paced (one client, ``--think-ms`` between requests, so the server is idle in between and shadow batches do run):
  no shadow against ``--shadow-rate 1.0``, where every gap is shadow work that live requests interrupt.

"mean batch": requests per model.generate in that row; "server CPU ms/req": the server process's CPU time over the
row's requests (all its threads); "client CPU ms/req": this process's. Prints one table, the batching speed-up
(the most clients, batched, over one client) and the shadow counts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECOMMENDED = "transprune:prune_after=4/6/9,keep=0.7756/0.7723/0.7572,accumulate_from=2,alpha=0.945,positions=original"
KEY = "bench-key"


class Server:
    """A `pilot serve` subprocess; its JSON log read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "pilot", "serve", "--port", "0", *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env={**env, "PILOT_API_KEY": KEY})
        self.events: list[dict] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(300):
            self.process.kill()
            raise RuntimeError("pilot serve did not start")
        port = next(e["port"] for e in self.events if e.get("event") == "listening")
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def _read(self) -> None:
        for line in self.process.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            if event.get("event") == "listening":
                self.ready.set()

    def metrics(self) -> dict[str, float]:
        import urllib.request

        request = urllib.request.Request(self.base_url.removesuffix("/v1") + "/metrics",
                                         headers={"Authorization": f"Bearer {KEY}"})
        text = urllib.request.urlopen(request, timeout=30).read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("pilot_serve") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def yield_bound_ms(self) -> float:
        """The smallest histogram bucket holding every wait of a live request for shadow work to give way."""
        import urllib.request

        request = urllib.request.Request(self.base_url.removesuffix("/v1") + "/metrics",
                                         headers={"Authorization": f"Bearer {KEY}"})
        text = urllib.request.urlopen(request, timeout=30).read().decode()
        buckets = []
        for line in text.splitlines():
            if line.startswith("pilot_serve_shadow_yield_seconds_bucket"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
        total = max((count for _, count in buckets), default=0)
        return next((bound * 1000 for bound, count in sorted(buckets) if count >= total), 0.0)

    def cpu_s(self) -> float:
        """The server process's CPU seconds so far (user and system, all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(120)


def payloads(count: int) -> list[list[dict]]:
    """The demo's inspection questions, each with its image as a data URL (encoded once, before timing)."""
    from pilot.data.manifest import load_manifest
    from pilot.runner import demo_dataset_path

    items = list(load_manifest(demo_dataset_path()).items)[:count]
    out = []
    for item in items:
        url = "data:image/png;base64," + base64.b64encode(Path(item.image).read_bytes()).decode()
        out.append([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": item.question}]}])
    return out


def load(base_url: str, chats: list, clients: int, seconds: float, think_s: float = 0.0) -> dict:
    """``clients`` threads sending requests back to back (after ``think_s``) for ``seconds``; rate and latencies."""
    import openai

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=120)
        n = index
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                api.chat.completions.create(model="demo", messages=chats[n % len(chats)])
            except Exception as error:  # noqa: BLE001 - counted and shown
                with lock:
                    errors.append(type(error).__name__)
                return
            with lock:
                latencies.append(time.perf_counter() - started)
            n += clients
            if think_s:
                time.sleep(think_s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "rps": len(ms) / elapsed, "errors": len(errors),
            "p50": statistics.median(ms) if ms else None,
            "p95": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))] if ms else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", default=RECOMMENDED, help="the pruned arm (default: the demo's verified schedule)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per row (default 8)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="untimed load before each server's rows")
    parser.add_argument("--think-ms", type=float, default=150.0, help="the paced client's pause between requests")
    parser.add_argument("--paced-seconds", type=float, default=20.0, help="load per paced row (default 20)")
    parser.add_argument("--threads", type=int, help="torch threads of the server (default: torch's)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    chats = payloads(32)
    store = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "live.db"
    batched = ["--max-batch-size", "16"]
    # (arm, batching, shadow, flags, client levels, think time)
    configs = [
        ("baseline", "batched", "-", ["--arm", "baseline", *batched], args.clients, 0.0),
        ("recommended", "batched", "-", ["--arm", args.arm, *batched], args.clients, 0.0),
        ("recommended", "one at a time", "-", ["--arm", args.arm, "--max-batch-size", "1"], args.clients, 0.0),
        ("recommended", "batched", "baseline 0.1", ["--arm", args.arm, *batched, "--shadow", "baseline",
                                                    "--shadow-rate", "0.1", "--db", str(store)], args.clients, 0.0),
        ("recommended", "paced", "-", ["--arm", args.arm, *batched], [1], args.think_ms / 1000),
        ("recommended", "paced", "baseline 1.0", ["--arm", args.arm, *batched, "--shadow", "baseline",
                                                  "--shadow-rate", "1.0", "--db", str(store)], [1],
         args.think_ms / 1000),
    ]
    rows, notes = [], []
    for arm, batching, shadow, flags, levels, think_s in configs:
        seconds = args.paced_seconds if think_s else args.seconds
        server = Server(flags, env)
        try:
            # Warm-up, untimed: the first requests, then a short burst at the highest level (larger batch shapes).
            load(server.base_url, chats, 1, args.warmup_s / 2)
            load(server.base_url, chats, max(levels), args.warmup_s / 2)
            for clients in levels:
                before, cpu_before, own_before = server.metrics(), server.cpu_s(), time.process_time()
                result = load(server.base_url, chats, clients, seconds, think_s)
                after, cpu_after, own_after = server.metrics(), server.cpu_s(), time.process_time()
                batches = after["pilot_serve_batch_size_count"] - before["pilot_serve_batch_size_count"]
                batched_requests = after["pilot_serve_batch_size_sum"] - before["pilot_serve_batch_size_sum"]
                result["batch"] = batched_requests / batches if batches else 0.0
                result["cpu_ms"] = (cpu_after - cpu_before) * 1000 / max(result["requests"], 1)
                result["client_cpu_ms"] = (own_after - own_before) * 1000 / max(result["requests"], 1)
                rows.append({"arm": arm, "batching": batching, "shadow": shadow, "clients": clients, **result})
                print(f"  {arm:<12} {batching:<14} {shadow:<13} {clients:>2} clients: {result['rps']:.1f} req/s",
                      file=sys.stderr)
            if shadow != "-":
                metrics = server.metrics()
                stopped = metrics.get("pilot_serve_shadow_yield_seconds_count", 0)
                mean_ms = metrics.get("pilot_serve_shadow_yield_seconds_sum", 0) * 1000 / stopped if stopped else 0
                notes.append(f"shadow {shadow} ({batching}): sampled "
                             f"{metrics.get('pilot_serve_shadow_sampled_total', 0):.0f}, computed under load "
                             f"{metrics.get('pilot_serve_shadow_computed_total', 0):.0f}; {stopped:.0f} shadow batches "
                             f"stopped by a live request, which waited {mean_ms:.1f} ms on average for them to give "
                             f"way (at most {server.yield_bound_ms():g} ms)")
        finally:
            server.stop()
    print("| arm | batching | shadow | clients | requests | req/s | p50 ms | p95 ms | mean batch | server CPU ms/req "
          "| client CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        errors = f" ({row['errors']} errors)" if row["errors"] else ""
        print(f"| {row['arm']} | {row['batching']} | {row['shadow']} | {row['clients']} | {row['requests']}{errors} "
              f"| {row['rps']:.1f} | {row['p50']:.0f} | {row['p95']:.0f} | {row['batch']:.1f} | {row['cpu_ms']:.0f} "
              f"| {row['client_cpu_ms']:.0f} |")
    one = next(r for r in rows if r["arm"] == "recommended" and r["batching"] == "batched" and r["shadow"] == "-"
               and r["clients"] == min(args.clients))
    top = next(r for r in rows if r["arm"] == "recommended" and r["batching"] == "batched" and r["shadow"] == "-"
               and r["clients"] == max(args.clients))
    print(f"\nbatching: {top['rps']:.1f} req/s at {top['clients']} clients = {top['rps'] / one['rps']:.2f}x "
          f"the {one['rps']:.1f} req/s of one client at a time")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
