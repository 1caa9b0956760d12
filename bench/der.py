"""Diarization error rate (DER) bench for the embedded server's diarizer (stt.server.diarize).

Run:  python bench/der.py [--oracle] [--repeat N] [--words] [--set KEY=VALUE]...
      python bench/der.py --sweep KEY=V1,V2,... [--set KEY=VALUE]...
(repo root, [diarization] extra installed)

The dev set is every recording in ../shared/audio that has a human reference RTTM:
pyannote_sample (two-party telephone-style call), falcon_diarization_3spk (three clean
clips), and the AMI meeting excerpts pyannote_debug_trn04, trn05, dev00 and tst00 (real
meetings, overlapped speech). (leopard_diarization_3spk has speaker-attributed words but no
times, so no reference; its first 13 s are falcon's.) For each file it prints the DER with a
0.25 s collar and its parts, the "one speaker throughout" baseline (every reference speech
second labelled as one speaker), the speaker counts and the time taken; then the means and
`ratio=` mean DER / mean one-speaker DER (goal: at most 0.5, and every file below its own
baseline). --oracle passes the reference speaker count as num_speakers. A clean two-speaker
conversation built in memory (below) is scored too, outside the means. With --words it also
runs the word-timing check (bench/word_timing.py). The single-speaker clips of ../shared/audio
must come out as one speaker (it prints any that do not). --set overrides a DiarizerConfig
knob; --sweep scores every value of one knob on every file and prints the leave-one-out DER
(each file scored with the value best on the other files): how thresholds are chosen here.

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


def dev_set(audio_dir: Path = AUDIO_DIR) -> list[tuple[str, Path, Path]]:
    """(name, audio, rttm) of every recording with a reference RTTM."""
    out = []
    for rttm in sorted(audio_dir.glob("*.rttm")):
        audio = [p for p in sorted(audio_dir.glob(rttm.stem + ".*")) if p.suffix in (".wav", ".flac")]
        if audio:
            out.append((rttm.stem, audio[0], rttm))
    return out


@dataclass(frozen=True)
class Row:
    name: str
    duration_s: float
    result: DERResult
    baseline: float
    ref_speakers: int
    hyp_speakers: int
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        r, t = self.result, self.result.total or 1.0
        verdict = "below" if r.der < self.baseline else "NOT below"
        return (f"{self.name:30s} {self.duration_s:6.1f} {self.ref_speakers:4d} {self.hyp_speakers:4d} "
                f"{100 * r.der:6.1f} {100 * r.missed / t:6.1f} {100 * r.false_alarm / t:6.1f} "
                f"{100 * r.confusion / t:6.1f} {100 * self.baseline:6.1f} {self.wall_s:6.2f} {self.cpu_s:6.2f}  {verdict}")


def score(diarizer: Any, name: str, audio: np.ndarray, ref: list[Segment], oracle: bool, repeat: int) -> Row:
    n_ref = len({s for _, _, s in ref})
    best_wall = best_cpu = float("inf")
    turns: list = []
    for _ in range(max(1, repeat)):
        w0, c0 = time.perf_counter(), time.process_time()
        turns = diarizer.diarize(audio, num_speakers=n_ref if oracle else None)
        best_wall, best_cpu = min(best_wall, time.perf_counter() - w0), min(best_cpu, time.process_time() - c0)
    base = der(ref, one_speaker_baseline(ref))
    return Row(name, len(audio) / SR, der_details(ref, turns), base, n_ref, len({t.speaker for t in turns}),
               best_wall, best_cpu)


SINGLE_SPEAKER_CLIPS = ["jfk_inaugural.flac", "librispeech_1995-1837-0001.wav", "leopard_test_de.wav",
                        "leopard_test_es.wav", "leopard_test_fr.wav", "leopard_test_ja.wav",
                        "aishell_BAC009S0724W0121.wav", "timit_LDC93S1.wav", "ru_deepspeech_sample.wav"]


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """key=value pairs for DiarizerConfig, each value cast to the field's type."""
    from stt.server.diarize import DiarizerConfig

    base, out = DiarizerConfig(), {}
    for item in items:
        key, value = item.split("=", 1)
        current = getattr(base, key)  # AttributeError names an unknown knob
        out[key] = type(current)(value) if current is not None else float(value)
    return out


def single_speaker_splits(diarizer: Any) -> list[tuple[str, int]]:
    """(clip, speakers found) for the single-speaker clips that did not come out as one speaker."""
    from faster_whisper import decode_audio

    out = []
    for name in SINGLE_SPEAKER_CLIPS:
        if (AUDIO_DIR / name).is_file():
            found = len({t.speaker for t in diarizer.diarize(decode_audio(str(AUDIO_DIR / name), sampling_rate=SR))})
            if found != 1:
                out.append((name, found))
    return out


