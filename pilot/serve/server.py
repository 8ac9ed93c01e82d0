"""The server's parts put together (``Runtime``: model, batcher, shadow A/B, metrics) and ``serve``, which loads
the model, binds the port and runs uvicorn until SIGTERM or Ctrl-C.

Graceful shutdown: uvicorn stops accepting connections and waits up to ``--shutdown-timeout-s`` for the requests
in flight (streams included); then the app's lifespan ends: the batcher finishes what is queued, runs pending
shadow work for up to ``--shadow-drain-s``, and the store writer stores every computed pair and the summaries.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from pilot.models import LoadedModel, load
from pilot.pruning import parse
from pilot.serve import logs
from pilot.serve.batcher import Batcher, model_lock
from pilot.serve.chat import Limits
from pilot.serve.metrics import ServeMetrics
from pilot.serve.settings import ServeSettings, check_arms, study_recommendation
from pilot.serve.shadow import LiveRun, ShadowRunner, StoreWriter, live_run_settings

if TYPE_CHECKING:
    import uvicorn

MIB = 2**20


def model_label(loaded: LoadedModel) -> str:
    """The model's name for clients and the store: "demo", or the checkpoint folder's name."""
    return "demo" if loaded.name == "demo" else Path(loaded.path).name


class Runtime:
    """One served model: the batcher that owns it, the optional shadow A/B, and the metrics of both."""

    def __init__(self, settings: ServeSettings, loaded: LoadedModel, arm: str, *, source: str | None = None) -> None:
        self.settings = settings
        self.loaded = loaded
        self.arm = arm
        self.source = source  # where the arm came from: "--arm" or "study NAME"
        self.model_name = settings.served_model_name or model_label(loaded)
        self.device = torch.device(settings.device)
        self.dtype = getattr(torch, settings.dtype)
        self.created = int(time.time())
        self.port: int | None = None
        parse(arm).resolve(loaded.depth)  # a schedule deeper than the model fails here, not on the first request
        max_images = settings.max_images
        if max_images is None:  # the family's: 1 for those trained on one image per conversation
            max_images = loaded.adapter.max_images
        self.limits = Limits(
            max_new_tokens=settings.max_new_tokens, max_images=max_images,
            max_image_bytes=int(settings.max_image_mb * MIB),
            max_image_pixels=int(settings.max_image_megapixels * 1e6),
            allow_dirs=tuple(Path(folder).resolve() for folder in settings.allow_dirs))
        self.max_body_bytes = int(settings.max_body_mb * MIB)
        self.context_tokens = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
        self.metrics = ServeMetrics(self.model_name, arm, settings.shadow)
        self.shadow: ShadowRunner | None = None
        self.live_run: LiveRun | None = None
        if settings.shadow is not None:
            check_arms(arm, settings.shadow)
            parse(settings.shadow).resolve(loaded.depth)
            from pilot.store import open_store

            self._sessions = open_store(settings.db)  # an unreachable store fails here, before the model serves
            LiveRun.check(self._sessions, settings.run_name, loaded, arm, settings.shadow)
            self.shadow = ShadowRunner(loaded, settings.shadow, rate=settings.shadow_rate, seed=settings.shadow_seed,
                                       batch_size=settings.shadow_batch_size, queue_max=settings.shadow_queue_max,
                                       device=self.device, metrics=self.metrics, writer=None)
        self.batcher = Batcher(loaded, arm, device=self.device, dtype=self.dtype,
                               max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                               max_queue=settings.max_queue, metrics=self.metrics,
                               context_tokens=self.context_tokens, threads=settings.threads, shadow=self.shadow)
        self._lock = threading.Lock()
        self._started = self._closed = False

    def warm_up(self) -> None:
        """One small generation per arm before the first client: kernels and allocators settle."""
        from pilot.generation import generate_batch

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        inputs = self.batcher.prepare([_Warm(self.loaded.prompt("warm up"), [image])])
        for arm in [self.arm] + ([self.settings.shadow] if self.settings.shadow else []):
            with model_lock(self.loaded.model):
                generate_batch(self.loaded, arm, inputs, [2], self.device)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.shadow is not None:  # the live run is opened once the server really starts
            settings = self.settings
            serve_info = {"served_arm": self.arm, "shadow_arm": settings.shadow, "shadow_rate": settings.shadow_rate,
                          "arm_source": self.source, "max_batch_size": settings.max_batch_size,
                          "max_wait_ms": settings.max_wait_ms}
            self.live_run = LiveRun.open(
                self._sessions, name=settings.run_name, loaded=self.loaded, model_label=self.model_name,
                served_arm=self.arm, shadow_arm=settings.shadow, device=self.device,
                settings=live_run_settings(self.model_name, self.arm, settings.shadow,
                                           batch_size=settings.max_batch_size, device=settings.device,
                                           dtype=settings.dtype, max_new_tokens=settings.max_new_tokens,
                                           serve=serve_info))
            self.shadow.writer = StoreWriter(self.live_run, self.metrics, flush_s=settings.shadow_flush_s,
                                             summary_every=settings.shadow_summary_every,
                                             live_idle=self.batcher.live_idle)
            self.shadow.writer.start()
        self.batcher.start()

    def close(self) -> None:
        """Finish queued work, drain shadow work (bounded), store every computed pair. Idempotent."""
        with self._lock:
            if self._closed or not self._started:
                return
            self._closed = True
        logs.event("draining", queued=self.batcher.queued,
                   shadow_pending=self.shadow.pending if self.shadow else 0)
        self.batcher.stop(shadow_drain_s=self.settings.shadow_drain_s if self.shadow else 0.0)
        if self.shadow is not None:
            self.shadow.close()
            logs.event("shadow_closed", run_id=self.live_run.run_id, run=self.live_run.name,
                       stored=self.shadow.writer.stored, lost=self.shadow.writer.lost)
        logs.event("stopped")


class _Warm:
    def __init__(self, prompt: str, images: list[Image.Image]) -> None:
        self.prompt = prompt
        self.images = images


def resolve_arm(settings: ServeSettings) -> tuple[str, str, str | None]:
    """(arm, model, the config sha256 the arm was verified on): --arm, or the study's verified recommendation."""
    if settings.from_study is None:
        return settings.arm, settings.model or "demo", None
    study = study_recommendation(settings.db, settings.from_study)
    return study.strategy, settings.model or study.model, study.config_sha256


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket: bound and listening before uvicorn starts, so a client that connects at once waits in the
    backlog instead of being refused."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on TCP sockets that say so, and without it each
    # response's body waits for the client's delayed ACK of its headers (40 ms on Linux).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
    sock.listen(2048)
    return sock


