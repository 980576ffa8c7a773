"""C++ classes of the tests' own ROOT files (``root_writer``); the judge declares them too,
so that ROOT reads those files with real classes rather than emulated ones."""

CLASSES = """
#include <string>
#include <vector>
#include "TNamed.h"
struct EssHit { float x; float y; int layer; };
struct EssTrack {
   float pt;
   int charge;
   std::vector<EssHit> hits;
};
struct EssEvent {
   int number;
   std::string name;
   std::vector<EssTrack> tracks;
   EssTrack lead;
   // Two objects of one class through pointers: the second's class is written as a reference
   // to the first's, a position in the basket, which a range file must keep resolving.
   TNamed* label = nullptr;
   TNamed* other = nullptr;
   std::vector<std::vector<int>> matrix;
};
"""
