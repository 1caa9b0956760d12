"""One set of speakers for a long file sent in chunks (issue 11).

A two-speaker conversation built from the shared speech set (bench/conversation.py) is
sent as Elevenlabs-STT with diarization through the pipeline's batch task, with limits
that force it into chunks: the chunks overlap, their speakers are tied together by the
words both transcribe, and the segments table is scored against the known turns.
The full 40-minute version is `bench/long_diarization.py`.
"""

from __future__ import annotations

import importlib.util
import sys

import polars as pl
import pytest
from pydantic import SecretStr

from config.settings import Settings
from tasks.batch import transcribe_batch
from tasks.batch_config import BatchConfig
from tasks.discovery import discover
from tasks.endpoint import Endpoint
from tests.conftest import REPO, audio_file


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.real_model
def test_a_chunked_conversation_keeps_one_labelling(server, tmp_path):
    audio_file("jfk_inaugural.flac"), audio_file("librispeech_1995-1837-0001.wav")  # skip without the set
    conversation, der = _bench("conversation"), _bench("der")
    audio, reference = conversation.build(minutes=2.0, seed=11)
    src = tmp_path / "src"
    src.mkdir()
    conversation.write_wav(src / "talk.wav", audio)
    settings = Settings(model="Elevenlabs-STT", diarize=True, max_direct_upload_bytes=150_000, chunk_seconds=40)
    cfg = BatchConfig.from_settings(settings, out=str(tmp_path / "out"), run_id="long",
                                    endpoint=Endpoint(server.api_url, SecretStr(server.api_key), idempotent=True))
    result = transcribe_batch.fn(list(discover(str(src))), cfg, 0)
    assert result.transcribed == 1, result.failures
    t = pl.read_parquet(f"{tmp_path}/out/transcripts/*.parquet").row(0, named=True)
    assert t["upload_mode"] == "chunks"
    segments = pl.read_parquet(f"{tmp_path}/out/segments/*.parquet")
    words = pl.read_parquet(f"{tmp_path}/out/words/*.parquet").filter(pl.col("type") == "word")
    assert not words["speaker"].str.contains(":").any()  # no per-chunk labels such as c1:speaker_0
    hypothesis = [(r["start"], r["end"], r["speaker"]) for r in segments.iter_rows(named=True)]
    error = der.der(reference, hypothesis, collar=0.25)
    baseline = der.der(reference, der.one_speaker_baseline(reference), collar=0.25)
    assert error <= 0.15, (error, baseline)
    assert error < baseline / 2
