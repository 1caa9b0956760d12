"""Overhead of the embedded server over calling faster-whisper directly.

Run:  .venv/bin/python bench/server_overhead.py [--model Whisper-Large-V3|Wizper] [--repeat N]
                                                [--engine-path fast|legacy]

The same clips are transcribed, in one run, sequentially (one request at a time):
  (a) direct: the server's own engine (`stt.server.whisper_engine.WhisperEngine`) in this
      process, on the same weights and settings, given the clip's file path (it decodes
      the file itself, as the server's engine does with the uploaded temp file);
  (b) server: the embedded server (`EmbeddedServer`, its own process, loopback HTTP),
      multipart upload of the same bytes through the project's `STTClient`, with its
      engine path, worker/thread/compute settings forced equal to (a)'s through the
      environment.
So the ratio is what the HTTP layer costs (parsing, temp file, probe, admission, billing,
SQLite) over the engine's own work, on either engine path.

A warm-up pass of every clip (untimed) is done for both first. Then `--repeat` timed
passes of each. By default (a) and (b) are interleaved clip by clip, and which of the two
goes first alternates from clip to clip and from repetition to repetition, so that noise
from other processes hits both alike (`--no-interleave`: per repetition all clips
through (a), then all through (b)).

Printed: audio seconds per wall second for (a) and (b), a per-clip table, CPU seconds
used by each side (this process for (a), the server process for (b)), and as the very
last line `ratio=<(b)/(a) throughput, 3 decimals>`; 1.000 means no server overhead
(goal >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from stt.client import STTClient  # noqa: E402
from stt.contract import WHISPER_LARGE_V3, WIZPER, normalize_language  # noqa: E402
from stt.server.launcher import EmbeddedServer  # noqa: E402
from stt.server.settings import ServerSettings  # noqa: E402
from stt.server.whisper_engine import WhisperEngine  # noqa: E402

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
FALLBACK_DIR = REPO_ROOT / "samples"
SR = 16_000

#: ~62 s of speech in six short clips, five containers/codecs.
CLIPS = (
    "jfk_inaugural.flac",                 # 11.0 s, FLAC 44.1 kHz stereo 24-bit
    "jfk_inaugural_whispercpp.mp3",       # 11.0 s, MP3 16 kHz mono
    "librispeech_1995-1837-0001.ogg",     # 8.7 s, Ogg Vorbis
    "aishell_BAC009S0724W0121.m4a",       # 4.3 s, M4A/AAC, Mandarin
    "leopard_test_es.wav",                # 8.7 s, WAV, Spanish
    "falcon_diarization_3spk.wav",        # 18.6 s, WAV, three speakers
)
#: What samples/ holds when the shared corpus is absent.
FALLBACK_CLIPS = (
    "jfk_inaugural_whispercpp.mp3",
    "librispeech_1995-1837-0001.ogg",
    "aishell_BAC009S0724W0121.m4a",
    "leopard_test_fr.wav",
    "timit_LDC93S1.wav",
)


@dataclass
class Clip:
    name: str
    path: Path
    data: bytes
    duration_s: float
    a_times: list[float] = field(default_factory=list)
    b_times: list[float] = field(default_factory=list)
    a_text: str = ""
    b_text: str = ""


def load_clips() -> list[Clip]:
    from faster_whisper import decode_audio

    if all((AUDIO_DIR / c).is_file() for c in CLIPS):
        paths = [AUDIO_DIR / c for c in CLIPS]
    else:
        paths = [FALLBACK_DIR / c for c in FALLBACK_CLIPS if (FALLBACK_DIR / c).is_file()]
        if not paths:
            sys.exit(f"no clips found in {AUDIO_DIR} or {FALLBACK_DIR}")
        print(f"note: {AUDIO_DIR} incomplete, using {FALLBACK_DIR}", file=sys.stderr)
    clips = []
    for p in paths:
        data = p.read_bytes()
        clips.append(Clip(p.name, p, data, len(decode_audio(io.BytesIO(data), sampling_rate=SR)) / SR))
    return clips


class Direct:
    """(a): the server's engine in this process, decoding included."""

    def __init__(self, settings: ServerSettings, accurate: bool, language: str | None) -> None:
        self.engine = WhisperEngine(settings)
        self.weights_name = self.engine.weights_name
        self.accurate, self.language = accurate, language

    def __call__(self, clip: Clip) -> str:
        return self.engine.transcribe(str(clip.path), accurate=self.accurate, language=self.language).text


