"""The fan-out hub's pure parts: ids, filters, bounded viewer queues, resume floors."""

from __future__ import annotations

import orjson

from service.api.changes_hub import (
    Change,
    ChangeFilter,
    Viewer,
    decode_vector,
    encode_vector,
    parse_change,
    sse_frame,
)


def _change(partition: int, offset: int, vector: tuple[int, ...], to: str = "loyal") -> Change:
    data = b'{"x":1}'
    return Change(
        partition, offset, vector, "new", to, "event", data, sse_frame(encode_vector(vector), data)
    )


def test_vector_ids_round_trip_and_reject_foreign_ids() -> None:
    assert decode_vector(encode_vector((0, 15, 7))) == (0, 15, 7)
    for bad in ("", "x", "1--2", "-1", "1-2-a", "1" * 30):
        assert decode_vector(bad) is None


def test_filter_matches_every_given_dimension() -> None:
    f = ChangeFilter(frozenset({"new"}), frozenset({"loyal", "at_risk"}), frozenset({"event"}))
    assert f.matches("new", "loyal", "event")
    assert not f.matches("new", "loyal", "time")
    assert not f.matches("loyal", "loyal", "event")
    assert ChangeFilter().matches("anything", "else", "rules")


def test_a_viewer_that_falls_behind_is_marked_and_its_queue_dropped() -> None:
    viewer = Viewer(ChangeFilter(), max_pending=3, floor=None)
    viewer.offer([_change(0, i, (i + 1,)) for i in range(3)])
    assert not viewer.overflowed
    viewer.offer([_change(0, 3, (4,))])
    assert viewer.overflowed
    viewer.offer([_change(0, 4, (5,))])  # nothing more is queued for it
    assert viewer._frames == type(viewer._frames)()


def test_a_resumed_viewer_skips_what_it_has_and_carries_its_larger_position() -> None:
    # resumed at p0=5, p1=9 while the hub is at p0=3, p1=2 (another worker was further on)
    viewer = Viewer(ChangeFilter(), max_pending=100, floor=(5, 9))
    viewer.offer([_change(0, 3, (4, 2)), _change(1, 2, (4, 3))])
    assert list(viewer._frames) == []  # both delivered already
    viewer.offer([_change(0, 5, (6, 3))])
    (frame,) = viewer._frames
    assert frame.startswith(b"id: 6-9\n")  # not 6-3: resuming from it must not repeat p1
    viewer._frames.clear()
    viewer.offer([_change(1, 9, (6, 10))])  # the hub has caught up: shared frames again
    (frame,) = viewer._frames
    assert frame.startswith(b"id: 6-10\n")
    assert viewer._floor is None


def test_parse_change_reads_the_figures_and_keeps_one_line() -> None:
    doc = {
        "cause": "time",
        "customer_id": "c-1",
        "previous": {"segment": "loyal", "axes": {"lifecycle": "regular"}},
        "current": {"segment": "at_risk", "axes": {"lifecycle": "at_risk"}},
    }
    parsed = parse_change(2, 40, 1_000, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    assert parsed is not None
    facts, data = parsed
    assert (facts.from_segment, facts.to_segment, facts.cause) == ("loyal", "at_risk", "time")
    assert b"\n" not in data and orjson.loads(data) == doc
    assert parse_change(0, 0, 0, b"not json") is None
    assert parse_change(0, 0, 0, None) is None
