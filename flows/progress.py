"""A run you can watch: a terminal progress bar (or plain lines) and a Prefect progress artifact.

The total is unknown while discovery streams (an archive is never listed up front), so
the bar shows files done against files discovered so far, and the ETA is an estimate
over what is known. On a TTY the bar is redrawn in place on stderr; otherwise (cron,
CI, a worker's log) a plain line is printed every `interval_s`, so a log shows the run
moving without a line per file.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from flows.artifacts import ProgressArtifact
from tasks.batch import BatchResult

_BAR_WIDTH = 24
#: The progress artifact is updated at most this often: each update is a call to the Prefect
#: API in the flow's thread, between one batch's end and the next batch's start.
ARTIFACT_INTERVAL_S = 2.0


@dataclass
class Counts:
    discovered: int = 0
    done: int = 0
    failed: int = 0
    audio_minutes: float = 0.0
    cost: float = 0.0

    def add(self, r: BatchResult) -> None:
        self.done += r.transcribed + r.failed + r.not_sent
        self.failed += r.failed
        self.audio_minutes += r.audio_s / 60.0
        self.cost += r.cost


@dataclass
class Progress:
    """Fed by the flow (files discovered, batches done); draws and publishes from there."""

    mode: str = "auto"  # auto | bar | lines | off
    interval_s: float = 10.0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    artifact: ProgressArtifact | None = None
    counts: Counts = field(default_factory=Counts)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.mode == "auto":
            self.mode = "bar" if self.stream.isatty() else "lines"
        self._last_draw = 0.0
        self._last_publish = time.monotonic()
        self._lock = threading.Lock()

    def discovered(self) -> None:
        self.counts.discovered += 1
        self._draw()

    def batch_done(self, result: BatchResult) -> None:
        self.counts.add(result)
        now = time.monotonic()
        if self.artifact is not None and now - self._last_publish >= ARTIFACT_INTERVAL_S:
            self._last_publish = now
            self.artifact.update(self.percent())
        self._draw()

    def finish(self) -> None:
        if self.artifact is not None:
            self.artifact.update(100.0)
        self._draw(final=True)
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()

    def percent(self) -> float:
        c = self.counts
        return 100.0 * c.done / c.discovered if c.discovered else 0.0

    def line(self) -> str:
        """The state of the run in one line (files, audio minutes, cost, rate, ETA)."""
        c = self.counts
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = c.done / elapsed
        eta = (c.discovered - c.done) / rate if rate > 0 else None
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta is not None else "--:--:--"
        failed = f", {c.failed} failed" if c.failed else ""
        return (f"{c.done}/{c.discovered} files (discovered so far){failed} | {c.audio_minutes:.1f} audio min | "
                f"{c.cost:.4f} USD | {rate * 60:.1f} files/min | ETA {eta_text}")

    def _draw(self, final: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        with self._lock:
            wait = 0.2 if self.mode == "bar" else self.interval_s
            if not final and now - self._last_draw < wait:
                return
            self._last_draw = now
            if self.mode == "bar":
                filled = int(_BAR_WIDTH * self.percent() / 100.0)
                self.stream.write(f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {self.line()}\x1b[K")
            else:
                self.stream.write(f"bulkscribe: {self.line()}\n")
            self.stream.flush()
