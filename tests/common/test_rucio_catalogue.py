"""The Rucio catalogue against the real Rucio server: datasets resolved to their files, event
counts, checksums, GUIDs and replicas (with the sites of their RSEs), and the refusals that
fail a request at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import skhep_testdata

from ess_common.catalogue import DatasetRefused, order_sources
from ess_common.checksums import adler32_of_file
from ess_common.rucio import RucioCatalogue
from ess_common.settings import HeadSettings
from tests.conftest import XRootDServer
from tests.rucio_server import Rse, RucioWorld, rucio_env

HZZ = Path(skhep_testdata.data_path("uproot-HZZ.root"))
ZMUMU = Path(skhep_testdata.data_path("uproot-Zmumu.root"))


def xrootd_rse(world: RucioWorld, xrootd: XRootDServer, label: str, site: str) -> Rse:
    """An RSE whose replicas XRootD serves from a directory of this test's own."""
    place = f"ess-test-{uuid.uuid4().hex[:12]}"
    (xrootd.directory / place).mkdir(mode=0o755)
    return world.add_rse(
        label,
        scheme="root",
        host="127.0.0.1",
        port=int(xrootd.url.rsplit(":", 1)[1]),
        prefix=f"//{place}/",
        served=xrootd.directory / place,
        url_prefix=f"{xrootd.url}//{place}",
        site=site,
    )


@pytest.fixture
async def catalogue() -> AsyncIterator[RucioCatalogue]:
    settings = HeadSettings.model_validate(
        {k.removeprefix("ESS_").lower(): v for k, v in rucio_env().items()}
        | {"rucio_rse_sites": {}}
    )
    made = RucioCatalogue(settings)
    try:
        yield made
    finally:
        await made.close()


async def test_a_dataset_resolves_to_its_files_and_replicas(
    rucio_world: RucioWorld, xrootd: XRootDServer, catalogue: RucioCatalogue
) -> None:
    near = xrootd_rse(rucio_world, xrootd, "near", "SITE-A")
    far = xrootd_rse(rucio_world, xrootd, "far", "SITE-B")
    guid = str(uuid.uuid4()).upper()
    hzz_pfns = rucio_world.add_file(HZZ, "NTUP.HZZ.root", [near, far], events=2421, guid=guid)
    rucio_world.add_file(ZMUMU, "NTUP.Zmumu.root", [far], events=2304)
    dataset = rucio_world.add_dataset("data.ds1", ["NTUP.HZZ.root", "NTUP.Zmumu.root"])

    files = {f.lfn: f for f in await catalogue.dataset_files(dataset)}

    hzz = files["NTUP.HZZ.root"]
    assert (hzz.scope, hzz.n_events, hzz.size) == (rucio_world.scope, 2421, HZZ.stat().st_size)
    assert hzz.adler32 == adler32_of_file(HZZ)
    assert hzz.guid == guid
    assert sorted(hzz.sources) == sorted(hzz_pfns)
    assert {(r.site, r.rse) for r in hzz.replicas} == {("SITE-A", near.name), ("SITE-B", far.name)}
    at_b = order_sources(hzz.sources, hzz.replicas, "SITE-B", "")
    (far_pfn,) = next(r.sources for r in hzz.replicas if r.site == "SITE-B")
    assert at_b[0] == far_pfn
    assert files["NTUP.Zmumu.root"].n_events == 2304
    assert [r.site for r in files["NTUP.Zmumu.root"].replicas] == ["SITE-B"]

    again = await catalogue.file_replicas(rucio_world.scope, "NTUP.HZZ.root")
    assert {r.rse for r in again} == {near.name, far.name}


async def test_the_rse_to_site_mapping_of_the_settings_wins(
    rucio_world: RucioWorld, xrootd: XRootDServer
) -> None:
    rse = xrootd_rse(rucio_world, xrootd, "mapped", "SITE-A")
    rucio_world.add_file(HZZ, "NTUP.mapped.root", [rse], events=2421)
    dataset = rucio_world.add_dataset("data.mapped", ["NTUP.mapped.root"])
    settings = HeadSettings.model_validate(
        {k.removeprefix("ESS_").lower(): v for k, v in rucio_env().items()}
        | {"rucio_rse_sites": {rse.name: "CERN-PROD"}}
    )
    catalogue = RucioCatalogue(settings)
    try:
        (f,) = await catalogue.dataset_files(dataset)
    finally:
        await catalogue.close()
    assert [r.site for r in f.replicas] == ["CERN-PROD"]


async def test_unknown_empty_and_uncounted_datasets_are_refused_with_the_reason(
    rucio_world: RucioWorld, xrootd: XRootDServer, catalogue: RucioCatalogue
) -> None:
    rse = xrootd_rse(rucio_world, xrootd, "refusals", "SITE-A")
    rucio_world.add_file(HZZ, "NTUP.noevents.root", [rse], events=None)
    uncounted = rucio_world.add_dataset("data.uncounted", ["NTUP.noevents.root"])
    empty = rucio_world.add_dataset("data.empty", [])

    with pytest.raises(DatasetRefused, match="unknown to Rucio"):
        await catalogue.dataset_files(f"{rucio_world.scope}:data.nothing")
    with pytest.raises(DatasetRefused, match="has no files"):
        await catalogue.dataset_files(empty)
    with pytest.raises(DatasetRefused, match=r"NTUP\.noevents\.root .*no event count"):
        await catalogue.dataset_files(uncounted)
