"""Accuracy against references: text normalisation, WER/CER, DER, and the references themselves.

Normalisation (both sides alike, before any count):
- English (`en`, `en-*`): Whisper's `EnglishTextNormalizer` (package whisper-normalizer):
  lower case, punctuation and bracketed/parenthesised spans such as "(music)" removed,
  spelled-out numbers to digits, British to American spelling, common contractions
  and fillers ("uh", "um") standardised;
- any other language: Whisper's `BasicTextNormalizer`: lower case, punctuation, symbols
  and bracketed spans removed, whitespace collapsed; diacritics kept.
WER is jiwer's, over whitespace-separated words of the normalised texts. CER is jiwer's
over characters; for languages written without spaces between words (Chinese,
Japanese, Thai, Lao, Khmer, Burmese, Tibetan) spaces are removed first, and WER is null
(a "word" there is whatever the transcriber happened to separate). Per-file counts are
kept so that totals are corpus-level (errors summed over reference words summed), not
means of ratios.

DER is pyannote.metrics' `DiarizationErrorRate` (missed speech + false alarm + speaker
confusion over reference speech, optimal one-to-one speaker mapping, overlapping speech
scored), with a forgiveness collar of 0.25 s on each side of every reference turn
boundary (NIST md-eval's `-c 0.25`; pyannote's `collar` is the total width, 0.5), over
the file from 0 to its duration.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import PurePosixPath
from typing import Any

from fsspec.core import strip_protocol

from tasks import storage
from tasks.discovery import DiscoveryFilter, discover
from tasks.rows import Turn

COLLAR_S = 0.25
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "cmn", "jpn", "tha"})
#: Manifests picked up from SOURCE when no --references is given (besides same-stem .txt).
MANIFEST_NAMES = ("references.csv", "references.json", "manifest.csv", "manifest.json")


@dataclass(frozen=True)
class Reference:
    """What was really said in one audio file: its text and/or its speaker turns."""

    audio: str
    text: str | None = None
    language: str | None = None
    turns: tuple[Turn, ...] | None = None


@dataclass(frozen=True)
class TextScore:
    language: str | None
    reference_norm: str
    hypothesis_norm: str
    ref_words: int | None
    word_errors: int | None
    ref_chars: int
    char_errors: int

    @property
    def wer(self) -> float | None:
        return None if not self.ref_words or self.word_errors is None else self.word_errors / self.ref_words

    @property
    def cer(self) -> float | None:
        return self.char_errors / self.ref_chars if self.ref_chars else None


@dataclass(frozen=True)
class DerScore:
    reference_s: float
    error_s: float
    components: dict[str, float] = field(default_factory=dict)

    @property
    def der(self) -> float | None:
        return self.error_s / self.reference_s if self.reference_s > 0 else None


# -- text --------------------------------------------------------------------------------


def base_language(code: str | None) -> str | None:
    if not code or code == "auto":
        return None
    return code.lower().replace("_", "-").split("-")[0]


def writes_without_spaces(language: str | None) -> bool:
    return base_language(language) in NO_SPACE_LANGUAGES


@cache
def _english() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@cache
def _basic() -> Any:
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def normalise(text: str, language: str | None) -> str:
    """The text as it is compared (see the module docstring)."""
    normaliser = _english() if base_language(language) == "en" else _basic()
    words = str(normaliser(text)).split()
    return ("" if writes_without_spaces(language) else " ").join(words)


def score_text(reference: str, hypothesis: str, language: str | None) -> TextScore:
    import jiwer

    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    ref_words = word_errors = None
    if not writes_without_spaces(language) and ref:
        words = jiwer.process_words(ref, hyp)
        ref_words = words.hits + words.substitutions + words.deletions
        word_errors = words.substitutions + words.deletions + words.insertions
    chars_ref, char_errors = len(ref), 0
    if ref:
        chars = jiwer.process_characters(ref, hyp)
        chars_ref = chars.hits + chars.substitutions + chars.deletions
        char_errors = chars.substitutions + chars.deletions + chars.insertions
    return TextScore(base_language(language), ref, hyp, ref_words, word_errors, chars_ref, char_errors)


# -- speakers ------------------------------------------------------------------------------


def parse_rttm(text: str) -> tuple[Turn, ...]:
    """SPEAKER lines of an RTTM file: `SPEAKER <file> <chan> <onset> <duration> ... <name> ...`."""
    turns = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            turns.append(Turn(start, start + duration, fields[7]))
    return tuple(turns)


def score_diarization(reference: Iterable[Turn], hypothesis: Iterable[Turn], duration_s: float) -> DerScore:
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: Iterable[Turn]) -> Annotation:
        a = Annotation()
        for i, t in enumerate(turns):
            if t.end > t.start:
                a[Segment(t.start, t.end), i] = t.speaker
        return a

    metric = DiarizationErrorRate(collar=2 * COLLAR_S, skip_overlap=False)
    detail = metric(annotation(reference), annotation(hypothesis), uem=Timeline([Segment(0.0, duration_s)]),
                    detailed=True)
    error = detail["missed detection"] + detail["false alarm"] + detail["confusion"]
    return DerScore(float(detail["total"]), float(error), {k: float(v) for k, v in detail.items()})


# -- references ------------------------------------------------------------------------------


def load_references(source: str, manifest: str | None = None,
                    storage_options: dict[str, Any] | None = None) -> dict[str, Reference]:
    """References for the audio files under `source`, by their URL as discovery names them.

    From a manifest (CSV or JSON: `path,text[,language][,rttm]`; `file`/`reference` are
    accepted for `path`/`text`; paths relative to the manifest's folder), else one found in
    SOURCE under a name of MANIFEST_NAMES (a given manifest replaces that one); and from
    `<stem>.txt` / `<stem>.rttm` next to each audio file. A manifest entry wins over a sibling file."""
    fs, root = storage.filesystem_for(source, storage_options)
    present = set(fs.find(root)) if fs.isdir(root) else {root}
    audio = {strip_protocol(f.url): f.url for f in discover(source, DiscoveryFilter(), storage_options)}
    refs: dict[str, Reference] = {}
    for path, url in audio.items():
        stem = str(PurePosixPath(path).with_suffix(""))
        text = fs.cat_file(stem + ".txt").decode("utf-8").strip() if stem + ".txt" in present else None
        turns = parse_rttm(fs.cat_file(stem + ".rttm").decode()) if stem + ".rttm" in present else None
        if text is not None or turns is not None:
            refs[url] = Reference(url, text, None, turns)
    if manifest is None:
        found = next((f"{root.rstrip('/')}/{n}" for n in MANIFEST_NAMES if f"{root.rstrip('/')}/{n}" in present), None)
        if found is not None:
            manifest = str(fs.unstrip_protocol(found)) if storage.is_remote(source) else found
    if manifest is not None:
        for ref in read_manifest(manifest, storage_options):
            target = audio.get(strip_protocol(ref.audio))
            if target is not None:
                earlier = refs.get(target, Reference(target)).turns
                refs[target] = Reference(target, ref.text, ref.language, ref.turns or earlier)
    return refs


def read_manifest(url: str, storage_options: dict[str, Any] | None = None) -> list[Reference]:
    fs, path = storage.filesystem_for(url, storage_options)
    body = fs.cat_file(path).decode("utf-8")
    entries: list[dict[str, Any]] = (json.loads(body) if path.endswith(".json")
                                     else list(csv.DictReader(io.StringIO(body))))
    folder = path.rsplit("/", 1)[0]
    refs = []
    for e in entries:
        rel = e.get("path") or e.get("file")
        if not rel:
            continue
        audio = rel if "://" in rel or rel.startswith("/") else f"{folder}/{rel}"
        audio = fs.unstrip_protocol(audio) if storage.is_remote(url) and "://" not in rel else audio
        turns = None
        if e.get("rttm"):
            rttm = e["rttm"] if "://" in e["rttm"] or e["rttm"].startswith("/") else f"{folder}/{e['rttm']}"
            turns = parse_rttm(fs.cat_file(rttm).decode())
        text = e.get("text", e.get("reference"))
        refs.append(Reference(audio, text if text else None, e.get("language") or None, turns))
    return refs


def evaluation_id(now: datetime) -> str:
    return f"eval-{now:%Y%m%dT%H%M%S}"
