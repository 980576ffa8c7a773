"""What ESS asks of a data-management catalogue (Rucio), whichever client answers.

A request that names only its dataset has its files resolved here: each file's size, adler32,
GUID, event count and replicas. `DatasetRefused` says why a dataset cannot be prepared at all
(unknown, empty, a file without an event count or without a replica ESS can read): the request
fails at once with that reason. A catalogue that cannot be reached raises `CatalogueUnavailable`,
a passing fault: the message is retried, the HTTP caller told to come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ess_common.errors import PermanentError, RetryableError
from ess_common.events import DatasetFile, Replica


class DatasetRefused(PermanentError):
    """The catalogue answered, and the dataset cannot be prepared: the reason says why."""


class CatalogueUnavailable(RetryableError):
    """The catalogue did not answer (down, timed out, refused our credentials for now)."""


class Catalogue(Protocol):
    async def dataset_files(self, dataset: str) -> list[DatasetFile]:
        """Every file of `scope:name`, with its replicas; raises DatasetRefused."""

    async def file_replicas(self, scope: str, lfn: str) -> list[Replica]:
        """The file's replicas as the catalogue knows them now (closest first where it can
        tell), each with the URLs ESS can read it from."""

    async def ensure_rule(self, dataset: str, rse: str, lifetime_s: int) -> str:
        """A replication rule of the dataset to the RSE (made now, or the one there is);
        returns its id."""

    async def close(self) -> None: ...


def order_sources(
    sources: Sequence[str], replicas: Sequence[Replica], site: str, region: str
) -> list[str]:
    """The file's source URLs, those of replicas at the edge's site first, then in its region,
    then the rest; within each, in the order given (the catalogue's)."""

    def closeness(url: str) -> int:
        for replica in replicas:
            if url in replica.sources:
                if replica.site == site:
                    return 0
                if region and replica.region == region:
                    return 1
                return 2
        return 2

    return sorted(sources, key=closeness)
