"""The page of ``benchmarks.pipeline_bench``: what was measured, as ratios to the split, where
the flow's time went, and what a longer round trip to the store would make of it."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.machine import describe_machine
from benchmarks.pipeline_flow import FlowTimes

#: The flow's target: within this factor of the split alone.
TARGET_RATIO = 1.3


@dataclass(frozen=True)
class Measured:
    files: int
    events: int
    input_bytes: int
    events_per_range: int
    concurrency: int
    ranges: int
    output_bytes: int
    split_s: float
    upload_s: float
    #: Seconds of one `put_object` of a range file, one after another.
    serial_put_s: float
    flow: FlowTimes
    #: The same flow with a directory as the object store, when it was run.
    local_flow: FlowTimes | None
    rtt_s: float


@dataclass(frozen=True)
class Stages:
    """The flow's critical path, in seconds: each stage ends where the next begins."""

    placed: float
    first_cached: float
    splitter: float
    recorded: float
    ready: float


def stages(flow: FlowTimes) -> Stages:
    files = list(flow.files.values())
    first_assigned = min(f.assigned for f in files)
    first_cached = min(f.cached for f in files)
    last_uploaded = max(f.uploaded for f in files)
    last_recorded = max(f.recorded for f in files)
    return Stages(
        placed=first_assigned,
        first_cached=first_cached - first_assigned,
        splitter=last_uploaded - first_cached,
        recorded=last_recorded - last_uploaded,
        ready=flow.seconds - last_recorded,
    )


@dataclass(frozen=True)
class RoundTrip:
    """What ``rtt_s`` more per object would make of the uploads and of the flow (computed)."""

    concurrent_s: float
    serial_s: float
    #: The flow when only the last file's uploads are on its critical path, and when all are.
    flow_split_bound_s: float
    flow_upload_bound_s: float


def with_round_trip(m: Measured) -> RoundTrip:
    """Each upload slot waits ``rtt_s`` more per object: the ``concurrency`` slots add
    ``ranges * rtt_s / concurrency`` to the uploads. One after another, every object pays it.
    The flow grows by all of that when uploads are its bottleneck, by one file's share when the
    split is (the splitter takes the next file while one uploads)."""
    added = m.ranges * m.rtt_s / m.concurrency
    return RoundTrip(
        concurrent_s=m.upload_s + added,
        serial_s=m.ranges * (m.serial_put_s + m.rtt_s),
        flow_split_bound_s=m.flow.seconds + added / max(1, len(m.flow.files)),
        flow_upload_bound_s=m.flow.seconds + added,
    )


@dataclass(frozen=True)
class Work:
    """Seconds of each kind of work, summed over a flow's files (they overlap in time)."""

    precache: float
    waited: float
    split: float
    upload: float
    booked: float


def work(flow: FlowTimes) -> Work:
    files = list(flow.files.values())
    return Work(
        precache=sum(f.cached - f.assigned for f in files),
        waited=sum(max(0.0, f.split_started - f.cached) for f in files),
        split=sum(f.split_s for f in files),
        upload=sum(f.upload_s for f in files),
        booked=sum(f.recorded - f.uploaded for f in files),
    )


