"""What a run did, for the terminal and the logs."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.batch import BatchResult


@dataclass
class RunSummary:
    seen: int = 0
    transcribed: int = 0
    skipped: int = 0
    failed: int = 0
    not_sent: int = 0
    audio_minutes: float = 0.0
    estimated_cost: float = 0.0  # dry run: what sending the files would cost
    dry_run: bool = False
    cost: float = 0.0
    run_id: str = ""
    out: str = ""
    failures: list[str] = field(default_factory=list)
    stop_reason: str | None = None

    def add(self, r: BatchResult) -> None:
        self.transcribed += r.transcribed
        self.failed += r.failed
        self.not_sent += r.not_sent
        self.stop_reason = self.stop_reason or r.stop_reason
        self.audio_minutes += r.audio_s / 60.0
        self.cost += r.cost
        self.failures.extend(r.failures)

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
            *([f"  not sent:      {self.not_sent} (run stopped: {self.stop_reason})"] if self.stop_reason else []),
            f"  audio minutes: {self.audio_minutes:.2f}",
            f"  cost:          {self.cost:.6f} USD",
        ]
        lines += [f"  ! {f}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ! ... and {len(self.failures) - 20} more (see {self.out}/failures)")
        return "\n".join(lines)
