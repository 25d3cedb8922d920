#!/usr/bin/env bash
# Runs the browser tests of the Leads console: Postgres, NATS, Debian's chromium and the
# Python packages of tests/requirements.txt in .data/venv (deploy/local/infra.sh makes sure of
# each), a fresh `leads` binary, then pytest, stopping at the first failure. Screenshots land
# in tests/browser/screenshots. Extra arguments go to pytest (`-k filters`, `-s`).
set -euo pipefail
cd "$(dirname "$0")/../.."

eval "$(deploy/local/infra.sh --test-venv --browser)"
command -v chromium >/dev/null || { echo "browser tests: no chromium on PATH" >&2; exit 1; }
export LEADS_CHROMIUM="${LEADS_CHROMIUM:-$(command -v chromium)}"
if [ -z "${LEADS_BIN:-}" ]; then
    cargo build -q -p leads --bin leads
fi
mkdir -p tests/browser/screenshots
export PYTHONDONTWRITEBYTECODE=1
exec "$LEADS_TEST_PYTHON" -m pytest tests/browser -x -q "$@"
