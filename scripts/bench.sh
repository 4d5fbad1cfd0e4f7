#!/usr/bin/env bash
# The side-by-side benchmark of every scenario (tables on stdout, a plot in
# bench-results.png), on a fresh Debian 12 machine or a prepared one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh bench
exec .venv/bin/burstio bench --plot bench-results.png "$@"
