"""Putting a chunked file back together: texts, word timings and speakers in place."""

from __future__ import annotations

import pytest

from stt.contract import Word
from tasks.stitching import merge_answers, stitch
from tasks.upload import Unit


def _chunk(index: int, start: float, end: float, own_start: float | None = None) -> Unit:
    return Unit(index=index, start_s=start, end_s=end, own_start_s=start if own_start is None else own_start)


def W(text: str, start: float, end: float, type: str = "word", speaker: str | None = None) -> Word:
    return Word(text=text, start=start, end=end, type=type, speaker_id=speaker)


def test_stitch_offsets_order_and_drops():
    c0, c1, c2 = _chunk(0, 0.0, 10.0), _chunk(1, 10.0, 20.0), _chunk(2, 20.0, 25.0)
    parts = [
        (c0, " hello there ", [W("hello", 0.5, 1.0, speaker="speaker_0"),
                               W("there", 1.1, 1.6, speaker="speaker_1"),
                               W("ghost", 9.9, 11.0)]),  # midpoint 10.45 > 10: dropped
        (c1, "", []),
        (c2, "the end", [W("the", 0.2, 0.5), W(" ", 0.5, 0.6, type="spacing"),
                         W("end", 0.4, 0.9, speaker="speaker_0"),   # overlaps: clamped
                         W("more", 5.2, 6.0)]),                     # past the end: dropped
        (c1, "  middle  ", [W("middle", 0.0, 0.4, speaker="speaker_0"),
                            W("x", -0.5, 0.1)]),  # midpoint 9.8 < 10: dropped
    ]
    text, words = stitch(parts)
    assert text == "hello there middle the end"
    assert [(w.text, round(w.start, 6), round(w.end, 6), w.type, w.speaker_id) for w in words] == [
        ("hello", 0.5, 1.0, "word", "speaker_0"),
        ("there", 1.1, 1.6, "word", "speaker_1"),
        # Chunks that share no audio: a chunk with no more speakers than the file so far
        # takes its speaker for the file's speaker heard last.
        ("middle", 10.0, 10.4, "word", "speaker_1"),
        ("the", 20.2, 20.5, "word", None),
        (" ", 20.5, 20.6, "spacing", None),
        ("end", 20.6, 20.9, "word", "speaker_1"),
    ]
    assert parts[0][2][0].start == 0.5 and parts[0][2][0].speaker_id == "speaker_0"  # inputs untouched


def test_stitch_clamps_into_the_chunk_and_after_the_previous_word():
    c0, c1 = _chunk(0, 0.0, 5.0), _chunk(1, 5.0, 10.0)
    _, words = stitch([
        (c0, "a b", [W("a", 4.0, 5.4), W("b", 4.6, 5.2)]),  # both midpoints <= 5
        (c1, "c", [W("c", -0.1, 0.3)]),                          # midpoint 5.1: kept
    ])
    spans = [(w.text, round(w.start, 6), round(w.end, 6)) for w in words]
    assert spans == [("a", 4.0, 5.0), ("b", 5.0, 5.0), ("c", 5.0, 5.3)]
    for a, b in zip(words, words[1:]):
        assert b.start >= a.end


def test_stitch_nothing():
    assert stitch([]) == ("", [])
    assert stitch([(_chunk(0, 0.0, 3.0), "  ", [])]) == ("", [])


def test_overlapping_chunks_keep_one_set_of_speakers():
    """Chunk 1 repeats the last 4 s of chunk 0 with its speaker labels swapped: the shared
    words tie them back, and the shared words are kept once."""
    c0, c1 = _chunk(0, 0.0, 10.0), _chunk(1, 6.0, 20.0, own_start=10.0)
    a, b = "speaker_0", "speaker_1"
    parts = [
        (c0, "", [W("one", 1.0, 1.5, speaker=a), W("two", 6.5, 7.0, speaker=b), W("three", 8.5, 9.0, speaker=a)]),
        (c1, "", [W("two", 0.5, 1.0, speaker=a), W("three", 2.5, 3.0, speaker=b),   # 6.5 and 8.5 in the file
                  W("four", 5.0, 5.5, speaker=a), W("five", 9.0, 9.5, speaker=b),
                  W("six", 12.0, 12.5, speaker="speaker_2")]),                      # a new voice
    ]
    _, words = stitch(parts)
    assert [(w.text, w.speaker_id) for w in words] == [
        ("one", "speaker_0"), ("two", "speaker_1"), ("three", "speaker_0"),
        ("four", "speaker_1"), ("five", "speaker_0"), ("six", "speaker_2")]
    assert [w.start for w in words] == [1.0, 6.5, 8.5, 11.0, 15.0, 18.0]


def test_merged_answer_of_a_diarized_file_has_turns_from_the_file_wide_speakers():
    from stt.contract import Diarization, Metadata, Segment, StatusResponse

    def answer(words, minutes):
        return StatusResponse(status="completed", transcription="x", words=words,
                              metadata=Metadata(model="Elevenlabs-STT", cost=0.03 * minutes, actualDuration=minutes),
                              diarization=Diarization(segments=[Segment(speaker="Speaker 1", text="x", start=0, end=1)]))

    c0, c1 = _chunk(0, 0.0, 10.0), _chunk(1, 6.0, 20.0, own_start=10.0)
    merged = merge_answers([
        (c0, answer([W("hi", 1.0, 1.5, speaker="speaker_0"), W("yes", 7.0, 7.5, speaker="speaker_1")], 10 / 60)),
        (c1, answer([W("yes", 1.0, 1.5, speaker="speaker_0"), W("ok", 6.0, 6.5, speaker="speaker_0")], 14 / 60)),
    ])
    assert merged.transcription == "Speaker 1: hi Speaker 2: yes ok"
    assert [(s.speaker, s.text, s.start, s.end) for s in merged.diarization.segments] == [
        ("Speaker 1", "hi", 1.0, 1.5), ("Speaker 2", "yes ok", 7.0, 12.5)]
    assert merged.metadata.actualDuration == pytest.approx(20 / 60)  # the file, not the sum of chunks
    assert merged.metadata.cost == pytest.approx(0.03 * 24 / 60)    # every chunk is paid


def test_a_speaker_silent_in_the_overlap_is_one_of_the_files_and_more_voices_are_new():
    c0, c1, c2 = _chunk(0, 0.0, 10.0), _chunk(1, 6.0, 20.0, own_start=10.0), _chunk(2, 16.0, 30.0, own_start=20.0)
    a, b, c = "speaker_0", "speaker_1", "speaker_2"
    parts = [
        (c0, "", [W("one", 1.0, 1.5, speaker=a), W("two", 3.0, 3.5, speaker=b)]),
        # nobody speaks in the overlap (6-10 s): its voices are the file's, the one heard last first
        (c1, "", [W("three", 5.0, 5.5, speaker=b), W("four", 8.0, 8.5, speaker=a)]),
        # only the voice heard last speaks in the overlap; then two voices: one new
        (c2, "", [W("four", 0.0, 0.5, speaker=a), W("five", 5.0, 5.5, speaker=a), W("six", 8.0, 8.5, speaker=b),
                  W("seven", 9.0, 9.5, speaker=c)]),
    ]
    _, words = stitch(parts)
    assert [(w.text, w.speaker_id) for w in words] == [
        ("one", "speaker_0"), ("two", "speaker_1"), ("three", "speaker_1"), ("four", "speaker_0"),
        ("five", "speaker_0"), ("six", "speaker_1"), ("seven", "speaker_2")]
