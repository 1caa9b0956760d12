"""`bulkscribe export OUT --format srt|vtt|txt|json --to DIR`: one file per transcribed source.

Which transcript: the latest per (source, model) (see tasks/analytics.py); `--model`
keeps one model. Names mirror the sources' paths under their common folder, with the
format's extension (`2024/call-17.srt`); a source transcribed by several models gets one
file per model (`call-17.Wizper.srt`). Subtitles need word timings (Elevenlabs-STT); a
file without them is exported as text only (`.txt`), and counted as such. Sources are
read a few hundred at a time, so the words table is never loaded whole.
"""

from __future__ import annotations

import argparse
import os
import posixpath
from collections.abc import Iterator
from typing import IO, Any

FORMATS = ("srt", "vtt", "txt", "json")
SOURCES_PER_READ = 200


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write subtitles (SRT, WebVTT), plain text or JSON, one file per source")
    p.add_argument("out", help="output folder or fsspec URL that `run` wrote")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--to", required=True, help="folder (or fsspec URL) to write the files to")
    p.add_argument("--model", help="only this model's transcripts (default: every model)")


def main(args: argparse.Namespace) -> int:
    import polars as pl

    from config.settings import Settings
    from tasks.analytics import Out

    out = Out(args.out, Settings().storage_options)
    transcripts = out.transcripts()
    if args.model:
        transcripts = transcripts.filter(pl.col("model") == args.model)
    chosen = transcripts.select("source", "model", "fingerprint", "language", "duration_s", "text").collect()
    if chosen.is_empty():
        print(f"bulkscribe export: no transcripts in {args.out}" + (f" for {args.model}" if args.model else ""))
        return 1
    names = file_names(chosen["source"].to_list(), chosen["model"].to_list())
    written = text_only = 0
    for rows, words, segments in batches(out, chosen):
        for row in rows:
            key = (row["source"], row["model"])
            fmt = export_one(row, words.get(key, []), segments.get(key, []), args.format, args.to, names[key],
                             out.storage_options)
            written += 1
            text_only += fmt == "txt" and args.format in ("srt", "vtt")
    note = f" ({text_only} without word timings, as .txt)" if text_only else ""
    print(f"bulkscribe export: {written} file(s) -> {args.to}{note}")
    return 0


def batches(out: Any, chosen: Any) -> Iterator[tuple[list[dict[str, Any]], dict[tuple[str, str], list[Any]],
                                                     dict[tuple[str, str], list[Any]]]]:
    """The chosen transcripts a few hundred sources at a time, with their words and turns."""
    import polars as pl

    from tasks.rows import Turn
    from tasks.subtitles import Token

    for offset in range(0, chosen.height, SOURCES_PER_READ):
        rows = chosen.slice(offset, SOURCES_PER_READ)
        sources = rows["source"].unique().implode()
        words = (out.current("words").filter(pl.col("source").is_in(sources))
                 .sort("source", "model", "word_index").collect())
        segments = (out.current("segments").filter(pl.col("source").is_in(sources))
                    .sort("source", "model", "segment_index").collect())
        by_word: dict[tuple[str, str], list[Any]] = {}
        for w in words.iter_rows(named=True):
            by_word.setdefault((w["source"], w["model"]), []).append(
                Token(w["text"], w["start"], w["end"], w["type"], w["speaker"]))
        by_turn: dict[tuple[str, str], list[Any]] = {}
        for s in segments.iter_rows(named=True):
            by_turn.setdefault((s["source"], s["model"]), []).append((Turn(s["start"], s["end"], s["speaker"]),
                                                                      s["text"]))
        yield list(rows.iter_rows(named=True)), by_word, by_turn


def export_one(row: dict[str, Any], tokens: list[Any], turns_with_text: list[Any], fmt: str, to: str, name: str,
               storage_options: dict[str, Any] | None) -> str:
    """Write one source's file; returns the format written (txt when subtitles had no timings)."""
    from tasks import storage, subtitles

    turns = [t for t, _ in turns_with_text]
    if fmt in ("srt", "vtt") and not any(t.type == "word" for t in tokens):
        fmt = "txt"
    if fmt == "txt":
        body = subtitles.to_text(row["text"] or "", turns, [x for _, x in turns_with_text])
    elif fmt == "json":
        meta = {k: row[k] for k in ("source", "model", "fingerprint", "language", "duration_s", "text")}
        body = subtitles.to_json(meta, subtitles.build_cues(tokens, turns), tokens, turns)
    else:
        cues = subtitles.build_cues(tokens, turns, label_in_text=fmt == "srt")
        body = subtitles.to_srt(cues) if fmt == "srt" else subtitles.to_vtt(cues)
    fs, root = storage.filesystem_for(to, storage_options)
    data = body.encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(data)

    storage.write_atomic(fs, f"{root.rstrip('/')}/{name}.{fmt}", write)
    return fmt


def file_names(sources: list[str], models: list[str]) -> dict[tuple[str, str], str]:
    """Output names without extension: each source's path under the sources' common folder,
    its audio extension dropped, the model added when a source has more than one."""
    paths = [s.split("://", 1)[-1] for s in sources]
    common = posixpath.commonpath(paths) if len(set(paths)) > 1 else posixpath.dirname(paths[0])
    if common in paths:  # one source: keep its name
        common = posixpath.dirname(common)
    per_source: dict[str, int] = {}
    for s in sources:
        per_source[s] = per_source.get(s, 0) + 1
    names = {}
    for source, path, model in zip(sources, paths, models):
        stem = os.path.splitext(posixpath.relpath(path, common) if common else path.lstrip("/"))[0]
        names[(source, model)] = f"{stem}.{model}" if per_source[source] > 1 else stem
    return names
