"""Write the tests' own ROOT files with ROOT itself: run with the project's Python.

Usage: ``python root_writer.py OUT_DIR``. Writes, for each compression (ZLIB, LZMA, LZ4, ZSTD),
files whose baskets are small enough that ranges begin and end inside them:

- ``vectors-<c>.root``, tree ``events``: std::vector<float>, std::vector<std::vector<int>>,
  std::string, counted C arrays (``x[n]/F``, ``grid[n][3]/F``), a fixed array, a leaf list, a
  C string and 64-bit and unsigned integers;
- ``objects-<c>.root``, tree ``events``: a class declared to the interpreter (with a vector of
  another class, a string, and a pointer member, so that entries refer back into their basket)
  written at split levels 0 and 99, and a TClonesArray of TLorentzVector unsplit and split;
- ``pool-<c>.root``: a POOL-like file: ``CollectionTree`` of objects (one entry per event),
  ``##Params`` and ``##Links`` (other entry counts), ``MetaData`` (one entry of an object) and
  a ``POOLContainer`` tree, beside a histogram and a TObjString.
- ``index.root`` (a tree with a TTreeIndex) and ``friends.root`` (a tree with a friend);
- ``refs.root``: a tree with a TBranchRef, a TClonesArray of TNamed and a TRef per entry to one
  of them, which ROOT resolves through the TBranchRef's tables;
- ``holder.root``: an event tree beside an object whose class holds a TTree (its baskets are
  records of their own, which a copy of the object alone would not bring along).
"""

import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ROOT  # noqa: E402

from tests.split.classes import CLASSES  # noqa: E402

ROOT.gROOT.SetBatch(True)
ROOT.gInterpreter.Declare(CLASSES)

ENTRIES = 1000
COMPRESSIONS = {"zlib": 101, "lzma": 207, "lz4": 404, "zstd": 505}


def vectors(path: str, compression: int) -> None:
    f = ROOT.TFile(path, "RECREATE", "", compression)
    t = ROOT.TTree("events", "vectors and arrays")
    pt = ROOT.std.vector("float")()
    nested = ROOT.std.vector(ROOT.std.vector("int"))()
    label = ROOT.std.string()
    import array

    n = array.array("i", [0])
    x = array.array("f", [0.0] * 16)
    grid = array.array("f", [0.0] * 16 * 3)
    pos = array.array("d", [0.0] * 3)
    pair = array.array("i", [0, 0])
    big = array.array("q", [0])
    unsigned = array.array("I", [0])
    name = array.array("b", [0] * 32)
    t.Branch("pt", pt)
    t.Branch("nested", nested)
    t.Branch("label", label)
    t.Branch("n", n, "n/I")
    t.Branch("x", x, "x[n]/F")
    t.Branch("grid", grid, "grid[n][3]/F")
    t.Branch("pos", pos, "pos[3]/D")
    t.Branch("pair", pair, "first/I:second/I")
    t.Branch("big", big, "big/L")
    t.Branch("unsigned", unsigned, "unsigned/i")
    t.Branch("name", name, "name/C")
    t.SetBasketSize("*", 1024)
    for i in range(ENTRIES):
        pt.clear()
        for j in range(i % 7):
            pt.push_back(0.5 * i + j)
        nested.clear()
        for j in range(i % 4):
            inner = ROOT.std.vector("int")()
            for k in range(j + i % 3):
                inner.push_back(i * 100 + j * 10 + k)
            nested.push_back(inner)
        label.assign(f"entry {i}" + "!" * (i % 5))
        n[0] = i % 16
        for j in range(n[0]):
            x[j] = i + j / 10.0
            for k in range(3):
                grid[3 * j + k] = i * 100 + j * 10 + k
        pos[0], pos[1], pos[2] = i, -i, i * 0.25
        pair[0], pair[1] = i, 2 * i
        big[0] = (1 << 40) + i
        unsigned[0] = 4_000_000_000 + i
        text = f"name{i}".encode()
        for j in range(32):
            name[j] = text[j] if j < len(text) else 0
        t.Fill()
    f.Write()
    f.Close()


def objects(path: str, compression: int) -> None:
    f = ROOT.TFile(path, "RECREATE", "", compression)
    t = ROOT.TTree("events", "objects")
    unsplit = ROOT.EssEvent()
    split = ROOT.EssEvent()
    clones = ROOT.TClonesArray("TLorentzVector")
    clones_split = ROOT.TClonesArray("TLorentzVector")
    t.Branch("unsplit", unsplit, 4000, 0)
    t.Branch("split", split, 4000, 99)
    t.Branch("clones", clones, 4000, 0)
    t.Branch("clones_split", clones_split, 4000, 99)
    labels = [ROOT.TNamed(f"label{i}", f"title {i}") for i in range(7)]
    for i in range(ENTRIES):
        for event in (unsplit, split):
            event.number = i
            event.tracks.clear()
            for j in range(i % 5):
                track = ROOT.EssTrack()
                track.pt = i + j * 0.5
                track.charge = 1 if j % 2 else -1
                for k in range(j):
                    hit = ROOT.EssHit()
                    hit.x, hit.y, hit.layer = i, j, k
                    track.hits.push_back(hit)
                event.tracks.push_back(track)
            event.lead.pt = float(i)
            event.name = f"event {i}" + "." * (i % 9)
            event.label = labels[i % 7] if i % 3 else ROOT.nullptr
            event.other = labels[(i + 1) % 7]
            event.matrix.clear()
            for j in range(i % 3):
                row = ROOT.std.vector("int")()
                row.push_back(i)
                row.push_back(j)
                event.matrix.push_back(row)
        for array_ in (clones, clones_split):
            array_.Clear()
            for j in range(i % 4):
                array_.ConstructedAt(j).SetPxPyPzE(i, j, 0.5, i + j)
        t.Fill()
    f.Write()
    f.Close()


