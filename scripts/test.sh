#!/usr/bin/env bash
# The whole check, as CI runs it: bootstrap the venv, make sure PostgreSQL, RabbitMQ, S3 and
# XRootD are up, then lint, format check, type check and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
bash scripts/ensure-services.sh

# These match what ensure-services.sh provides; set them beforehand to test elsewhere.
export ESS_TEST_DATABASE_URL=${ESS_TEST_DATABASE_URL:-postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/ess_test}
export ESS_TEST_AMQP_URL=${ESS_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
export ESS_TEST_S3_ENDPOINT_URL=${ESS_TEST_S3_ENDPOINT_URL:-http://127.0.0.1:8080}
export ESS_TEST_S3_ACCESS_KEY=${ESS_TEST_S3_ACCESS_KEY:-test:tester}
export ESS_TEST_S3_SECRET_KEY=${ESS_TEST_S3_SECRET_KEY:-testing}
export ESS_TEST_S3_REGION=${ESS_TEST_S3_REGION:-us-east-1}
export ESS_TEST_XROOTD_URL=${ESS_TEST_XROOTD_URL:-root://127.0.0.1:1094}
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
