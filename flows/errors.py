"""Why a run cannot start or go on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.summary import RunSummary

#: Exit codes of `bulkscribe run` (scripts and alerting rely on them): all done; some files
#: failed or were left unsent; nothing could be done (bad arguments or environment, bad key,
#: no money, budget).
EXIT_DONE, EXIT_SOME_FAILED, EXIT_NOTHING_DONE = 0, 1, 2


class RunAborted(RuntimeError):
    """The run cannot go on (bad key, no money...): nothing more is sent."""


class NothingTranscribed(RuntimeError):
    """Files were pending and none could be transcribed: the flow run ends Failed.

    Carries the run's summary (its artifacts are already published) so that the CLI
    can still print it and choose the exit code."""

    def __init__(self, summary: RunSummary) -> None:
        reason = summary.stop_reason or f"{summary.failed} file(s) failed, {summary.not_sent} not sent"
        super().__init__(f"no file could be transcribed: {reason}")
        self.summary = summary
