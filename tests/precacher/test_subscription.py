""" "Subscribe to close sites", against the real Rucio server: an edge asks for a replication
rule of the dataset to the RSE serving its site, with the configured lifetime, and reads the
file from that RSE once the copy is there; if it does not come in time, from the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ess_common.events import FileAssigned, Replica
from ess_common.rucio import RucioCatalogue
from ess_common.settings import EdgeSettings
from ess_precacher.service import Precacher
from tests.common.test_rucio_catalogue import xrootd_rse
from tests.conftest import XRootDServer
from tests.grid_https import GridHttps, grid_https
from tests.precacher.test_precacher import IDLE_BUS, LFN, Original, assigned, original
from tests.rucio_server import Rse, RucioWorld, rucio_env

__all__ = ["original"]  # a fixture

LIFETIME_S = 3600


@pytest.fixture
async def grid(tmp_path: Path) -> AsyncIterator[GridHttps]:
    served = tmp_path / "grid"
    served.mkdir()
    async with grid_https(served, tmp_path) as storage:
        yield storage


def grid_rse(world: RucioWorld, grid: GridHttps) -> Rse:
    port = int(grid.base_url.split(":")[2].split("/")[0])
    return world.add_rse(
        "far",
        scheme="davs",
        host="127.0.0.1",
        port=port,
        prefix="/files/",
        served=Path(grid.ca_file).parent / "grid",
        url_prefix=f"davs://127.0.0.1:{port}/files",
        site="SITE-FAR",
    )


def subscribing(tmp_path: Path, rse: Rse, grid: GridHttps, wait_s: float) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {k.removeprefix("ESS_").lower(): v for k, v in rucio_env().items()}
        | {
            "edge_name": "edge-pc",
            "edge_site": "SITE-NEAR",
            "edge_cache_dir": tmp_path / "cache",
            "edge_quota_bytes": 10 * 2**20,
            "source_ca_path": grid.ca_dir,
            "source_token_file": grid.token_file,
            "rucio_rse": rse.name,
            "rucio_subscribe": True,
            "rucio_rule_lifetime_s": LIFETIME_S,
            "rucio_subscription_wait_s": wait_s,
        }
    )


async def cached_subscribing(
    tmp_path: Path,
    original: Original,
    world: RucioWorld,
    grid: GridHttps,
    near: Rse,
    dataset: str,
    far_pfn: str,
    wait_s: float,
) -> bytes:
    """The file as a subscribing edge at `near`'s site caches it."""
    settings = subscribing(tmp_path, near, grid, wait_s)
    catalogue = RucioCatalogue(settings)
    try:
        precacher = Precacher(settings, IDLE_BUS, catalogue)
        result = await precacher.handle_file_assigned(work_of(original, world, dataset, far_pfn))
    finally:
        await catalogue.close()
    return Path(result.cache_path).read_bytes()


def work_of(original: Original, world: RucioWorld, dataset: str, far: str) -> FileAssigned:
    event = assigned(original, [far])
    f = event.work.file.model_copy(
        update={"scope": world.scope, "replicas": [Replica(site="SITE-FAR", sources=[far])]}
    )
    work = event.work.model_copy(update={"file": f, "dataset": dataset})
    return event.model_copy(update={"work": work})


async def test_the_edge_subscribes_its_site_and_reads_the_copy_there(
    tmp_path: Path,
    original: Original,
    rucio_world: RucioWorld,
    xrootd: XRootDServer,
    grid: GridHttps,
) -> None:
    far = grid_rse(rucio_world, grid)
    near = xrootd_rse(rucio_world, xrootd, "near", "SITE-NEAR")
    # The copy at the edge's site is there already (brought by an earlier rule).
    far_pfn, _ = sorted(
        rucio_world.add_file(original.path, LFN, [far, near], events=2421),
        key=lambda pfn: not pfn.startswith(far.url_prefix),
    )
    dataset = rucio_world.add_dataset("data.subscribed", [LFN])
    cached = await cached_subscribing(
        tmp_path, original, rucio_world, grid, near, dataset, far_pfn, wait_s=30
    )
    assert cached == original.data
    assert not [p for p in grid.requests if p.endswith(LFN)]  # nothing read from far away
    scope, name = dataset.split(":")
    (rule,) = [
        r
        for r in rucio_world.client.list_did_rules(scope, name)
        if r["rse_expression"] == near.name
    ]
    assert rule["copies"] == 1 and rule["expires_at"] is not None


async def test_a_copy_that_does_not_come_in_time_is_read_from_elsewhere(
    tmp_path: Path,
    original: Original,
    rucio_world: RucioWorld,
    xrootd: XRootDServer,
    grid: GridHttps,
) -> None:
    far = grid_rse(rucio_world, grid)
    near = xrootd_rse(rucio_world, xrootd, "late", "SITE-NEAR")
    (far_pfn,) = rucio_world.add_file(original.path, LFN, [far], events=2421)
    dataset = rucio_world.add_dataset("data.late", [LFN])
    cached = await cached_subscribing(
        tmp_path, original, rucio_world, grid, near, dataset, far_pfn, wait_s=0.5
    )
    assert cached == original.data
    assert [p for p in grid.requests if p.endswith(LFN)]
