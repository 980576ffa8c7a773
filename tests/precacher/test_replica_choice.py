"""Which replica an edge reads: the copy at its own site first, the rest after it, and the
replicas looked up again in the real Rucio server when every known one failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ess_common.errors import RetryableError
from ess_common.events import DatasetFile, FileAssigned, Replica
from ess_common.rucio import RucioCatalogue
from ess_common.settings import EdgeSettings
from ess_precacher.service import Precacher
from tests.common.test_rucio_catalogue import xrootd_rse
from tests.conftest import XRootDServer
from tests.precacher.test_precacher import (
    IDLE_BUS,
    LFN,
    GridStorage,
    Original,
    assigned,
    edge_settings,
    expect_cached,
    grid_storage,
    original,
)
from tests.rucio_server import RucioWorld, rucio_env

__all__ = ["grid_storage", "original"]  # fixtures


def with_replicas(event: FileAssigned, replicas: list[Replica]) -> FileAssigned:
    f = event.work.file.model_copy(update={"replicas": replicas})
    return event.model_copy(update={"work": event.work.model_copy(update={"file": f})})


async def test_the_copy_at_the_edges_site_is_read_first(
    tmp_path: Path, original: Original, grid_storage: GridStorage, xrootd: XRootDServer
) -> None:
    grid_storage.files[LFN] = original.data
    far = grid_storage.url(LFN)
    near, copy = xrootd.serve(original.path)
    try:
        event = with_replicas(
            assigned(original, [far, near]),
            [
                Replica(site="SITE-FAR", sources=[far]),
                Replica(site="SITE-NEAR", sources=[near]),
            ],
        )
        precacher = Precacher(edge_settings(tmp_path, edge_site="SITE-NEAR"), IDLE_BUS)
        await expect_cached(precacher, event, original)
        assert grid_storage.gets == []

        # Gone at the edge's site: the far copy is read next.
        shutil.rmtree(copy.parent)
        elsewhere = Precacher(edge_settings(tmp_path / "b", edge_site="SITE-NEAR"), IDLE_BUS)
        await expect_cached(elsewhere, event, original)
        assert grid_storage.gets == [LFN]
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def rucio_edge_settings(tmp_path: Path) -> EdgeSettings:
    settings = edge_settings(tmp_path)
    rucio = {k.removeprefix("ESS_").lower(): v for k, v in rucio_env().items()}
    return EdgeSettings.model_validate(settings.model_dump() | rucio)


async def test_replicas_are_looked_up_again_when_every_known_one_failed(
    tmp_path: Path, original: Original, rucio_world: RucioWorld, xrootd: XRootDServer
) -> None:
    rse = xrootd_rse(rucio_world, xrootd, "relookup", "SITE-A")
    rucio_world.add_file(original.path, LFN, [rse], events=2421)
    gone = f"{xrootd.url}//ess-test-none/{LFN}"
    event = assigned(original, [gone])
    event = event.model_copy(
        update={
            "work": event.work.model_copy(
                update={
                    "file": DatasetFile.model_validate(
                        event.work.file.model_dump() | {"scope": rucio_world.scope}
                    )
                }
            )
        }
    )
    settings = rucio_edge_settings(tmp_path)
    catalogue = RucioCatalogue(settings)
    try:
        precacher = Precacher(settings, IDLE_BUS, catalogue)
        result = await precacher.handle_file_assigned(event)
        assert Path(result.cache_path).read_bytes() == original.data

        # Without a catalogue, the known sources are all there is.
        alone = Precacher(edge_settings(tmp_path / "alone"), IDLE_BUS)
        with pytest.raises(RetryableError, match="no source delivered"):
            await alone.handle_file_assigned(event)
    finally:
        await catalogue.close()
