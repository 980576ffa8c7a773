"""The Rucio catalogue: a dataset's files, their event counts and their replicas.

The one module that knows rucio-clients (written for 41.5.1, pinned). A dataset `scope:name`
is resolved with `list_files` (size, adler32, GUID and the `events` metadata ATLAS keeps the
event count in) and `list_replicas` (the PFNs of every available replica for the schemes ESS
reads: root, davs, https, s3, best first by Rucio's priority). Each replica's RSE is mapped to
a site (`ESS_RUCIO_RSE_SITES`, else the RSE's `site` attribute, else its name) and region (its
`region` attribute), so that the broker places the file near it and the edge reads the copy at
its own site first.

An S3 PFN (`s3://host:port/bucket/key`) is read as `s3://bucket/key` through ESS's own S3
endpoint and credentials. rucio-clients is synchronous: every call runs in a thread, one at a
time per catalogue (its HTTP session is not shared between threads).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from rucio.client import Client
from rucio.common.exception import (
    AccessDenied,
    CannotAuthenticate,
    DataIdentifierNotFound,
    DuplicateRule,
    RucioException,
)

from ess_common.catalogue import CatalogueUnavailable, DatasetRefused
from ess_common.events import DatasetFile, Replica
from ess_common.settings import EssSettings

log = structlog.get_logger("ess.rucio")

T = TypeVar("T")


def _pfn_as_source(pfn: str) -> str:
    if pfn.startswith("s3://"):
        parts = urlsplit(pfn)
        return f"s3://{parts.path.lstrip('/')}"
    return pfn


def _guid(value: object) -> str:
    """PanDA's spelling of a GUID: upper case with dashes (Rucio keeps 32 hex digits)."""
    if not value:
        return ""
    try:
        return str(uuid.UUID(str(value))).upper()
    except ValueError:
        return str(value)[:64]


