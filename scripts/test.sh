#!/usr/bin/env bash
# The test suite, on a fresh Debian 12 machine or an already prepared one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
