"""The scale benchmark's tables, verdicts and page (`docs/benchmarks/scale.md`)."""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lookup_bench import _software
from benchmarks.machine import describe_machine
from benchmarks.scale_bench import ScaleResult
from benchmarks.scale_load import PhaseResult

#: The issue's targets: 20,000 files assigned in under 30 s; results recorded at 50,000
#: ranges/s or more; lookup p99 under 50 ms at 1,000/s offered while results are recorded.
ASSIGN_FILES, ASSIGN_SECONDS = 20_000, 30.0
RANGES_PER_S = 50_000
P99_MS = 50.0
#: A per-unit cost that grows by more than this from the smallest scale to the largest is
#: flagged as growing faster than linearly.
GROWTH_FLAG = 1.5
MIB = 2**20


def _ms(value: float) -> str:
    return "—" if value < 0 or value != value else f"{value:.1f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def _label(r: ScaleResult) -> str:
    return f"{r.sizes.scale:g}"


def _lookup_row(scale: str, when: str, load: str, p: PhaseResult) -> str:
    return (
        f"| {scale} | {when} | {load} | {p.done:,} | {p.errors:,} | {p.unfinished:,} "
        f"| {p.throughput:,.0f} | {_ms(p.p50_ms)} | {_ms(p.p99_ms)} | {_ms(p.max_ms)} |"
    )


