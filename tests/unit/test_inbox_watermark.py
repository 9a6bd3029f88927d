"""The inbox's arithmetic: a watermark per aggregate (reliable_events/inbox.py)."""

import logging

import pytest

from reliable_events.inbox import Watermark, claim


def event(key, sequence, event_id=None):
    return {"event_id": event_id or f"{key}-{sequence}", "event_type": "x_added", "key": key, "sequence": sequence}


def key_of(event):
    return event["key"]


def test_the_watermark_moves_over_every_sequence_applied_without_a_gap():
    mark = Watermark()
    mark = mark.with_applied([2, 4])
    assert mark == Watermark(0, (2, 4))  # 1 missing: nothing is applied "through"
    mark = mark.with_applied([1])
    assert mark == Watermark(2, (4,))
    mark = mark.with_applied([3])
    assert mark == Watermark(4, ())
    assert mark.highest == 4


@pytest.mark.parametrize(
    ("mark", "sequence", "applied"),
    [
        (Watermark(3, (5,)), 3, True),
        (Watermark(3, (5,)), 4, False),
        (Watermark(3, (5,)), 5, True),
        (Watermark(3, (5,)), 6, False),
        (Watermark(7), 7, True),  # a history starting after an erasure at 7
        (Watermark(7), 8, False),
    ],
)
def test_applied_is_at_or_below_through_or_above_it(mark, sequence, applied):
    assert mark.applied(sequence) is applied


def test_claim_keeps_the_new_events_once_and_returns_the_moved_marks(caplog):
    marks = {"a": Watermark(2), "b": Watermark(0, (3,))}
    events = [event("a", 2), event("a", 3), event("b", 1), event("a", 3, "again"), event("b", 3)]

    with caplog.at_level(logging.INFO, logger="reliable_events.inbox"):
        fresh, moved = claim(marks, events, key_of, "score")

    assert [e["event_id"] for e in fresh] == ["a-3", "b-1"]
    assert moved == {"a": Watermark(3), "b": Watermark(1, (3,))}
    for skipped in ("a-2", "again", "b-3"):
        assert f"skipped duplicate event {skipped} x_added for score" in caplog.text


def test_claim_of_nothing_new_moves_nothing():
    fresh, moved = claim({"a": Watermark(5)}, [event("a", 4), event("a", 5)], key_of, "score")
    assert fresh == [] and moved == {}
