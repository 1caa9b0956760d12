"""`bulkscribe evaluate`: transcribe a labelled folder with one or more models, score them.

For each model the normal flow runs into OUT (so it skips what OUT already holds, and a
later `run` reuses these transcripts); then every file with a reference is scored
(`tasks.quality`: WER/CER after Whisper's normalisers, DER with a 0.25 s collar) against
the latest transcript of that (source, model) in OUT. Results go to
`OUT/quality/<evaluation id>.parquet`, one row per (source, model).

Real-time factor: wall time of the model's run (discovery, upload, waiting for the API,
writing the tables; with no API URL one embedded server is started before the first
model and shared, so its start-up is not counted) over the audio seconds that run
transcribed. Every file transcribed by that run gets the run's RTF (the pipeline does
not time files one by one: they are sent concurrently); files reused from OUT, which
this evaluation did not transcribe, get null.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from config.settings import Settings
from flows.endpoint import api_endpoint
from flows.errors import NothingTranscribed, RunAborted
from flows.transcribe_archive import run_with_settings
from stt.contract import ASYNC_MODELS
from tasks import quality, storage
from tasks.analytics import Out
from tasks.rows import Turn, schema_of


@dataclass(frozen=True, slots=True)
class QualityRow:
    """One (source, model) scored against its reference; null where not applicable."""

    evaluation_id: str
    source: str
    model: str
    language: str | None
    status: str                          # scored | no transcript
    wer: float | None
    cer: float | None
    der: float | None
    duration_s: float | None
    cost: float | None
    rtf: float | None
    ref_words: int | None
    word_errors: int | None
    ref_chars: int | None
    char_errors: int | None
    der_reference_s: float | None
    der_error_s: float | None
    reference_norm: str | None
    hypothesis_norm: str | None
    evaluated_at: datetime


QUALITY = schema_of(QualityRow)


@dataclass(frozen=True)
class ModelRun:
    model: str
    run_id: str
    wall_s: float
    audio_s: float
    transcribed: int

    @property
    def rtf(self) -> float | None:
        return self.wall_s / self.audio_s if self.audio_s > 0 else None


@dataclass
class Evaluation:
    id: str
    rows: list[QualityRow]
    runs: dict[str, ModelRun] = field(default_factory=dict)
    path: str | None = None

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame([{n: getattr(r, n) for n in QUALITY.names} for r in self.rows],
                            schema=pl.Schema(pl.from_arrow(QUALITY.empty_table()).schema))  # type: ignore[union-attr]


def evaluate(source: str, out: str, settings: Settings, models: list[str], *, references: str | None = None,
             transcribe: bool = True, params: dict[str, Any] | None = None) -> Evaluation:
    """Transcribe SOURCE with each model (unless `transcribe` is False), then score OUT's transcripts."""
    refs = quality.load_references(source, references, settings.storage_options)
    if not refs:
        raise RunAborted(f"no references under {source}: add <name>.txt (or .rttm) next to each audio file, "
                         "or a CSV/JSON manifest (path,text[,language]) with --references")
    now = datetime.now(UTC)
    evaluation = Evaluation(f"{quality.evaluation_id(now)}-{uuid.uuid4().hex[:6]}", [])
    if transcribe:
        with shared_endpoint(settings, source) as shared:
            for model in models:
                evaluation.runs[model] = transcribe_with(source, out, shared, model, params or {})
    outdir = Out(out, settings.storage_options)
    for model in models:
        evaluation.rows += score_model(outdir, refs, model, evaluation.runs.get(model), evaluation.id, now)
    evaluation.path = write(out, evaluation, settings.storage_options)
    return evaluation


@contextlib.contextmanager
def shared_endpoint(settings: Settings, source: str) -> Iterator[Settings]:
    """Settings whose API every model's run uses: the configured one, or one embedded
    server for all models (its start-up is then paid once, outside the runs' timing)."""
    if settings.api_url:
        yield settings
        return
    with api_endpoint(settings, source) as endpoint:
        yield settings.model_copy(update={"api_url": endpoint.url, "api_key": endpoint.api_key,
                                          "api_idempotency_keys": endpoint.idempotent,
                                          "requests_per_second": None})


def transcribe_with(source: str, out: str, settings: Settings, model: str, params: dict[str, Any]) -> ModelRun:
    """One model's run. Diarization and audio events are asked of the models that offer
    them only, so that a later plain `run` of another model finds (and reuses) its transcripts."""
    update: dict[str, Any] = {"model": model}
    if model not in ASYNC_MODELS:
        update.update(diarize=False, tag_audio_events=False)
    model_settings = settings.model_copy(update=update)
    started = time.monotonic()
    try:
        summary = run_with_settings(source, out, model_settings, **params)
    except NothingTranscribed as exc:
        summary = exc.summary
    return ModelRun(model, summary.run_id, time.monotonic() - started, summary.audio_minutes * 60.0,
                    summary.transcribed)


