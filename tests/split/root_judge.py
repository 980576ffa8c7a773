"""ROOT's side of the judge: run with the project's Python, where ``import ROOT`` works.

Reads one request per line on stdin (JSON) and answers each with one line of JSON on the file
descriptor given as its first argument; whatever ROOT prints goes to stdout and stderr. A
request lists cases: a source file, a tree's path, entries ``first``..``stop - 1``, and the range
file that should hold them. For each, ROOT reads those entries of the source, then the range
file's entries, every top-level branch of every entry: leaf values of leaf-list branches, and
objects (whatever their class, emulated from the file's streamers when no dictionary is loaded)
serialised again by ROOT, so that what ROOT read is compared, not the bytes on file. The answer
says, per case, the range file's entry count, whether every entry read, the rows that differ
(with the first difference), ROOT's warnings and errors while reading each file, and, for a tree
with a TTreeIndex, how many entries ``GetEntryWithIndex`` does not find again by their index
values.
"""

import json
import os
import sys
import warnings

warnings.simplefilter("ignore")

import ROOT  # noqa: E402

ROOT.gROOT.SetBatch(True)
# A crash ends the process at once, without a debugger's stack trace (which takes minutes).
ROOT.gEnv.SetValue("Root.Stacktrace", "no")
# TTreeFormula, for the index's values, lives there.
ROOT.gSystem.Load("libTreePlayer")
ROOT.gInterpreter.Declare(
    r"""
#include <TBranch.h>
#include <TBranchElement.h>
#include <TBranchObject.h>
#include <TBufferFile.h>
#include <TClass.h>
#include <TError.h>
#include <TFile.h>
#include <TLeaf.h>
#include <TLeafC.h>
#include <TLeafObject.h>
#include <TTree.h>
#include <TTreeFormula.h>
#include <TTreeIndex.h>
#include <sstream>
#include <string>
#include <vector>

namespace essjudge {
std::vector<std::string> messages;

void handler(int level, Bool_t, const char* location, const char* msg) {
   if (level >= kWarning) messages.push_back(std::string(location) + ": " + msg);
}

// Installed from C++: cppyy does not convert a Python-side function pointer for it.
void install() { SetErrorHandler(handler); }

std::string serialized(void* obj, TClass* cl) {
   TBufferFile buffer(TBuffer::kWrite);
   cl->Streamer(obj, buffer);
   static const char* hex = "0123456789abcdef";
   std::string out;
   out.reserve(2 * buffer.Length());
   for (Int_t i = 0; i < buffer.Length(); ++i) {
      unsigned char c = buffer.Buffer()[i];
      out += hex[c >> 4];
      out += hex[c & 15];
   }
   return out;
}

std::string leaf_values(TLeaf* leaf) {
   std::ostringstream out;
   out.precision(17);
   out << leaf->GetName() << "[";
   if (leaf->IsA() == TLeafC::Class()) {
      const char* text = (const char*)leaf->GetValuePointer();
      out << '"' << (text ? text : "") << '"';
   } else {
      Int_t n = leaf->GetLen();
      TString type = leaf->GetTypeName();
      bool floating = type.Contains("Float") || type.Contains("Double") || type == "float" ||
                      type == "double";
      for (Int_t j = 0; j < n; ++j) {
         if (floating) out << leaf->GetValue(j) << ",";
         else out << leaf->GetValueLong64(j) << ",";
      }
   }
   out << "]";
   return out.str();
}

std::string dump_branch(TBranch* branch) {
   if (auto* element = dynamic_cast<TBranchElement*>(branch)) {
      TClass* cl = TClass::GetClass(element->GetClassName());
      char* object = element->GetObject();
      if (cl && object) return serialized(object, cl);
   } else if (auto* holder = dynamic_cast<TBranchObject*>(branch)) {
      auto* leaf = (TLeafObject*)holder->GetListOfLeaves()->At(0);
      TObject* object = leaf ? leaf->GetObject() : nullptr;
      return object ? serialized(object, object->IsA()) : std::string("null");
   }
   std::string out;
   TIter next(branch->GetListOfLeaves());
   while (auto* leaf = (TLeaf*)next()) out += leaf_values(leaf);
   return out;
}

struct Dump {
   std::vector<std::string> rows;
   Long64_t entries = -1;
   // 0, or 1 (the file does not open), 2 (no such tree), 3 (an entry did not read).
   int status = 0;
   // -1 without a TTreeIndex, else the entries GetEntryNumberWithIndex does not find.
   int index = -1;
};

// Entries first..stop-1 whose index values (the TTreeIndex's major and minor formulas) do not
// lead back to them through TTree::GetEntryNumberWithIndex and GetEntryWithIndex.
int index_misses(TTree* tree, TTreeIndex* index, Long64_t first, Long64_t stop) {
   TTreeFormula major("essjudge_major", index->GetMajorName(), tree);
   TTreeFormula minor("essjudge_minor", index->GetMinorName(), tree);
   int misses = 0;
   for (Long64_t i = first; i < stop; ++i) {
      tree->LoadTree(i);
      major.GetNdata();
      minor.GetNdata();
      Long64_t a = (Long64_t)major.EvalInstance64();
      Long64_t b = (Long64_t)minor.EvalInstance64();
      if (tree->GetEntryNumberWithIndex(a, b) != i || tree->GetEntryWithIndex(a, b) <= 0) ++misses;
   }
   return misses;
}

// Entries first..stop-1 of the tree at `tree_path`, one row each.
Dump dump(const char* file_path, const char* tree_path, Long64_t first, Long64_t stop) {
   Dump found;
   TFile* file = TFile::Open(file_path);
   if (!file || file->IsZombie()) {
      found.status = 1;
      delete file;
      return found;
   }
   TTree* tree = nullptr;
   file->GetObject(tree_path, tree);
   if (!tree) {
      found.status = 2;
      delete file;
      return found;
   }
   found.entries = tree->GetEntries();
   auto& rows = found.rows;
   for (Long64_t i = first; i < stop; ++i) {
      if (tree->GetEntry(i) < 0) found.status = 3;
      std::string row;
      TIter next(tree->GetListOfBranches());
      while (auto* branch = (TBranch*)next()) {
         row += branch->GetName();
         row += "=";
         row += dump_branch(branch);
         row += ";";
      }
      rows.push_back(row);
   }
   if (auto* index = dynamic_cast<TTreeIndex*>(tree->GetTreeIndex()))
      found.index = index_misses(tree, index, first, stop);
   delete file;
   return found;
}
}  // namespace essjudge
"""
)
judge = ROOT.essjudge
judge.install()
ROOT.Warning("essjudge", "probe")
if [str(m) for m in judge.messages] != ["essjudge: probe"]:
    raise SystemExit("root_judge: ROOT's messages do not reach the judge")
