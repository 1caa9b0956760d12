"""Asynchronous jobs (Elevenlabs-STT): word timings, speakers and audio events.

The submit request is answered at once with a runId; the job row (and its charge) is in
SQLite before that answer leaves, and the audio is kept in a jobs folder next to the
database until the job ends. So a restarted server loses no job: on start-up, jobs left
pending or processing are queued again, or failed (and refunded) with a reason when
their audio is gone.

The answer follows ElevenLabs' shape: `words` interleaves `word`, `spacing` and
`audio_event` entries with `speaker_id` when diarizing, `diarization.segments` holds one
entry per speaker turn, and `transcription` reads "Speaker 1: ... Speaker 2: ...".
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

from stt.contract import Diarization, Segment, StatusResponse, Word
from stt.server.admission import Admission, Ticket
from stt.server.audio import AudioDecodeError, decode
from stt.server.engine import Engine, Transcript
from stt.server.billing import Bill
from stt.server.store import Job, Store

log = logging.getLogger("bulkscribe.server.jobs")

_MIN_WORD_S = 0.02


class JobRunner:
    """Runs queued jobs on the server's worker slots, in submission order.

    Each job holds its submission's admission ticket until it ends, so jobs waiting here
    count against the server's queue bound like synchronous requests do.
    """

    def __init__(self, store: Store, engine: Engine, admission: Admission, *, retention: timedelta) -> None:
        self.store, self.engine, self.admission = store, engine, admission
        self.retention = retention
        self._queue: asyncio.Queue[tuple[str, Ticket]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._diarizer = None
        self._diarizer_lock = threading.Lock()

    async def start(self, workers: int) -> None:
        purged = self.store.purge_jobs(self.retention)
        if purged:
            log.info("purged %d finished job(s) older than %s", purged, self.retention)
        for job in self.store.unfinished_jobs():
            if job.audio_path and Path(job.audio_path).is_file():
                log.info("resuming job %s left %s by the previous run", job.run_id, job.status)
                self.store.set_job_status(job.run_id, "pending")
                ticket = self.admission.admit(force=True)
                ticket.reserve_disk(Path(job.audio_path).stat().st_size, force=True)
                self._queue.put_nowait((job.run_id, ticket))
            else:
                self.store.fail_job(job.run_id, "the server restarted and the job's audio was lost; submit again "
                                                "(the charge was refunded)")
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def submit(self, run_id: str, ticket: Ticket) -> None:
        """Queue the job; its ticket is released when the job ends."""
        self._queue.put_nowait((run_id, ticket.hand_over()))

    async def _work(self) -> None:
        while True:
            run_id, ticket = await self._queue.get()
            try:
                await self._run_to_end(run_id)
            finally:
                ticket.release()

    async def _run_to_end(self, run_id: str) -> None:
        job = self.store.get_job(run_id)
        if job is None or job.status not in ("pending", "processing"):
            return
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise  # shutting down: the job stays pending/processing and resumes on restart
        except Exception as exc:  # never let one job kill the worker
            log.exception("job %s failed", run_id)
            self.store.fail_job(run_id, f"internal error: {type(exc).__name__}")
        if job.audio_path:  # the job ended, completed or failed: its audio is no longer needed
            Path(job.audio_path).unlink(missing_ok=True)

    async def _run(self, job: Job) -> None:
        async with self.admission.slots:
            self.store.set_job_status(job.run_id, "processing")
            try:
                result = await anyio.to_thread.run_sync(self._process, job)
            except (AudioDecodeError, DiarizationUnavailable) as exc:
                self.store.fail_job(job.run_id, str(exc))
                return
        self.store.complete_job(job.run_id, result)

    # -- the work (in a worker thread) ----------------------------------------------------

    def _process(self, job: Job) -> dict[str, Any]:
        p = job.params
        # The diarizer needs the whole array; without it the engine streams the file (flat memory).
        audio = decode(job.audio_path) if p.get("diarize") or p.get("tag_audio_events") else None
        transcript = self.engine.transcribe(job.audio_path if audio is None else audio, accurate=True,
                                            language=p.get("language"), word_timestamps=True)
        turns = events = None
        if p.get("diarize") or p.get("tag_audio_events"):
            try:
                diarizer = self._get_diarizer()
                if p.get("diarize"):
                    turns = diarizer.diarize(audio, num_speakers=p.get("num_speakers"))
                if p.get("tag_audio_events"):
                    events = diarizer.detect_events(audio)
            except ImportError as exc:  # the models' packages load lazily, at first use
                raise DiarizationUnavailable(
                    f"diarization and audio events need the server's [diarization] extra ({exc.name} is not "
                    "installed); the charge was refunded"
                ) from None
        body = build_result(transcript, turns=turns, events=events)
        body["metadata"] = job_bill(job).metadata(transcript.language, self.engine.weights_name)
        return body

    def _get_diarizer(self):
        with self._diarizer_lock:
            if self._diarizer is None:
                from stt.server.diarize import Diarizer

                self._diarizer = Diarizer()
            return self._diarizer


def job_bill(job: Job) -> Bill:
    """What the job was charged, as recorded at submission."""
    return Bill(job.model, job.duration_s or 0.0, job.cost_micro, job.file_name, job.file_size)


class DiarizationUnavailable(RuntimeError):
    pass


@dataclass
class _W:
    text: str
    start: float
    end: float
    type: str
    speaker: int | None = None


def build_result(t: Transcript, *, turns=None, events=None) -> dict[str, Any]:
    """The completed-job body (without metadata) from a transcript and optional speakers/events."""
    from_turns = turns is not None
    words: list[_W] = []
    prev_end = 0.0
    for w in t.words:
        text = w.text.strip()
        if not text:
            continue
        start = max(w.start, prev_end)  # increasing, never overlapping the previous word
        end = max(w.end, start + _MIN_WORD_S)
        words.append(_W(text, round(start, 3), round(end, 3), "word"))
        prev_end = end

    if from_turns:
        from stt.server.diarize import assign_speakers

        raw = assign_speakers(turns, [(w.start, w.end) for w in words])  # overlap: the dominant voice
        order: dict[int, int] = {}  # renumber by first spoken word: speaker_0 talks first
        for s in raw:
            if s is not None and s not in order:
                order[s] = len(order)
        for w, s in zip(words, raw):
            w.speaker = order.get(s, 0) if s is not None else 0

    entries: list[_W] = []
    for w in words:
        if entries and entries[-1].type == "word":
            gap_start = entries[-1].end
            entries.append(_W(" ", gap_start, max(gap_start, w.start), "spacing",
                              w.speaker if entries[-1].speaker == w.speaker else entries[-1].speaker))
        entries.append(w)
    for ev in events or ():
        label = ev.label.strip("()[] ").lower()
        entries.append(_W(f"({label})", round(ev.start, 3), round(max(ev.end, ev.start + _MIN_WORD_S), 3),
                          "audio_event", None))
    entries.sort(key=lambda e: (e.start, 0 if e.type == "audio_event" else 1))

    segments: list[Segment] = []
    if from_turns:
        for w in words:
            label = f"Speaker {w.speaker + 1}"
            if segments and segments[-1].speaker == label:
                seg = segments[-1]
                seg.text = f"{seg.text} {w.text}"
                seg.end = w.end
            else:
                segments.append(Segment(speaker=label, text=w.text, start=w.start, end=w.end))
        transcription = " ".join(f"{s.speaker}: {s.text}" for s in segments)
    else:
        transcription = t.text

    response = StatusResponse(
        status="completed",
        transcription=transcription,
        words=[Word(text=e.text, start=e.start, end=e.end, type=e.type,
                    speaker_id=f"speaker_{e.speaker}" if from_turns and e.speaker is not None else None)
               for e in entries],
        diarization=Diarization(segments=segments) if from_turns else None,
    )
    return response.model_dump(exclude_none=True)
