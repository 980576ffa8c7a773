"""The event contracts: every event survives the wire, and what does not fit is refused."""

from __future__ import annotations

import json
import os
import typing
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ess_common import checksums
from ess_common.db.requests import spec_digest
from ess_common.events import (
    AnyEvent,
    DatasetFile,
    EdgeHeartbeat,
    Event,
    FileAssigned,
    FileCached,
    FileFailed,
    FileReady,
    FileWork,
    RangeInfo,
    RangeSplitOnDemand,
    RequestCancelled,
    RequestCreated,
    RequestFailed,
    RequestReady,
    RequestSpec,
    RequestStalled,
    SplitDone,
    parse_event,
)

DATASET_FILE: dict[str, Any] = {
    "scope": "mc15_13TeV",
    "lfn": "EVNT.08716373._000060.pool.root.1",
    "guid": "2FC641BA-0A4E-4A6F-9E40-0C6A1B1A2B3C",
    "n_events": 5000,
    "size": 123_456_789,
    "adler32": "0a1b2c3d",
    "sources": ["root://eos.example.org//eos/atlas/EVNT.08716373._000060.pool.root.1"],
}


def spec_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "dataset": "mc15_13TeV:mc15_13TeV.EVNT.e1234",
        "idempotency_key": "jedi-12164365",
        "events_per_range": 100,
        "files": [DATASET_FILE],
    }
    data.update(changes)
    return data


def file_data(**changes: Any) -> dict[str, Any]:
    return {**DATASET_FILE, **changes}


def work() -> FileWork:
    return FileWork(
        request_id=str(uuid.uuid4()),
        file_id=7,
        attempt=2,
        edge="edge-a",
        file=DatasetFile.model_validate(DATASET_FILE),
        events_per_range=100,
        priority=5,
    )


def one_of_each() -> list[Event]:
    return [
        RequestCreated.model_validate(
            spec_data(notify={"callback_url": "https://panda.example.org/cb"}, priority=3)
        ),
        FileAssigned(work=work(), correlation_id="r-1"),
        FileCached(work=work(), cache_path="/cache/mc15_13TeV/EVNT.08716373._000060.pool.root.1"),
        SplitDone(
            work=work(),
            ranges=[
                RangeInfo(
                    first_event=1, last_event=100, key="ranges/a/1.root", size=10, adler32="1"
                ),
                RangeInfo(
                    first_event=101, last_event=150, key="ranges/a/2.root", size=9, adler32="2"
                ),
            ],
        ),
        FileFailed(
            work=work(), stage="precache", reason="every source had a bad adler32", retryable=False
        ),
        RangeSplitOnDemand(
            edge="edge-a",
            scope="mc15_13TeV",
            lfn="EVNT.01._000001.pool.root.1",
            range=RangeInfo(
                first_event=37,
                last_event=251,
                key="on-demand/mc15_13TeV/EVNT.01._000001.pool.root.1/000000037-000000251.root",
                size=10,
                adler32="1",
            ),
        ),
        EdgeHeartbeat(
            edge="edge-a",
            site="CERN-PROD",
            region="europe",
            url="http://edge-a:8100",
            quota_bytes=10**12,
            free_bytes=10**11,
            queued=3,
            load=0.25,
            version="0.1.0",
        ),
        RequestReady(
            request_id="r-1", dataset="mc:ds", idempotency_key="k", n_files=2, n_ranges=100
        ),
        RequestFailed(request_id="r-1", dataset="mc:ds", idempotency_key="k", reason="gone"),
        RequestCancelled(
            request_id="r-1", dataset="mc:ds", idempotency_key="k", reason="not needed"
        ),
        RequestStalled(
            request_id="r-1",
            dataset="mc:ds",
            idempotency_key="k",
            reason="no progress for 1800 s",
            drive=1,
            max_drives=2,
        ),
        FileReady(
            request_id="r-1",
            dataset="mc:ds",
            idempotency_key="k",
            file_id=7,
            scope="mc15_13TeV",
            lfn="EVNT.08716373._000060.pool.root.1",
            n_events=5000,
            n_ranges=50,
        ),
    ]


