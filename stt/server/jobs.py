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
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from stt.server.admission import Admission, Ticket
from stt.server.audio import AudioDecodeError, decode
from stt.server.engine import Engine
from stt.server.job_result import build_result
from stt.server.billing import Bill
from stt.server.store import Job, Store

if TYPE_CHECKING:
    from stt.server.diarize import Diarizer

log = logging.getLogger("bulkscribe.server.jobs")



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
        self._diarizer: Diarizer | None = None
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
        if job.audio_path is None:
            raise AudioDecodeError("the job's audio is gone")
        # The diarizer needs the whole array; without it the engine streams the file (flat memory).
        audio = decode(job.audio_path) if p.get("diarize") or p.get("tag_audio_events") else None
        transcript = self.engine.transcribe(job.audio_path if audio is None else audio, accurate=True,
                                            language=p.get("language"), word_timestamps=True)
        turns = events = None
        if audio is not None:
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

    def _get_diarizer(self) -> Diarizer:
        with self._diarizer_lock:
            if self._diarizer is None:
                from stt.server.diarize import Diarizer as Loaded

                self._diarizer = Loaded()
            return self._diarizer


def job_bill(job: Job) -> Bill:
    """What the job was charged, as recorded at submission."""
    return Bill(job.model, job.duration_s or 0.0, job.cost_micro, job.file_name, job.file_size)


class DiarizationUnavailable(RuntimeError):
    pass