class ViaServer:
    """(b): one multipart upload per clip to the embedded server, awaited before the next."""

    def __init__(self, srv: EmbeddedServer, model: str, language: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = STTClient(srv.api_url, srv.api_key)
        self.model, self.language = model, language
        self.pid = srv._proc.pid  # for the server's CPU time

    def __call__(self, clip: Clip) -> str:
        resp = self.loop.run_until_complete(
            self.client.transcribe_bytes(clip.data, clip.name, model=self.model, language=self.language))
        return resp.transcription

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process (all threads) from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(side: str, clip: Clip, direct: Direct, server: ViaServer, record: bool) -> float:
    t0 = time.perf_counter()
    text = direct(clip) if side == "a" else server(clip)
    dt = time.perf_counter() - t0
    if side == "a":
        clip.a_text = text
        if record:
            clip.a_times.append(dt)
    else:
        clip.b_text = text
        if record:
            clip.b_times.append(dt)
    return dt


def cpu_now(side: str, server: ViaServer) -> float:
    # (a): CPU of this process (all its threads); (b): CPU of the server process.
    return time.process_time() if side == "a" else proc_cpu_s(server.pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=(WHISPER_LARGE_V3, WIZPER), default=WHISPER_LARGE_V3,
                   help="Whisper-Large-V3: accurate settings (beam 5); Wizper: fast (beam 1)")
    p.add_argument("--repeat", type=int, default=2, help="timed passes per side (default 2)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                   help="interleave (a)/(b) clip by clip, alternating who goes first (default); "
                        "--no-interleave: per repetition all (a) then all (b)")
    p.add_argument("--workers", type=int, default=1, help="server workers = (a)'s num_workers (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="CTranslate2 threads per worker for both (default: cores / workers, as the server)")
    p.add_argument("--engine-path", choices=("fast", "legacy"), default="fast", help="engine path of both sides")
    args = p.parse_args(argv)

    settings = ServerSettings(workers=args.workers, cpu_threads=args.threads, engine_path=args.engine_path)
    threads = settings.threads_per_worker()
    accurate = args.model != WIZPER
    language = "auto"
    server_env = {
        "BULKSCRIBE_SERVER_WORKERS": str(settings.workers),
        "BULKSCRIBE_SERVER_CPU_THREADS": str(threads),
        "BULKSCRIBE_SERVER_COMPUTE_TYPE": settings.compute_type,
        "BULKSCRIBE_SERVER_ENGINE_PATH": settings.engine_path,
        "BULKSCRIBE_SERVER_ACCURATE_BEAM_SIZE": str(settings.accurate_beam_size),
        "BULKSCRIBE_SERVER_FAST_BEAM_SIZE": str(settings.fast_beam_size),
        "BULKSCRIBE_SERVER_VAD_FILTER": str(settings.vad_filter).lower(),
    }
    if settings.whisper_model:
        server_env["BULKSCRIBE_SERVER_WHISPER_MODEL"] = settings.whisper_model

    started = time.perf_counter()
    clips = load_clips()
    total_audio = sum(c.duration_s for c in clips)
    print(f"model={args.model} engine_path={settings.engine_path} "
          f"beam={settings.accurate_beam_size if accurate else settings.fast_beam_size} "
          f"vad={settings.vad_filter} compute={settings.compute_type} workers={settings.workers} "
          f"threads={threads} cores={os.cpu_count()} repeat={args.repeat} "
          f"interleave={'yes' if args.interleave else 'no'} loadavg={os.getloadavg()[0]:.2f}")
    print(f"clips: {len(clips)}, {total_audio:.1f} s of audio")

    with EmbeddedServer(env=server_env) as srv:
        direct = Direct(settings, accurate, normalize_language(language))
        print(f"weights: {direct.weights_name}")
        server = ViaServer(srv, args.model, language)
        try:
            # Warm-up (untimed): first-call costs of CTranslate2, PyAV, VAD model, HTTP pool.
            for clip in clips:
                run_one("a", clip, direct, server, record=False)
                run_one("b", clip, direct, server, record=False)
            walls = {"a": [0.0] * args.repeat, "b": [0.0] * args.repeat}
            cpus = {"a": [0.0] * args.repeat, "b": [0.0] * args.repeat}
            for r in range(args.repeat):
                if args.interleave:
                    # Clip by clip, (a) and (b) back to back; who goes first flips with every
                    # clip and every repetition, so slow phases of the machine hit both alike.
                    steps = [(clip, ("a", "b") if (r + i) % 2 == 0 else ("b", "a")) for i, clip in enumerate(clips)]
                else:
                    steps = [(clip, ("a",)) for clip in clips] + [(clip, ("b",)) for clip in clips]
                for clip, sides in steps:
                    for side in sides:
                        c0 = cpu_now(side, server)
                        walls[side][r] += run_one(side, clip, direct, server, record=True)
                        cpus[side][r] += cpu_now(side, server) - c0
                print(f"  repetition {r + 1}: (a) {walls['a'][r]:6.2f} s wall {cpus['a'][r]:6.2f} s CPU | "
                      f"(b) {walls['b'][r]:6.2f} s wall {cpus['b'][r]:6.2f} s CPU | "
                      f"ratio {walls['a'][r] / walls['b'][r]:.3f}")
        finally:
            server.close()

    thr = {s: total_audio * len(walls[s]) / sum(walls[s]) for s in ("a", "b")}
    print()
    print(f"{'clip':34} {'audio s':>7} {'(a) s':>7} {'(b) s':>7} {'b-a s':>7} {'b/a thr':>7}  same text")
    for c in clips:
        a, b = statistics.mean(c.a_times), statistics.mean(c.b_times)
        print(f"{c.name:34} {c.duration_s:7.2f} {a:7.3f} {b:7.3f} {b - a:+7.3f} {a / b:7.3f}  "
              f"{'yes' if c.a_text == c.b_text else 'NO'}")
    print()
    print(f"(a) direct engine        : {thr['a']:.2f} audio-s/wall-s  "
          f"(CPU {statistics.mean(cpus['a']):.2f} s/pass in this process)")
    print(f"(b) embedded server HTTP : {thr['b']:.2f} audio-s/wall-s  "
          f"(CPU {statistics.mean(cpus['b']):.2f} s/pass in the server process)")
    best = sum(min(c.a_times) for c in clips) / sum(min(c.b_times) for c in clips)
    print(f"best-of-{args.repeat} per clip ratio: {best:.3f}; CPU ratio (a)/(b): "
          f"{sum(cpus['a']) / sum(cpus['b']):.3f}; loadavg now {os.getloadavg()[0]:.2f}; "
          f"total runtime {time.perf_counter() - started:.0f} s")
    print(f"ratio={thr['b'] / thr['a']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
