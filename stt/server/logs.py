"""The server's logging: INFO to stderr, with URLs' query strings never written.

Presigned URLs carry their credentials in the query (`X-Amz-Signature`, `X-Amz-Credential`),
so every record passes through `RedactQueries` whatever logger wrote it, and the HTTP
client libraries' own loggers (which log request URLs at INFO) are held at WARNING.
"""

from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
_QUIET = ("httpx", "httpcore", "hpack", "uvicorn.access")


def redact(text: str) -> str:
    """`https://h/p?X-Amz-Signature=...` -> `https://h/p?<redacted>`."""
    return _QUERY.sub(r"\1?<redacted>", text)


class RedactQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactQueries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
