"""A two-speaker conversation of any length, built from two single-speaker clips of the
shared speech set, with its reference speaker turns known by construction.

Speaker A is J.F. Kennedy (jfk_inaugural.flac), speaker B a LibriSpeech reader
(librispeech_1995-1837-0001.wav). Each clip is cut into phrases at its pauses (frame
energy, 30 ms frames); the conversation alternates A and B, each turn one to three
phrases drawn with a seeded random generator, separated by 0.4-1.2 s of silence. The
reference turns are the phrases' spans. Used by the long-file diarization check
(bench/long_diarization.py) and its shorter version in the test suite.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

SR = 16000
AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
SOURCES = {"A": "jfk_inaugural.flac", "B": "librispeech_1995-1837-0001.wav"}
_FRAME = int(0.03 * SR)

Turn = tuple[float, float, str]


def phrases(audio: np.ndarray, min_pause_s: float = 0.35, floor_db: float = -35.0) -> list[np.ndarray]:
    """The clip's stretches of speech, split at pauses of at least `min_pause_s`."""
    n = len(audio) // _FRAME
    frames = audio[: n * _FRAME].reshape(n, _FRAME)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = db > db.max() + floor_db
    pieces, start, quiet = [], None, 0
    need = int(min_pause_s / 0.03)
    for i, on in enumerate(loud):
        if on:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= need:
                pieces.append(audio[start * _FRAME: (i - quiet + 1) * _FRAME])
                start, quiet = None, 0
    if start is not None:
        pieces.append(audio[start * _FRAME: n * _FRAME])
    return [p for p in pieces if len(p) >= 0.4 * SR]


def build(minutes: float, seed: int = 7, audio_dir: Path = AUDIO_DIR) -> tuple[np.ndarray, list[Turn]]:
    """(16 kHz mono float32 audio, reference turns (start, end, speaker)) of about `minutes`."""
    from faster_whisper import decode_audio

    voices = {spk: phrases(decode_audio(str(audio_dir / name), sampling_rate=SR)) for spk, name in SOURCES.items()}
    rng = random.Random(seed)
    parts: list[np.ndarray] = [np.zeros(int(0.5 * SR), np.float32)]
    ref: list[Turn] = []
    t, speaker = 0.5, "A"
    while t < minutes * 60:
        for _ in range(rng.randint(1, 3)):
            piece = rng.choice(voices[speaker]).astype(np.float32)
            ref.append((round(t, 3), round(t + len(piece) / SR, 3), speaker))
            parts.append(piece)
            t += len(piece) / SR
            gap = rng.uniform(0.3, 0.6)
            parts.append(np.zeros(int(gap * SR), np.float32))
            t += int(gap * SR) / SR
        gap = rng.uniform(0.4, 1.2)
        parts.append(np.zeros(int(gap * SR), np.float32))
        t += int(gap * SR) / SR
        speaker = "B" if speaker == "A" else "A"
    return np.concatenate(parts), ref


def write_wav(path: Path, audio: np.ndarray) -> Path:
    from bench._common import write_wav as write_16bit

    return write_16bit(path, audio, SR)
