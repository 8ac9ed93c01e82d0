"""Graceful shutdown of `pilot serve` under load: SIGTERM while clients are mid-request. Every client gets a full
answer or a connection error before its request was accepted; every accepted request is answered; the process
exits 0; the store holds every shadow pair the server logged as computed, and the run is completed."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import openai
from sqlalchemy import select

from pilot.data.manifest import load_manifest
from pilot.data.synthetic import CAPTION_QUESTION
from pilot.store import models as db
from pilot.store import open_store

RECOMMENDED = "transprune:prune_after=4/6/9,keep=0.7756/0.7723/0.7572,accumulate_from=2,alpha=0.945,positions=original"
KEY = "shutdown-test-key"
CLIENTS = 6
REQUESTS_PER_CLIENT = 40  # a bound: the SIGTERM comes after about 12 answers
START_TIMEOUT_S = 180.0


class ServerLog:
    """The server's JSON log lines (stderr), read as they come."""

    def __init__(self, stream) -> None:
        self.events: list[dict] = []
        self.lines: list[str] = []
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # progress bars and the like
                continue
            self.events.append(event)
            if event.get("event") == "listening":
                self.listening.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]


def test_sigterm_under_load_answers_every_accepted_request_and_stores_every_computed_pair(manifest, tmp_path):
    items = list(load_manifest(manifest).items)
    db_url = f"sqlite:///{tmp_path / 'live.db'}"
    command = [sys.executable, "-m", "pilot", "serve", "--model", "demo", "--arm", RECOMMENDED, "--shadow", "baseline",
               "--shadow-rate", "1.0", "--port", "0", "--db", db_url, "--run-name", "shutdown-test",
               "--max-wait-ms", "5", "--shadow-drain-s", "1", "--shutdown-timeout-s", "30"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PILOT_API_KEY": KEY})
    log = ServerLog(process.stderr)
    try:
        assert log.listening.wait(START_TIMEOUT_S), "".join(log.lines[-20:])
        port = log.named("listening")[0]["port"]
        base_url = f"http://127.0.0.1:{port}/v1"
        outcomes: list[tuple] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=60)
            for n in range(REQUESTS_PER_CLIENT):
                item = items[(index + n) % len(items)]
                url = "data:image/png;base64," + base64.b64encode(item.image.read_bytes()).decode()
                question = CAPTION_QUESTION if n % 2 else item.question
                chat = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": question}]}]
                try:
                    if n % 3 == 0:  # a third of the requests stream
                        chunks = list(api.chat.completions.create(model="demo", messages=chat, stream=True))
                        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                        outcome = ("ok", chunks[0].id, text, chunks[-1].choices[0].finish_reason)
                    else:
                        reply = api.chat.completions.create(model="demo", messages=chat)
                        outcome = ("ok", reply.id, reply.choices[0].message.content, reply.choices[0].finish_reason)
                except openai.APIConnectionError as error:  # refused or closed before the request was accepted
                    outcome = ("connection_error", type(error.__cause__).__name__)
                except Exception as error:  # noqa: BLE001 - anything else fails the test below
                    outcome = ("other", f"{type(error).__name__}: {error}")
                with lock:
                    outcomes.append(outcome)
                if outcome[0] != "ok":
                    return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while sum(o[0] == "ok" for o in outcomes) < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # six clients: requests are in flight and queued right now
        sent_at = time.monotonic()
        for thread in threads:
            thread.join(120)
        assert process.wait(60) == 0
        log.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert time.monotonic() - sent_at < 60
    others = [o for o in outcomes if o[0] == "other"]
    assert not others, others
    ok = {o[1]: o for o in outcomes if o[0] == "ok"}
    assert all(text and finish == "stop" for _, _, text, finish in ok.values())
    # Every request the server accepted was answered in full, and every full answer was one it logged as a 200.
    served = {e["request_id"]: e for e in log.named("request") if e.get("route") == "/v1/chat/completions"}
    assert {rid for rid, e in served.items() if e["status"] == 200} == set(ok)
    assert all(e["status"] == 200 for e in served.values())
    # Some of them were mid-request when SIGTERM came: finished after uvicorn began shutting down.
    shutting = next(e["ts"] for e in log.events if e.get("event") == "Shutting down")
    assert any(e["ts"] > shutting for e in served.values())
    assert all(o[0] == "ok" for o in outcomes[:12])
    # The store holds every pair the server computed, the run completed with its summaries.
    computed = {e["request_id"] for e in log.named("shadow_computed")}
    stored_logged = {rid for e in log.named("shadow_stored") for rid in e["request_ids"]}
    assert computed and computed == stored_logged and computed <= set(ok)
    sessions = open_store(db_url)
    with sessions() as session:
        run = session.scalar(select(db.Run).where(db.Run.name == "shutdown-test"))
        assert run.status == "completed" and all(arm.summary is not None for arm in run.arms)
        for arm in run.arms:
            assert {r.sample_id for r in arm.results} == computed, arm.strategy
        by_id = {r.sample_id: r for r in next(a for a in run.arms if a.strategy == RECOMMENDED).results}
        assert all(by_id[rid].answer_text == ok[rid][2] for rid in computed)
    closed = log.named("shadow_closed")[0]
    assert closed["stored"] == len(computed) and closed["lost"] == 0
    # Structured logs: one JSON object a line, ids and timings, never an image or a prompt.
    assert all("data:image" not in line and "iVBORw0KGgo" not in line and CAPTION_QUESTION not in line
               for line in log.lines)
    assert all(event["stream"] in (True, False) and event["images"] == 1 for event in served.values())
