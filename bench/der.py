"""Diarization error rate (DER) bench for stt.server.diarize.

Run:  python bench/der.py            (from the repo root, with the [diarization] extra installed)

Scores three recordings with a 0.25 s collar:
  * pyannote_sample.wav          (+ .rttm, 2 speakers, telephone, some overlap)
  * falcon_diarization_3spk.wav  (+ .rttm, 3 speakers)
  * a clean two-speaker conversation built here in memory from two single-speaker
    clips of the shared corpus (JFK inaugural excerpt, LibriSpeech 1995-1837-0001),
    cut at their pauses and alternated with short silences. Its reference RTTM is
    known by construction (each piece is trimmed to its own speech by energy, and its
    own pauses of 0.5 s or more are left out of the reference).
For scale it also prints the "one speaker throughout" baseline (every reference
speech second labelled as one speaker), the speaker count found, and diarization
wall time per audio second. With --words it also runs the word-timing check
(bench/word_timing.py) on the same constructed conversation.

DER here is the NIST md-eval definition:
    DER = (missed speech + false alarm + speaker confusion) / total reference speech
computed exactly on the union of all segment boundaries (no frame grid):
  * per elementary interval, N_ref / N_hyp = number of active reference / hypothesis
    speakers; miss = max(0, N_ref - N_hyp), false alarm = max(0, N_hyp - N_ref),
    confusion = min(N_ref, N_hyp) - N_correct, all weighted by duration; so
    overlapping reference speech counts once per speaker, as md-eval does;
  * N_correct uses the one-to-one reference->hypothesis speaker mapping that maximises
    the total co-occurrence time in the scored region (Hungarian assignment,
    scipy.optimize.linear_sum_assignment);
  * the collar removes +-collar seconds around every reference speaker-segment boundary
    (after merging each reference speaker's own overlapping segments) from scoring;
  * the scored region is everything else (no UEM), so hypothesis speech outside the
    reference is false alarm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
REPO_ROOT = Path(__file__).resolve().parents[1]
SR = 16000

Segment = tuple[float, float, Any]


# --------------------------------------------------------------------------- scoring


def _as_segments(items: Iterable[Any]) -> list[Segment]:
    """Accept (start, end, speaker) tuples or objects with .start/.end/.speaker."""
    out: list[Segment] = []
    for it in items:
        if hasattr(it, "start") and hasattr(it, "end"):
            s, e, spk = float(it.start), float(it.end), getattr(it, "speaker", getattr(it, "label", None))
        else:
            s, e, spk = float(it[0]), float(it[1]), it[2]
        if e > s:
            out.append((s, e, spk))
    return out


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _by_speaker(segments: list[Segment]) -> dict[Any, list[tuple[float, float]]]:
    d: dict[Any, list[tuple[float, float]]] = {}
    for s, e, spk in segments:
        d.setdefault(spk, []).append((s, e))
    return {k: _merge(v) for k, v in d.items()}


@dataclass(frozen=True)
class DERResult:
    der: float
    missed: float  # seconds
    false_alarm: float
    confusion: float
    total: float  # scored reference speech, seconds (overlap counted per speaker)
    mapping: dict

    def as_dict(self) -> dict:
        return {
            "der": self.der,
            "missed": self.missed,
            "false_alarm": self.false_alarm,
            "confusion": self.confusion,
            "total": self.total,
        }


def der_details(reference: Iterable[Any], hypothesis: Iterable[Any], collar: float = 0.25) -> DERResult:
    """DER with its components; see the module docstring for the exact definition."""
    from scipy.optimize import linear_sum_assignment

    ref = _by_speaker(_as_segments(reference))
    hyp = _by_speaker(_as_segments(hypothesis))
    ref_spk, hyp_spk = list(ref), list(hyp)

    # no-score zones around every reference boundary
    noscore = _merge([(b - collar, b + collar) for segs in ref.values() for s, e in segs for b in (s, e)] if collar > 0 else [])

    bounds = {0.0}
    for d in (ref, hyp):
        for segs in d.values():
            for s, e in segs:
                bounds.update((s, e))
    for s, e in noscore:
        bounds.update((max(s, 0.0), e))
    times = np.array(sorted(bounds))
    if len(times) < 2:
        return DERResult(0.0, 0.0, 0.0, 0.0, 0.0, {})
    starts, ends = times[:-1], times[1:]
    mids = (starts + ends) / 2
    dur = ends - starts

    def activity(segs: list[tuple[float, float]]) -> np.ndarray:
        act = np.zeros(len(mids), dtype=bool)
        for s, e in segs:
            act |= (mids > s) & (mids < e)
        return act

    scored = ~activity(noscore)
    w = dur * scored
    R = np.array([activity(ref[k]) for k in ref_spk], dtype=float).reshape(len(ref_spk), len(mids))
    H = np.array([activity(hyp[k]) for k in hyp_spk], dtype=float).reshape(len(hyp_spk), len(mids))
    n_ref = R.sum(0)
    n_hyp = H.sum(0)

    mapping: dict = {}
    n_correct = np.zeros(len(mids))
    if ref_spk and hyp_spk:
        overlap = (R * w) @ H.T  # seconds of co-occurrence, scored region only
        rows, cols = linear_sum_assignment(-overlap)
        for r, c in zip(rows, cols):
            if overlap[r, c] > 0:
                mapping[ref_spk[r]] = hyp_spk[c]
                n_correct += R[r] * H[c]

    total = float((n_ref * w).sum())
    missed = float((np.maximum(0, n_ref - n_hyp) * w).sum())
    fa = float((np.maximum(0, n_hyp - n_ref) * w).sum())
    conf = float(((np.minimum(n_ref, n_hyp) - n_correct) * w).sum())
    err = missed + fa + conf
    value = err / total if total > 0 else (0.0 if err == 0 else float("inf"))
    return DERResult(value, missed, fa, conf, total, mapping)


def der(reference: Iterable[Any], hypothesis: Iterable[Any], collar: float = 0.25) -> float:
    """Diarization error rate of `hypothesis` against `reference` (0.0 = perfect, 1.0 = all missed).

    Both are iterables of (start_s, end_s, speaker) tuples or of objects with
    .start/.end/.speaker (e.g. stt.server.diarize.Turn). Speaker labels only need to be
    consistent within each side.
    """
    return der_details(reference, hypothesis, collar).der


def read_rttm(path: Path) -> list[Segment]:
    out: list[Segment] = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            s, d = float(f[3]), float(f[4])
            out.append((s, s + d, f[7]))
    return out


def one_speaker_baseline(reference: Sequence[Segment]) -> list[Segment]:
    """Every second of reference speech labelled as one and the same speaker."""
    return [(s, e, "A") for s, e in _merge([(s, e) for s, e, _ in reference])]


# ------------------------------------------------------------ constructed conversation

# (file, [(window_start, window_end), ...]) -- windows cut inside the pauses of each
# recording (checked on the energy envelope); each piece is then trimmed to its speech.
CONVERSATION_SOURCES = {
    "A": ("jfk_inaugural.flac", [(0.0, 2.45), (2.45, 7.6), (7.6, 10.55)]),
    "B": ("librispeech_1995-1837-0001.wav", [(0.0, 2.5), (2.5, 6.36), (6.36, 8.73)]),
}
CONVERSATION_ORDER = [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2)]
CONVERSATION_GAPS = [0.6, 0.4, 0.8, 0.5, 0.7]  # silence between turns, seconds
CONVERSATION_LEAD = 0.5  # silence before the first turn
MIN_PAUSE_S = 0.5  # pauses this long inside a piece are not reference speech


def _loud_frames(x: np.ndarray, rel_db: float = 25.0, above_noise_db: float = 10.0) -> np.ndarray:
    """Boolean per 10 ms frame: louder than max(peak - rel_db, noise floor + above_noise_db).

    The noise floor is the 10th percentile of the frame energies (JFK has crowd noise
    ~30 dB under the speech, LibriSpeech ~35 dB).
    """
    n = len(x) // 160
    fr = x[: n * 160].reshape(n, 160)
    db = 10 * np.log10((fr.astype(np.float64) ** 2).mean(1) + 1e-12)
    thr = max(db.max() - rel_db, np.percentile(db, 10) + above_noise_db)
    return db > thr


def _trim_to_speech(x: np.ndarray) -> tuple[int, int]:
    """First/last sample of the loud frames."""
    idx = np.flatnonzero(_loud_frames(x))
    return int(idx[0] * 160), int((idx[-1] + 1) * 160)


def _pauses(x: np.ndarray, min_pause_s: float) -> list[tuple[float, float]]:
    """Quiet stretches of at least min_pause_s inside x, in seconds from x's start."""
    loud = _loud_frames(x)
    out, i, n = [], 0, len(loud)
    while i < n:
        if loud[i]:
            i += 1
            continue
        j = i
        while j < n and not loud[j]:
            j += 1
        if 0 < i and j < n and (j - i) / 100 >= min_pause_s:
            out.append((i / 100, j / 100))
        i = j
    return out


