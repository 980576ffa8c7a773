#!/usr/bin/env bash
# The whole check, as CI runs it: bootstrap the venv, make sure PostgreSQL, RabbitMQ (with its
# STOMP plugin), S3, XRootD, Rucio, Prometheus and Chromium are there and the real sample files
# are cached, then lint, format check, type check and pytest. Extra arguments go to pytest.
#
#   bash scripts/test.sh --fast [ARGS]   lint, then only the tests that need no server and
#                                        are quick (`-m "not servers and not slow"`): seconds
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

if [[ ${1:-} == --fast ]]; then
    shift
    printf '== %s\n' "ruff check" "fast tests (no server, not slow)"
    .venv/bin/ruff check .
    exec .venv/bin/pytest -m "not servers and not slow" -q "$@"
fi

bash scripts/ensure-services.sh
ESS_TEST_COFFEA_SAMPLES=${ESS_TEST_COFFEA_SAMPLES:-$(bash scripts/fetch-samples.sh)}
export ESS_TEST_COFFEA_SAMPLES

# These match what ensure-services.sh provides; set them beforehand to test elsewhere.
export ESS_TEST_DATABASE_URL=${ESS_TEST_DATABASE_URL:-postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/ess_test}
export ESS_TEST_AMQP_URL=${ESS_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
export ESS_TEST_S3_ENDPOINT_URL=${ESS_TEST_S3_ENDPOINT_URL:-http://127.0.0.1:8080}
export ESS_TEST_S3_ACCESS_KEY=${ESS_TEST_S3_ACCESS_KEY:-test:tester}
export ESS_TEST_S3_SECRET_KEY=${ESS_TEST_S3_SECRET_KEY:-testing}
export ESS_TEST_S3_REGION=${ESS_TEST_S3_REGION:-us-east-1}
export ESS_TEST_XROOTD_URL=${ESS_TEST_XROOTD_URL:-root://127.0.0.1:1094}
export ESS_TEST_RUCIO_URL=${ESS_TEST_RUCIO_URL:-http://127.0.0.1:8095}
export ESS_TEST_STOMP_URL=${ESS_TEST_STOMP_URL:-stomp://guest:guest@127.0.0.1:61613/}
export ESS_TEST_XROOTD_DIR=${ESS_TEST_XROOTD_DIR:-${ESS_STATE_DIR:-/var/tmp/ess}/xrootd/data}

step() { printf '== %s\n' "$*"; }

step ruff check
.venv/bin/ruff check .
step ruff format --check
.venv/bin/ruff format --check .
step mypy
.venv/bin/mypy libs services tests
step pytest
status=0
.venv/bin/pytest "$@" || status=$?
if ((status == 5)); then
    printf 'test: pytest collected no tests; that is a failure, not a pass\n' >&2
fi
exit "$status"
