"""Answers as the ledger keeps them: JSON that turns back into the same answer objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stt.contract import StatusResponse, TranscribeResponse

Answer = StatusResponse | TranscribeResponse


@dataclass(frozen=True)
class Span:
    """Where a unit's audio lies in its file (the whole file: 0, None)."""

    index: int
    start_s: float
    end_s: float | None
    own_start_s: float = 0.0


def answer_to_json(span: Span, answer: Answer) -> dict[str, Any]:
    kind = "status" if isinstance(answer, StatusResponse) else "sync"
    return {"start_s": span.start_s, "end_s": span.end_s, "own_start_s": span.own_start_s, "kind": kind,
            "body": answer.model_dump(mode="json", exclude_none=True)}


def answer_from_json(index: int, record: dict[str, Any]) -> tuple[Span, Answer]:
    model = StatusResponse if record.get("kind") == "status" else TranscribeResponse
    span = Span(index, float(record.get("start_s") or 0.0), record.get("end_s"),
                float(record.get("own_start_s") or 0.0))
    return span, model.model_validate(record["body"])