def page(command: Sequence[str], started: dt.datetime, m: Measured) -> str:
    split = m.split_s
    flows = {"S3 store": m.flow}
    if m.local_flow is not None:
        flows["local directory store"] = m.local_flow
    paths = {name: stages(flow) for name, flow in flows.items()}
    works = {name: work(flow) for name, flow in flows.items()}
    rtt = with_round_trip(m)
    floor = max(split, m.upload_s)
    speedup = m.serial_put_s * m.ranges / m.upload_s
    ratio = m.flow.seconds / split
    verdict = "met" if ratio <= TARGET_RATIO else "not met"
    rtt_ms = m.rtt_s * 1000
    heading = " | ".join(flows)
    rule = "|".join("--:" for _ in flows)

    def row(what: str, seconds: float, note: str = "") -> str:
        return f"| {what} | {seconds:.2f} | {seconds / split:.2f} | {note} |"

    def columns(values: Sequence[float]) -> str:
        return " | ".join(f"{v:.2f}" for v in values)

    local_rows = []
    if m.local_flow is not None:
        local_ratio = m.local_flow.seconds / split
        local_rows.append(
            row(
                "flow: POST to ready, local directory store",
                m.local_flow.seconds,
                "the same with a directory as the store: the pipeline's own cost; "
                f"{TARGET_RATIO}x: **{'met' if local_ratio <= TARGET_RATIO else 'not met'}**",
            )
        )
    lines = [
        "# The pipeline's own cost",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {describe_machine(with_python=True)}; "
        f"load average {os.getloadavg()[1]:.1f} over the last 5 minutes of the run (the "
        "machine is shared: every part below ran on the same cores).",
        "",
        f"`{shlex.join(command)}`",
        "",
        f"{m.files} files of {m.events:,} events ({m.input_bytes / m.files / 10**6:.1f} MB "
        f"each, `ess_cli.sample`), {m.events_per_range:,} events per range: {m.ranges:,} range "
        f"files, {m.output_bytes / 10**6:.1f} MB. Uploads {m.concurrency} at once "
        "(`ESS_UPLOAD_CONCURRENCY`) to the test S3 server (OpenStack Swift's S3 API on "
        "127.0.0.1); PostgreSQL and RabbitMQ on this machine too.",
        "",
        "| what | seconds | ratio to split | note |",
        "|---|--:|--:|---|",
        row("split", split, "the engine alone, one worker per core, file after file"),
        row(
            "upload",
            m.upload_s,
            f"the same {m.ranges:,} objects, {m.concurrency} at once; one after another each "
            f"takes {m.serial_put_s * 1000:.1f} ms",
        ),
        row("split, then upload", split + m.upload_s, "the two one after the other"),
        row(
            "the slower of split and upload",
            floor,
            "the floor of any pipeline that overlaps them",
        ),
        row(
            "flow: POST to ready",
            m.flow.seconds,
            f"head API, broker, notifier, one edge, S3 store; target {TARGET_RATIO}x: "
            f"**{verdict}**",
        ),
        *local_rows,
        "",
        f"The flow takes {m.flow.seconds / floor:.2f}x the slower of its two parts. "
        f"{m.concurrency} uploads at once go {speedup:.1f}x as fast as one after another "
        "here: past that, the store is the limit, not the number of uploads in flight.",
        "",
        "## Where the flow's time goes",
        "",
        "The critical path, from the request's history (the head's clock) and the edge's "
        "`file.split` log lines; each stage begins where the one before ends (seconds):",
        "",
        f"| stage | {heading} |",
        f"|---|{rule}|",
        *(
            f"| {what} | {columns([getattr(p, field) for p in paths.values()])} |"
            for what, field in (
                ("head and broker: POST, record, place, queue the first file", "placed"),
                ("precache of the first file: copy and adler32 check", "first_cached"),
                ("splitter: first file cached to last file uploaded", "splitter"),
                ("bookkeeping: `split.done` of the last file recorded", "recorded"),
                ("ready: the request seen ready", "ready"),
            )
        ),
        f"| **POST to ready** | {columns([f.seconds for f in flows.values()])} |",
        "",
        "Work summed over the files (it overlaps: precache of the next file runs while one is "
        "split, and a file's uploads while the next one is split), seconds:",
        "",
        f"| work | {heading} | pure run |",
        f"|---|{rule}|--:|",
        *(
            f"| {what} | {columns([getattr(w, field) for w in works.values()])} | {pure} |"
            for what, field, pure in (
                ("precache (queue to the edge, copy, adler32)", "precache", ""),
                ("waiting for the splitter", "waited", ""),
                ("split", "split", f"{split:.2f}"),
                ("upload", "upload", f"{m.upload_s:.2f} (S3)"),
                ("bookkeeping (`split.done` to recorded)", "booked", ""),
            )
        ),
        "",
        "Inside the flow the split shares the machine's cores with the store, the uploads, "
        "PostgreSQL and RabbitMQ, and runs at the edge's niceness "
        "(`ESS_EDGE_WORK_NICENESS`); waiting for the splitter is cached files queued for a "
        "split slot.",
        "",
        f"## With a {rtt_ms:.0f} ms round trip to the store",
        "",
        f"Computed, not measured: each `put_object` waiting {rtt_ms:.0f} ms more than here, "
        f"in each of the {m.concurrency} upload slots:",
        "",
        f"- the {m.ranges:,} uploads take {rtt.concurrent_s:.1f} s at {m.concurrency} at once "
        f"({m.ranges:,} x {rtt_ms:.0f} ms / {m.concurrency} more than measured), "
        f"{rtt.serial_s:.1f} s one after another ({rtt.serial_s / split:.0f}x the split), as "
        "an edge that uploads one range file at a time would;",
        f"- the flow would take about {rtt.flow_upload_bound_s:.1f} s "
        f"({rtt.flow_upload_bound_s / split:.2f}x the split) while uploads are its bottleneck "
        f"({'as measured here' if m.upload_s > split else 'not so here'}), and about "
        f"{rtt.flow_split_bound_s:.1f} s ({rtt.flow_split_bound_s / split:.2f}x) where the "
        "split is (only the last file's uploads are then in the way).",
        "",
        "Above that, raise `ESS_UPLOAD_CONCURRENCY`: the edge keeps that many uploads and "
        "connections open, all files together.",
        "",
    ]
    return "\n".join(lines)
