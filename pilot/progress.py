"""Progress of a long loop: a tqdm bar on a terminal, else a log line every ``every_s`` seconds.

Under ``nohup``, Slurm, Kubernetes or a CI job stderr is a file or a pipe, where a bar is one unreadable line
rewritten in place; periodic lines (``done/total``, rate, ETA) read well in a log and cost nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["LOG_EVERY_S", "Progress", "duration_text"]

LOG_EVERY_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""


def duration_text(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """``update(n)`` as work is done, ``close()`` at the end (also as a context manager).

    ``enabled=False`` shows nothing; ``stream`` (default stderr) decides between the bar (a terminal) and the log
    lines, written with ``log`` and prefixed by ``label``.
    """

    def __init__(self, total: int, *, label: str, unit: str = "result", log: Callable[[str], None],
                 enabled: bool = True, stream: TextIO | None = None, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.label, self.unit, self.log, self.every_s, self.clock = total, label, unit, log, every_s, clock
        self.done = 0
        self.started = self.last_line = clock()
        stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.lines = False
        if enabled:
            if stream.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=unit, file=stream, dynamic_ncols=True)
            else:
                self.lines = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and self.clock() - self.last_line >= self.every_s:
            self._line()

    def line(self) -> str:
        """``120/400 results (30%), 2.1 results/s, ETA 2 min 13 s``."""
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.label}: {self.done:,}/{self.total:,} {self.unit}s{share}, {rate:.2f} {self.unit}s/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {duration_text((self.total - self.done) / rate)}"
        elif self.done >= self.total:
            text += f", took {duration_text(elapsed)}"
        return text

    def _line(self) -> None:
        self.last_line = self.clock()
        self.log(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines:
            self._line()
            self.lines = False
