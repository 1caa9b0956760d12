"""The request/response contract of the NanoGPT transcription API.

One definition for both sides: the client parses responses with these models and the
embedded server emits them, so a drift between the two shows up as a failing test rather
than as a silently missing column in a user's table. Field names follow the public spec
(`../shared/api/nanogpt-transcribe.openapi.json`), camelCase included.

Models are permissive on input (`extra="allow"`): the hosted API may add fields at any
time and the pipeline must keep working when it does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

# -- models and limits ------------------------------------------------------------------

WHISPER_LARGE_V3 = "Whisper-Large-V3"
WIZPER = "Wizper"
ELEVENLABS_STT = "Elevenlabs-STT"

SYNC_MODELS = (WHISPER_LARGE_V3, WIZPER)
ASYNC_MODELS = (ELEVENLABS_STT,)
#: Every model id the spec lists; the embedded server answers a clear 400 for the ones it does not run.
SPEC_MODELS = (
    WHISPER_LARGE_V3,
    WIZPER,
    ELEVENLABS_STT,
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-03-20",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-mini-transcribe-latest",
    "openai-whisper-with-video",
    "qwen-voice-clone",
    "minimax-voice-clone",
)

#: "Direct File Upload (<=3MB)". The spec does not say MB or MiB; the server accepts 3 MiB,
#: and the client sends direct uploads only up to its own (configurable) threshold.
MAX_UPLOAD_BYTES = 3 * 1024 * 1024
#: "URL to audio file ... supports up to 500MB".
MAX_URL_BYTES = 500 * 1024 * 1024

#: Default prices in USD per audio minute, from the public documentation.
DEFAULT_PRICES_USD_PER_MIN = {WHISPER_LARGE_V3: 0.01, WIZPER: 0.01, ELEVENLABS_STT: 0.03}

JobStatus = Literal["pending", "processing", "completed", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    _replayed: bool = PrivateAttr(default=False)

    @property
    def replayed(self) -> bool:
        """The API answered from its idempotency record: nothing was charged for this answer."""
        return self._replayed

    def mark_replayed(self) -> None:
        self._replayed = True


# -- responses --------------------------------------------------------------------------


class Metadata(_Model):
    fileName: str | None = None
    fileSize: int | None = None
    chargedDuration: float | None = None  # minutes
    actualDuration: float | None = None  # minutes
    language: str | None = None
    cost: float = 0.0
    currency: str = "USD"
    model: str
    #: Not in the public spec: which weights produced the answer (embedded server only).
    weights: str | None = None


class Word(_Model):
    text: str
    start: float
    end: float
    type: str = "word"  # word | spacing | audio_event (ElevenLabs) ; the spec also says punctuation
    speaker_id: str | None = None


class Segment(_Model):
    speaker: str
    text: str
    start: float
    end: float


class Diarization(_Model):
    segments: list[Segment] = Field(default_factory=list)


class TranscribeResponse(_Model):
    """200 answer of the synchronous models."""

    transcription: str
    metadata: Metadata


class StatusRequest(_Model):
    """Body of `/transcribe/status`: the fields of the 202 answer, runId at least."""

    runId: str
    cost: float | None = None
    paymentSource: str | None = None
    isApiRequest: bool | None = None
    fileName: str | None = None
    fileSize: int | None = None
    chargedDuration: float | None = None
    diarize: bool | None = None


class AsyncJob(StatusRequest):
    """202 answer of the asynchronous models: poll `/transcribe/status` with these fields."""

    status: JobStatus = "pending"
    model: str

    def status_request(self) -> dict:
        """The body the status endpoint expects: everything the submit answer gave us."""
        body = self.model_dump(exclude_none=True, exclude={"status", "model"})
        body.setdefault("isApiRequest", True)
        return body


class StatusResponse(_Model):
    status: JobStatus
    transcription: str | None = None
    metadata: Metadata | None = None
    words: list[Word] | None = None
    diarization: Diarization | None = None
    error: str | None = None


class BalanceResponse(_Model):
    usd_balance: str
    nano_balance: str | None = None
    nanoDepositAddress: str | None = None


# -- requests ---------------------------------------------------------------------------


class TranscribeJsonRequest(_Model):
    audioUrl: str
    model: str = WHISPER_LARGE_V3
    language: str = "auto"
    actualDuration: str | float | None = None
    diarize: bool = False
    tagAudioEvents: bool = False


# -- languages --------------------------------------------------------------------------

#: Whisper's languages by ISO 639-1 code (plus the two it names by 639-3: haw, yue),
#: with the ISO 639-3 code of each, so either form of the spec's `language` is accepted.
WHISPER_LANGUAGES_639_3 = {
    "en": "eng", "zh": "zho", "de": "deu", "es": "spa", "ru": "rus", "ko": "kor", "fr": "fra",
    "ja": "jpn", "pt": "por", "tr": "tur", "pl": "pol", "ca": "cat", "nl": "nld", "ar": "ara",
    "sv": "swe", "it": "ita", "id": "ind", "hi": "hin", "fi": "fin", "vi": "vie", "he": "heb",
    "uk": "ukr", "el": "ell", "ms": "msa", "cs": "ces", "ro": "ron", "da": "dan", "hu": "hun",
    "ta": "tam", "no": "nor", "th": "tha", "ur": "urd", "hr": "hrv", "bg": "bul", "lt": "lit",
    "la": "lat", "mi": "mri", "ml": "mal", "cy": "cym", "sk": "slk", "te": "tel", "fa": "fas",
    "lv": "lav", "bn": "ben", "sr": "srp", "az": "aze", "sl": "slv", "kn": "kan", "et": "est",
    "mk": "mkd", "br": "bre", "eu": "eus", "is": "isl", "hy": "hye", "ne": "nep", "mn": "mon",
    "bs": "bos", "kk": "kaz", "sq": "sqi", "sw": "swa", "gl": "glg", "mr": "mar", "pa": "pan",
    "si": "sin", "km": "khm", "sn": "sna", "yo": "yor", "so": "som", "af": "afr", "oc": "oci",
    "ka": "kat", "be": "bel", "tg": "tgk", "sd": "snd", "gu": "guj", "am": "amh", "yi": "yid",
    "lo": "lao", "uz": "uzb", "fo": "fao", "ht": "hat", "ps": "pus", "tk": "tuk", "nn": "nno",
    "mt": "mlt", "sa": "san", "lb": "ltz", "my": "mya", "bo": "bod", "tl": "tgl", "mg": "mlg",
    "as": "asm", "tt": "tat", "haw": "haw", "ln": "lin", "ha": "hau", "ba": "bak", "jw": "jav",
    "su": "sun", "yue": "yue",
}
# ISO 639-3 and 639-2/B aliases that differ from the table above.
_EXTRA_ALIASES = {
    "cmn": "zh", "chi": "zh", "ger": "de", "fre": "fr", "dut": "nl", "gre": "el", "cze": "cs",
    "rum": "ro", "per": "fa", "arm": "hy", "baq": "eu", "ice": "is", "mac": "mk", "alb": "sq",
    "geo": "ka", "bur": "my", "tib": "bo", "wel": "cy", "may": "ms", "zsm": "ms", "nob": "no",
    "jav": "jw", "jv": "jw", "fil": "tl", "pes": "fa", "arb": "ar", "swh": "sw", "ekk": "et",
    "lvs": "lv", "khk": "mn", "npi": "ne", "uzn": "uz", "pnb": "pa", "azj": "az", "als": "sq",
}
_LANGUAGE_LOOKUP = {
    **{c: c for c in WHISPER_LANGUAGES_639_3},
    **{c3: c1 for c1, c3 in WHISPER_LANGUAGES_639_3.items()},
    **_EXTRA_ALIASES,
}


def normalize_language(code: str | None) -> str | None:
    """Map a spec `language` value to Whisper's code; None means detect.

    Raises ValueError for codes Whisper cannot transcribe, so that callers answer 400
    instead of letting the model guess.
    """
    if code is None:
        return None
    key = code.strip().lower().replace("_", "-")
    if key in ("", "auto"):
        return None
    key = key.split("-")[0]  # en-US -> en
    try:
        return _LANGUAGE_LOOKUP[key]
    except KeyError:
        shown = code if len(code) <= 20 else code[:20] + "..."  # never echo a huge value back
        raise ValueError(
            f"unknown language code {shown!r}: use an ISO 639-1 or 639-3 code Whisper supports, or 'auto'"
        ) from None
