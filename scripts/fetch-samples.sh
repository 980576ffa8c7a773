#!/usr/bin/env bash
# Fetches the real files the tests split, by package name and version, into a cache (never into
# the repository): the `tests/samples` folder of coffea 2024.11.0's source distribution on PyPI
# (ATLAS PHYSLITE, CMS NanoAOD and PFNano, Delphes, FCC edm4hep, DUNE, TreeMaker files).
# scikit-hep-testdata 0.3.12, the other corpus, is a pinned dev dependency of the project.
# Prints the samples folder. Idempotent: a warm run only checks the folder is there.
#
# Environment: ESS_STATE_DIR (default /var/tmp/ess); PYTHON (default the project's .venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COFFEA_VERSION=2024.11.0
STATE_DIR=${ESS_STATE_DIR:-/var/tmp/ess}
CACHE=$STATE_DIR/samples/coffea-$COFFEA_VERSION
PYTHON=${PYTHON:-.venv/bin/python}

if [[ ! -f $CACHE/.complete ]]; then
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        --dest "$download" "coffea==$COFFEA_VERSION" >&2 ||
        { printf 'fetch-samples: could not download coffea==%s\n' "$COFFEA_VERSION" >&2; exit 1; }
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    tar -xzf "$download/coffea-$COFFEA_VERSION.tar.gz" -C "$download"
    mv "$download/coffea-$COFFEA_VERSION/tests/samples" "$CACHE/samples"
    touch "$CACHE/.complete"
fi
printf '%s\n' "$CACHE/samples"
