"""The benchmarks' generated ntuple: a NanoAOD-like TTree of about the size asked for.

Produces, in a work directory, a zlib-compressed ROOT file with one TTree of jagged and flat
branches, generated once from a fixed seed and cached beside a JSON key that says how it was
made (a stale or partial file is made again), and its size and event count (``InputFile``).
The same events can be written in smaller baskets, to a file of their own, for readers that
take a few events at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 10**6

TREE = "Events"
# Events drawn from the generator at a time, and by default the events per basket (each extend
# call writes one basket per branch): 20k events make baskets of 80 kB (flat int32) to ~1 MB
# (jet floats) uncompressed, sizes ntuple writers use.
CHUNK_EVENTS = 20_000
# How a branch's basket arrays (fBasketBytes, fBasketEntry, fBasketSeek) in the TTree record
# grow when full, for files of smaller baskets: by half, as ROOT grows them. uproot's default,
# tenfold, would leave a TTree record, which uproot writes uncompressed and every reader
# fetches whole, of mostly empty slots (3 MB for 1,680 baskets a branch). The default file
# keeps uproot's growth, so that its cached copy and its figures stay as they are.
SMALL_BASKET_GROWTH = 1.5
# fCompress 101, ROOT's long-standing default for ntuples.
COMPRESSION_LEVEL = 1
SEED = 20_240_601
# Part of the cache key: changing the generated content must rebuild a cached file.
GENERATOR_VERSION = 1

BRANCH_TYPES: dict[str, str] = {
    "run": "int32",
    "luminosityBlock": "int32",
    "event": "int64",
    "PV_npvs": "int32",
    "genWeight": "float64",
    "MET_pt": "float32",
    "MET_phi": "float32",
    "Jet_pt": "var * float32",
    "Jet_eta": "var * float32",
    "Jet_phi": "var * float32",
    "Jet_mass": "var * float32",
    "Muon_pt": "var * float32",
    "Muon_eta": "var * float32",
}


@dataclass(frozen=True)
class InputFile:
    path: Path
    size: int
    events: int


def ensure_input(workdir: Path, size_mb: float, basket_events: int = CHUNK_EVENTS) -> InputFile:
    """The cached benchmark ntuple of about ``size_mb`` MB, generated if missing or stale.

    ``basket_events`` (a divisor of ``CHUNK_EVENTS``) writes the events of that ntuple, the
    same ones, in baskets of that many events, to a file of its own.
    """
    if basket_events < 1 or CHUNK_EVENTS % basket_events:
        raise ValueError(f"basket_events must divide {CHUNK_EVENTS}, not {basket_events}")
    stem = f"ntuple-{size_mb:g}MB"
    key: dict[str, object] = {
        "version": GENERATOR_VERSION,
        "seed": SEED,
        "chunk_events": CHUNK_EVENTS,
        "level": COMPRESSION_LEVEL,
    }
    n_events = 0
    if basket_events != CHUNK_EVENTS:
        n_events = ensure_input(workdir, size_mb).events
        stem += f"-baskets-{basket_events}"
        key |= {
            "basket_events": basket_events,
            "basket_growth": SMALL_BASKET_GROWTH,
            "events": n_events,
        }
    path = workdir / f"{stem}.root"
    meta_path = workdir / f"{stem}.json"
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if {name: meta.get(name) for name in key} == key and meta.get("size") == (
            path.stat().st_size
        ):
            return InputFile(path, int(meta["size"]), int(meta["events"]))
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    events = _generate(path, basket_events, target_bytes=int(size_mb * MB), n_events=n_events)
    size = path.stat().st_size
    meta_path.write_text(json.dumps({**key, "size": size, "events": events}))
    return InputFile(path, size, events)


def _generate(path: Path, basket_events: int, *, target_bytes: int, n_events: int) -> int:
    """Write the ntuple: ``n_events`` events, or if 0 as many as make ``target_bytes``."""
    import numpy as np
    import uproot

    rng = np.random.default_rng(SEED)
    temp = path.with_name(f".{path.name}.part")
    events = 0
    growth: dict[str, float] = {}
    if basket_events != CHUNK_EVENTS:
        growth["resize_factor"] = SMALL_BASKET_GROWTH

    def more() -> bool:
        if n_events:
            return events < n_events
        # uproot flushes every basket as it is written, so the size on disk tracks the data.
        return events == 0 or temp.stat().st_size < target_bytes

    with uproot.recreate(temp, compression=uproot.ZLIB(COMPRESSION_LEVEL)) as out:
        tree = out.mktree(
            TREE, BRANCH_TYPES, title="ESS benchmark", counter_name=_counter_name, **growth
        )
        while more():
            chunk = _chunk(rng, events, CHUNK_EVENTS)
            for start in range(0, CHUNK_EVENTS, basket_events):
                tree.extend(_events(chunk, start, basket_events))
            events += CHUNK_EVENTS
    os.replace(temp, path)
    return events


def _events(chunk: dict[str, Any], start: int, n: int) -> dict[str, Any]:
    if start == 0 and n == CHUNK_EVENTS:
        return chunk
    return {name: values[start : start + n] for name, values in chunk.items()}


def _counter_name(branch: str) -> str:
    # Jet_pt, Jet_eta, ... all share nJet, as in NanoAOD-like ntuples.
    return "n" + branch.split("_", 1)[0]


def _chunk(rng: Any, first: int, n: int) -> dict[str, Any]:
    import awkward as ak
    import numpy as np

    n_jet = rng.poisson(8.0, n).astype(np.int32)
    n_muon = rng.poisson(1.5, n).astype(np.int32)
    jets = int(n_jet.sum())
    muons = int(n_muon.sum())
    position = first + np.arange(n, dtype=np.int64)
    return {
        "run": (362_000 + position // 500_000).astype(np.int32),
        "luminosityBlock": (1 + position // 1_000).astype(np.int32),
        "event": 10**10 + 37 * position + rng.integers(0, 37, n),
        "PV_npvs": rng.poisson(35.0, n).astype(np.int32),
        "genWeight": np.where(rng.random(n) < 0.1, -0.5839, 0.5839),
        "MET_pt": rng.exponential(40.0, n).astype(np.float32),
        "MET_phi": _truncated(rng.uniform(-np.pi, np.pi, n)),
        "Jet_pt": ak.unflatten((20.0 + rng.exponential(30.0, jets)).astype(np.float32), n_jet),
        "Jet_eta": ak.unflatten(_truncated(rng.normal(0.0, 1.6, jets)), n_jet),
        "Jet_phi": ak.unflatten(_truncated(rng.uniform(-np.pi, np.pi, jets)), n_jet),
        "Jet_mass": ak.unflatten(_truncated(rng.exponential(8.0, jets)), n_jet),
        "Muon_pt": ak.unflatten((5.0 + rng.exponential(20.0, muons)).astype(np.float32), n_muon),
        "Muon_eta": ak.unflatten(_truncated(rng.normal(0.0, 1.2, muons)), n_muon),
    }


def _truncated(values: Any, mantissa_bits: int = 10) -> Any:
    # Angles and masses are stored with 10 mantissa bits, as NanoAOD does, which is what makes
    # real ntuples compress better than random floats.
    import numpy as np

    bits = values.astype(np.float32).view(np.uint32)
    mask = np.uint32((0xFFFFFFFF << (23 - mantissa_bits)) & 0xFFFFFFFF)
    return (bits & mask).view(np.float32)
