"""The inputs of the object-file benchmark, made with ROOT itself and cached.

- ``physlite-<N>MB.root``: ATLAS DAOD_PHYSLITE as experiments write it (``CollectionTree`` of
  1,300 branches of xAOD classes and ``std::vector`` aux-data, ``MetaData``, and the rest), made
  by merging copies of coffea 2024.11.0's ``PHYSLITE_example.root`` (100 events) with ROOT's
  ``hadd`` until it is about N MB; ``hadd`` copies baskets, so the file keeps the sample's
  100-event baskets.
- ``vectors-<N>MB.root``: a ROOT-written ntuple (``TTree::Branch`` of ``std::vector<float>``,
  ``std::vector<int>`` and scalars, ROOT's default compression and basket sizes), generated from a
  fixed seed by ROOT in a subprocess.

Each file is made once, beside a JSON key saying how, and made again if the key differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MB = 10**6
PHYSLITE_SAMPLE = "PHYSLITE_example.root"
# Part of the cache keys: changing how an input is made must rebuild a cached file.
MAKER_VERSION = 1

_VECTORS = r"""
import sys, warnings
warnings.simplefilter("ignore")
import ROOT
ROOT.gROOT.SetBatch(True)
ROOT.gInterpreter.Declare('''
#include <TFile.h>
#include <TRandom3.h>
#include <TTree.h>
#include <vector>
void ess_vectors(const char* path, Long64_t events) {
   TFile f(path, "RECREATE");
   TTree t("Events", "ROOT-written vectors");
   Int_t run = 1; ULong64_t event = 0; Float_t met = 0;
   std::vector<float> jet_pt, jet_eta, jet_phi, muon_pt;
   std::vector<int> jet_flavour;
   t.Branch("run", &run);
   t.Branch("event", &event);
   t.Branch("MET_pt", &met);
   t.Branch("Jet_pt", &jet_pt);
   t.Branch("Jet_eta", &jet_eta);
   t.Branch("Jet_phi", &jet_phi);
   t.Branch("Jet_flavour", &jet_flavour);
   t.Branch("Muon_pt", &muon_pt);
   TRandom3 random(20240601);
   for (Long64_t i = 0; i < events; ++i) {
      event = i;
      met = random.Exp(40);
      int jets = random.Poisson(5), muons = random.Poisson(1);
      jet_pt.clear(); jet_eta.clear(); jet_phi.clear(); jet_flavour.clear(); muon_pt.clear();
      for (int j = 0; j < jets; ++j) {
         jet_pt.push_back(random.Exp(50)); jet_eta.push_back(random.Gaus(0, 2));
         jet_phi.push_back(random.Uniform(-3.14159, 3.14159));
         jet_flavour.push_back((int)random.Integer(6));
      }
      for (int j = 0; j < muons; ++j) muon_pt.push_back(random.Exp(30));
      t.Fill();
   }
   f.Write();
}
''')
ROOT.ess_vectors(sys.argv[1], int(sys.argv[2]))
"""
# Events of the vector ntuple per MB of file, measured on this generator.
_VECTOR_EVENTS_PER_MB = 10_600


@dataclass(frozen=True)
class Input:
    name: str
    path: Path
    size: int
    events: int
    tree: str
    description: str


def physlite(workdir: Path, size_mb: float, samples: Path) -> Input:
    """The merged PHYSLITE file of about ``size_mb`` MB, made with ``hadd`` when missing."""
    sample = samples / PHYSLITE_SAMPLE
    copies = max(1, round(size_mb * MB / sample.stat().st_size))
    path = workdir / f"physlite-{size_mb:g}MB.root"
    key = {"maker": MAKER_VERSION, "sample": str(sample), "copies": copies}
    if not _cached(path, key):
        hadd = Path(sys.executable).parent / "hadd"
        if not hadd.exists():
            import ROOT

            hadd = Path(ROOT.__file__).parent / "bin" / "hadd"
        subprocess.run(
            [str(hadd), "-f", "-v", "0", str(path), *[str(sample)] * copies],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _store(path, key)
    return Input(
        "physlite",
        path,
        path.stat().st_size,
        100 * copies,
        "CollectionTree",
        f"{copies} copies of coffea's `{PHYSLITE_SAMPLE}` merged by ROOT's `hadd`",
    )


def vectors(workdir: Path, size_mb: float) -> Input:
    """The ROOT-written vector ntuple of about ``size_mb`` MB, made when missing."""
    events = max(1000, int(size_mb * _VECTOR_EVENTS_PER_MB))
    path = workdir / f"vectors-{size_mb:g}MB.root"
    key = {"maker": MAKER_VERSION, "events": events}
    if not _cached(path, key):
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        subprocess.run(
            [sys.executable, "-c", _VECTORS, str(path), str(events)], check=True, env=env
        )
        _store(path, key)
    return Input(
        "vectors",
        path,
        path.stat().st_size,
        events,
        "Events",
        "ROOT-written `std::vector<float>`, `std::vector<int>` and scalar branches, "
        "ROOT's default compression and basket sizes",
    )


def _cached(path: Path, key: Mapping[str, object]) -> bool:
    stamp = path.with_suffix(".json")
    try:
        return path.exists() and json.loads(stamp.read_text()) == key
    except (OSError, ValueError):
        return False


def _store(path: Path, key: Mapping[str, object]) -> None:
    path.with_suffix(".json").write_text(json.dumps(key))
