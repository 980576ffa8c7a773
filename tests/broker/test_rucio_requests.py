"""`request.created` naming only its dataset: the broker resolves it in the real Rucio server
and records the files as if PanDA had sent them; a dataset Rucio refuses fails the request at
once, with the reason, and PanDA is told (`request.failed` in the outbox)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import skhep_testdata
from sqlalchemy import select

from ess_broker.service import Broker
from ess_common.checksums import adler32_of_file
from ess_common.db.models import File, Request, RequestStatus
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import Conflict
from ess_common.events import RequestCreated
from ess_common.messaging.memory import MemoryBus
from ess_common.rucio import RucioCatalogue
from ess_common.settings import HeadSettings
from ess_head_api import lifecycle
from tests.broker.factories import outbox
from tests.common.test_rucio_catalogue import xrootd_rse
from tests.conftest import XRootDServer
from tests.rucio_server import RucioWorld, rucio_env

HZZ = Path(skhep_testdata.data_path("uproot-HZZ.root"))


@pytest.fixture
async def broker(sessions: SessionMaker) -> AsyncIterator[Broker]:
    settings = HeadSettings.model_validate(
        {k.removeprefix("ESS_").lower(): v for k, v in rucio_env().items()}
    )
    made = Broker(settings, MemoryBus("unused"), sessions, RucioCatalogue(settings))
    try:
        yield made
    finally:
        assert made.catalogue is not None
        await made.catalogue.close()


def created(dataset: str, key: str) -> RequestCreated:
    return RequestCreated.model_validate_json(
        json.dumps({"dataset": dataset, "idempotency_key": key, "events_per_range": 500})
    )


async def test_a_dataset_named_alone_is_resolved_in_rucio(
    broker: Broker, sessions: SessionMaker, rucio_world: RucioWorld, xrootd: XRootDServer
) -> None:
    rse = xrootd_rse(rucio_world, xrootd, "broker", "SITE-A")
    (pfn,) = rucio_world.add_file(HZZ, "NTUP.broker.root", [rse], events=2421)
    dataset = rucio_world.add_dataset("data.broker", ["NTUP.broker.root"])

    for _ in range(2):  # a resubmission is the same request
        async with unit_of_work(sessions) as session:
            await broker.handle_request_created(session, created(dataset, "jedi-rucio-1"))

    async with sessions() as session:
        (request,) = (await session.scalars(select(Request))).all()
        (f,) = (await session.scalars(select(File))).all()
    assert request.status == RequestStatus.RECEIVED
    assert (f.scope, f.lfn, f.n_events) == (rucio_world.scope, "NTUP.broker.root", 2421)
    assert (f.size, f.adler32, f.sources) == (HZZ.stat().st_size, adler32_of_file(HZZ), [pfn])
    assert f.replicas == [{"site": "SITE-A", "rse": rse.name, "sources": [pfn]}]


@pytest.mark.parametrize(
    ("name", "reason"), [("data.unknown", "unknown to Rucio"), ("data.empty", "has no files")]
)
async def test_a_dataset_rucio_refuses_fails_the_request_at_once(
    broker: Broker, sessions: SessionMaker, rucio_world: RucioWorld, name: str, reason: str
) -> None:
    if name == "data.empty":
        rucio_world.add_dataset(name, [])
    dataset = f"{rucio_world.scope}:{name}"

    async with unit_of_work(sessions) as session:
        await broker.handle_request_created(session, created(dataset, f"jedi-{name}"))

    async with sessions() as session:
        (request,) = (await session.scalars(select(Request))).all()
        assert request.status == RequestStatus.FAILED
        assert request.error is not None and reason in request.error
        assert (await session.scalars(select(File))).all() == []
        (failed,) = await outbox(session, "request.failed")
    assert reason in json.loads(failed.body)["reason"]

    # Nothing to try again: the head refuses a retry with the reason, rather than reopen it.
    with pytest.raises(Conflict, match="no files to retry"):
        async with unit_of_work(sessions) as session:
            await lifecycle.retry(session, request.id)
