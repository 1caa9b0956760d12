"""Where a request's audio lives while the server works on it: one private temp file.

Files are created 0600 (mkstemp) because they hold the clients' audio; the jobs folder
that keeps an asynchronous job's audio until it ends is 0700.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TempAudio:
    path: str
    size: int

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def new_temp_file(prefix: str) -> tuple[int, str]:
    """An open descriptor and path of a new private temp file."""
    return tempfile.mkstemp(prefix=prefix, suffix=".audio")


def write_temp_file(data: bytes, prefix: str) -> TempAudio:
    fd, path = new_temp_file(prefix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return TempAudio(path, len(data))


def keep_for_job(audio: TempAudio, jobs_dir: Path) -> Path:
    """Move the audio into the jobs folder (maybe another filesystem than the temp dir)."""
    jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = jobs_dir / f"{uuid.uuid4().hex}.audio"
    shutil.move(audio.path, kept)
    return kept
