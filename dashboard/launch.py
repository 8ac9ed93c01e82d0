"""Start the dashboard's Streamlit server: ``launch(db_url, port, host)`` (used by ``pilot dashboard``).

    python -m dashboard.launch [--db URL] [--port 8501] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

APP = Path(__file__).resolve().with_name("app.py")
DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"


def streamlit_command(db_url: str | None, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                      python: str | None = None) -> list[str]:
    """The command line that serves the dashboard (binds ``host``, no browser, no usage statistics)."""
    command = [
        python or sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(int(port)), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
    ]
    if db_url:
        command += ["--", "--db", db_url]
    return command


def launch(db_url: str | None, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
    """Serve the dashboard until the server stops (Ctrl-C or SIGTERM); returns Streamlit's exit code.

    ``db_url`` None: the app reads ``$PILOT_DB``, else ``sqlite:///pilot.db`` in the current folder.
    """
    print(f"TransPrune pilot dashboard on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr)
    process = subprocess.Popen(streamlit_command(db_url, port, host))

    def forward(signum, _frame) -> None:  # a SIGTERM to us stops the server too
        if process.poll() is None:
            process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return process.wait()
    except KeyboardInterrupt:  # the server got the same SIGINT and shuts down on its own
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            return process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="store URL or SQLite file (default: $PILOT_DB or pilot.db)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    args = parser.parse_args(argv)
    return launch(args.db, args.port, args.host)


if __name__ == "__main__":
    raise SystemExit(main())
