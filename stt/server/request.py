"""Reading a transcription request: its fields and its audio, in any of the three forms.

- multipart/form-data: the `audio` file (capped at 3 MB while it streams in) or an `audioUrl`;
- application/x-www-form-urlencoded: an `audioUrl` (a form without a file);
- application/json: an `audioUrl`.

The audio ends up in a temp file either way (an URL is streamed there by the downloader),
so that nothing downstream holds a whole file in memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from stt.contract import (
    ASYNC_MODELS,
    SPEC_MODELS,
    SYNC_MODELS,
    WHISPER_LARGE_V3,
    TranscribeJsonRequest,
    normalize_language,
)
from stt.server.admission import Ticket
from stt.server.download import Downloader
from stt.server.errors import APIError, BodyTooLarge, UploadTooLarge, shown
from stt.server.tempfiles import TempAudio, write_temp_file

#: Cap on JSON and urlencoded bodies (they carry a URL and a few options).
JSON_BODY_LIMIT = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around the file
_MISSING_AUDIO = "missing audio: send a file in the 'audio' field or an 'audioUrl'"


@dataclass(frozen=True)
class TranscribeParams:
    model: str
    language: str | None  # Whisper code, None = detect
    diarize: bool
    tag_audio_events: bool
    actual_duration_min: float | None
    file_name: str | None
    num_speakers: int | None = None

    def options(self) -> dict[str, object]:
        """What changes the answer (the file name and the client's duration hint do not)."""
        fields = asdict(self)
        del fields["file_name"], fields["actual_duration_min"]
        return fields


@dataclass
class AudioRequest:
    params: TranscribeParams
    audio: TempAudio


async def read_transcribe_request(request: Request, downloader: Downloader, ticket: Ticket,
                                  max_upload_bytes: int) -> AudioRequest:
    """The request's fields and its audio in a temp file counted on `ticket`'s disk budget."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        return await _read_multipart(request, downloader, ticket, max_upload_bytes)
    if ctype.startswith("application/x-www-form-urlencoded"):
        raw = await read_capped_body(request, JSON_BODY_LIMIT)
        fields = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        return await _from_url(fields, downloader, ticket)
    if ctype.startswith("application/json"):
        body = await read_json_body(request)
        if not isinstance(body, dict) or not body.get("audioUrl"):
            raise APIError(400, "missing audioUrl: JSON requests must give the URL of the audio")
        try:
            req = TranscribeJsonRequest.model_validate(body)
        except ValidationError as exc:
            raise APIError(400, f"invalid request: {validation_summary(exc)}") from None
        return await _from_url(req.model_dump(), downloader, ticket)
    raise APIError(400, "unsupported content type: use multipart/form-data (audio) or application/json (audioUrl)")


async def _read_multipart(request: Request, downloader: Downloader, ticket: Ticket,
                          max_upload_bytes: int) -> AudioRequest:
    limit = max_upload_bytes + _MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(max_upload_bytes)
    stream = _capped(request.stream(), limit, UploadTooLarge(max_upload_bytes))
    parser = MultiPartParser(request.headers, stream, max_files=2, max_fields=50)
    try:
        form = await parser.parse()
    except APIError:
        raise
    except Exception as exc:  # malformed multipart: the parser's own exception types vary
        raise APIError(400, f"malformed multipart body: {type(exc).__name__}") from None
    fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    upload = form.get("audio")
    try:
        if not isinstance(upload, UploadFile):
            return await _from_url(fields, downloader, ticket)
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_upload_bytes:
        raise UploadTooLarge(max_upload_bytes, len(data))
    if not data:
        raise APIError(400, "the audio file is empty")
    params = parse_params(fields, upload.filename)
    ticket.reserve_disk(len(data))
    return AudioRequest(params, write_temp_file(data, "bulkscribe-upload-"))


async def _from_url(fields: Mapping[str, object], downloader: Downloader, ticket: Ticket) -> AudioRequest:
    url = fields.get("audioUrl")
    if not url:
        raise APIError(400, _MISSING_AUDIO)
    params = parse_params(fields, None)
    return AudioRequest(params, await downloader.fetch(str(url), ticket))


def parse_params(fields: Mapping[str, object], file_name: str | None) -> TranscribeParams:
    model = str(fields.get("model") or WHISPER_LARGE_V3)
    if model not in SPEC_MODELS:
        raise APIError(400, f"unknown model {shown(model)}; models: {', '.join(SPEC_MODELS)}")
    if model not in SYNC_MODELS and model not in ASYNC_MODELS:
        raise APIError(400, f"model {model} is not available on this server; "
                            f"use one of {', '.join(SYNC_MODELS + ASYNC_MODELS)}")
    raw_language = fields.get("language")
    if raw_language is not None and not isinstance(raw_language, str):
        raise APIError(400, f"language must be a language code, got {shown(raw_language)}")
    try:
        language = normalize_language(None if raw_language is None else str(raw_language))
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    return TranscribeParams(
        model=model, language=language,
        diarize=_flag(fields.get("diarize"), "diarize"),
        tag_audio_events=_flag(fields.get("tagAudioEvents"), "tagAudioEvents"),
        actual_duration_min=_minutes(fields.get("actualDuration")), file_name=file_name,
        num_speakers=_speaker_count(fields.get("numSpeakers", fields.get("num_speakers"))),
    )


def _minutes(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise APIError(400, f"actualDuration must be a number of minutes, got {shown(value)}") from None


def _speaker_count(value: object) -> int | None:
    """A whole number, as a JSON integer or digits in a form; 2.7 or true is refused, not truncated."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and value.strip().isdigit():
        count = int(value)
    else:
        raise APIError(400, f"numSpeakers must be a whole number, got {shown(value)}")
    if not 1 <= count <= 32:
        raise APIError(400, "numSpeakers must be between 1 and 32")
    return count


def _flag(value: object, name: str) -> bool:
    """Booleans arrive as "true"/"false" in multipart and as JSON booleans."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise APIError(400, f"{name} must be true or false, got {shown(value)}")


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` (never read further)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks = [chunk async for chunk in _capped(request.stream(), limit, BodyTooLarge(limit))]
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int = JSON_BODY_LIMIT) -> object:
    raw = await read_capped_body(request, limit)
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise APIError(400, "body is not valid JSON") from None


def validation_summary(exc: ValidationError) -> str:
    """Which fields were wrong and why, without the values (they may be huge)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3])


async def _capped(stream: AsyncIterator[bytes], limit: int, too_large: APIError) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise too_large
        yield chunk

