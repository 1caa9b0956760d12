"""What a run leaves in the Prefect UI: a progress artifact (updated per batch), a summary
table (counts, audio minutes, cost) and the failures grouped by reason.

Artifacts are stored in Prefect's database and shown to anyone with the UI, so every
text that goes in is passed through `redact`: no presigned URL (its query string is the
credential), no key. Audio bytes never reach a summary or a failure message.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

log = logging.getLogger("bulkscribe.flows")

#: The summary table's columns, in order: also what the backfill reads back from each shard.
SUMMARY_FIELDS = ("seen", "transcribed", "skipped", "failed", "not_sent", "deferred", "audio_minutes", "cost")
SUMMARY_DESCRIPTION = "bulkscribe run summary"
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"]*", re.IGNORECASE)
_SHOWN_PER_REASON = 20


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Drop URL query strings (presigned signatures live there) and any given secret value."""
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


@dataclass
class ProgressArtifact:
    """A Prefect progress artifact; a failure to update it never stops the run."""

    artifact_id: UUID | None = None

    @classmethod
    def start(cls, description: str) -> ProgressArtifact:
        from prefect.artifacts import create_progress_artifact

        try:
            created = create_progress_artifact(progress=0.0, description=redact(description))
            return cls(created if isinstance(created, UUID) else None)
        except Exception as exc:  # noqa: BLE001 - the UI's view of a run is not worth stopping it
            log.debug("no progress artifact: %s", exc)
            return cls(None)

    def update(self, percent: float) -> None:
        if self.artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(self.artifact_id, progress=round(min(100.0, percent), 1))
        except Exception as exc:  # noqa: BLE001
            log.debug("progress artifact not updated: %s", exc)


def publish_summary(values: dict[str, Any], title: str) -> None:
    """One-row table artifact: the run's counts, audio minutes and cost."""
    from prefect.artifacts import create_table_artifact

    row = {k: values.get(k, 0) for k in SUMMARY_FIELDS}
    create_table_artifact(table=[row], description=f"{SUMMARY_DESCRIPTION}: {redact(title)}")


def publish_failures(failures: list[tuple[str, str]], secrets: Iterable[str] = ()) -> None:
    """Markdown artifact of the failed files, grouped by reason (most frequent first)."""
    if not failures:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=failures_markdown(failures, list(secrets)),
                             description="bulkscribe failures by reason")


def failures_markdown(failures: list[tuple[str, str]], secrets: list[str]) -> str:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for source, reason in failures:
        by_reason[redact(reason, secrets)].append(redact(source, secrets))
    lines = [f"# {len(failures)} failed file(s), {len(by_reason)} reason(s)", ""]
    for reason, sources in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        lines += [f"## {len(sources)} x {reason}", ""]
        lines += [f"- `{s}`" for s in sources[:_SHOWN_PER_REASON]]
        if len(sources) > _SHOWN_PER_REASON:
            lines.append(f"- ... and {len(sources) - _SHOWN_PER_REASON} more (see the failures table)")
        lines.append("")
    return "\n".join(lines)


def read_summary(artifact_data: Any) -> dict[str, float]:
    """A summary row back from a table artifact (as the API returns it)."""
    data = json.loads(artifact_data) if isinstance(artifact_data, str) else artifact_data
    row = data[0] if isinstance(data, list) and data else {}
    return {k: float(row.get(k) or 0) for k in SUMMARY_FIELDS}
