"""What a request asks for, and the keys that name it.

Two identities, for two questions:

- Has this file been transcribed already? A re-run answers it without reading a byte,
  from the listing: (source, fingerprint, options) is in the transcripts table, the
  fingerprint being the listing's cheap change detector (size and mtime locally, the
  ETag on S3).
- Which request is this? The request key: a hash of the audio's *content* and of the
  options. It names the request's ledger entry and claim and is the Idempotency-Key the
  API sees, so two different recordings can never share one (same size and mtime do
  not make them the same), and the same recording under two names is sent once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import IO

_CHUNK = 1 << 20


@dataclass(frozen=True)
class JobOptions:
    """What is asked of the API for every file."""

    model: str
    language: str = "auto"
    diarize: bool = False
    tag_audio_events: bool = False

    def as_json(self) -> str:
        return self._json

    @functools.cached_property
    def _json(self) -> str:  # asked for twice per file (request key, transcript row): made once
        return json.dumps(asdict(self), sort_keys=True)

    def request_key(self, content_id: str) -> str:
        """The request's identity: its audio content and these options."""
        return hashlib.sha256(f"{content_id}\n{self.as_json()}".encode()).hexdigest()[:32]


def content_id(data: bytes) -> str:
    """A fast hash of audio bytes (BLAKE2b, 128 bits)."""
    return "b2:" + hashlib.blake2b(data, digest_size=16).hexdigest()


def stream_content_id(fh: IO[bytes]) -> str:
    """`content_id` of a file read in 1 MiB pieces (large files never sit in memory)."""
    digest = hashlib.blake2b(digest_size=16)
    while piece := fh.read(_CHUNK):
        digest.update(piece)
    return "b2:" + digest.hexdigest()