def sizes_table(results: Sequence[ScaleResult]) -> list[str]:
    lines = [
        "| scale | ranges in the fill (expired) | request: files x ranges | edges "
        "| fill s | reset s | ranges table + indexes | per million ranges, as filled "
        "| the same after the reset |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        s, p = r.sizes, r.prepared
        fill = f"{p.fill_s:.0f}" if p.fill_s else "reused"
        lines.append(
            f"| {_label(r)} | {s.fill.ranges:,} ({s.fill.expired_ranges:,}) "
            f"| {s.files:,} x {s.split_ranges} | {s.edges} | {fill} | {p.reset_s:.0f} "
            f"| {p.ranges_bytes / MIB:,.0f} MiB "
            f"| {p.filled_bytes / p.filled_rows * 1e6 / MIB:,.0f} MiB "
            f"| {p.ranges_bytes / p.ranges_rows * 1e6 / MIB:,.0f} MiB |"
        )
    return lines


def broker_table(results: Sequence[ScaleResult]) -> list[str]:
    lines = [
        "| scale | step | work | seconds | rate | p50 / p99 / max per message or transaction, ms |",
        "|--:|---|--:|--:|--:|--:|",
    ]
    for r in results:
        s = _label(r)
        hb, a, beats = r.heartbeats, r.assignment, r.beats_meanwhile
        a1, (w1, ranges1) = r.assignment_alone, r.bookkeeping_alone
        wn, rangesn = r.bookkeeping_replicas

        def lat(t: object) -> str:
            from benchmarks.scale_broker import Timed

            assert isinstance(t, Timed)
            return (
                f"{_ms(t.percentile_ms(0.5))} / {_ms(t.percentile_ms(0.99))} / "
                f"{_ms(t.percentile_ms(1.0))}"
            )

        lines += [
            f"| {s} | heartbeats alone ({r.sizes.edges} edges) | {hb.count:,} | {hb.seconds:.2f} "
            f"| {hb.per_s:,.0f} /s | {lat(hb)} |",
            f"| {s} | request recorded (`record_request`) | {r.sizes.files:,} files "
            f"| {r.record_s:.2f} | {r.sizes.files / r.record_s:,.0f} files/s | — |",
            f"| {s} | assignment without lookups (`assign_pending`, 500 a transaction) "
            f"| {a1.count:,} files | {a1.seconds:.2f} | {a1.per_s:,.0f} files/s | {lat(a1)} |",
            f"| {s} | assignment, lookups {r.parts[1].load if len(r.parts) > 1 else '—'} "
            f"| {a.count:,} files | {a.seconds:.2f} | {a.per_s:,.0f} files/s | {lat(a)} |",
            f"| {s} | `split.done` bookkeeping without lookups | {w1.count:,} files, "
            f"{ranges1:,} ranges | {w1.seconds:.2f} | {r.ranges_per_s_alone:,.0f} ranges/s "
            f"| {lat(w1)} |",
            f"| {s} | `split.done` bookkeeping without lookups, {r.brokers} broker processes "
            f"| {wn.count:,} files, {rangesn:,} ranges | {wn.seconds:.2f} "
            f"| {r.ranges_per_s_replicas:,.0f} ranges/s | {lat(wn)} |",
        ]
        for part in r.parts:
            w = part.written
            lines.append(
                f"| {s} | `split.done` bookkeeping, lookups {part.load} | {w.count:,} files, "
                f"{part.ranges:,} ranges | {w.seconds:.2f} | {part.ranges / w.seconds:,.0f} "
                f"ranges/s | {lat(w)} |"
            )
        total = sum(p.ranges for p in r.parts)
        lines += [
            f"| {s} | `split.done` bookkeeping, all with lookups | {total:,} ranges "
            f"| {r.bookkeeping_s:.2f} "
            f"| **{r.ranges_per_s:,.0f} ranges/s** | — |",
            f"| {s} | heartbeats meanwhile (every edge every 5 s) | {beats.count:,} "
            f"| {beats.seconds:.1f} | {beats.per_s:,.1f} /s | {lat(beats)} |",
            f"| {s} | retention sweep (`purge_old_ranges`) | {r.purged.count:,} ranges "
            f"| {r.purged.seconds:.2f} | {r.purged.per_s:,.0f} ranges/s | — |",
            f"| {s} | retention sweep with nothing expired | {r.purge_idle.count:,} ranges "
            f"| {r.purge_idle.seconds:.3f} | — | — |",
        ]
    return lines


def lookups_table(results: Sequence[ScaleResult]) -> list[str]:
    lines = [
        "| scale | while | load | answered | errors | unfinished | lookups/s | p50 ms "
        "| p99 ms | max ms |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        s = _label(r)
        lines += [_lookup_row(s, "nothing else", load, p) for load, p in r.alone]
        lines.append(
            _lookup_row(
                s, "assignment", r.parts[1].load if len(r.parts) > 1 else "—", r.assignment_lookups
            )
        )
        lines += [_lookup_row(s, "bookkeeping", p.load, p.lookups) for p in r.parts]
        lines.append(_lookup_row(s, "retention sweep", r.parts[0].load, r.purge_lookups))
    return lines


def verdicts(results: Sequence[ScaleResult], target_rate: float) -> list[str]:
    r = results[-1]
    a, a1 = r.assignment, r.assignment_alone
    assign_load = r.parts[1].load if len(r.parts) > 1 else "—"
    needed = ASSIGN_FILES / ASSIGN_SECONDS
    at_target = r.parts[0].lookups
    p99_ok = at_target.p99_ms < P99_MS and at_target.errors == 0
    max_alone = r.alone[0][1].throughput
    max_writing = r.parts[-1].lookups.throughput
    return [
        f"At scale {_label(r)}:",
        "",
        f"- assignment (target {ASSIGN_FILES:,} files in < {ASSIGN_SECONDS:.0f} s, i.e. "
        f"≥ {needed:,.0f} files/s): without lookups **{a1.per_s:,.0f} files/s** "
        f"({_met(a1.per_s >= needed)}); with lookups at {assign_load} "
        f"**{a.per_s:,.0f} files/s** ({_met(a.per_s >= needed)})",
        f"- result bookkeeping into PostgreSQL (target ≥ {RANGES_PER_S:,} ranges/s): without "
        f"lookups **{r.ranges_per_s_alone:,.0f} ranges/s** "
        f"({_met(r.ranges_per_s_alone >= RANGES_PER_S)}); without lookups by {r.brokers} broker "
        f"processes **{r.ranges_per_s_replicas:,.0f} ranges/s** "
        f"({_met(r.ranges_per_s_replicas >= RANGES_PER_S)}); with lookups **{r.ranges_per_s:,.0f} "
        f"ranges/s** ({_met(r.ranges_per_s >= RANGES_PER_S)})",
        f"- lookups while results are recorded, {r.parts[0].load}: p50 "
        f"**{_ms(at_target.p50_ms)} ms**, p99 **{_ms(at_target.p99_ms)} ms**, "
        f"{at_target.errors} errors (target p99 < {P99_MS:.0f} ms: {_met(p99_ok)})",
        f"- max lookups/s: **{max_alone:,.0f}** alone, **{max_writing:,.0f}** while results "
        "are recorded",
        f"- heartbeats handled: **{r.heartbeats.per_s:,.0f}/s** alone (100 edges every 5 s "
        "need 20/s)",
        f"- retention: **{r.purged.per_s:,.0f} ranges/s** deleted; lookups meanwhile p99 "
        f"**{_ms(r.purge_lookups.p99_ms)} ms** at {r.parts[0].load}",
        f"- database: **{r.prepared.filled_bytes / r.prepared.filled_rows * 1e6 / MIB:,.0f} "
        "MiB per million ranges** (the ranges table with its indexes, as filled and vacuumed)",
        *_saturated(r, target_rate),
    ]


def _saturated(r: ScaleResult, target_rate: float) -> list[str]:
    """Where the machine could not answer the offered lookups even with nothing else running,
    the open-loop rows measure a queue: said beside the verdict."""
    max_alone = r.alone[0][1].throughput
    if max_alone >= target_rate:
        return []
    return [
        "",
        f"The lookups' own maximum with nothing else running was {max_alone:,.0f}/s here, "
        "below the offered rates: the open-loop rows then measure a queue that grows for as "
        "long as the phase lasts, not the server's latency at that rate (compare the closed-"
        "loop `max` rows, and the load average above: the machine was shared). The targets "
        "are judged as measured all the same.",
    ]


@dataclass(frozen=True)
class Growth:
    name: str
    unit: str
    #: The per-unit cost at one scale; None where the scale did not measure it.
    cost: Callable[[ScaleResult], float | None]
    #: Whether the figure is a cost per unit of work (flagged when it grows) or a level.
    per_unit: bool = True


GROWTHS = [
    Growth(
        "fill (fresh fills only)",
        "s per million ranges",
        lambda r: r.prepared.fill_s / r.sizes.fill.ranges * 1e6 if r.prepared.fill_s else None,
    ),
    Growth("request recorded", "ms per file", lambda r: r.record_s / r.sizes.files * 1e3),
    Growth("assignment", "ms per file", lambda r: r.assignment.seconds / r.assignment.count * 1e3),
    Growth("result bookkeeping", "µs per range", lambda r: 1e6 / r.ranges_per_s),
    Growth(
        "result bookkeeping, broker processes",
        "µs per range",
        lambda r: 1e6 / r.ranges_per_s_replicas,
    ),
    Growth("heartbeat handling", "ms per heartbeat", lambda r: 1e3 / r.heartbeats.per_s),
    Growth(
        "retention sweep", "µs per range deleted", lambda r: r.purged.seconds / r.purged.count * 1e6
    ),
    Growth(
        "database size (as filled)",
        "MiB per million ranges",
        lambda r: r.prepared.filled_bytes / r.prepared.filled_rows * 1e6 / MIB,
    ),
    Growth(
        "lookup p99 while results are recorded (target rate)",
        "ms",
        lambda r: r.parts[0].lookups.p99_ms,
        per_unit=False,
    ),
    Growth(
        "lookup p99 during the retention sweep (target rate)",
        "ms",
        lambda r: r.purge_lookups.p99_ms,
        per_unit=False,
    ),
    Growth("max lookups/s alone", "lookups/s", lambda r: r.alone[0][1].throughput, per_unit=False),
    Growth(
        "max lookups/s while results are recorded",
        "lookups/s",
        lambda r: r.parts[-1].lookups.throughput,
        per_unit=False,
    ),
]


def growth_table(results: Sequence[ScaleResult]) -> list[str]:
    if len(results) < 2:
        return ["(one scale measured: no growth to show)"]
    first, last = results[0], results[-1]
    factor = last.sizes.scale / first.sizes.scale
    heads = " | ".join(f"scale {_label(r)}" for r in results)
    lines = [
        f"| figure | unit | {heads} | largest / smallest | growth over {factor:g}x the work |",
        "|---|---|" + "--:|" * len(results) + "--:|---|",
    ]
    for g in GROWTHS:
        values = [g.cost(r) for r in results]
        cells = " | ".join("—" if v is None else f"{v:,.2f}" for v in values)
        a, b = values[0], values[-1]
        if a is None or b is None or not a:
            ratio, verdict = "—", "—"
        else:
            ratio = f"{b / a:.2f}"
            if not g.per_unit:
                verdict = "a level, not a cost"
            elif b / a > GROWTH_FLAG:
                verdict = f"**faster than linear** ({b / a * factor:.1f}x the time)"
            else:
                verdict = "linear or better"
        lines.append(f"| {g.name} | {g.unit} | {cells} | {ratio} | {verdict} |")
    return lines


def summary_lines(results: Sequence[ScaleResult], args: argparse.Namespace) -> list[str]:
    return [
        *sizes_table(results),
        "",
        *broker_table(results),
        "",
        *lookups_table(results),
        "",
        *growth_table(results),
        "",
        *verdicts(results, args.target_rate),
    ]


def write_page(
    path: Path,
    argv: Sequence[str],
    args: argparse.Namespace,
    results: Sequence[ScaleResult],
    load: tuple[float, float],
) -> None:
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.scale_bench", *argv])
    last = results[-1]
    reused = all(not r.prepared.fill_s for r in results)
    lines = [
        "# ATLAS-scale load",
        "",
        "Written by `python -m benchmarks.scale_bench` (see its docstring); rerun it to refresh "
        "this page.",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}; 1-minute load average {load[0]:.2f} before the "
        f"runs, {load[1]:.2f} after",
        f"- software: {_software(last.prepared.pg_version)}",
        f"- scales: {', '.join(_label(r) for r in results)} of {args.ranges:,} ranges in the "
        f"bookkeeping and a request of {args.files:,} files of {args.split_ranges} ranges; "
        f"{args.edges} edges at every scale",
        "- fill: "
        + (
            "reused from an earlier run of the command and reset to it (see below)"
            if reused
            else "made by this run where the table below gives its seconds, else reused"
        ),
        "",
        "## Verdict",
        "",
        *verdicts(results, args.target_rate),
        "",
        "## What runs, what is simulated, what shares the machine",
        "",
        "- **Real**: PostgreSQL (one server for everything, migrated like production); the "
        "head API under uvicorn as `python -m ess_head_api` serves it "
        f"({args.workers} worker processes, bearer tokens, signed URLs of the "
        f"{'S3 store' if args.store == 's3' else 'local store'}); the broker's "
        "handlers as its daemon registers them on its queues (`Broker.from_edges("
        "...)`: each message's edge signature checked against the enrollment table, parsed; "
        "a heartbeat handled in its own transaction, `split.done` results that wait recorded "
        "together in one (`ess_broker.result_batches`); the outbox flushed to the bus after "
        "each commit that wrote to it; the edges' keys read together for the messages that "
        "arrive together), as many messages at once as the consumer's prefetch (8 heartbeats, "
        "64 results: `ESS_PREFETCH`, `ESS_RESULTS_PREFETCH`), in the benchmark's process and, "
        f"for one quarter of the results, in {args.brokers} broker processes at once that share "
        "the results out in turn as RabbitMQ deals a queue to its consumers "
        "(`benchmarks.scale_replicas`); the broker's `assign_pending` as its sweep runs it, "
        "500 files a transaction; "
        "`record_request`; the retention sweep's `purge_old_ranges`.",
        "- **Simulated**: the edges (enrolled in the enrollment table, their heartbeats and "
        "`split.done` messages made and signed in the benchmark's process, the messages "
        "before the bookkeeping is timed); RabbitMQ (the messages are handed to the handlers "
        "in process, and the outbox is published to the in-process bus, where nothing "
        "consumes it); the range files (the retention sweep deletes their objects from a "
        "local directory store where they are absent, so its rate is the database's side: "
        "with S3 each object is one more DELETE request); the pilots (one process of its own "
        "sending `GET /v1/ranges` on keep-alive connections).",
        "- **Backpressure off**: the broker gives an edge at most `ESS_EDGE_MAX_QUEUED` "
        "unfinished files (64 by default), so with real edges a request of 20,000 files on "
        "100 edges is assigned in rounds as the edges finish files; here the limit is set to "
        "the files per edge, so that one run measures the assignment of the whole request.",
        "- **Shared machine**: the server's workers, PostgreSQL, the broker's handlers, the "
        "pilots' process and whatever else runs on the machine share its cores; every rate "
        "here is what is left of them, a lower bound of each part alone.",
        "- **The fill**: earlier requests' ranges, 500 a file, made by PostgreSQL "
        "(`INSERT .. SELECT` over `generate_series`, with the ranges table's secondary indexes "
        "and constraints dropped during the load and built again afterwards, checked equal "
        "to the migrated ones). A database already holding the same fill is reused: the "
        "reset deletes what the last run added, puts back the expired ranges the last "
        "retention sweep deleted (same ids) and vacuums (its seconds are in the table).",
        "",
        "## Sizes",
        "",
        *sizes_table(results),
        "",
        "## The broker",
        "",
        *broker_table(results),
        "",
        "## Lookups",
        "",
        "Open loop (`…/s offered`): each lookup sent at its scheduled time whatever the "
        "earlier ones did (up to 1,024 unanswered), its latency counted from that time; "
        "`unfinished`: not answered 5 s after the phase; closed loop (`max`): each "
        "client sends its next lookup when its answer came. During the bookkeeping a quarter "
        "of the request's `split.done` messages is handled without lookups, the rest in three "
        "equal parts, one per load; "
        "each lookup phase lasts exactly as long as its part.",
        "",
        *lookups_table(results),
        "",
        "## Growth from the smallest scale to the largest",
        "",
        f"Per unit of work (flagged when it grows by more than {GROWTH_FLAG}x, i.e. the time "
        "grows faster than the work), and levels (latencies, rates) that should not move.",
        "",
        *growth_table(results),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