def build_conversation(audio_dir: Path = AUDIO_DIR) -> tuple[np.ndarray, list[Segment], list[dict]]:
    """Return (audio, reference segments, pieces) of the constructed two-speaker conversation.

    pieces: one dict per turn with speaker, source file, source window and the exact
    start/end (seconds) of the trimmed piece in the conversation.
    """
    from faster_whisper import decode_audio

    decoded = {k: decode_audio(str(audio_dir / f), sampling_rate=SR) for k, (f, _) in CONVERSATION_SOURCES.items()}
    parts = [np.zeros(int(CONVERSATION_LEAD * SR), np.float32)]
    t = CONVERSATION_LEAD
    ref: list[Segment] = []
    pieces: list[dict] = []
    for i, (spk, j) in enumerate(CONVERSATION_ORDER):
        fname, windows = CONVERSATION_SOURCES[spk]
        ws, we = windows[j]
        seg = decoded[spk][int(ws * SR) : int(we * SR)]
        a, b = _trim_to_speech(seg)
        piece = seg[a:b].astype(np.float32)
        # 10 ms raised-cosine fades so the cut itself adds no click
        fade = np.sin(np.linspace(0, np.pi / 2, 160, dtype=np.float32)) ** 2
        piece[:160] *= fade
        piece[-160:] *= fade[::-1]
        start, end = t, t + len(piece) / SR
        # the reference turn is the piece, split at its own pauses of MIN_PAUSE_S or more
        # (JFK pauses ~1 s after "ask not"; no annotator would mark that as speech)
        cur = start
        for ps, pe in _pauses(piece, MIN_PAUSE_S):
            ref.append((round(cur, 4), round(start + ps, 4), spk))
            cur = start + pe
        ref.append((round(cur, 4), round(end, 4), spk))
        pieces.append({"speaker": spk, "file": fname, "window": (ws, we), "start": start, "end": end})
        parts.append(piece)
        t = end
        gap = CONVERSATION_GAPS[i] if i < len(CONVERSATION_GAPS) else 0.5
        parts.append(np.zeros(int(gap * SR), np.float32))
        t += int(gap * SR) / SR
    return np.concatenate(parts), ref, pieces