class RucioCatalogue:
    def __init__(self, settings: EssSettings) -> None:
        if settings.rucio_url is None:
            raise ValueError("RucioCatalogue needs ESS_RUCIO_URL")
        self.settings = settings
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._rse_places: dict[str, tuple[str, str]] = {}

    def _connect(self) -> Client:
        s = self.settings
        creds: dict[str, Any] = {}
        if s.rucio_auth_type == "userpass":
            assert s.rucio_password is not None
            creds = {"username": s.rucio_username, "password": s.rucio_password.get_secret_value()}
        elif s.rucio_auth_type == "x509_proxy" and s.rucio_x509_proxy is not None:
            creds = {"client_proxy": str(s.rucio_x509_proxy)}
        elif s.rucio_auth_type == "x509":
            creds = {"client_cert": str(s.rucio_certificate), "client_key": str(s.rucio_key)}
        elif s.rucio_auth_type == "oidc" and s.rucio_token_file is not None:
            # rucio-clients finds tokens the WLCG way; this is the variable it reads first
            # after BEARER_TOKEN itself.
            os.environ["BEARER_TOKEN_FILE"] = str(s.rucio_token_file)
        return Client(
            rucio_host=s.rucio_url,
            auth_host=s.rucio_auth_url or s.rucio_url,
            account=s.rucio_account,
            ca_cert=str(s.rucio_ca_path) if s.rucio_ca_path else None,
            auth_type=s.rucio_auth_type,
            creds=creds or None,
            timeout=int(s.rucio_timeout_s),
            vo=s.rucio_vo,
        )

    def _call(self, work: Callable[[Client], T]) -> T:
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._connect()
                return work(self._client)
            except (DataIdentifierNotFound, DatasetRefused):
                raise
            except (CannotAuthenticate, AccessDenied) as exc:
                self._client = None
                raise CatalogueUnavailable(f"Rucio refused ESS's credentials: {exc}") from exc
            except (RucioException, OSError) as exc:
                # requests' connection errors are OSErrors; Rucio's own wrap the rest.
                self._client = None
                raise CatalogueUnavailable(f"Rucio: {type(exc).__name__}: {exc}") from exc

    def _place(self, client: Client, rse: str) -> tuple[str, str]:
        if rse not in self._rse_places:
            try:
                attributes: Mapping[str, Any] = client.list_rse_attributes(rse)
            except RucioException as exc:
                log.warning("rucio.rse_attributes_unreadable", rse=rse, reason=str(exc))
                attributes = {}
            site = self.settings.rucio_rse_sites.get(rse) or str(attributes.get("site") or rse)
            self._rse_places[rse] = (site, str(attributes.get("region") or ""))
        return self._rse_places[rse]

    def _replicas(
        self, client: Client, found: Mapping[str, Any]
    ) -> tuple[list[str], list[Replica]]:
        """Sources in Rucio's order of priority, and the replicas holding them."""
        pfns: Mapping[str, Mapping[str, Any]] = found.get("pfns") or {}
        ranked = sorted(pfns.items(), key=lambda item: int(item[1].get("priority") or 0))
        sources: list[str] = []
        by_rse: dict[str, list[str]] = {}
        for pfn, about in ranked:
            source = _pfn_as_source(pfn)
            if source not in sources:
                sources.append(source)
                by_rse.setdefault(str(about.get("rse") or ""), []).append(source)
        replicas = []
        for rse, urls in by_rse.items():
            site, region = self._place(client, rse) if rse else ("", "")
            replicas.append(Replica(site=site, region=region, rse=rse, sources=urls))
        return sources, replicas

    def _list_replicas(self, client: Client, dids: list[dict[str, str]]) -> Iterable[Any]:
        result: Iterable[Any] = client.list_replicas(
            dids, schemes=list(self.settings.rucio_schemes)
        )
        return result

    def _resolve(self, dataset: str) -> list[DatasetFile]:
        scope, _, name = dataset.partition(":")

        def work(client: Client) -> list[DatasetFile]:
            try:
                listed = list(client.list_files(scope, name))
            except DataIdentifierNotFound:
                raise DatasetRefused(f"dataset {dataset} is unknown to Rucio") from None
            if not listed:
                raise DatasetRefused(f"dataset {dataset} has no files in Rucio")
            found = {
                (r["scope"], r["name"]): r
                for r in self._list_replicas(client, [{"scope": scope, "name": name}])
            }
            files = []
            for entry in listed:
                key = (entry["scope"], entry["name"])
                files.append(self._dataset_file(client, dataset, entry, found.get(key, {})))
            return files

        return self._call(work)

    def _dataset_file(
        self,
        client: Client,
        dataset: str,
        entry: Mapping[str, Any],
        found: Mapping[str, Any],
    ) -> DatasetFile:
        did = f"{entry['scope']}:{entry['name']}"
        events = entry.get("events")
        if events in (None, "", 0, "0"):
            raise DatasetRefused(
                f"file {did} of dataset {dataset} has no event count in Rucio (metadata "
                "'events'): ESS cannot cut it into event ranges"
            )
        for field, what in (("bytes", "size"), ("adler32", "adler32")):
            if not entry.get(field):
                raise DatasetRefused(f"file {did} of dataset {dataset} has no {what} in Rucio")
        sources, replicas = self._replicas(client, found)
        if not sources:
            schemes = ", ".join(self.settings.rucio_schemes)
            raise DatasetRefused(
                f"file {did} of dataset {dataset} has no available replica readable over {schemes}"
            )
        try:
            return DatasetFile(
                scope=entry["scope"],
                lfn=entry["name"],
                guid=_guid(entry.get("guid")),
                n_events=int(events),
                size=int(entry["bytes"]),
                adler32=str(entry["adler32"]),
                sources=sources,
                replicas=replicas,
            )
        except ValueError as exc:
            raise DatasetRefused(f"file {did} of dataset {dataset}: {exc}") from exc

    def _file_replicas(self, scope: str, lfn: str) -> list[Replica]:
        def work(client: Client) -> list[Replica]:
            found = list(self._list_replicas(client, [{"scope": scope, "name": lfn}]))
            return self._replicas(client, found[0])[1] if found else []

        try:
            return self._call(work)
        except DataIdentifierNotFound:
            return []

    def _ensure_rule(self, dataset: str, rse: str, lifetime_s: int) -> str:
        scope, _, name = dataset.partition(":")
        did = {"scope": scope, "name": name}

        def work(client: Client) -> str:
            try:
                made = client.add_replication_rule(
                    [did],
                    copies=1,
                    rse_expression=rse,
                    lifetime=lifetime_s,
                    grouping="DATASET",
                    comment="ESS: subscription of an edge's site",
                )
                return str(made[0])
            except DuplicateRule:
                # Ours from an earlier file of the dataset (or an edge beside us).
                for rule in client.list_did_rules(scope, name):
                    if rule.get("rse_expression") == rse and rule.get("account") == (
                        self.settings.rucio_account
                    ):
                        return str(rule["id"])
                raise

        return self._call(work)

    async def ensure_rule(self, dataset: str, rse: str, lifetime_s: int) -> str:
        rule = await asyncio.to_thread(self._ensure_rule, dataset, rse, lifetime_s)
        log.info("rucio.rule", dataset=dataset, rse=rse, rule=rule, lifetime_s=lifetime_s)
        return rule

    async def dataset_files(self, dataset: str) -> list[DatasetFile]:
        files = await asyncio.to_thread(self._resolve, dataset)
        log.info("rucio.dataset_resolved", dataset=dataset, files=len(files))
        return files

    async def file_replicas(self, scope: str, lfn: str) -> list[Replica]:
        return await asyncio.to_thread(self._file_replicas, scope, lfn)

    def _close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.session.close()
                self._client = None

    async def close(self) -> None:
        # In a thread: a call of another thread may hold the lock for a while.
        await asyncio.to_thread(self._close)


def make_catalogue(settings: EssSettings) -> RucioCatalogue | None:
    """The catalogue the settings name (`ESS_RUCIO_URL`), or None."""
    return RucioCatalogue(settings) if settings.rucio_url else None
