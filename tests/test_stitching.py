"""Putting a chunked file back together: texts, word timings and speakers in place."""

from __future__ import annotations

from stt.contract import Word
from tasks.stitching import stitch
from tasks.upload import Unit


def _chunk(index: int, start: float, end: float) -> Unit:
    return Unit(index=index, start_s=start, end_s=end)


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
        ("hello", 0.5, 1.0, "word", "c0:speaker_0"),
        ("there", 1.1, 1.6, "word", "c0:speaker_1"),
        ("middle", 10.0, 10.4, "word", "c1:speaker_0"),
        ("the", 20.2, 20.5, "word", None),
        (" ", 20.5, 20.6, "spacing", None),
        ("end", 20.6, 20.9, "word", "c2:speaker_0"),
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
