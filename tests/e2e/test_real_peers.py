"""ESS with its real peers, every service its own process: PanDA's own client sends, over STOMP,
a request that names only a Rucio dataset; the broker resolves it in the real Rucio server
(replicas on the tests' XRootD server and on HTTPS grid storage); the edge fetches each file
from its replica, splits it and uploads the ranges to S3; `request.ready` reaches PanDA's
STOMP listener; then pilot3 runs an Event Service job whose ranges PanDA hands out, and its
payload receives local range files holding exactly the source's events.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import skhep_testdata

from tests.common.test_rucio_catalogue import xrootd_rse
from tests.common.test_stomp import STOMP_URL
from tests.conftest import AmqpServer, PostgresServer, XRootDServer, empty_and_delete_bucket
from tests.e2e.cluster import Cluster, panda_inbox, service_queues
from tests.grid_https import grid_https
from tests.helpers import S3Settings, eventually, free_port
from tests.panda_stomp import start as start_panda
from tests.pilot.support import PANDA_ID, TASK
from tests.pilot.test_pilot3 import check_payload_ranges, run_pilot3_job, serving_panda
from tests.rucio_server import RucioWorld, rucio_env

pytestmark = pytest.mark.e2e

HZZ = Path(skhep_testdata.data_path("uproot-HZZ.root"))
ZMUMU = Path(skhep_testdata.data_path("uproot-Zmumu.root"))
EVENTS_PER_RANGE = 500


def panda_range(scope: str, lfn: str, start: int, last: int, process: int) -> dict[str, Any]:
    return {
        "eventRangeID": f"{TASK}-{PANDA_ID}-{10980024041 + int(lfn[-7:-5])}-{process}-1",
        "LFN": lfn,
        "GUID": str(uuid.uuid5(uuid.NAMESPACE_URL, lfn)).upper(),
        "scope": scope,
        "startEvent": start,
        "lastEvent": last,
    }


async def test_a_rucio_dataset_asked_over_stomp_reaches_pilot3s_payload(
    tmp_path: Path,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
    rucio_world: RucioWorld,
    xrootd: XRootDServer,
) -> None:
    db_url = await postgres_server.url()
    await postgres_server.truncate()
    amqp_url = await amqp_server.check()
    tag = uuid.uuid4().hex[:10]
    exchange, bucket = f"ess-e2e-{tag}", f"ess-e2e-{tag}"
    requests_queue, notices_queue = f"ess-e2e-{tag}.requests", f"ess-e2e-{tag}.notices"
    served = tmp_path / "grid"
    served.mkdir()
    async with grid_https(served, tmp_path) as grid:
        port = int(grid.base_url.split(":")[2].split("/")[0])
        https = rucio_world.add_rse(
            "https",
            scheme="davs",
            host="127.0.0.1",
            port=port,
            prefix="/files/",
            served=served,
            url_prefix=f"davs://127.0.0.1:{port}/files",
            site="SITE-GRID",
        )
        near = xrootd_rse(rucio_world, xrootd, "edge", "site-edge-a")
        lfns = {f"NTUP.{tag}._000001.root": HZZ, f"NTUP.{tag}._000002.root": ZMUMU}
        hzz_lfn, zmumu_lfn = lfns
        rucio_world.add_file(HZZ, hzz_lfn, [near, https], events=2421)
        rucio_world.add_file(ZMUMU, zmumu_lfn, [https], events=2304)
        dataset = rucio_world.add_dataset(f"e2e.{tag}", list(lfns))

        api_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ESS_")},
            "ESS_DATABASE_URL": db_url,
            "ESS_BUS_URL": amqp_url,
            "ESS_EXCHANGE": exchange,
            "ESS_PANDA_EXCHANGE": f"panda-{exchange}",
            "ESS_HEAD_URL": f"http://127.0.0.1:{api_port}",
            "ESS_API_PORT": str(api_port),
            "ESS_LOG_FORMAT": "json",
            "ESS_SWEEP_INTERVAL_S": "0.5",
            "ESS_HEARTBEAT_INTERVAL_S": "1",
            "ESS_RETRY_BACKOFF_S": "0.2",
            "ESS_STOMP_URL": STOMP_URL,
            "ESS_STOMP_REQUEST_DESTINATION": f"/queue/{requests_queue}",
            "ESS_STOMP_NOTICE_DESTINATION": f"/queue/{notices_queue}",
            "ESS_SOURCE_CA_PATH": str(grid.ca_dir),
            "ESS_SOURCE_TOKEN_FILE": str(grid.token_file),
            **rucio_env(),
            **s3_settings.env(bucket),
        }
        inbox = await panda_inbox(amqp_url, env["ESS_PANDA_EXCHANGE"])
        cluster = Cluster(tmp_path, env)
        listener = start_panda(
            tmp_path / "panda-listener", "listen", f"/queue/{notices_queue}", "1", "240"
        )
        try:
            assert listener.stdout is not None
            assert (await asyncio.to_thread(listener.stdout.readline)).strip() == "listening"
            for name, module in (
                ("head-api", "ess_head_api"),
                ("broker", "ess_broker"),
                ("notifier", "ess_notifier"),
            ):
                cluster.start(name, module)
            cluster.start_edge("edge-a")
            await cluster.wait_healthy()
            await cluster.wait_edges({"edge-a"})

            request = {
                "dataset": dataset,
                "idempotency_key": f"jedi-{tag}",
                "events_per_range": EVENTS_PER_RANGE,
            }
            body = tmp_path / "request.json"
            body.write_text(json.dumps(request))
            # The broker declares its ingress queue (a quorum queue) when it starts; PanDA's
            # client sends to it as an existing queue (/amq/queue/X on RabbitMQ).
            await eventually(
                lambda: queue_exists(amqp_url, requests_queue), timeout=60, interval=0.5
            )
            sender = start_panda(
                tmp_path / "panda-sender", "send", f"/queue/{requests_queue}", str(body)
            )
            out, err = await asyncio.to_thread(sender.communicate, timeout=60)
            assert sender.returncode == 0, err[-2000:]

            out, err = await asyncio.to_thread(listener.communicate, timeout=240)
            assert listener.returncode == 0, f"{err[-2000:]}\n{cluster.logs()}"
            (notice,) = [json.loads(json.loads(line)["body"]) for line in out.splitlines()]
            assert notice["event"] == "request.ready", notice
            assert (notice["dataset"], notice["n_files"]) == (dataset, 2)

            # The copy at the edge's site was read for the file that has one there.
            assert f"/files/{rucio_world.scope}" in " ".join(grid.requests)
            assert not any(hzz_lfn in path for path in grid.requests)

            scope = rucio_world.scope
            handed_out = [
                panda_range(scope, hzz_lfn, 1, 10, 1),
                panda_range(scope, hzz_lfn, 450, 620, 2),
                panda_range(scope, zmumu_lfn, 2001, 2304, 3),
            ]
            async with serving_panda(list(handed_out)) as panda:
                pilot_dir = tmp_path / "pilot"
                pilot_dir.mkdir()
                received = await run_pilot3_job(pilot_dir, cluster.head_url, panda.url)
            served_ranges = check_payload_ranges(
                handed_out,
                received,
                {hzz_lfn: HZZ, zmumu_lfn: ZMUMU},
                pilot_dir / "ess-input",
            )
            assert len(served_ranges) == 3
            assert panda.updates == []
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
            cluster.stop_all()
            await _cleanup(
                amqp_server, s3_settings, exchange, bucket, requests_queue, notices_queue, inbox
            )
            shutil.rmtree(served, ignore_errors=True)


async def queue_exists(amqp_url: str, queue: str) -> bool:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
    return True


async def _cleanup(
    amqp_server: AmqpServer,
    s3: S3Settings,
    exchange: str,
    bucket: str,
    *stomp_queues: str,
) -> None:
    queues = [f"{exchange}.{q}" for q in service_queues(["edge-a"])]
    family = [f"{q}{s}" for q in queues for s in ("", ".retry", ".dead")]
    stomp_family = [f"{q}{s}" for q in stomp_queues for s in ("", ".retry", ".dead")]
    await amqp_server.delete(
        [*family, *stomp_family], [exchange, f"{exchange}.dead", f"panda-{exchange}"]
    )
    store = s3.store(bucket, create_bucket=False)
    await store.start()
    try:
        await empty_and_delete_bucket(store)
    finally:
        await store.close()
