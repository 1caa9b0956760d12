"""Where the speech is in a file, found while streaming it, and its samples gathered piece by piece.

faster-whisper's own speech detection (Silero VAD, `vad_filter=True`) needs the whole file
as one array and builds a second array 1.1 times its size for the model: a 2-hour file
costs gigabytes. Here the same model runs over the decoded stream with the same carried
state, so the probabilities, and the speech regions computed from them by the same rules,
are those faster-whisper would find (tests compare them), while memory holds one batch.
Batches of 1,000 windows (32 s) give the same probabilities as faster-whisper's 10,000, a
little faster, and the model's scratch memory for one is ~20 MB instead of ~190 MB.

The engine then reads the speech back piece by piece (`pieces`): consecutive regions
grouped up to a length, so a long file is transcribed with one piece in memory at a time
and every seam falls between two regions, never inside a word.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_vad_model

from stt.server.audio import SAMPLE_RATE, stream

FRAME = 512  # Silero's window at 16 kHz
_CONTEXT = 64  # samples of the previous window the model sees before each one
_BATCH = 1_000  # windows per model call (the LSTM state carries over from one call to the next)
BATCH_SAMPLES = FRAME * _BATCH


@dataclass(frozen=True)
class SpeechMap:
    """Speech regions as [start, end) sample ranges, and the file's length in samples."""

    regions: list[tuple[int, int]]
    samples: int

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE

    def groups(self, max_samples: int) -> list[list[tuple[int, int]]]:
        """Consecutive regions, grouped while their total stays within `max_samples`
        (a region longer than that is a group alone: the VAD options bound it)."""
        groups: list[list[tuple[int, int]]] = []
        total = 0
        for start, end in self.regions:
            if groups and total + end - start <= max_samples:
                groups[-1].append((start, end))
                total += end - start
            else:
                groups.append([(start, end)])
                total = end - start
        return groups


def find_speech(source: str | np.ndarray, options: VadOptions) -> SpeechMap:
    """Stream `source` once through Silero VAD. Raises AudioDecodeError for non-audio."""
    probabilities, samples = _probabilities(stream(source, BATCH_SAMPLES))
    return SpeechMap(_Regions(options, samples).find(probabilities), samples)


def _probabilities(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
    """One speech probability per 512-sample window, exactly as SileroVADModel.__call__
    computes them on the whole (zero-padded) file, and the number of samples."""
    session = get_vad_model().session
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    context = np.zeros(_CONTEXT, dtype=np.float32)
    outputs: list[np.ndarray] = []
    counted = _Counted(blocks)
    for block in _padded_at_end(counted):
        windows = block.reshape(-1, FRAME)
        contexts = np.concatenate([context[None], windows[:-1, -_CONTEXT:]])
        context = windows[-1, -_CONTEXT:].copy()
        batch = np.concatenate([contexts, windows], axis=1)
        out, h, c = session.run(None, {"input": batch, "h": h, "c": c})
        outputs.append(np.asarray(out, dtype=np.float32).reshape(-1))
    return np.concatenate(outputs), counted.samples


class _Counted:
    def __init__(self, blocks: Iterable[np.ndarray]) -> None:
        self.blocks, self.samples = blocks, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            self.samples += len(block)
            yield block


def _padded_at_end(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The blocks, the last followed by zeros up to the next window boundary, and by a
    whole window of zeros when it ends on one (faster-whisper pads so), in batches."""
    last: np.ndarray | None = None
    for block in blocks:
        if last is not None:
            yield last
        last = block
    if last is None:
        return
    tail = np.pad(last, (0, FRAME - len(last) % FRAME))
    yield from (tail[i:i + BATCH_SAMPLES] for i in range(0, len(tail), BATCH_SAMPLES))


class _Regions:
    """faster_whisper.vad.get_speech_timestamps' rules, applied to given probabilities."""

    def __init__(self, o: VadOptions, samples: int) -> None:
        self.samples = samples
        # Compared as float32, as faster-whisper compares them with float32 probabilities.
        self.threshold = _f32(o.threshold)
        self.neg_threshold = _f32(o.neg_threshold if o.neg_threshold is not None else max(o.threshold - 0.15, 0.01))
        self.min_speech = SAMPLE_RATE * o.min_speech_duration_ms / 1000
        self.pad = SAMPLE_RATE * o.speech_pad_ms / 1000
        self.max_speech = SAMPLE_RATE * o.max_speech_duration_s - FRAME - 2 * self.pad
        self.min_silence = SAMPLE_RATE * o.min_silence_duration_ms / 1000
        self.min_silence_at_max = SAMPLE_RATE * 98 / 1000

    def find(self, probabilities: np.ndarray) -> list[tuple[int, int]]:
        speeches = self._raw(probabilities.tolist())
        return self._padded(speeches)

    def _raw(self, probabilities: list[float]) -> list[list[int]]:
        speeches: list[list[int]] = []
        start: int | None = None  # of the current speech, when triggered
        temp_end = prev_end = next_start = 0
        for i, p in enumerate(probabilities):
            at = FRAME * i
            if p >= self.threshold and temp_end:
                temp_end = 0
                if next_start < prev_end:
                    next_start = at
            if p >= self.threshold and start is None:
                start = at
                continue
            if start is not None and at - start > self.max_speech:
                if prev_end:
                    speeches.append([start, prev_end])
                    start = None if next_start < prev_end else next_start
                    prev_end = next_start = temp_end = 0
                else:
                    speeches.append([start, at])
                    start = None
                    prev_end = next_start = temp_end = 0
                    continue
            if p < self.neg_threshold and start is not None:
                if not temp_end:
                    temp_end = at
                if at - temp_end > self.min_silence_at_max:
                    prev_end = temp_end
                if at - temp_end < self.min_silence:
                    continue
                if temp_end - start > self.min_speech:
                    speeches.append([start, temp_end])
                start = None
                prev_end = next_start = temp_end = 0
        if start is not None and self.samples - start > self.min_speech:
            speeches.append([start, self.samples])
        return speeches

    def _padded(self, speeches: list[list[int]]) -> list[tuple[int, int]]:
        for i, speech in enumerate(speeches):
            if i == 0:
                speech[0] = int(max(0, speech[0] - self.pad))
            if i != len(speeches) - 1:
                silence = speeches[i + 1][0] - speech[1]
                if silence < 2 * self.pad:
                    speech[1] += int(silence // 2)
                    speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - silence // 2))
                else:
                    speech[1] = int(min(self.samples, speech[1] + self.pad))
                    speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - self.pad))
            else:
                speech[1] = int(min(self.samples, speech[1] + self.pad))
        return [(s, e) for s, e in speeches]


def _f32(value: float) -> float:
    return float(np.float32(value))


def pieces(source: str | np.ndarray, groups: list[list[tuple[int, int]]],
           block_samples: int = 30 * SAMPLE_RATE) -> Iterator[np.ndarray]:
    """For each group of regions, its speech samples glued end to end (as faster-whisper's
    collect_chunks glues them), reading `source` once from the start."""
    blocks = stream(source, block_samples)
    block = np.zeros(0, dtype=np.float32)
    block_start = 0
    for group in groups:
        out = np.empty(sum(e - s for s, e in group), dtype=np.float32)
        filled = 0
        for start, end in group:
            while start < end:
                while block_start + len(block) <= start:
                    block_start += len(block)
                    block = next(blocks)
                take = min(end, block_start + len(block)) - start
                out[filled:filled + take] = block[start - block_start:start - block_start + take]
                filled += take
                start += take
        handed = [out]
        del out
        yield handed.pop()  # holding no reference while suspended: the caller may free the piece
