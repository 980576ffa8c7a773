#!/usr/bin/env bash
# Creates .venv and installs the project with its dev extras, pinned by constraints.txt. The
# install runs only when pyproject.toml or constraints.txt changed since the last one, so this
# is cheap to call before every test or demo run.
#
# Environment: PYTHON (interpreter for a new .venv, default python3; needs >= 3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.ess-install-stamp

die() {
    printf 'bootstrap: %s\n' "$*" >&2
    exit 1
}

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install python3 (>= 3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); ESS needs Python >= 3.11 (set PYTHON=...)"

# A venv whose interpreter vanished (Python upgraded or moved) is rebuilt from scratch.
if [[ -d $VENV ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    printf 'bootstrap: %s is broken, recreating it\n' "$VENV"
    rm -rf "$VENV"
fi
if [[ ! -d $VENV ]]; then
    # Debian ships venv's pip bootstrap separately.
    if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
        sudo=()
        [[ $(id -u) == 0 ]] || sudo=(sudo)
        version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        "${sudo[@]}" apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
            "python$version-venv" >/dev/null || die "could not install python$version-venv"
    fi
    "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV failed"
fi

want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $STAMP || $(<"$STAMP") != "$want" ]]; then
    printf 'bootstrap: installing the project into %s\n' "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -c constraints.txt -e '.[dev]' || die "pip install failed"
    printf '%s\n' "$want" >"$STAMP"
fi
