"""`bulkscribe compact`: fewer, larger, sorted parts; the same rows for every reader at every step."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from flows.cli import main as cli
from stt.contract import Word
from tasks import compaction, compaction_log, storage, tables
from tasks.rows import FileWords, SegmentRow, TranscriptRow, words_table


def word_parts(out: str, parts: int, files_per_part: int = 3, words_per_file: int = 40, first: int = 0) -> None:
    """Parts as batches write them: each holds a few files, sources interleaved across parts.
    Part names are never reused (a run names them by run id and batch number)."""
    for i in range(first, first + parts):
        files = [FileWords(f"/archive/{(i * 7 + j * 13) % 97:03d}.wav", f"fp{i}", "Elevenlabs-STT",
                           [Word(text=f"w{i}-{j}-{k}", start=k * 0.5, end=k * 0.5 + 0.4,
                                 type="word" if k % 2 == 0 else "spacing", speaker_id=f"speaker_{k % 2}")
                            for k in range(words_per_file)])
                 for j in range(files_per_part)]
        tables.write_part(out, "words", words_table(files), part_name=f"part-{i:05d}")


def transcript_parts(out: str, parts: int) -> None:
    for i in range(parts):
        rows = [TranscriptRow(source=f"/archive/{i:03d}-{j}.wav", fingerprint="fp", request_key=f"k{i}-{j}",
                              model="Wizper", language="en", options="{}", text="hello there", duration_s=3.0,
                              cost=0.0005, currency="USD", upload_mode="direct", file_size=100, speaker_count=None,
                              run_id="r", transcribed_at=datetime(2026, 1, 1 + i % 28, tzinfo=UTC))
                for j in range(2)]
        tables.write_part(out, "transcripts", TranscriptRow.table(rows), part_name=f"part-{i:05d}")


def rows(out: str, table: str) -> Counter:
    """The table as a multiset of rows: equal means nothing twice and nothing missing."""
    t = tables.read_table(out, table)
    return Counter(tuple(r.values()) for r in t.to_pylist())


def names(out: str, table: str) -> list[str]:
    return [Path(p).name for p in tables.part_files(out, table)]


def test_compact_merges_parts_sorted_with_statistics(tmp_path):
    out = str(tmp_path / "out")
    word_parts(out, 30)
    transcript_parts(out, 10)
    before_words, before_transcripts = rows(out, "words"), rows(out, "transcripts")

    results = {r.table: r for r in compaction.compact(out)}

    assert (results["words"].parts_before, results["words"].parts_after, results["words"].merged) == (30, 1, 30)
    assert results["words"].rows == sum(before_words.values()) == 30 * 3 * 40
    assert rows(out, "words") == before_words and rows(out, "transcripts") == before_transcripts
    assert sorted(p.name for p in (tmp_path / "out" / "words").iterdir()) == sorted(
        [compaction_log.LOG_NAME, *names(out, "words")])
    [part] = tables.part_files(out, "words")
    meta = pq.ParquetFile(part).metadata
    sources = pq.read_table(part, columns=["source"]).column("source").to_pylist()
    assert sources == sorted(sources)
    assert meta.row_group(0).sorting_columns[0].column_index == 0
    stats = meta.row_group(0).column(0).statistics
    assert stats.has_min_max and (stats.min, stats.max) == (sources[0], sources[-1])
    # Words of one file keep their order after the merge.
    words = tables.read_table(out, "words").to_pylist()
    one = [w for w in words if w["source"] == "/archive/000.wav" and w["fingerprint"] == "fp0"]
    assert [w["word_index"] for w in one] == list(range(40))


def test_disjoint_parts_are_put_in_order_and_overlapping_ones_sorted(tmp_path):
    """Parts of one run hold consecutive files (disjoint ranges, merged by ordering them);
    parts of interleaved sources are sorted. Either way the output is in source order."""
    for name, offset in (("disjoint", 1), ("overlapping", 10)):
        out = str(tmp_path / name)
        for i in range(6):
            files = [FileWords(f"/a/{(5 - i) * 10 + j * offset:03d}.wav", "fp", "Elevenlabs-STT",
                               [Word(text=f"{i}-{j}-{k}", start=k, end=k + 0.5) for k in range(5)]) for j in range(3)]
            tables.write_part(out, "words", words_table(files), part_name=f"part-{i:05d}")
        expected = rows(out, "words")
        compaction.compact(out, table_names=("words",))
        assert rows(out, "words") == expected
        got = tables.read_table(out, "words").to_pylist()
        assert [r["source"] for r in got] == sorted(r["source"] for r in got)
        for source in {r["source"] for r in got}:
            assert [r["word_index"] for r in got if r["source"] == source] == list(range(5)) * (
                sum(1 for r in got if r["source"] == source) // 5)


def test_one_source_is_found_from_statistics_without_scanning(tmp_path):
    """Parts over several row groups: a filter on source keeps one row group of many."""
    out = str(tmp_path / "out")
    many = tables.ROW_GROUP_ROWS * 3 // (20 * 400) + 1
    for i in range(20):
        files = [FileWords(f"/archive/{i:02d}-{j:03d}.wav", "fp", "Elevenlabs-STT",
                           [Word(text="x", start=k, end=k + 0.5) for k in range(400)]) for j in range(many)]
        tables.write_part(out, "words", words_table(files), part_name=f"part-{i:05d}")
    compaction.compact(out, table_names=("words",))
    [part] = tables.part_files(out, "words")
    groups = pq.ParquetFile(part).metadata.num_row_groups
    assert groups >= 3
    fragment = next(ds.dataset(part, format="parquet").get_fragments())
    hit = fragment.split_by_row_group(ds.field("source") == "/archive/07-002.wav")
    assert len(hit) == 1 and hit[0].to_table().filter(ds.field("source") == "/archive/07-002.wav").num_rows == 400


def test_every_step_and_every_crash_leaves_the_same_rows(tmp_path):
    out = str(tmp_path / "out")
    word_parts(out, 12)
    expected = rows(out, "words")
    small = names(out, "words")

    plan = compaction.plan(out, "words")
    compaction.write_outputs(plan)          # crash here: output written, not committed
    assert rows(out, "words") == expected and names(out, "words") == small
    assert any(p.name.startswith(compaction_log.COMPACTED_PREFIX) for p in (tmp_path / "out" / "words").iterdir())

    again = compaction.compact(out, table_names=("words",))  # the next compact discards it, then merges
    assert again[0].parts_after == 1 and rows(out, "words") == expected
    parquet = [p.name for p in (tmp_path / "out" / "words").glob("*.parquet")]
    assert parquet == names(out, "words")

    word_parts(out, 5, first=100)  # a later run adds parts
    expected = rows(out, "words")
    plan = compaction.plan(out, "words")
    assert len(plan.inputs) == 6            # the earlier large part is small enough to merge again
    compaction.write_outputs(plan)
    compaction.commit(plan)                 # crash here: committed, inputs not removed yet
    assert rows(out, "words") == expected and names(out, "words") == [Path(o).name for o in plan.outputs]
    assert all(Path(i).exists() for i in plan.inputs)
    compaction.compact(out, table_names=("words",))  # removes the replaced parts
    assert not any(Path(i).exists() for i in plan.inputs)
    assert rows(out, "words") == expected and len(names(out, "words")) == 1


def test_a_listing_older_than_the_commit_is_taken_again(tmp_path):
    out = str(tmp_path / "out")
    word_parts(out, 4)
    fs, root = storage.filesystem_for(out)
    folder = f"{root}/words"
    plan = compaction.plan(out, "words")
    old_listing = tables.part_files(out, "words")  # taken before the output exists
    compaction.write_outputs(plan)
    compaction.commit(plan)
    listings = iter([old_listing, old_listing + plan.outputs])
    live = compaction_log.live(fs, folder, lambda: sorted(next(listings)))
    assert live == plan.outputs  # the first listing lacked a committed output: listed again
    with pytest.raises(compaction_log.StaleListing):
        compaction_log.live(fs, folder, lambda: old_listing, attempts=2)


def test_tombstones_are_forgotten_a_day_after_their_parts_are_gone(tmp_path):
    out = str(tmp_path / "out")
    word_parts(out, 3)
    compaction.compact(out, table_names=("words",))
    log_file = tmp_path / "out" / "words" / compaction_log.LOG_NAME
    log = json.loads(log_file.read_text())
    assert len(log["generations"][0]["replaced"]) == 3
    log["generations"][0]["committed_at"] = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    log_file.write_text(json.dumps(log))
    expected = rows(out, "words")
    compaction.compact(out, table_names=("words",))
    pruned = json.loads(log_file.read_text())["generations"][0]
    assert pruned["replaced"] == [] and len(pruned["outputs"]) == 1
    assert rows(out, "words") == expected


def test_compact_on_s3(s3_env, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    fs.mkdir("compact-bucket")
    out = "s3://compact-bucket/stt"
    word_parts(out, 8)
    segments = [SegmentRow(source=f"/archive/{i}.wav", fingerprint="fp", model="Elevenlabs-STT", segment_index=0,
                           speaker="Speaker 1", start=0.0, end=1.0, text="hi") for i in range(4)]
    for i in range(4):
        tables.write_part(out, "segments", SegmentRow.table(segments[i:i + 1]), part_name=f"part-{i:05d}")
    expected = rows(out, "words"), rows(out, "segments")
    results = {r.table: r for r in compaction.compact(out)}
    assert results["words"].parts_after == 1 and results["segments"].parts_after == 1
    assert (rows(out, "words"), rows(out, "segments")) == expected
    fs.invalidate_cache()
    left = sorted(p.rsplit("/", 1)[-1] for p in fs.find("compact-bucket/stt/words"))
    assert left == sorted([compaction_log.LOG_NAME, *names(out, "words")])


def test_cli_compact(tmp_path, capsys):
    out = str(tmp_path / "out")
    word_parts(out, 6)
    transcript_parts(out, 4)
    assert cli(["compact", out, "--target-mb", "64"]) == 0
    printed = capsys.readouterr().out
    assert "words" in printed and "6 -> 1" in printed and "4 -> 1" in printed
    assert cli(["compact", out, "--table", "nope"]) == 2