def sweep(key: str, values: Sequence[str], overrides: dict[str, Any]) -> int:
    """DER per file for every value of one knob, and its leave-one-out estimate: each file is
    scored with the value that is best (lowest mean DER) on the other files; on a tie, the default."""
    from faster_whisper import decode_audio

    from stt.server.diarize import Diarizer, DiarizerConfig

    files = [(name, decode_audio(str(a), sampling_rate=SR), read_rttm(r)) for name, a, r in dev_set()]
    table: dict[str, list[float]] = {}
    for value in values:
        cfg = DiarizerConfig(**{**overrides, **parse_overrides([f"{key}={value}"])})
        diarizer = Diarizer(config=cfg)
        table[value] = [der(ref, diarizer.diarize(audio)) for _, audio, ref in files]
        print(f"{key}={value:8s} " + " ".join(f"{100 * d:6.1f}" for d in table[value])
              + f"  mean {100 * np.mean(table[value]):5.1f}  single-speaker clips split: {single_speaker_splits(diarizer)}")
    default = getattr(DiarizerConfig(**overrides), key)

    def held_out_mean(v: str, i: int) -> tuple[float, bool]:  # ties keep the default value
        return float(np.mean([d for j, d in enumerate(table[v]) if j != i])), parse_overrides([f"{key}={v}"])[key] != default

    loo = []
    for i, (name, _, ref) in enumerate(files):
        chosen = min(values, key=lambda v: held_out_mean(v, i))
        loo.append(table[chosen][i])
        base = der(ref, one_speaker_baseline(ref))
        print(f"leave-one-out {name:30s} {key}={chosen:8s} DER {100 * loo[-1]:5.1f} (one speaker {100 * base:5.1f})")
    print(f"leave-one-out mean DER {100 * np.mean(loo):.1f}%")
    return 0


def run(words: bool = False, repeat: int = 1, model: str | None = None, oracle: bool = False,
        overrides: dict[str, Any] | None = None) -> int:
    from faster_whisper import decode_audio

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from stt.server.diarize import Diarizer, DiarizerConfig

    diarizer = Diarizer(config=DiarizerConfig(**(overrides or {})))
    t0 = time.perf_counter()
    diarizer.load()  # the timings below are per-call cost, not start-up
    print(f"model load {time.perf_counter() - t0:.2f} s; collar 0.25 s; num_speakers "
          f"{'= reference count (--oracle)' if oracle else 'estimated'}")
    hdr = (f"{'file':30s} {'dur_s':>6s} {'ref':>4s} {'hyp':>4s} {'DER%':>6s} {'miss%':>6s} {'FA%':>6s} "
           f"{'conf%':>6s} {'1spk%':>6s} {'wall_s':>6s} {'cpu_s':>6s}  vs 1spk")
    print(hdr + "\n" + "-" * len(hdr))
    rows = []
    for name, audio_path, rttm in dev_set():
        audio = decode_audio(str(audio_path), sampling_rate=SR)
        rows.append(score(diarizer, name, audio, read_rttm(rttm), oracle, repeat))
        print(rows[-1].line())
    conv_audio, conv_ref, _ = build_conversation()
    print("(outside the means) " + score(diarizer, "constructed_2spk", conv_audio, conv_ref, oracle, repeat).line())
    mean_der = float(np.mean([r.result.der for r in rows]))
    mean_base = float(np.mean([r.baseline for r in rows]))
    audio_s = sum(r.duration_s for r in rows)
    print(f"diarization: {sum(r.wall_s for r in rows) / audio_s:.3f} wall-s, {sum(r.cpu_s for r in rows) / audio_s:.3f} "
          f"CPU-s per audio second (best of {max(1, repeat)})")
    below = sum(r.result.der < r.baseline for r in rows)
    print(f"mean DER {100 * mean_der:.1f}% vs mean one-speaker DER {100 * mean_base:.1f}% over {len(rows)} files; "
          f"{below}/{len(rows)} files below their one-speaker baseline")
    print(json.dumps({"rows": [{"file": r.name, **r.result.as_dict(), "baseline_1spk": r.baseline,
                                "ref_speakers": r.ref_speakers, "hyp_speakers": r.hyp_speakers,
                                "wall_s": r.wall_s, "cpu_s": r.cpu_s} for r in rows]}, default=float))
    print(f"single-speaker clips not found as one speaker: {single_speaker_splits(diarizer)}")
    if words:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import word_timing

        word_timing.run(model, repeat)
    print(f"ratio={mean_der / mean_base:.3f}")
    return 0 if rows and mean_der <= 0.5 * mean_base and below == len(rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--oracle", action="store_true", help="pass the reference speaker count as num_speakers")
    p.add_argument("--words", action="store_true", help="also run bench/word_timing.py")
    p.add_argument("--repeat", type=int, default=1, help="time each file this many times, keep the best")
    p.add_argument("--model", help="Whisper CTranslate2 dir for --words (default: see bench/word_timing.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DiarizerConfig knob")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", help="DER per value of one knob, with leave-one-out")
    a = p.parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    overrides = parse_overrides(a.set)
    if a.sweep:
        key, values = a.sweep.split("=", 1)
        return sweep(key, values.split(","), overrides)
    return run(words=a.words, repeat=a.repeat, model=a.model, oracle=a.oracle, overrides=overrides)


if __name__ == "__main__":
    sys.exit(main())