judge.messages.clear()


def _dump(
    path: str, tree: str, first: int, stop: int
) -> tuple[list[str], int, int, list[str], int]:
    judge.messages.clear()
    found = judge.dump(path, tree, first, stop)
    messages = [str(m) for m in judge.messages]
    rows = [str(row) for row in found.rows]
    return rows, int(found.entries), int(found.status), messages, int(found.index)


def _first_difference(a: str, b: str) -> dict[str, object]:
    at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return {
        "at": at,
        "source": a[max(0, at - 120) : at + 80],
        "range": b[max(0, at - 120) : at + 80],
    }


def _case(case: dict[str, object]) -> dict[str, object]:
    source, tree = str(case["source"]), str(case["tree"])
    first, stop = int(case["first"]), int(case["stop"])  # type: ignore[call-overload]
    # Entries read: none when only opening and counting is asked for.
    read = stop - first if case.get("read", True) else 0
    expected, _, source_status, source_messages, source_index = _dump(
        source, tree, first, first + read
    )
    rows, entries, status, messages, index = _dump(str(case["range"]), tree, 0, read)
    source_name, range_name = os.path.basename(source), os.path.basename(str(case["range"]))
    own = sorted(
        {m.replace(str(case["range"]), "<file>").replace(range_name, "<file>") for m in messages}
        - {m.replace(source, "<file>").replace(source_name, "<file>") for m in source_messages}
    )
    differing = [i for i, (a, b) in enumerate(zip(expected, rows, strict=False)) if a != b]
    return {
        "range": case["range"],
        "tree": tree,
        "entries": entries,
        "status": status,
        "source_status": source_status,
        "messages": own,
        "source_messages": source_messages[:20],
        "differing": differing[:20],
        "difference": _first_difference(expected[differing[0]], rows[differing[0]])
        if differing
        else None,
        "rows": len(rows),
        "index": index,
        "source_index": source_index,
    }


_DECLARED: set[str] = set()


def main() -> None:
    answers = os.fdopen(int(sys.argv[1]), "w")
    for line in sys.stdin:
        request = json.loads(line)
        declare = request.get("declare")
        if declare and declare not in _DECLARED:
            ROOT.gInterpreter.Declare(declare)
            _DECLARED.add(declare)
        answer = [_case(case) for case in request["cases"]]
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
