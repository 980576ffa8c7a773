"""The Rucio server of the tests (started by scripts/ensure-services.sh), and what tests put in
it: a scope of their own, RSEs whose protocols point at the tests' XRootD and HTTPS servers,
files with their `events` metadata, replicas and datasets.

Every name a test makes is its own (scopes and RSEs carry random suffixes), so tests and runs
share the one server without meeting. Files are placed where Rucio says their replicas are:
it builds PFNs from the RSE's protocol and its deterministic path, so each replica's file is
copied under the served directory at the path of the PFN Rucio returns.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rucio.client import Client

from ess_common.checksums import adler32_of_file

RUCIO_URL = os.environ.get("ESS_TEST_RUCIO_URL", "http://127.0.0.1:8095")
RUCIO_ACCOUNT = os.environ.get("ESS_TEST_RUCIO_ACCOUNT", "root")
RUCIO_USERNAME = os.environ.get("ESS_TEST_RUCIO_USERNAME", "ess")
RUCIO_PASSWORD = os.environ.get("ESS_TEST_RUCIO_PASSWORD", "ess-rucio-test")

_DOMAINS = {
    "lan": {"read": 1, "write": 1, "delete": 1},
    "wan": {"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1},
}


def rucio_env() -> dict[str, str]:
    """The `ESS_RUCIO_*` settings that point an ESS process at the test server."""
    return {
        "ESS_RUCIO_URL": RUCIO_URL,
        "ESS_RUCIO_ACCOUNT": RUCIO_ACCOUNT,
        "ESS_RUCIO_AUTH_TYPE": "userpass",
        "ESS_RUCIO_USERNAME": RUCIO_USERNAME,
        "ESS_RUCIO_PASSWORD": RUCIO_PASSWORD,
    }


@dataclass(frozen=True)
class Rse:
    name: str
    #: What the PFNs of this RSE start with, and the local directory that serves them.
    url_prefix: str
    directory: Path


@dataclass
class RucioWorld:
    """One test's scope and RSEs on the server."""

    client: Client
    scope: str
    rses: list[Rse] = field(default_factory=list)
    placed: list[Path] = field(default_factory=list)

    def add_rse(
        self,
        label: str,
        *,
        scheme: str,
        host: str,
        port: int,
        prefix: str,
        served: Path,
        url_prefix: str,
        site: str | None = None,
    ) -> Rse:
        """A deterministic RSE whose PFNs are `<scheme>://<host>:<port><prefix>...`, read
        from `served`."""
        name = f"ESS_{label}_{uuid.uuid4().hex[:8]}".upper()
        self.client.add_rse(name, deterministic=True)
        impl = {
            "root": "rucio.rse.protocols.xrootd.Default",
            "davs": "rucio.rse.protocols.gfal.Default",
            "https": "rucio.rse.protocols.webdav.Default",
        }[scheme]
        self.client.add_protocol(
            name,
            {
                "scheme": scheme,
                "hostname": host,
                "port": port,
                "prefix": prefix,
                "impl": impl,
                "domains": _DOMAINS,
            },
        )
        if site is not None:
            self.client.add_rse_attribute(name, "site", site)
        # Room for the replication rules ESS asks for (a subscription of an edge's site).
        self.client.set_local_account_limit(RUCIO_ACCOUNT, name, 10**12)
        rse = Rse(name, url_prefix, served)
        self.rses.append(rse)
        return rse

    def add_file(
        self,
        source: Path,
        name: str,
        rses: list[Rse],
        *,
        events: int | None,
        guid: str | None = None,
    ) -> list[str]:
        """Register `source` as `scope:name` with replicas at `rses`, each copied where its
        PFN points; returns the PFNs as Rucio gives them."""
        meta: dict[str, Any] = {"guid": guid or str(uuid.uuid4())}
        if events is not None:
            meta["events"] = events
        size, adler32 = source.stat().st_size, adler32_of_file(source)
        for rse in rses:
            self.client.add_replica(rse.name, self.scope, name, size, adler32, meta=meta)
        (found,) = list(
            self.client.list_replicas([{"scope": self.scope, "name": name}], all_states=True)
        )
        pfns = list(found["pfns"])
        for pfn in pfns:
            rse = next(r for r in rses if pfn.startswith(r.url_prefix))
            local = rse.directory / pfn.removeprefix(rse.url_prefix).lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, local)
            local.chmod(0o644)
            self.placed.append(local)
        return pfns

    def add_dataset(self, name: str, files: list[str]) -> str:
        self.client.add_dataset(self.scope, name)
        if files:
            self.client.attach_dids(
                self.scope, name, [{"scope": self.scope, "name": f} for f in files]
            )
        return f"{self.scope}:{name}"

    def cleanup(self) -> None:
        # The scope's and RSEs' rows stay on the server (replicas keep an RSE from being
        # deleted); their names are never used again.
        for path in self.placed:
            path.unlink(missing_ok=True)


class RucioServer:
    """The Rucio server, checked once on first use; a root client logged in with userpass."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.problem: str | None = None
        self._client: Client | None = None

    def check(self) -> None:
        if self._client is None and self.problem is None:
            try:
                requests.get(f"{self.url}/ping", timeout=5).raise_for_status()
                self._client = Client(
                    rucio_host=self.url,
                    auth_host=self.url,
                    account=RUCIO_ACCOUNT,
                    auth_type="userpass",
                    creds={"username": RUCIO_USERNAME, "password": RUCIO_PASSWORD},
                    timeout=30,
                )
            except Exception as exc:
                self.problem = (
                    f"Rucio at {self.url} is not usable ({type(exc).__name__}: {exc}); start "
                    "the servers with `bash scripts/ensure-services.sh` or point "
                    "ESS_TEST_RUCIO_URL at one"
                )

    def world(self) -> RucioWorld:
        assert self._client is not None
        scope = f"t{uuid.uuid4().hex[:12]}"
        self._client.add_scope(RUCIO_ACCOUNT, scope)
        return RucioWorld(self._client, scope)