# ------------------------------------------------------------------------- the bench


def _load_diarize_module():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from stt.server import diarize as mod

    return mod


def run(words: bool = False, repeat: int = 1, model: str | None = None) -> int:
    from faster_whisper import decode_audio

    mod = _load_diarize_module()
    diarizer = mod.Diarizer()
    items: list[tuple[str, np.ndarray, list[Segment], float]] = []
    for name, stem, goal in (
        ("pyannote_sample", "pyannote_sample", 0.20),
        ("falcon_diarization_3spk", "falcon_diarization_3spk", 0.15),
    ):
        audio = decode_audio(str(AUDIO_DIR / f"{stem}.wav"), sampling_rate=SR)
        items.append((name, audio, read_rttm(AUDIO_DIR / f"{stem}.rttm"), goal))
    conv_audio, conv_ref, _ = build_conversation()
    items.append(("constructed_2spk_conversation", conv_audio, conv_ref, 0.10))

    # load models once so the timings below are per-call cost, not start-up
    t0 = time.perf_counter()
    diarizer.load()
    warmup = time.perf_counter() - t0

    rows = []
    hdr = f"{'file':32s} {'dur_s':>6s} {'ref_spk':>7s} {'hyp_spk':>7s} {'DER%':>6s} {'miss%':>6s} {'FA%':>6s} {'conf%':>6s} {'1spk%':>6s} {'goal%':>6s} {'diar_s':>7s} {'cpu_s':>6s} {'RTF':>6s}"
    print(hdr)
    print("-" * len(hdr))
    all_ok = True
    for name, audio, ref, goal in items:
        dur = len(audio) / SR
        best, best_cpu = float("inf"), float("inf")
        for _ in range(max(1, repeat)):
            t0, c0 = time.perf_counter(), time.process_time()
            turns = diarizer.diarize(audio)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        r = der_details(ref, turns, collar=0.25)
        base = der_details(ref, one_speaker_baseline(ref), collar=0.25)
        n_ref = len({s for _, _, s in ref})
        n_hyp = len({t.speaker for t in turns})
        ok = r.der < goal
        all_ok &= ok
        total = r.total
        print(
            f"{name:32s} {dur:6.2f} {n_ref:7d} {n_hyp:7d} {100 * r.der:6.2f} {100 * r.missed / total if total else 0.0:6.2f} "
            f"{100 * r.false_alarm / total if total else 0.0:6.2f} {100 * r.confusion / total if total else 0.0:6.2f} {100 * base.der:6.2f} {100 * goal:6.1f} "
            f"{best:7.3f} {best_cpu:6.3f} {best / dur:6.3f}"
        )
        rows.append(
            {
                "file": name,
                "duration_s": dur,
                "der": r.der,
                **r.as_dict(),
                "baseline_1spk": base.der,
                "ref_speakers": n_ref,
                "hyp_speakers": n_hyp,
                "diarize_s": best,
                "diarize_cpu_s": best_cpu,
                "goal": goal,
            }
        )
    total_audio = sum(r["duration_s"] for r in rows)
    total_time = sum(r["diarize_s"] for r in rows)
    total_cpu = sum(r["diarize_cpu_s"] for r in rows)
    print(
        f"model load: {warmup:.2f} s; diarization wall time: {total_time:.2f} s for "
        f"{total_audio:.1f} s of audio = {total_time / total_audio:.3f} s per audio second "
        f"(CPU {total_cpu / total_audio:.3f} s per audio second; best of {max(1, repeat)} runs each)"
    )
    if words:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import word_timing

        word_timing.run(model, repeat)
    print(json.dumps({"rows": rows}, default=float))
    verdict = "PASS" if all_ok else "FAIL"
    print(
        f"{verdict}: DER "
        + ", ".join(f"{r['file']} {100 * r['der']:.1f}% (goal <{100 * r['goal']:.0f}%)" for r in rows)
        + f"; {total_time / total_audio:.3f} s diarization per audio second"
    )
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--words", action="store_true", help="also run bench/word_timing.py")
    p.add_argument("--repeat", type=int, default=1, help="time each file this many times, keep the best")
    p.add_argument("--model", help="Whisper CTranslate2 dir for --words (default: see bench/word_timing.py)")
    a = p.parse_args(argv)
    return run(words=a.words, repeat=a.repeat, model=a.model)


if __name__ == "__main__":
    sys.exit(main())
