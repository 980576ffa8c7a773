"""Every Prometheus metric ESS exports, in one place (names carry their units).

Each metric is counted where its event happens, once: a bookkeeping transition when its
transaction commits (`on_commit`), a download when it is verified, a lookup when it is
answered. `ess_common.metrics_export` serves them (the head on `/metrics`, the other services
on `ESS_METRICS_PORT`), adds the gauges read from the bookkeeping at scrape time
(`BOOKKEEPING_GAUGES`, by `ess_common.db.gauges`), and sums the processes of one service.

Gauges are only ever `set` by the one process that owns what they measure (`mostrecent`), so
that the same values come out whether a service runs as one process or several.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

#: Seconds: from tens of microseconds (a lookup) to a day (a request of a big dataset).
_FAST = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WORK = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_REQUEST = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)

# --- the head's bookkeeping (counted when the transaction that records the change commits) ---

REQUESTS_RECEIVED = Counter(
    "ess_requests_received_total",
    "Requests recorded (a resubmission is not a new one), by the way they came",
    ["via"],
)
REQUESTS_FINISHED = Counter(
    "ess_requests_finished_total", "Requests that became ready, failed or cancelled", ["state"]
)
REQUEST_READY_SECONDS = Histogram(
    "ess_request_ready_seconds",
    "Seconds from a request's arrival to its last file split",
    buckets=_REQUEST,
)
FILES_ASSIGNED = Counter("ess_files_assigned_total", "Files given to an edge", ["edge"])
FILES_MOVED = Counter(
    "ess_files_moved_total", "Unfinished files taken back from an edge", ["edge", "reason"]
)
FILE_RETRIES = Counter(
    "ess_file_retries_total", "Files put back to pending after an edge's failure", ["stage"]
)
FILES_FAILED = Counter("ess_files_failed_total", "Files that failed for good", ["stage"])
RANGES_PREPARED = Counter(
    "ess_ranges_prepared_total", "Event-range files recorded for requests", ["edge"]
)
RANGES_ON_DEMAND_RECORDED = Counter(
    "ess_ranges_on_demand_recorded_total",
    "Ranges split on demand recorded by the broker, by the edge that split them",
    ["edge"],
)

# --- messaging ---------------------------------------------------------------------------------

MESSAGES_HANDLED = Counter(
    "ess_messages_handled_total", "Messages handled and acknowledged", ["queue"]
)
MESSAGE_SECONDS = Histogram(
    "ess_message_handling_seconds",
    "Seconds a handler took, whatever came of it",
    ["queue"],
    buckets=(*_FAST, 5.0, 10.0, 30.0, 60.0, 300.0),
)
MESSAGE_RETRIES = Counter(
    "ess_message_retries_total", "Deliveries given back for a later attempt", ["queue"]
)
DEAD_LETTERS = Counter(
    "ess_dead_letters_total",
    "Messages sent to their dead-letter queue, by the kind of reason",
    ["queue", "reason"],
)
OUTAGE_RETRIES = Counter(
    "ess_outage_retries_total",
    "Deliveries given back (or periodic rounds, periodic:<work>) because a server they "
    "need (database, bus) was unreachable",
    ["queue"],
)
QUEUE_MESSAGES = Gauge(
    "ess_queue_messages",
    "Messages waiting in a queue, as last looked at by its consumer",
    ["queue"],
    multiprocess_mode="mostrecent",
)
AMQP_CONNECT_FAILURES = Counter(
    "ess_amqp_connect_failures_total",
    "Attempts to connect to RabbitMQ that failed (each is retried, at the next address)",
)

# --- the edges ---------------------------------------------------------------------------------

PRECACHE_BYTES = Counter(
    "ess_precache_bytes_total", "Bytes downloaded into an edge's cache", ["edge", "scheme"]
)
PRECACHE_SECONDS = Histogram(
    "ess_precache_seconds",
    "Seconds to download and verify one input file",
    ["edge", "scheme"],
    buckets=_WORK,
)
PRECACHE_FAILURES = Counter(
    "ess_precache_failures_total", "Sources that did not deliver a file", ["edge", "scheme"]
)
CACHE_HITS = Counter(
    "ess_edge_cache_hits_total",
    "Input files (kind=input) or range files (kind=range) found in an edge's cache",
    ["edge", "kind"],
)
CACHE_MISSES = Counter(
    "ess_edge_cache_misses_total",
    "Input files or range files an edge had to fetch",
    ["edge", "kind"],
)
CACHE_USED_BYTES = Gauge(
    "ess_edge_cache_used_bytes",
    "Bytes an edge's cache holds or has reserved",
    ["edge"],
    multiprocess_mode="mostrecent",
)
CACHE_QUOTA_BYTES = Gauge(
    "ess_edge_cache_quota_bytes", "An edge's cache quota", ["edge"], multiprocess_mode="mostrecent"
)
CACHE_EVICTIONS = Counter(
    "ess_edge_cache_evictions_total", "Files evicted from an edge's cache", ["edge"]
)
SPLIT_SECONDS = Histogram(
    "ess_split_seconds",
    "Seconds to split one file (mode=prepared) or one asked range (mode=on_demand)",
    ["edge", "mode"],
    buckets=_WORK,
)
SPLIT_INPUT_BYTES = Counter(
    "ess_split_input_bytes_total", "Bytes of the input files split", ["edge", "mode"]
)
SPLIT_OUTPUT_BYTES = Counter(
    "ess_split_output_bytes_total", "Bytes of the range files written", ["edge", "mode"]
)
SPLIT_RANGES = Counter("ess_split_ranges_total", "Range files written", ["edge", "mode"])
UPLOAD_BYTES = Counter("ess_upload_bytes_total", "Bytes uploaded to the object store", ["store"])
UPLOADS = Counter("ess_uploads_total", "Objects uploaded to the object store", ["store"])


def uploaded(store: str, size: int) -> None:
    UPLOADS.labels(store).inc()
    UPLOAD_BYTES.labels(store).inc(size)


ON_DEMAND_SPLITS = Counter(
    "ess_on_demand_splits_total", "On-demand splits finished, by outcome", ["edge", "outcome"]
)
ON_DEMAND_SLOTS = Gauge(
    "ess_on_demand_slots",
    "On-demand splits an edge runs at once",
    ["edge"],
    multiprocess_mode="mostrecent",
)
ON_DEMAND_SLOTS_BUSY = Gauge(
    "ess_on_demand_slots_busy",
    "On-demand splits running now",
    ["edge"],
    multiprocess_mode="mostrecent",
)
ON_DEMAND_REFUSALS = Counter(
    "ess_on_demand_refusals_total", "On-demand asks refused for want of capacity (503)", ["edge"]
)

# --- pilots' lookups ---------------------------------------------------------------------------

LOOKUPS = Counter(
    "ess_lookups_total",
    "Pilots' range lookups answered, by server (head, edge), path (fast: the head's plain-lookup "
    "shortcut; route: the declared route) and outcome",
    ["server", "path", "outcome"],
)
LOOKUP_SECONDS = Histogram(
    "ess_lookup_seconds",
    "Seconds to answer a pilot's range lookup",
    ["server", "path"],
    buckets=_FAST,
)
SIGNED_URLS = Counter("ess_signed_urls_total", "Signed object URLs made", ["store"])


@contextmanager
def lookup(server: str, path: str) -> Iterator[None]:
    """Count and time one lookup answered in the block: `served`, or the refusal's code
    (`not_prepared`, `outside_file`, ...), or `error`."""
    started = time.perf_counter()
    outcome = "served"
    try:
        yield
    except Exception as exc:
        code = getattr(exc, "code", None)
        outcome = str(getattr(code, "value", code)) if code is not None else type(exc).__name__
        raise
    finally:
        LOOKUPS.labels(server, path, outcome).inc()
        LOOKUP_SECONDS.labels(server, path).observe(time.perf_counter() - started)


# --- notifications -----------------------------------------------------------------------------

NOTIFICATIONS = Counter(
    "ess_notifications_total",
    "Notification attempts by target (message, http) and outcome (sent, retry, failed)",
    ["target", "outcome"],
)

#: Gauges the head reads from its bookkeeping at each scrape (`ess_common.db.gauges`), with
#: their help texts: the state of things, not events, so they are not counted anywhere.
BOOKKEEPING_GAUGES: dict[str, str] = {
    "ess_requests": "Requests by state",
    "ess_files": "Files of requests by state",
    "ess_edges": "Edges by state",
    "ess_edge_heartbeat_age_seconds": "Seconds since an edge's last recorded heartbeat",
    "ess_edge_queued_files": "Files an edge reported queued in its last heartbeat",
    "ess_outbox_backlog_messages": "Events recorded in the outbox and not yet published",
    "ess_dead_letters_recorded": "Dead letters recorded in the bookkeeping",
}

ALL: tuple[MetricWrapperBase, ...] = tuple(
    value for value in globals().values() if isinstance(value, MetricWrapperBase)
)


def exported_names() -> set[str]:
    """Every series name ESS exports, as a query names it (counters with `_total`,
    histograms with `_bucket`, `_sum` and `_count`)."""
    names = set(BOOKKEEPING_GAUGES)
    for metric in ALL:
        for family in metric.describe():
            names.update(sample_names(family.name, family.type))
    return names


def sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


# --- counting when a transaction commits ---------------------------------------------------------

_PENDING = "ess.metrics.on_commit"


def on_commit(session: AsyncSession | Session, count: Callable[[], None]) -> None:
    """Count (call `count`) when the session's transaction commits; never when it rolls back.

    A handler that records a change counts it here, so that a message handled twice (its
    first commit failed) is counted once.
    """
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_PENDING, []).append(count)


@event.listens_for(Session, "after_commit")
def _counted(session: Session) -> None:
    for count in session.info.pop(_PENDING, ()):
        count()


@event.listens_for(Session, "after_soft_rollback")
def _not_counted(session: Session, previous: SessionTransaction) -> None:
    # Only the whole transaction's rollback: a savepoint given up (an insert that found its
    # row already there) leaves what was counted outside it.
    if previous.parent is None:
        session.info.pop(_PENDING, None)
