"""The diarizer's answer types and the tuning knobs, shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Turn:
    """One speaker turn. Turns of different speakers may overlap (overlapped speech)."""

    start: float  # seconds
    end: float
    speaker: int  # 0-based, numbered in order of first appearance


@dataclass(frozen=True)
class AudioEvent:
    """A non-speech audio event."""

    start: float
    end: float
    label: str  # "music" or "singing"


@dataclass(frozen=True)
class DiarizerConfig:
    """Tuning knobs, chosen with bench/der.py on the dev set (AMI meeting excerpts, a
    telephone-style call, a three-speaker clip), leave-one-out over its files, and
    single-speaker clips that must stay one speaker (bench/der.py prints both).
    Pass ``num_speakers`` when the count is known.
    """

    # speaker segmentation (pyannote segmentation-3.0 on 10 s chunks)
    chunk_step_s: float = 2.0  # 1 s moved the dev-set mean DER by 0.2 points, at twice the cost
    onnx_threads: int = 1
    speech_threshold: float = 0.4  # P(somebody talks) above which a frame is speech
    # CAM++ speaker embeddings on sliding windows inside the speech
    window_s: float = 1.5
    window_step_s: float = 0.75
    min_window_s: float = 0.5
    torch_threads: int | None = 1  # torch.set_num_threads at model load (None: torch's default)
    # a chunk's local speaker gets an embedding from the windows where it speaks alone
    min_local_speech_s: float = 0.5
    min_alone_fraction: float = 0.5
    # clustering of local speakers across chunks, then window-level refinement
    distance_threshold: float = 0.55  # cosine distance, average linkage; 0.5-0.6 score the same (bench/der.py --sweep)
    single_speaker_fraction: float = 0.8  # a window refines centroids if one speaker talks on this much of it
    refine_iterations: int = 3
    min_cluster_s: float = 2.0  # estimated speakers with less speech than this are merged away
    max_speakers: int = 20
