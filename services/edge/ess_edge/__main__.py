"""`python -m ess_edge`: run one edge (heartbeat, server, evictor, precacher, splitter) until
SIGTERM. Its precacher and splitter count their metrics in a directory the edge owns, so that
the edge's metrics port (`ESS_METRICS_PORT`) shows the whole edge."""

from __future__ import annotations

import os

import httpx

from ess_common.cache_space import CacheSpace
from ess_common.messaging.factory import make_bus
from ess_common.metrics_export import owned_directory
from ess_common.runtime import run_main, run_parts
from ess_common.settings import EdgeSettings
from ess_common.store.factory import make_store
from ess_edge.server import EdgeState, create_edge_app, make_server
from ess_edge.service import Edge
from ess_edge.supervisor import worker_children


async def run(settings: EdgeSettings) -> None:
    if settings.bus_url.startswith("memory://"):
        raise SystemExit("an edge process needs a shared bus: set ESS_BUS_URL to amqp://...")
    with owned_directory(f"edge-{settings.edge_name}"):
        await _run(settings)


async def _run(settings: EdgeSettings) -> None:
    bus = make_bus(settings)
    store = make_store(settings)
    http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
    space = CacheSpace(
        settings.edge_cache_dir, settings.edge_quota_bytes, pin_ttl_s=settings.edge_pin_ttl_s
    )
    state = EdgeState.build(settings, store, space, http, bus)
    app = create_edge_app(state)
    # The children count in the edge's metrics directory; the edge alone serves the port.
    env = {k: v for k, v in os.environ.items() if k != "ESS_METRICS_PORT"}
    children = worker_children(env, niceness=settings.edge_work_niceness)
    edge = Edge(
        settings, bus, children, server=make_server(app, settings), on_demand=state.on_demand
    )
    await run_parts(
        (bus.start, bus.close),
        (store.start, store.close),
        (None, http.aclose),
        (None, state.on_demand.close),
        (edge.start, edge.stop),
    )


def main() -> None:
    run_main(EdgeSettings(), run)


if __name__ == "__main__":
    main()
