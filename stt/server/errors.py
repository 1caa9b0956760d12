"""Errors the embedded server answers, all in the spec's shape `{error: <status>, message}`.

Every refusal is raised as an `APIError` (or one of the named cases below, whose message is
written once here) and turned into a response by the handlers `install_handlers` adds, so
no route builds an error body itself. Messages never echo more than a short prefix of what
the client sent.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("bulkscribe.server")

#: Longest piece of a client's value repeated in an error message.
ECHO_LIMIT = 40


class APIError(Exception):
    """Answered as `{error: status, message}` with `status` as the HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class UploadTooLarge(APIError):
    def __init__(self, limit: int, size: int | None = None) -> None:
        got = f"{size} bytes, " if size is not None else ""
        super().__init__(413, f"file too large for direct upload ({got}max {limit} bytes); "
                              "send an audioUrl instead (up to 500 MB)")


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (max {limit} bytes)")


class Busy(APIError):
    """Past the admission bound: answered at once so that every request gets an answer."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(503, f"server busy: {what}, retry later", {"Retry-After": str(retry_after_s)})


class IdempotencyConflict(APIError):
    def __init__(self) -> None:
        super().__init__(422, "this Idempotency-Key was already used with different content or options; "
                              "use a new key for a different request")


def shown(value: object) -> str:
    """A client's value for an error message: repr'd, cut to ECHO_LIMIT characters."""
    text = repr(value)
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "...(cut)"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": status, "message": message}, status_code=status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(str(e.get("msg", "invalid")) for e in exc.errors()[:3])
    return error_response(400, f"invalid request: {problems}")


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
