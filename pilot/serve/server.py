"""``serve``: loads the model, builds its ``Runtime`` (``pilot.serve.runtime``), binds the port and runs uvicorn until
SIGTERM or Ctrl-C.

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
from typing import TYPE_CHECKING

from pilot.models import load
from pilot.serve import logs
from pilot.serve.runtime import Runtime
from pilot.serve.settings import ServeSettings, study_recommendation

if TYPE_CHECKING:
    import uvicorn


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
