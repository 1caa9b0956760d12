"""The queries behind notebooks/analytics.py, as lazy polars frames (so they are testable).

Everything here is a `polars.LazyFrame` until the caller collects an aggregate: scans
read only the columns a query uses, filters are pushed into the Parquet reader (parts
are sorted by source, with statistics), so an OUT of 100,000 files is analysed without
ever holding its words table in memory.

Which rows count: a file can be transcribed more than once over time (its content
changed, or several models were tried). Analyses take the **latest transcript per
(source, model)** by `transcribed_at`, and the words and segments of that transcript's
fingerprint only; `failures` count every failed attempt (they are events over time).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tasks import storage, tables
from tasks.rows import SCHEMAS

FILE_KEY = ["source", "model"]
_PUNCTUATION = string.punctuation + "¿¡«»“”‘’…"


@dataclass(frozen=True)
class Out:
    """An OUT folder (local path or fsspec URL) and how to reach it."""

    url: str
    storage_options: dict[str, Any] | None = None

    def scan(self, table: str) -> pl.LazyFrame:
        """All live parts of a table, lazily (an empty frame with the table's schema when none)."""
        schema = pl.Schema(pl.from_arrow(SCHEMAS[table].empty_table()).schema)  # type: ignore[union-attr]
        files = tables.part_files(self.url, table, self.storage_options)
        if not files:
            return pl.LazyFrame(schema=schema)
        fs, _ = storage.filesystem_for(self.url, self.storage_options)
        if not storage.is_remote(self.url):
            return pl.scan_parquet(files, schema=schema, missing_columns="insert", extra_columns="ignore")
        return pl.scan_parquet([fs.unstrip_protocol(f) for f in files], schema=schema, missing_columns="insert",
                               extra_columns="ignore", storage_options=self._polars_options())

    def _polars_options(self) -> dict[str, str] | None:
        """The S3 endpoint the pipeline uses, in polars' (object_store) terms; credentials and
        region come from the same AWS variables and files."""
        if not storage.is_s3(self.url):
            return None
        endpoint = storage.s3_endpoint(self.storage_options)
        if not endpoint:
            return None
        return {"aws_endpoint_url": endpoint, "aws_allow_http": str(endpoint.startswith("http:")).lower()}

    def transcripts(self) -> pl.LazyFrame:
        """The latest transcript per (source, model)."""
        return (self.scan("transcripts").filter(pl.col("status") == "ok")
                .sort("transcribed_at", nulls_last=False)
                .unique(subset=FILE_KEY, keep="last"))

    def open_failures(self) -> pl.LazyFrame:
        """The current state of failures: the latest failure per (source, model), unless a
        transcript of that file came after it (the failures table is a log of every failed
        attempt; a file that failed once and was transcribed later is not failing)."""
        last_failure = self.scan("failures").sort("failed_at", nulls_last=False).unique(subset=FILE_KEY, keep="last")
        later = self.transcripts().select(*FILE_KEY, "transcribed_at")
        return (last_failure.join(later, on=FILE_KEY, how="left")
                .filter(pl.col("transcribed_at").is_null() | (pl.col("transcribed_at") < pl.col("failed_at")))
                .drop("transcribed_at"))

    def current(self, table: str) -> pl.LazyFrame:
        """Words or segments of the latest transcript per (source, model)."""
        latest = self.transcripts().select(*FILE_KEY, "fingerprint")
        return self.scan(table).join(latest, on=[*FILE_KEY, "fingerprint"], how="semi")


def daily_usage(transcripts: pl.LazyFrame) -> pl.LazyFrame:
    """Per day (UTC) and model: files, audio hours, cost."""
    return (transcripts.with_columns(day=pl.col("transcribed_at").dt.date())
            .group_by("day", "model")
            .agg(files=pl.len(), audio_hours=pl.col("duration_s").sum() / 3600.0, cost=pl.col("cost").sum())
            .sort("day", "model"))


def languages(transcripts: pl.LazyFrame) -> pl.LazyFrame:
    return (transcripts.group_by(pl.col("language").fill_null("unknown"))
            .agg(files=pl.len(), audio_hours=pl.col("duration_s").sum() / 3600.0)
            .sort("files", descending=True))


def failure_reasons(failures: pl.LazyFrame) -> pl.LazyFrame:
    """Failed attempts per day and reason (kind, type, status code)."""
    return (failures.with_columns(day=pl.col("failed_at").dt.date(),
                                  reason=pl.concat_str(pl.col("error_kind"), pl.lit(" "), pl.col("error_type"),
                                                       pl.col("status_code").cast(pl.String).fill_null(""),
                                                       separator=""))
            .group_by("day", "reason").agg(failures=pl.len(), example=pl.col("message").first())
            .sort("day", "failures", descending=[False, True]))


def speaker_talk_time(segments: pl.LazyFrame) -> pl.LazyFrame:
    """Per diarized file and speaker: talk time, share of the file's talk, turns."""
    return (segments.with_columns(talk_s=pl.col("end") - pl.col("start"))
            .group_by(*FILE_KEY, "speaker").agg(talk_s=pl.col("talk_s").sum(), turns=pl.len())
            .with_columns(share=pl.col("talk_s") / pl.col("talk_s").sum().over(FILE_KEY))
            .sort(*FILE_KEY, "talk_s", descending=[False, False, True]))


def turn_taking(segments: pl.LazyFrame) -> pl.LazyFrame:
    """Per diarized file: speakers, turns, speaker changes, mean turn length, gaps between turns."""
    ordered = segments.sort(*FILE_KEY, "start").with_columns(
        changed=(pl.col("speaker") != pl.col("speaker").shift(1).over(FILE_KEY)).fill_null(False),
        gap_s=(pl.col("start") - pl.col("end").shift(1).over(FILE_KEY)))
    return (ordered.group_by(*FILE_KEY)
            .agg(speakers=pl.col("speaker").n_unique(), turns=pl.len(), speaker_changes=pl.col("changed").sum(),
                 mean_turn_s=(pl.col("end") - pl.col("start")).mean(), mean_gap_s=pl.col("gap_s").mean(),
                 overlaps=(pl.col("gap_s") < 0).sum())
            .sort(*FILE_KEY))


def speaking_rate(transcripts: pl.LazyFrame, words: pl.LazyFrame) -> pl.LazyFrame:
    """Words per minute per file: spoken words over the time between the first and last
    word when the file has word timings, else the transcript's words over its duration."""
    timed = (words.filter(pl.col("type") == "word").group_by(*FILE_KEY)
             .agg(timed_words=pl.len(), speech_s=pl.col("end").max() - pl.col("start").min()))
    return (transcripts.select(*FILE_KEY, "duration_s", "language",
                               text_words=pl.col("text").str.split(" ").list.eval(
                                   pl.element().filter(pl.element().str.contains(r"\w"))).list.len())
            .join(timed, on=FILE_KEY, how="left")
            .with_columns(words=pl.coalesce("timed_words", "text_words"),
                          minutes=pl.coalesce("speech_s", "duration_s") / 60.0)
            .with_columns(wpm=pl.when(pl.col("minutes") > 0).then(pl.col("words") / pl.col("minutes")))
            .select(*FILE_KEY, "language", "words", "minutes", "wpm", timed=pl.col("timed_words").is_not_null())
            .sort("wpm", descending=True, nulls_last=True))


def keyword_hits(words: pl.LazyFrame, keyword: str, limit: int = 50) -> pl.LazyFrame:
    """Spoken words equal to `keyword` (case and surrounding punctuation ignored)."""
    wanted = keyword.strip().strip(_PUNCTUATION).lower()
    return (words.filter((pl.col("type") == "word")
                         & (pl.col("text").str.to_lowercase().str.strip_chars(_PUNCTUATION) == wanted))
            .select(*FILE_KEY, "fingerprint", "word_index", "start", "end", "speaker", "text")
            .sort(*FILE_KEY, "word_index").head(limit))


def keyword_in_context(words: pl.LazyFrame, keyword: str, width: int = 8, limit: int = 50,
                       storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """Each hit of `keyword` with `width` words either side and a link to its time in the file.

    Two passes: the hits (a scan of three columns), then only the hits' files' words near
    the hits (a filter on source, which the parts' statistics turn into skipped row groups).
    """
    hits = keyword_hits(words, keyword, limit).collect()
    if hits.is_empty():
        return hits.select(*FILE_KEY, "start", "speaker").with_columns(
            left=pl.lit(""), hit=pl.lit(""), right=pl.lit(""), link=pl.lit(""))
    span = 3 * width  # word_index also counts spacing entries between words
    lo, hi = int(hits["word_index"].min()) - span, int(hits["word_index"].max()) + span  # type: ignore[arg-type]
    near = (words.filter(pl.col("source").is_in(hits["source"].unique().implode()) & (pl.col("type") == "word")
                         & pl.col("word_index").is_between(lo, hi))
            .join(hits.lazy().select(*FILE_KEY, "fingerprint", hit_index="word_index"),
                  on=[*FILE_KEY, "fingerprint"])
            .filter((pl.col("word_index") - pl.col("hit_index")).abs() <= span)
            .sort("word_index").collect())
    rows = []
    for hit in hits.iter_rows(named=True):
        around = near.filter((pl.col("source") == hit["source"]) & (pl.col("model") == hit["model"])
                             & (pl.col("hit_index") == hit["word_index"]))
        before = around.filter(pl.col("word_index") < hit["word_index"])["text"].to_list()[-width:]
        after = around.filter(pl.col("word_index") > hit["word_index"])["text"].to_list()[:width]
        rows.append({"source": hit["source"], "model": hit["model"], "start": hit["start"], "speaker": hit["speaker"],
                     "left": " ".join(before), "hit": hit["text"], "right": " ".join(after),
                     "link": link(hit["source"], hit["start"], storage_options)})
    return pl.DataFrame(rows)


def file_words(words: pl.LazyFrame, source: str, model: str) -> pl.DataFrame:
    """One file's spoken words with their timings, in order."""
    return (words.filter((pl.col("source") == source) & (pl.col("model") == model) & (pl.col("type") != "spacing"))
            .select("word_index", "start", "end", "speaker", "type", "text").sort("word_index").collect())


def link(source: str, start: float, storage_options: dict[str, Any] | None = None) -> str:
    """A URL that opens the recording at `start` (a media fragment, `#t=`), in a browser or player.

    Local files become file:// URLs; S3 objects a presigned URL (valid one hour) when
    credentials allow, else the s3:// URL."""
    fragment = f"#t={max(0.0, start):.2f}"
    if not storage.is_remote(source):
        return Path(source).resolve().as_uri() + fragment
    if storage.is_s3(source):
        try:
            return storage.presign(source, 3600, storage_options) + fragment
        except Exception:  # noqa: BLE001 - no credentials here: the plain URL still names the file
            return source + fragment
    return source + fragment
