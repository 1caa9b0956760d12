"""What a request asks for, and the keys that name it.

`JobOptions` is what is asked of the API for every file (model, language, diarization);
together with a fingerprint of the file it forms the request key: what a re-run skips on,
what names the request's ledger entry, and the Idempotency-Key the API sees.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class JobOptions:
    """What is asked of the API for every file; part of the key a re-run skips on."""

    model: str
    language: str = "auto"
    diarize: bool = False
    tag_audio_events: bool = False

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def request_key(self, fingerprint: str) -> str:
        return hashlib.sha256(f"{fingerprint}\n{self.as_json()}".encode()).hexdigest()[:32]
