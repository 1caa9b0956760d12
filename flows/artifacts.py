"""What a run leaves in the Prefect UI: a progress artifact (updated per batch), a summary
table (counts, audio minutes, cost) and the failures grouped by reason.

Artifacts are stored in Prefect's database and shown to anyone with the UI, so every
text that goes in is passed through `redact`: no presigned URL (its query string is the
credential), no key. Audio bytes never reach a summary or a failure message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

log = logging.getLogger("bulkscribe.flows")

#: The summary table's columns, in order: also what the backfill reads back from each shard.
SUMMARY_FIELDS = ("seen", "transcribed", "skipped", "failed", "not_sent", "deferred", "audio_minutes", "cost")
SUMMARY_DESCRIPTION = "bulkscribe run summary"
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"]*", re.IGNORECASE)
_SHOWN_PER_REASON = 20
#: Sends of one artifact's POST at most (Prefect's client would send it 6 times).
_CREATE_TRIES = 5
#: Answers after which Prefect's client sends a request again (the API busy or restarting).
_RETRY_STATUS = frozenset({408, 429, 502, 503})


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

        text = redact(description)
        try:
            created = create_once("progress", text, lambda: create_progress_artifact(progress=0.0, description=text))
            return cls(created)
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
    text = f"{SUMMARY_DESCRIPTION}: {redact(title)}"
    create_once("table", text, lambda: create_table_artifact(table=[row], description=text))


def publish_failures(failures: list[tuple[str, str]], secrets: Iterable[str] = ()) -> None:
    """Markdown artifact of the failed files, grouped by reason (most frequent first)."""
    if not failures:
        return
    from prefect.artifacts import create_markdown_artifact

    markdown, text = failures_markdown(failures, list(secrets)), "bulkscribe failures by reason"
    create_once("markdown", text, lambda: create_markdown_artifact(markdown=markdown, description=text))


def create_once(kind: str, description: str, create: Callable[[], object]) -> UUID | None:
    """This run's artifact of `kind` and `description`, made at most once.

    Prefect's client sends a POST again when its answer is lost (dropped connection,
    timeout) and the API makes a new artifact for every POST: a run would show two
    progress bars or two summaries. So the POST goes out with the client's retries off;
    after a failure the run's artifacts are read (reads retry as usual) and the POST is
    sent again only when none of this kind and description is there. A POST still being
    served when that read comes (it came back by timeout) can still make a second one.
    """
    error: Exception | None = None
    for attempt in range(_CREATE_TRIES):
        try:
            with _client_retries_off():
                created = create()
            return created if isinstance(created, UUID) else None
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in _RETRY_STATUS:
                raise
            error = exc
        time.sleep(2**attempt)
        made = _made_by_this_run(kind, description)
        if made is not None:
            return made
    assert error is not None
    raise error


def _client_retries_off() -> contextlib.AbstractContextManager[object]:
    """Prefect's settings with `client.max_retries` 0, in this context only (a shallow copy:
    `temporary_settings` rebuilds them from the environment, ~50 ms)."""
    from prefect.context import SettingsContext

    ctx = SettingsContext.get()
    if ctx is None:
        return contextlib.nullcontext()
    now = ctx.settings
    settings = now.model_copy(update={"client": now.client.model_copy(update={"max_retries": 0})})
    return SettingsContext(profile=ctx.profile, settings=settings)


def _made_by_this_run(kind: str, description: str) -> UUID | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    return next((a.id for a in run_artifacts(ctx.flow_run.id, kind) if a.description == description), None)


def run_artifacts(run_id: UUID, kind: str | None = None) -> list[Any]:
    """A flow run's artifacts (of one type when `kind` is given), as the Prefect API holds them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    artifact_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                                     type=ArtifactFilterType(any_=[kind]) if kind else None)
    with get_client(sync_client=True) as client:
        return list(client.read_artifacts(artifact_filter=artifact_filter))


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
