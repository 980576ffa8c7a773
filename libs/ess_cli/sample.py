"""A sample dataset for a first try: ROOT files shaped like a small analysis ntuple."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from ess_common.checksums import adler32_of_file


@dataclass(frozen=True)
class SampleFile:
    path: Path
    lfn: str
    n_events: int
    size: int
    adler32: str


def write_sample_file(path: Path, n_events: int, seed: int) -> None:
    """A tree `events` with flat branches and jets counted by `nJet`, plus a metadata tree."""
    rng = np.random.default_rng(seed)
    n_jets = rng.poisson(3.0, n_events).astype(np.int32)
    jets = ak.zip(
        {
            "pt": ak.unflatten(rng.exponential(40.0, n_jets.sum()).astype(np.float32), n_jets),
            "eta": ak.unflatten(rng.normal(0.0, 1.5, n_jets.sum()).astype(np.float32), n_jets),
        }
    )
    with uproot.recreate(path) as out:
        tree = out.mktree(
            "events",
            {
                "eventNumber": np.int64,
                "runNumber": np.int32,
                "met": np.float32,
                "Jet": jets.type.content,
            },
            counter_name=lambda counted: f"n{counted}",
            title="sample events",
        )
        tree.extend(
            {
                "eventNumber": np.arange(1, n_events + 1, dtype=np.int64) + seed * 1_000_000,
                "runNumber": np.full(n_events, 284500 + seed, dtype=np.int32),
                "met": rng.exponential(30.0, n_events).astype(np.float32),
                "Jet": jets,
            }
        )


def make_sample_dataset(
    directory: Path, sizes: tuple[int, ...] = (1200, 1000, 800)
) -> list[SampleFile]:
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, n_events in enumerate(sizes, start=1):
        lfn = f"DAOD_SAMPLE.ess_demo._{i:06d}.root"
        path = directory / lfn
        if not path.exists():
            write_sample_file(path, n_events, seed=i)
        files.append(SampleFile(path, lfn, n_events, path.stat().st_size, adler32_of_file(path)))
    return files
