"""`bulkscribe export`: cue building rules, and SRT/WebVTT/text/JSON read back by subtitle parsers."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import srt
import webvtt

from flows.cli import main as cli
from tasks import subtitles
from tasks.subtitles import MAX_CUE_S, MAX_LINE_CHARS, MAX_LINES, Token, Turn, build_cues
from tests.analytics_out import real_out

has_diarization = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="the [diarization] extra is not installed")


def speech(words: list[str], start: float = 0.0, step: float = 0.4, speaker: str | None = None) -> list[Token]:
    tokens: list[Token] = []
    t = start
    for i, w in enumerate(words):
        if i:
            tokens.append(Token(" ", t - 0.05, t, "spacing", speaker))
        tokens.append(Token(w, t, t + step - 0.1, "word", speaker))
        t += step
    return tokens


def check_cues(cues: list[subtitles.Cue], label: bool) -> None:
    for a, b in zip(cues, cues[1:]):
        assert a.start <= a.end <= b.start <= b.end, (a, b)
    for c in cues:
        lines = subtitles.wrap(f"{c.speaker}: {c.text}" if label and c.speaker else c.text)
        assert len(lines) <= MAX_LINES and all(len(x) <= MAX_LINE_CHARS for x in lines), c
        assert c.end - c.start <= MAX_CUE_S + 1e-9, c


def test_cues_keep_the_limits_and_every_word_in_order():
    words = [f"word{i % 13}{'.' if i % 17 == 16 else ''}" for i in range(300)]
    tokens = speech(words, step=0.3)
    cues = build_cues(tokens)
    check_cues(cues, label=True)
    assert " ".join(c.text for c in cues).split() == words
    assert sum(len(c.text) for c in cues) / len(cues) > MAX_LINE_CHARS  # cues are filled, not one word each


def test_cues_break_at_pauses_speakers_and_long_cues():
    a = speech(["hello", "there"], 0.0, speaker="speaker_0")
    b = speech(["yes", "hi"], 0.9, speaker="speaker_1")
    late = speech(["after", "a", "pause"], 5.0, speaker="speaker_1")
    turns = [Turn(0.0, 0.8, "Speaker 1"), Turn(0.85, 6.5, "Speaker 2")]
    cues = build_cues(a + b + late, turns)
    assert [(c.text, c.speaker) for c in cues] == [("hello there", "Speaker 1"), ("yes hi", "Speaker 2"),
                                                   ("after a pause", "Speaker 2")]
    slow = speech(["slow"] * 6, step=1.5)  # no pause >= 1 s between words, but 9 s in all
    assert all(c.end - c.start <= MAX_CUE_S for c in build_cues(slow)) and len(build_cues(slow)) == 2


def test_times_never_go_backwards_and_short_cues_are_held():
    tokens = [Token("one", 1.0, 1.1), Token("two", 0.9, 1.0), Token(" ", 1.0, 1.0, "spacing"),
              Token("three", 3.0, 2.9)]
    cues = build_cues(tokens)
    check_cues(cues, label=False)
    assert cues[0].end - cues[0].start >= subtitles.MIN_CUE_S - 1e-9


def test_text_without_spaces_and_overlong_words():
    han = [Token(ch, i * 0.2, i * 0.2 + 0.15) for i, ch in enumerate("广州市房地产中介协会分析" * 8)]
    cues = build_cues(han)
    check_cues(cues, label=False)
    assert "".join(c.text for c in cues) == "广州市房地产中介协会分析" * 8
    long = build_cues(speech(["x" * 60, "short"]))
    assert [c.text for c in long] == ["x" * 60, "short"]


def test_writers_parse_back(tmp_path):
    cues = build_cues(speech(["good", "morning", "everyone"], speaker="speaker_0"), [Turn(0, 2, "Speaker 1")])
    [parsed] = list(srt.parse(subtitles.to_srt(cues)))
    assert parsed.content == "Speaker 1: good morning everyone" and parsed.start.total_seconds() == 0.0
    (tmp_path / "a.vtt").write_text(subtitles.to_vtt(cues))
    [caption] = webvtt.read(str(tmp_path / "a.vtt")).captions
    assert caption.voice == "Speaker 1" and caption.text == "good morning everyone"


@pytest.fixture(scope="module")
def out(server, prefect_api, tmp_path_factory) -> Path:
    return real_out(server, tmp_path_factory.mktemp("analytics"))


@has_diarization
def test_export_formats_from_a_real_out(out, tmp_path, capsys):
    for fmt in ("srt", "vtt", "txt", "json"):
        assert cli(["export", str(out), "--format", fmt, "--to", str(tmp_path / fmt)]) == 0
    printed = capsys.readouterr().out
    assert "3 file(s)" in printed and "1 without word timings" in printed

    files = sorted(str(p.relative_to(tmp_path / "srt")) for p in (tmp_path / "srt").rglob("*.*"))
    assert files == ["calls/three_speakers.srt", "lectures/jfk.srt", "lectures/timit.txt"]
    subs = list(srt.parse((tmp_path / "srt" / "calls" / "three_speakers.srt").read_text()))
    assert len(subs) >= 3
    speakers = {s.content.split(":", 1)[0] for s in subs}
    assert len(speakers) >= 2 and all(x.startswith("Speaker ") for x in speakers)
    for a, b in zip(subs, subs[1:]):
        assert a.start <= a.end <= b.start
    for s in subs:
        assert (s.end - s.start).total_seconds() <= MAX_CUE_S
        assert len(s.content.splitlines()) <= MAX_LINES and all(len(x) <= MAX_LINE_CHARS for x in s.content.splitlines())
    jfk = " ".join(c.text for c in webvtt.read(str(tmp_path / "vtt" / "lectures" / "jfk.vtt")).captions).lower()
    assert "ask not what your country" in jfk.replace("\n", " ").replace(",", "")
    timit = pl.read_parquet(f"{out}/transcripts/*.parquet").filter(pl.col("source").str.ends_with("timit.wav"))
    assert (tmp_path / "srt" / "lectures" / "timit.txt").read_text() == timit["text"].item().strip() + "\n"
    three = (tmp_path / "txt" / "calls" / "three_speakers.txt").read_text()
    assert three.startswith("Speaker 1: ") and "\n\nSpeaker " in three
    doc = json.loads((tmp_path / "json" / "lectures" / "jfk.json").read_text())
    assert doc["model"] == "Elevenlabs-STT" and doc["cues"] and doc["words"]
    assert cli(["export", str(out), "--format", "srt", "--to", str(tmp_path / "none"), "--model", "nope"]) == 1
