"""The corpus test's memory bound: a test that grows past it fails with a `MemoryError` that
names where it was, and the bound is lifted afterwards."""

from __future__ import annotations

import signal

import pytest

from tests.split.memory_bound import bounded, resident_bytes


def test_growing_past_the_bound_fails_where_it_grows() -> None:
    held: list[bytearray] = []
    with (
        pytest.raises(MemoryError, match=r"resident memory .* at .*test_memory_bound\.py"),
        bounded(resident_bytes() + 300 * 2**20),
    ):
        while len(held) < 100:  # 5 GiB at most, should the bound not hold
            held.append(bytearray(50 * 2**20))
            sum(range(200_000))  # CPU time, which the check counts
    held.clear()
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
