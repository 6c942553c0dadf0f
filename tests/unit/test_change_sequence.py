"""The change-topic history check of the scale-out test finds the faults it is there for."""

from __future__ import annotations

from typing import Any

from tests.support.consumers import change_sequence_problems

AXES = {"lifecycle": "new", "rfm": {"r": 5, "f": 1, "m": 1}}


def seg(segment: str, treatment: str = "t0") -> dict[str, Any]:
    return {"segment": segment, "axes": AXES, "treatment": {"id": treatment}}


def change(
    offset: int,
    previous: dict[str, Any] | None,
    current: dict[str, Any],
    *,
    cid: str = "c1",
    partition: int = 0,
    change_id: str | None = None,
) -> dict[str, Any]:
    return {
        "customer_id": cid,
        "change_id": change_id or f"id{offset}",
        "previous": previous,
        "current": current,
        "_partition": partition,
        "_offset": offset,
    }


def test_a_chain_with_a_replay_and_an_unwritten_change_is_consistent() -> None:
    changes = [
        change(0, None, seg("new")),
        change(1, None, seg("new"), change_id="id0"),  # replayed after a crash
        change(2, seg("new"), seg("active")),  # published, never written (crash)
        change(3, seg("new"), seg("loyal")),  # the replay saw more events
        change(4, None, seg("new"), cid="c2", partition=1),
    ]
    assert change_sequence_problems(list(reversed(changes))) == []


def test_faults_are_reported() -> None:
    problems = change_sequence_problems(
        [
            change(0, None, seg("new")),
            change(1, seg("vip"), seg("active")),  # from a segmentation never published
            change(2, seg("active"), seg("active")),  # changes nothing
            change(3, seg("new"), seg("loyal"), change_id="id0"),  # one id, two transitions
            change(4, None, seg("new"), partition=1),  # customer on two partitions
        ]
    )
    assert len(problems) == 4, problems
    assert any("never published" in p for p in problems)
    assert any("changes nothing" in p for p in problems)
    assert any("two transitions" in p for p in problems)
    assert any("partitions [0, 1]" in p for p in problems)


def test_a_treatment_change_alone_is_a_change() -> None:
    assert (
        change_sequence_problems(
            [change(0, None, seg("new")), change(1, seg("new"), seg("new", "t1"))]
        )
        == []
    )
