#!/usr/bin/env bash
# Runs the ESS demo from a fresh checkout; arguments go to `ess demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
exec .venv/bin/ess demo "$@"