def test_every_event_type_is_covered() -> None:
    union = typing.get_args(typing.get_args(AnyEvent)[0])
    assert {type(e) for e in one_of_each()} == set(union)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: e.routing_key())
def test_every_event_round_trips_through_parse_event(event: Event) -> None:
    parsed = parse_event(event.model_dump_json())
    assert type(parsed) is type(event)
    assert parsed == event
    assert parsed.occurred_at.utcoffset() is not None
    assert parse_event(event.model_dump_json().encode()) == event


@pytest.mark.parametrize(
    ("event", "routing_key"),
    [
        (FileAssigned(work=work()), "file.assigned.edge-a"),
        (FileCached(work=work(), cache_path="/c"), "file.cached.edge-a"),
        (
            RequestReady(request_id="r", dataset="s:d", idempotency_key="k", n_files=1, n_ranges=1),
            "request.ready",
        ),
    ],
)
def test_routing_key_starts_with_the_event_type(event: Event, routing_key: str) -> None:
    assert event.routing_key() == routing_key


def test_unknown_event_type_is_rejected_naming_the_field() -> None:
    body = RequestReady(
        request_id="r", dataset="s:d", idempotency_key="k", n_files=1, n_ranges=1
    ).model_dump(mode="json")
    body["event_type"] = "request.exploded"
    with pytest.raises(ValidationError) as caught:
        parse_event(_json(body))
    assert "event_type" in str(caught.value)
    assert "request.exploded" in str(caught.value)


def test_missing_event_type_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="event_type"):
        parse_event(b'{"request_id": "r"}')


def test_schema_version_2_is_rejected_naming_the_field() -> None:
    body = RequestFailed(request_id="r", dataset="s:d", idempotency_key="k", reason="x").model_dump(
        mode="json"
    )
    body["schema_version"] = 2
    with pytest.raises(ValidationError) as caught:
        parse_event(_json(body))
    locations = [error["loc"] for error in caught.value.errors()]
    assert ("request.failed", "schema_version") in locations