def _uvicorn(runtime: Runtime, api_key: str) -> uvicorn.Server:
    import uvicorn

    from pilot.serve.app import create_app

    class Server(uvicorn.Server):
        """uvicorn's server, but a graceful stop on SIGTERM or Ctrl-C ends ``pilot serve`` with status 0: uvicorn
        re-raises the signal once it has stopped, which would end the process before ``serve`` returns."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(create_app(runtime, api_key), log_config=None, access_log=False, lifespan="on",
                            server_header=False, timeout_graceful_shutdown=int(runtime.settings.shutdown_timeout_s))
    return Server(config)


def serve(settings: ServeSettings) -> int:
    """Run the server until SIGTERM or Ctrl-C (graceful: see the module)."""
    settings.validate()
    api_key = settings.resolved_api_key()
    arm, model, verified_on = resolve_arm(settings)
    loaded = load(model, device=settings.device, dtype=settings.dtype)
    if verified_on is not None and loaded.config_hash != verified_on:
        raise ValueError(f"--from-study {settings.from_study}: its recommendation was verified on another model "
                         f"(config sha256 {verified_on[:12]}), not on {model} ({loaded.config_hash[:12]}); serve "
                         "the model the study tuned, or give --arm")
    source = f"study {settings.from_study}" if settings.from_study else "--arm"
    runtime = Runtime(settings, loaded, arm, source=source)
    logs.configure(settings.log_level)  # from here on JSON lines; a bad setting above is one plain error line
    runtime.warm_up()
    sock = _listen(settings.host, settings.port)
    runtime.port = sock.getsockname()[1]
    server = _uvicorn(runtime, api_key)
    try:
        server.run(sockets=[sock])
    finally:
        runtime.close()  # already done by the lifespan's end, unless uvicorn was forced out (a second Ctrl-C)
    if not server.started:
        raise RuntimeError("the server did not start (see the log above)")
    return 0


@contextmanager
def running(runtime: Runtime, api_key: str, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``runtime`` from a background thread (tests, benchmarks, notebooks) on its settings' host and port (0:
    any free one); yields the OpenAI base URL (``http://HOST:PORT/v1``). Leaving the block stops the server as
    SIGTERM does: in-flight requests finish, then the runtime drains and closes."""
    sock = _listen(runtime.settings.host, runtime.settings.port)
    runtime.port = sock.getsockname()[1]
    server = _uvicorn(runtime, api_key)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pilot-serve-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start (see its log)")
        time.sleep(0.02)
    try:
        yield f"http://{runtime.settings.host}:{runtime.port}/v1"
    finally:
        server.should_exit = True
        thread.join(runtime.settings.shutdown_timeout_s + 60)
        runtime.close()