def score_model(out: Out, refs: dict[str, quality.Reference], model: str, run: ModelRun | None,
                evaluation_id: str, now: datetime) -> list[QualityRow]:
    sources = list(refs)
    transcripts = {r["source"]: r for r in out.transcripts().filter(
        (pl.col("model") == model) & pl.col("source").is_in(sources)).collect().iter_rows(named=True)}
    words = (out.current("words").filter((pl.col("model") == model) & pl.col("source").is_in(sources)
                                         & (pl.col("type") == "word"))
             .sort("source", "word_index").group_by("source", maintain_order=True)
             .agg(pl.col("text").str.join(" ")).collect())
    spoken = dict(zip(words["source"].to_list(), words["text"].to_list()))
    segments = out.current("segments").filter((pl.col("model") == model) & pl.col("source").is_in(sources)).collect()
    rows = []
    for source, ref in refs.items():
        t = transcripts.get(source)
        turns = [Turn(s["start"], s["end"], s["speaker"])
                 for s in segments.filter(pl.col("source") == source).iter_rows(named=True)]
        rtf = run.rtf if run is not None and t is not None and t["run_id"] == run.run_id else None
        rows.append(score_file(ref, model, t, spoken.get(source), turns, rtf, evaluation_id, now))
    return rows


def score_file(ref: quality.Reference, model: str, transcript: dict[str, Any] | None, spoken: str | None,
               turns: list[Turn], rtf: float | None, evaluation_id: str, now: datetime) -> QualityRow:
    """The hypothesis is the file's spoken words when the model gave word timings (no
    speaker labels, no audio events), else the transcript's text."""
    empty: dict[str, Any] = dict(wer=None, cer=None, der=None, ref_words=None, word_errors=None, ref_chars=None,
                                 char_errors=None, der_reference_s=None, der_error_s=None, reference_norm=None,
                                 hypothesis_norm=None)
    if transcript is None:
        return QualityRow(evaluation_id=evaluation_id, source=ref.audio, model=model, language=ref.language,
                          status="no transcript", duration_s=None, cost=None, rtf=None, evaluated_at=now, **empty)
    language = ref.language or transcript["language"]
    values = dict(empty)
    if ref.text is not None:
        s = quality.score_text(ref.text, spoken if spoken is not None else transcript["text"], language)
        values.update(wer=s.wer, cer=s.cer, ref_words=s.ref_words, word_errors=s.word_errors, ref_chars=s.ref_chars,
                      char_errors=s.char_errors, reference_norm=s.reference_norm, hypothesis_norm=s.hypothesis_norm)
    if ref.turns is not None and turns and transcript["duration_s"]:
        d = quality.score_diarization(ref.turns, turns, float(transcript["duration_s"]))
        values.update(der=d.der, der_reference_s=d.reference_s, der_error_s=d.error_s)
    return QualityRow(evaluation_id=evaluation_id, source=ref.audio, model=model,
                      language=quality.base_language(language), status="scored", duration_s=transcript["duration_s"],
                      cost=transcript["cost"], rtf=rtf, evaluated_at=now, **values)


def write(out: str, evaluation: Evaluation, storage_options: dict[str, Any] | None) -> str:
    fs, root = storage.filesystem_for(out, storage_options)
    path = f"{root.rstrip('/')}/quality/{evaluation.id}.parquet"
    table = evaluation.frame().to_arrow().cast(QUALITY)
    storage.write_atomic(fs, path, lambda f: pq.write_table(table, f, compression="zstd"))
    return fs.unstrip_protocol(path) if storage.is_remote(out) else path


def summary_by_model(frame: pl.DataFrame, runs: dict[str, ModelRun]) -> pl.DataFrame:
    """Per model: corpus-level WER/CER/DER (errors over reference units, all files pooled), audio, cost, RTF."""
    def ratio(num: str, den: str) -> pl.Expr:
        return pl.when(pl.col(den).sum() > 0).then(pl.col(num).sum() / pl.col(den).sum())

    agg = (frame.group_by("model", maintain_order=True)
           .agg(files=pl.len(), scored=(pl.col("status") == "scored").sum(), wer=ratio("word_errors", "ref_words"),
                cer=ratio("char_errors", "ref_chars"), der=ratio("der_error_s", "der_reference_s"),
                audio_min=pl.col("duration_s").sum() / 60.0, cost=pl.col("cost").sum()))
    rtf = pl.DataFrame({"model": list(runs), "rtf": [r.rtf for r in runs.values()]},
                       schema={"model": pl.String, "rtf": pl.Float64})
    return agg.join(rtf, on="model", how="left")


def side_by_side(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per file, one WER (or CER where WER is null) column per model."""
    metric = frame.with_columns(score=pl.coalesce("wer", "cer"), file=pl.col("source").str.split("/").list.last())
    return metric.pivot(on="model", index="file", values="score", aggregate_function="first").sort("file")


def render(evaluation: Evaluation) -> str:
    """The terminal report: per file, per model, and models side by side when several."""
    frame = evaluation.frame()
    per_file = frame.select(file=pl.col("source").str.split("/").list.last(), model="model", lang="language",
                            wer="wer", cer="cer", der="der", dur_s="duration_s", cost="cost", rtf="rtf",
                            status="status")
    parts = [f"bulkscribe evaluate {evaluation.id} -> {evaluation.path}", "", "per file:", _table(per_file),
             "", "per model (errors pooled over all files):", _table(summary_by_model(frame, evaluation.runs))]
    if frame["model"].n_unique() > 1:
        parts += ["", "side by side (WER, or CER where a language has no word spaces):", _table(side_by_side(frame))]
    return "\n".join(parts)


def _table(df: pl.DataFrame) -> str:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=160, fmt_str_lengths=48, float_precision=4,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_formatting="ASCII_MARKDOWN"):
        return str(df)
