"""What every benchmark needs to fail fast instead of hanging: dependency checks up front,
child processes waited with timeouts, pipes whose ends are closed in the right process,
and a child's own peak memory.

A benchmark that cannot run says why in one line (`BenchError`, printed by `run_main`)
and exits non-zero, so `make bench` (bench/run_all.py) reports it and goes on.
"""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
import re
import sys
import time
import unicodedata
import wave
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_EXTRA_HINT = "install the dev extra: make bench (or .venv/bin/python -m pip install -e '.[server,diarization,dev]')"


class BenchError(Exception):
    """The benchmark cannot give a result; the message says why in one line."""


def require(*modules: str, hint: str = DEV_EXTRA_HINT) -> None:
    """Every module importable, or one BenchError naming all that are not."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(f"missing module(s) {', '.join(missing)}: {hint}")


def run_main(main: Callable[[], int]) -> int:
    """Run a benchmark's main; a BenchError becomes one line on stderr and exit status 2."""
    try:
        return main()
    except BenchError as exc:
        name = Path(sys.argv[0]).name
        print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
        return 2


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a live process, in MB.

    Not getrusage: on Linux ru_maxrss survives exec, so a child started from a large
    process reports the parent's peak instead of its own."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


class Child:
    """A spawned child process talking over a pipe, that cannot hang its parent.

    The parent closes its copy of the child's end right after start, so when the child
    dies (an import error, a crash) the parent's `recv` sees EOF at once instead of
    waiting forever; every wait has a timeout and names the child's exit code."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.conn, child_conn = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(target=target, args=(*args, child_conn), daemon=True, name=name)
        self.proc.start()
        child_conn.close()

    def recv(self, timeout_s: float) -> Any:
        """The child's next message; BenchError if it dies or says nothing in time."""
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            if not self.proc.is_alive():
                raise BenchError(f"{self.name} exited with code {self.proc.exitcode} before answering "
                                 "(its error is printed above)")
            if time.monotonic() >= deadline:
                raise BenchError(f"{self.name} said nothing for {timeout_s:.0f} s")
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise BenchError(f"{self.name} exited with code {self.proc.exitcode} before answering "
                             "(its error is printed above)") from None

    def send(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the child is gone already; stop() reports nothing more

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the child to stop (a message, then EOF), then terminate, then kill it."""
        self.send("stop")
        self.conn.close()
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# -- distinct audio files --------------------------------------------------------------------

#: How many distinct copies `distinct_copy` can make of one clip.
DISTINCT_COPIES = 1 << 24


def distinct_copy(pcm: np.ndarray, index: int) -> np.ndarray:
    """A copy of 16-bit `pcm` whose bytes differ from every other index's copy: the index's
    24 bits, a nibble each, nudge six samples spread over the clip (by -8..+7, inaudible),
    so that content hashes (request keys) differ while the audio stays the same."""
    if not 0 <= index < DISTINCT_COPIES or len(pcm) < 12:
        raise BenchError(f"cannot make copy {index} of a {len(pcm)}-sample clip")
    out = pcm.astype(np.int16, copy=True)
    wrapped = out.view(np.uint16)
    for j in range(6):
        pos = (2 * j + 1) * len(out) // 12
        wrapped[pos] = (int(wrapped[pos]) + ((index >> (4 * j)) & 0xF) - 8) % 65536
    return out


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono WAV."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype(np.int16).tobytes())
    return buf.getvalue()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Float samples in [-1, 1] (clipped) as a 16-bit mono WAV file."""
    path.write_bytes(wav_bytes(np.clip(audio, -1, 1) * 32767, sample_rate))
    return path


#: Languages written without spaces between words: their error rate counts characters.
UNSPACED = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue"})


def words(text: str, language: str | None = None) -> list[str]:
    """NFKC, lower case, punctuation (but apostrophes) dropped; characters for UNSPACED languages."""
    text = re.sub(r"[^\w\s']", " ", unicodedata.normalize("NFKC", text).lower())
    return [c for c in text if not c.isspace()] if language in UNSPACED else text.split()


def wer(reference: str, hypothesis: str, language: str | None = None) -> float:
    """Word (or character) error rate: edit distance over the reference's length."""
    ref, hyp = words(reference, language), words(hypothesis, language)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))
