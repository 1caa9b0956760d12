"""What became of one file: its rows (a transcript with words and turns, or a failure),
or why it was not sent."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from stt import errors
from stt.contract import StatusResponse, TranscribeResponse
from tasks.discovery import AudioFile
from tasks.identity import JobOptions
from tasks.rows import FailureRow, FileWords, SegmentRow, TranscriptRow


@dataclass
class Outcome:
    key: str
    transcript: TranscriptRow | None = None
    words: FileWords | None = None
    segments: list[SegmentRow] = field(default_factory=list)
    failure: FailureRow | None = None
    sent: bool = True
    #: Why a file was not sent (the API said stop, the budget, another run holds it).
    not_sent_reason: str | None = None
    #: Left to another run that holds the request's claim.
    deferred: bool = False
    #: Same content as a file already transcribed (`reuse`) or in flight in this run
    #: (`duplicate`): its rows are copied, nothing is sent.
    reuse: bool = False
    duplicate: bool = False
    #: This very file (same source and fingerprint) was transcribed by another run since this
    #: run listed OUT: nothing to send, nothing to write (a skip found late).
    already_done: bool = False
    #: What this run paid for the file (0 for answers replayed or recorded by earlier runs).
    fresh_cost: float = 0.0
    #: Keep the ledger entry: the request may have been paid for without a result.
    keep_ledger: bool = False


def success(f: AudioFile, options: JobOptions, key: str, answer: TranscribeResponse | StatusResponse,
            *, mode: str, run_id: str) -> Outcome:
    """The rows of a transcribed file, from the API's answer."""
    meta = answer.metadata
    minutes = None
    if meta is not None:
        minutes = meta.actualDuration if meta.actualDuration is not None else meta.chargedDuration
    words = (answer.words or []) if isinstance(answer, StatusResponse) else []
    turns = answer.diarization.segments if isinstance(answer, StatusResponse) and answer.diarization else []
    transcript = TranscriptRow(
        source=f.url, fingerprint=f.fingerprint, request_key=key, model=options.model,
        language=(meta.language if meta else None) or options.language, options=options.as_json(),
        text=answer.transcription or "", duration_s=round(minutes * 60.0, 3) if minutes is not None else None,
        cost=meta.cost if meta else None, currency=meta.currency if meta else None, upload_mode=mode,
        file_size=f.size, speaker_count=len({s.speaker for s in turns}) if turns else None, status="ok",
        run_id=run_id, transcribed_at=datetime.now(UTC),
    )
    segments = [SegmentRow(source=f.url, fingerprint=f.fingerprint, model=options.model, segment_index=i,
                           speaker=s.speaker, start=s.start, end=s.end, text=s.text) for i, s in enumerate(turns)]
    file_words = FileWords(f.url, f.fingerprint, options.model, words) if words else None
    return Outcome(key=key, transcript=transcript, words=file_words, segments=segments)


def as_copy(outcome: Outcome, f: AudioFile) -> Outcome:
    """The rows of `outcome` for another file with the same content: nothing paid for it."""
    assert outcome.transcript is not None
    t = replace(outcome.transcript, source=f.url, fingerprint=f.fingerprint, file_size=f.size, cost=0.0,
                upload_mode="reused", transcribed_at=datetime.now(UTC))
    words = replace(outcome.words, source=f.url, fingerprint=f.fingerprint) if outcome.words else None
    segments = [replace(s, source=f.url, fingerprint=f.fingerprint) for s in outcome.segments]
    return Outcome(key=outcome.key, transcript=t, words=words, segments=segments, reuse=True)


def failure(f: AudioFile, options: JobOptions, key: str, exc: errors.STTError, *, attempts: int, run_id: str,
            kind: str | None = None, keep_ledger: bool = False) -> Outcome:
    """The failure row of a file, from the error that ended it."""
    row = FailureRow(
        source=f.url, fingerprint=f.fingerprint, request_key=key or None, model=options.model,
        error_kind=kind or exc.kind, error_type=type(exc).__name__.rstrip("_"), status_code=exc.status_code,
        message=exc.message, attempts=attempts, run_id=run_id, failed_at=datetime.now(UTC),
    )
    return Outcome(key=key, failure=row, keep_ledger=keep_ledger)
