"""Typed errors of the transcription API, split by what a caller should do about them.

Modelled on httpx's exception tree and dlt's Terminal/Transient split: the retry logic
never looks at status codes, only at the kind. `TransientError` is worth trying again
(later: honour `retry_after`); `PermanentError` will fail the same way every time and
must not be retried (and, for a paid API, must not be paid for twice).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any


class STTError(Exception):
    """Base of every error raised by the client."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None,
                 retry_after: float | None = None, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code  # machine-readable reason when the server gives one
        self.retry_after = retry_after
        #: The request may have reached the server and been acted on (and paid for),
        #: though no answer came back: a read timeout or a connection lost mid-request.
        self.maybe_sent = maybe_sent

    @property
    def kind(self) -> str:
        return "transient" if isinstance(self, TransientError) else "permanent"

    def __str__(self) -> str:
        prefix = f"{self.status_code} " if self.status_code else ""
        return f"{prefix}{self.message}"


class TransientError(STTError):
    """May succeed if tried again later."""


class PermanentError(STTError):
    """Will fail the same way if tried again."""


# transient
class ConnectError(TransientError): ...  # nothing was sent
class ConnectionLost(TransientError): ...  # dropped after (part of) the request was sent
class TimeoutError_(TransientError): ...  # noqa: N801 (avoid shadowing the builtin)
class RateLimited(TransientError): ...
class ServerError(TransientError): ...


# permanent
class BadRequest(PermanentError): ...
class Unauthorized(PermanentError): ...
class PaymentRequired(PermanentError): ...
class Forbidden(PermanentError): ...
class NotFound(PermanentError): ...
class PayloadTooLarge(PermanentError): ...


class DailyLimitExceeded(PermanentError):
    """429 with `daily_usd_limit_exceeded` / `daily_rpd_limit_exceeded`: retrying today is pointless."""


class JobFailed(PermanentError):
    """An asynchronous job ended in `failed`; the message is the server's reason."""


class InvalidResponse(PermanentError):
    """The server answered 2xx with a body that does not follow the contract."""


_BY_STATUS: dict[int, type[STTError]] = {
    400: BadRequest, 401: Unauthorized, 402: PaymentRequired, 403: Forbidden, 404: NotFound,
    408: TimeoutError_, 413: PayloadTooLarge, 429: RateLimited,
    500: ServerError, 502: ServerError, 503: ServerError, 504: ServerError,
}
DAILY_LIMIT_CODES = ("daily_usd_limit_exceeded", "daily_rpd_limit_exceeded")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status_code: int, body: Any, headers: Any = None) -> STTError:
    """Turn an error answer into the matching typed exception.

    The body is `{error, message}` per the spec, but proxies and the hosted API also
    answer HTML or `{error: "code", message}`: every shape yields a readable message.
    """
    message = None
    code = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail")
        err = body.get("error")
        if isinstance(err, str):
            code = err
            message = message or err
        elif isinstance(err, dict):  # {"error": {"message": ..., "code": ...}}
            message = message or err.get("message")
            code = err.get("code") or err.get("type")
        code = body.get("code", code)
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:500]
    message = str(message) if message else f"HTTP {status_code}"
    retry_after = parse_retry_after(headers.get("retry-after")) if headers is not None else None

    if status_code == 429 and (code in DAILY_LIMIT_CODES or any(c in message for c in DAILY_LIMIT_CODES)):
        cls: type[STTError] = DailyLimitExceeded
    elif status_code in _BY_STATUS:
        cls = _BY_STATUS[status_code]
    elif status_code >= 500:
        cls = ServerError
    else:
        cls = PermanentError
    return cls(message, status_code=status_code, code=code, retry_after=retry_after)