def pool(path: str, compression: int) -> None:
    f = ROOT.TFile(path, "RECREATE", "", compression)
    events = ROOT.TTree("CollectionTree", "CollectionTree")
    collection = ROOT.EssEvent()
    events.Branch("EssEvent_p1_Events", collection, 8000, 0)
    events.Branch("EssEvent_p1_Split", collection, 8000, 99)
    params = ROOT.TTree("##Params", "##Params")
    text = ROOT.std.string()
    params.Branch("db_string", text)
    links = ROOT.TTree("##Links", "##Links")
    links.Branch("db_string", text)
    container = ROOT.TTree("POOLContainer", "POOLContainer")
    token = ROOT.std.string()
    container.Branch("Token", token)
    meta = ROOT.TTree("MetaData", "MetaData")
    info = ROOT.EssTrack()
    meta.Branch("EssTrack_p1_Info", info)
    for i in range(ENTRIES):
        collection.number = i
        collection.tracks.clear()
        for j in range(i % 3):
            track = ROOT.EssTrack()
            track.pt = float(j)
            collection.tracks.push_back(track)
        events.Fill()
        token.assign(f"[DB=0][CNT=CollectionTree][OID={i}]")
        container.Fill()
    for i in range(7):
        text.assign(f"[NAME=param{i}][VALUE={i * i}]")
        params.Fill()
        links.Fill()
    info.pt = 13.0
    meta.Fill()
    histogram = ROOT.TH1F("h", "a histogram", 10, 0, 10)
    histogram.Fill(3)
    ROOT.TObjString("carried as it is").Write("note")
    f.Write()
    f.Close()


def index(path: str) -> None:
    f = ROOT.TFile(path, "RECREATE")
    t = ROOT.TTree("events", "indexed")
    import array

    run = array.array("i", [0])
    event = array.array("i", [0])
    t.Branch("run", run, "run/I")
    t.Branch("event", event, "event/I")
    for i in range(100):
        run[0], event[0] = i // 10, 1000 - i
        t.Fill()
    t.BuildIndex("run", "event")
    f.Write()
    f.Close()


def friends(path: str) -> None:
    f = ROOT.TFile(path, "RECREATE")
    import array

    value = array.array("f", [0.0])
    main = ROOT.TTree("events", "main")
    main.Branch("value", value, "value/F")
    other = ROOT.TTree("more", "friend")
    other.Branch("value", value, "value/F")
    for i in range(100):
        value[0] = i
        main.Fill()
        other.Fill()
    main.AddFriend(other)
    f.Write()
    f.Close()


def refs(path: str) -> None:
    f = ROOT.TFile(path, "RECREATE")
    t = ROOT.TTree("events", "references")
    t.BranchRef()
    items = ROOT.TClonesArray("TNamed", 10)
    ref = ROOT.TRef()
    t.Branch("items", items, 32000, 99)
    t.Branch("ref", ref)
    t.SetBasketSize("*", 2000)
    for i in range(500):
        items.Clear()
        for j in range(3):
            items.ConstructedAt(j).SetName(f"item{i}.{j}")
        ref.__assign__(items.At(i % 3))
        t.Fill()
    f.Write()
    f.Close()


def holder(path: str) -> None:
    import array

    ROOT.gInterpreter.Declare("struct EssHolder { int version = 1; TTree* tree = nullptr; };")
    f = ROOT.TFile(path, "RECREATE")
    events = ROOT.TTree("events", "events")
    x = array.array("i", [0])
    events.Branch("x", x, "x/I")
    for i in range(50):
        x[0] = i
        events.Fill()
    inner = ROOT.TTree("inner", "held by an object")
    y = array.array("i", [0])
    inner.Branch("y", y, "y/I")
    for i in range(7):
        y[0] = i
        inner.Fill()
    inner.SetDirectory(ROOT.nullptr)
    held = ROOT.EssHolder()
    held.tree = inner
    f.WriteObjectAny(held, "EssHolder", "holder")
    f.Write()
    f.Close()


def main() -> None:
    out = sys.argv[1]
    for name, code in COMPRESSIONS.items():
        vectors(f"{out}/vectors-{name}.root", code)
        objects(f"{out}/objects-{name}.root", code)
        pool(f"{out}/pool-{name}.root", code)
    index(f"{out}/index.root")
    friends(f"{out}/friends.root")
    refs(f"{out}/refs.root")
    holder(f"{out}/holder.root")


if __name__ == "__main__":
    main()
