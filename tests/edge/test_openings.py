"""The edge's openings of remote files, handed to slots that have not opened the file."""

from __future__ import annotations

from ess_edge.openings import Openings


def test_a_slot_is_handed_an_opening_it_does_not_hold() -> None:
    openings = Openings(slots=2)
    assert openings.to_hand(0, "f") == (None, True)
    openings.split(0, "f", [(0, b"head"), (100, b"tree")])

    assert openings.to_hand(0, "f") == (None, False)
    assert openings.to_hand(1, "f") == ([(0, b"head"), (100, b"tree")], False)
    openings.split(1, "f", None)
    assert openings.to_hand(1, "f") == (None, False)

    openings.lost(1)
    assert openings.to_hand(1, "f") == ([(0, b"head"), (100, b"tree")], False)


def test_openings_are_bounded_least_recently_used_first_out() -> None:
    openings = Openings(slots=1, max_bytes=1000)
    for name in "abcd":
        openings.split(0, name, [(0, bytes(200)), (300, bytes(50))])
    openings.to_hand(0, "a")
    openings.split(0, "e", [(0, bytes(250))])
    assert list(openings.runs) == ["c", "d", "a", "e"]
    assert openings.bytes == 1000
    # An opening larger than a quarter of the bound is not held.
    openings.split(0, "f", [(0, bytes(251))])
    assert "f" not in openings.runs and "f" in openings.held[0]
    # ...and not asked for again.
    assert openings.to_hand(0, "f") == (None, False)
