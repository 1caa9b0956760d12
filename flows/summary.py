"""What a run did, for the terminal and the logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.errors import EXIT_DONE, EXIT_NOTHING_DONE, EXIT_SOME_FAILED
from tasks.batch import BatchResult

#: Failed files kept for the failures artifact (the failures table holds them all).
_KEPT_FAILED_FILES = 2000


@dataclass
class RunSummary:
    seen: int = 0
    transcribed: int = 0
    skipped: int = 0
    failed: int = 0
    not_sent: int = 0
    #: Left to another live run that holds their claim (sent by it, not by this run).
    deferred: int = 0
    audio_minutes: float = 0.0
    estimated_cost: float = 0.0  # dry run: what sending the files would cost
    dry_run: bool = False
    cost: float = 0.0
    run_id: str = ""
    out: str = ""
    failures: list[str] = field(default_factory=list)
    failed_files: list[tuple[str, str]] = field(default_factory=list)
    stop_reason: str | None = None

    def values(self) -> dict[str, Any]:
        """The counts as plain JSON, for the summary artifact."""
        return {"seen": self.seen, "transcribed": self.transcribed, "skipped": self.skipped, "failed": self.failed,
                "not_sent": self.not_sent, "deferred": self.deferred,
                "audio_minutes": round(self.audio_minutes, 3), "cost": round(self.cost, 6)}

    @property
    def unsent(self) -> int:
        """Files this run left unsent for its own reasons (files deferred to another live
        run that holds them are that run's work, not a shortfall of this one)."""
        return self.not_sent - self.deferred

    def nothing_transcribed(self) -> bool:
        """Files were there to transcribe and none was: the flow run ends Failed."""
        return not self.dry_run and self.transcribed == 0 and (self.failed + self.unsent) > 0

    def exit_code(self) -> int:
        """0 all done, 1 some files failed (or were left unsent), 2 nothing could be sent."""
        if self.dry_run:
            return EXIT_DONE if not self.failed else EXIT_SOME_FAILED
        if self.transcribed == 0 and self.failed == 0 and self.unsent > 0:
            return EXIT_NOTHING_DONE
        return EXIT_SOME_FAILED if (self.failed or self.unsent) else EXIT_DONE

    def add(self, r: BatchResult) -> None:
        self.transcribed += r.transcribed
        self.failed += r.failed
        self.not_sent += r.not_sent
        self.skipped += r.skipped
        self.stop_reason = self.stop_reason or r.stop_reason
        self.audio_minutes += r.audio_s / 60.0
        self.cost += r.cost
        self.failures.extend(r.failures)
        self.failed_files.extend(r.failed_files[:max(0, _KEPT_FAILED_FILES - len(self.failed_files))])
        self.deferred += r.deferred

    def render(self) -> str:
        return self._render_dry_run() if self.dry_run else self._render_run()

    def _render_dry_run(self) -> str:
        return "\n".join([
            f"bulkscribe dry run -> {self.out} (nothing sent)",
            f"  files seen:     {self.seen}",
            f"  would send:     {self.seen - self.skipped - self.failed}",
            f"  skipped:        {self.skipped} (already transcribed with the same model and options)",
            f"  unreadable:     {self.failed}",
            f"  audio minutes:  {self.audio_minutes:.2f}",
            f"  estimated cost: {self.estimated_cost:.6f} USD",
            *[f"  ! {x}" for x in self.failures[:20]],
        ])

    def _render_run(self) -> str:
        lines = [
            f"bulkscribe run {self.run_id[:8]} -> {self.out}",
            f"  files seen:    {self.seen}",
            f"  transcribed:   {self.transcribed}",
            f"  skipped:       {self.skipped} (already transcribed with the same model and options)",
            f"  failed:        {self.failed}",
            *([f"  not sent:      {self.not_sent} (run stopped: {self.stop_reason})"] if self.stop_reason
              else [f"  not sent:      {self.not_sent}"] if self.not_sent else []),
            *([f"  deferred:      {self.deferred} (claimed by another live run)"] if self.deferred else []),
            f"  audio minutes: {self.audio_minutes:.2f}",
            f"  cost:          {self.cost:.6f} USD",
        ]
        lines += [f"  ! {f}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ! ... and {len(self.failures) - 20} more (see {self.out}/failures)")
        return "\n".join(lines)