@pytest.mark.parametrize("model", [RequestSpec, RequestCreated])
def test_an_unsupported_schema_version_is_refused_with_the_reason(
    model: type[RequestSpec],
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(spec_data(schema_version=2))
    (error,) = caught.value.errors()
    assert error["loc"] == ("schema_version",)
    assert "unsupported schema_version 2; supported: 1" in error["msg"]


def test_the_schema_version_is_optional_and_not_part_of_the_request() -> None:
    implicit = RequestSpec.model_validate(spec_data())
    explicit = RequestSpec.model_validate(spec_data(schema_version=1))
    assert implicit.schema_version == explicit.schema_version == 1
    # What identifies a request (its digest, a resubmission) does not depend on the version.
    assert spec_digest(implicit) == spec_digest(explicit)
    created = RequestCreated(**explicit.model_dump())
    assert json.loads(created.model_dump_json())["schema_version"] == 1


def test_unknown_fields_are_rejected() -> None:
    body = FileAssigned(work=work()).model_dump(mode="json")
    body["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        parse_event(_json(body))


def test_invalid_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        parse_event(b"{not json")


def test_events_are_frozen() -> None:
    event = FileCached(work=work(), cache_path="/c")
    with pytest.raises(ValidationError):
        event.cache_path = "/elsewhere"  # type: ignore[misc]


def test_a_valid_spec_is_accepted() -> None:
    spec = RequestSpec.model_validate(spec_data())
    assert spec.files[0].adler32 == "0a1b2c3d"
    assert spec.notify.message is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dataset": "no-colon-here"}, "dataset"),
        ({"dataset": "scope:"}, "dataset"),
        ({"dataset": "../etc:passwd"}, "dataset"),
        ({"files": [DATASET_FILE, DATASET_FILE]}, "listed twice"),
        ({"files": [file_data(lfn="dir/EVNT.root")]}, "lfn"),
        ({"files": [file_data(lfn="..")]}, "lfn"),
        ({"files": [file_data(lfn="EVNT..root")]}, "lfn"),
        ({"files": [file_data(scope="mc/15")]}, "scope"),
        ({"files": [file_data(adler32="xyz")]}, "adler32"),
        ({"files": [file_data(adler32="-1")]}, "adler32"),
        ({"files": [file_data(adler32="1_0")]}, "adler32"),
        ({"files": [file_data(adler32="123456789")]}, "adler32"),
        ({"files": [file_data(adler32="")]}, "adler32"),
        ({"files": [file_data(sources=["ftp://host/file"])]}, "sources"),
        ({"files": [file_data(sources=["/plain/path"])]}, "sources"),
        ({"files": [file_data(sources=[])]}, "sources"),
        ({"files": [file_data(n_events=0)]}, "n_events"),
        ({"events_per_range": 0}, "events_per_range"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"notify": {"callback_url": "ftp://panda"}}, "callback_url"),
    ],
)
def test_request_spec_refuses(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        RequestSpec.model_validate(spec_data(**changes))


def test_request_spec_without_files_is_resolved_later() -> None:
    """No files (left out, or an empty list): the dataset is resolved in the catalogue."""
    data = spec_data()
    del data["files"]
    assert RequestSpec.model_validate(data).files == []
    assert RequestSpec.model_validate(spec_data(files=[])).files == []


def test_every_source_scheme_read_is_accepted() -> None:
    sources = [
        "file:///data/EVNT.root",
        "http://se.example.org/EVNT.root",
        "https://se.example.org/EVNT.root",
        "dav://se.example.org/EVNT.root",
        "davs://se.example.org:443/rucio/mc15/EVNT.root",
        "s3://bucket/EVNT.root",
        "root://eos.example.org//eos/EVNT.root",
    ]
    assert DatasetFile.model_validate(file_data(sources=sources)).sources == sources


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("0a1b2c3d", "0a1b2c3d"),
        ("A1B2C3D", "0a1b2c3d"),
        ("0xABCDEF01", "abcdef01"),
        ("1", "00000001"),
        (" ffffffff ", "ffffffff"),
    ],
)
def test_adler32_is_normalised_to_8_lowercase_hex_digits(given: str, normalised: str) -> None:
    assert DatasetFile.model_validate(file_data(adler32=given)).adler32 == normalised
    assert checksums.normalise_adler32(given) == normalised


def test_range_info_refuses_a_reversed_range() -> None:
    with pytest.raises(ValidationError, match="last_event"):
        RangeInfo(first_event=10, last_event=9, key="k", size=1, adler32="1")


def test_range_info_normalises_and_checks_its_adler32() -> None:
    assert RangeInfo(first_event=1, last_event=1, key="k", size=1, adler32="ABC").adler32 == (
        "00000abc"
    )
    with pytest.raises(ValidationError, match="adler32"):
        RangeInfo(first_event=1, last_event=1, key="k", size=1, adler32="123456789")


def test_adler32_of_file_equals_zlib_over_the_whole_content(tmp_path: Path) -> None:
    # More than one chunk, and not a multiple of it, so the streaming carries over.
    data = os.urandom(2 * checksums.CHUNK + 12345)
    path = tmp_path / "input.root"
    path.write_bytes(data)
    expected = f"{zlib.adler32(data):08x}"
    assert checksums.adler32_of_file(path) == expected
    assert checksums.adler32_of_bytes(data) == expected
    assert checksums.adler32_of_chunks([data[:1], data[1:5000], data[5000:]]) == expected


def test_adler32_of_an_empty_file_is_one(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert checksums.adler32_of_file(path) == "00000001"


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data)
