"""Serving ESS's metrics: the text Prometheus scrapes, a port of its own for the services that
have no HTTP server of theirs, and one set of totals for a service of several processes.

A service of several processes (the head with `ESS_HEAD_WORKERS`, an edge with its precacher
and splitter) shares a metrics directory that its first process makes, owns and deletes
(`owned_directory`); every process of it writes its counts there (prometheus-client's
multiprocess mode) and whichever process is scraped sums them. The directory is named to the
children through `PROMETHEUS_MULTIPROC_DIR`, so a process started with it writes there from
its first count.

prometheus-client chooses where counts go when a metric is made (when the module defining it
is imported), from that variable. A process that makes the directory after importing
`ess_common.metrics` switches its metrics over (`share_across_processes`): the one place that
touches prometheus-client's internals, written for 0.26.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ess_common import metrics

log = structlog.get_logger("ess.metrics")

SHARED_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
#: The prometheus-client whose value classes `share_across_processes` switches.
_WRITTEN_FOR = "0.26."
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def shared_directory() -> Path | None:
    value = os.environ.get(SHARED_DIRECTORY)
    return Path(value) if value else None


def share_across_processes(directory: Path | None) -> None:
    """From now on this process's metrics, and those of the processes it starts, count in
    `directory` (None: in this process's memory again). Call before anything is counted: what
    was counted before is forgotten."""
    found = version("prometheus-client")
    if not found.startswith(_WRITTEN_FOR):
        raise RuntimeError(
            f"ess_common.metrics_export was written for prometheus-client {_WRITTEN_FOR}x, "
            f"not {found}: check how its multiprocess values are chosen"
        )
    if directory is None:
        os.environ.pop(SHARED_DIRECTORY, None)
    else:
        os.environ[SHARED_DIRECTORY] = str(directory)
    prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
    # A metric without labels made its value when it was defined; one with labels makes one
    # per label set when first counted. Both are made again, with the class chosen above.
    for metric in metrics.ALL:
        if metric._labelnames:
            with metric._lock:
                metric._metrics.clear()
        else:
            metric._metric_init()  # type: ignore[no-untyped-call]


@contextmanager
def owned_directory(service: str) -> Iterator[Path]:
    """A fresh metrics directory shared by this process and those it starts; deleted at the
    end. A directory given in the environment is used as it is, and left in place."""
    given = shared_directory()
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        share_across_processes(given)
        yield given
        return
    made = Path(tempfile.mkdtemp(prefix=f"ess-{service}-metrics-"))
    share_across_processes(made)
    try:
        yield made
    finally:
        share_across_processes(None)
        shutil.rmtree(made, ignore_errors=True)


class _Union:
    """Several collectors read as one registry."""

    def __init__(self, parts: Iterable[Collector | CollectorRegistry]) -> None:
        self.parts = list(parts)

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


class _Fixed:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class ProcessMetrics:
    """What this process exports: its own registry, or the sum over the processes of its
    service when they share a directory. Decided at each scrape."""

    def collect(self) -> Iterator[Metric]:
        directory = shared_directory()
        if directory is None:
            yield from REGISTRY.collect()
            return
        shared = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(shared, path=str(directory))  # type: ignore[no-untyped-call]
        yield from shared.collect()


def render(extra: Iterable[Metric] = ()) -> bytes:
    """The text exposition of this process's (or service's) metrics and `extra` families."""
    return generate_latest(_Union([ProcessMetrics(), _Fixed(extra)]))


class MetricsServer:
    """The metrics port of a service without an HTTP server of its own (broker, notifier,
    edge): `GET /metrics` on `host:port`, served from a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.port,
            addr=self.host,
            registry=ProcessMetrics(),
        )
        log.info("metrics.serving", url=f"http://{self.host}:{self.port}/metrics")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
