"""Word-timing and word-speaker check on the constructed two-speaker conversation.

Run:  python bench/word_timing.py [--model DIR] [--repeat N]

The conversation is the one bench/der.py builds (JFK inaugural excerpt and LibriSpeech
1995-1837-0001 cut at their pauses, alternated with silences), so every reference
speech segment's start and end are known by construction to the 10 ms frame (each
piece is trimmed to its own speech by energy; pauses of 0.5 s or more inside a piece
split it). faster-whisper (word_timestamps=True, beam 5) transcribes it and:

  * word timing error: for every reference segment, |first word start - segment start|
    and |last word end - segment end| (words go to the segment that contains, or is
    nearest to, their midpoint);
  * word speaker accuracy: share of words whose speaker from
    stt.server.diarize.assign_speakers(turns, spans) (what the server answers: in overlapped
    speech the dominant voice) matches the reference speaker of their segment (after the
    best one-to-one label mapping);
  * timing: transcription and diarization wall/CPU time on the same audio, and their ratio.

The Whisper model: --model, else $BULKSCRIBE_SERVER_WHISPER_MODEL, else the project's
bundled whisper-base (stt.server.weights.bundled_model_dir()).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import der as der_bench  # bench/der.py

SR = 16000


def _model_dir(arg: str | None) -> str:
    if arg:
        return arg
    env = os.environ.get("BULKSCRIBE_SERVER_WHISPER_MODEL")
    if env:
        return env
    from stt.server.weights import bundled_model_dir

    return str(bundled_model_dir())


def _timed(fn, repeat: int):
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(max(1, repeat)):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def run(model: str | None = None, repeat: int = 1, beam_size: int = 5) -> dict:
    from faster_whisper import WhisperModel
    from scipy.optimize import linear_sum_assignment

    from stt.server.diarize import Diarizer, assign_speakers

    audio, ref, _ = der_bench.build_conversation()
    dur = len(audio) / SR
    wm = WhisperModel(_model_dir(model), device="cpu", compute_type="int8")

    def transcribe():
        segs, _info = wm.transcribe(audio, beam_size=beam_size, word_timestamps=True, language="en")
        return [w for s in segs for w in (s.words or [])]

    words, t_wall, t_cpu = _timed(transcribe, repeat)
    diarizer = Diarizer()
    diarizer.load()  # load the models outside the timing
    turns, d_wall, d_cpu = _timed(lambda: diarizer.diarize(audio), repeat)

    # words -> reference segment (containing or nearest midpoint)
    def seg_of(t: float) -> int:
        dists = [0.0 if s <= t <= e else min(abs(t - s), abs(t - e)) for s, e, _ in ref]
        return int(np.argmin(dists))

    by_seg: dict[int, list] = {}
    for w in words:
        by_seg.setdefault(seg_of((w.start + w.end) / 2), []).append(w)

    print(f"{'ref segment':>15s} {'spk':>3s} {'first word':>12s} {'start err':>9s} {'last word':>12s} {'end err':>8s}  words")
    start_err, end_err = [], []
    for i, (s, e, spk) in enumerate(ref):
        ws = by_seg.get(i, [])
        if not ws:
            print(f"{s:6.2f}-{e:6.2f}s {spk:>3s}  (no words)")
            continue
        se, ee = ws[0].start - s, ws[-1].end - e
        start_err.append(se)
        end_err.append(ee)
        text = "".join(w.word for w in ws).strip()
        print(
            f"{s:6.2f}-{e:6.2f}s {spk:>3s} {ws[0].word.strip()[:12]:>12s} {se:+9.2f} {ws[-1].word.strip()[:12]:>12s} {ee:+8.2f}  {text[:60]}"
        )

    # word speaker accuracy via assign_speakers, best one-to-one mapping of labels
    ref_spk = sorted({spk for _, _, spk in ref})
    hyp_spk = sorted({t.speaker for t in turns}) or [0]
    counts = np.zeros((len(ref_spk), len(hyp_spk)))
    pairs = []
    for i, ws in by_seg.items():
        for w, h in zip(ws, assign_speakers(turns, [(w.start, w.end) for w in ws])):
            r = ref[i][2]
            pairs.append((r, h))
            if h is not None:
                counts[ref_spk.index(r), hyp_spk.index(h)] += 1
    rows, cols = linear_sum_assignment(-counts)
    correct = counts[rows, cols].sum()
    acc = correct / len(pairs) if pairs else 0.0

    abs_s, abs_e = np.abs(start_err), np.abs(end_err)
    both = np.concatenate([abs_s, abs_e]) if len(abs_s) else np.zeros(0)
    summary = {
        "words": len(words),
        "segments_scored": len(start_err),
        "start_mae_s": float(abs_s.mean()) if len(abs_s) else float("nan"),
        "end_mae_s": float(abs_e.mean()) if len(abs_e) else float("nan"),
        "boundary_median_s": float(np.median(both)) if len(both) else float("nan"),
        "boundary_max_s": float(both.max()) if len(both) else float("nan"),
        "within_0.2s": float((both <= 0.2).mean()) if len(both) else float("nan"),
        "word_speaker_accuracy": float(acc),
        "transcribe_wall_s": t_wall,
        "transcribe_cpu_s": t_cpu,
        "diarize_wall_s": d_wall,
        "diarize_cpu_s": d_cpu,
        "audio_s": dur,
    }
    print(
        f"word boundaries vs reference ({len(start_err)} segments): start MAE {summary['start_mae_s']:.3f} s, "
        f"end MAE {summary['end_mae_s']:.3f} s, median {summary['boundary_median_s']:.3f} s, "
        f"max {summary['boundary_max_s']:.3f} s, {100 * summary['within_0.2s']:.0f}% within 0.2 s"
    )
    print(f"word speaker accuracy (assign_speakers on diarization turns): {100 * acc:.1f}% of {len(pairs)} words")
    print(
        f"time on {dur:.1f} s of audio: transcription (whisper, beam {beam_size}, word timestamps) "
        f"{t_wall:.2f} s wall / {t_cpu:.2f} s CPU; diarization {d_wall:.2f} s wall / {d_cpu:.2f} s CPU; "
        f"diarization/transcription = {d_wall / t_wall:.2f} (wall), {d_cpu / t_cpu:.2f} (CPU)"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="CTranslate2 Whisper model dir")
    p.add_argument("--repeat", type=int, default=1, help="time this many runs, keep the best")
    a = p.parse_args(argv)
    s = run(a.model, a.repeat)
    print(
        f"WORD TIMING: boundary MAE start {s['start_mae_s']:.3f} s / end {s['end_mae_s']:.3f} s, "
        f"word speaker accuracy {100 * s['word_speaker_accuracy']:.1f}%, "
        f"diarization = {s['diarize_wall_s'] / s['transcribe_wall_s']:.2f}x transcription wall time"
    )
    # baseline measured in the same run: transcribing the same audio
    print(f"ratio={s['diarize_wall_s'] / s['transcribe_wall_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
