"""Why a range cannot be served, for a program: the `code` of a failed range result, set from
the error the shared lookup rule raised (the head and the edges answer batches with it)."""

from __future__ import annotations

import json

import pytest

from ess_common.errors import EssError, RetryableError
from ess_common.ranges import (
    FileRanges,
    LookupAnswer,
    PreparedCopy,
    RangeEntry,
    RangeFailure,
    RangeNotPrepared,
    RangeOutsideFile,
    RangeResult,
    check_asked,
    not_prepared,
    range_result,
)

SCOPE = "mc15_13TeV"
LFN = "EVNT.01.pool.root.1"


def failure(error: EssError) -> RangeResult:
    return range_result("12164365-3616045203-10980024041-1-8", error)


@pytest.mark.parametrize(("start", "last"), [(0, 5), (-1, 3), (7, 6)])
def test_positions_breaking_the_convention_are_bad_range(start: int, last: int) -> None:
    with pytest.raises(RangeOutsideFile) as raised:
        check_asked(start, last)

    result = failure(raised.value)
    assert (result.status, result.code) == ("failed", RangeFailure.BAD_RANGE)
    assert result.reason is not None and "1-based" in result.reason


def test_a_file_no_request_holds_is_unknown_file() -> None:
    error = not_prepared(SCOPE, LFN, 1, 10, None)

    assert isinstance(error, RangeNotPrepared)
    assert failure(error).code == RangeFailure.UNKNOWN_FILE
    assert "not known" in str(error)


def test_events_beyond_the_file_are_outside_file() -> None:
    error = not_prepared(SCOPE, LFN, 995, 1001, 1000)

    assert isinstance(error, RangeOutsideFile)
    assert failure(error).code == RangeFailure.OUTSIDE_FILE
    assert "beyond the 1000 events" in str(error)


def test_a_known_file_without_a_copy_of_the_range_is_not_prepared() -> None:
    error = not_prepared(SCOPE, LFN, 1, 10, 1000)

    assert isinstance(error, RangeNotPrepared)
    assert failure(error).code == RangeFailure.NOT_PREPARED
    assert "not prepared" in str(error)


def test_the_edges_rule_raises_the_same_codes() -> None:
    ranges = [
        RangeEntry(first_event=1, last_event=100, key="k1", size=1, adler32="00000001"),
        RangeEntry(first_event=201, last_event=300, key="k3", size=1, adler32="00000001"),
    ]
    copy = PreparedCopy(file_id=1, request_id="r", events_per_range=100, ranges=ranges)
    known = FileRanges(scope=SCOPE, lfn=LFN, n_events=300, copies=[copy])
    unknown = FileRanges(scope=SCOPE, lfn=LFN, n_events=None, copies=[])
    cases = [
        (known, 0, 1, RangeFailure.BAD_RANGE),
        (known, 150, 160, RangeFailure.NOT_PREPARED),
        (known, 250, 301, RangeFailure.OUTSIDE_FILE),
        (unknown, 1, 2, RangeFailure.UNKNOWN_FILE),
    ]
    for info, start, last, code in cases:
        with pytest.raises((RangeNotPrepared, RangeOutsideFile)) as raised:
            info.lookup(start, last)
        assert isinstance(raised.value, EssError)
        assert failure(raised.value).code == code, (start, last)


def test_other_failures_and_answers_have_no_code() -> None:
    unavailable = failure(RetryableError("the head answered HTTP 503"))
    assert (unavailable.status, unavailable.code) == ("failed", None)

    ok = range_result(
        "r", LookupAnswer(scope=SCOPE, lfn=LFN, start_event=1, last_event=2, pieces=[])
    )
    assert (ok.status, ok.reason, ok.code) == ("ok", None, None)


def test_the_code_is_on_the_wire_as_its_value() -> None:
    result = failure(not_prepared(SCOPE, LFN, 1, 10, None))

    sent = json.loads(result.model_dump_json(by_alias=True))

    assert sent["code"] == "unknown_file"
    assert sent["eventRangeID"] == "12164365-3616045203-10980024041-1-8"
    schema = RangeResult.model_json_schema()
    assert set(schema["$defs"]["RangeFailure"]["enum"]) == {
        "not_prepared",
        "unknown_file",
        "outside_file",
        "bad_range",
    }
