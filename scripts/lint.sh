#!/usr/bin/env bash
# Lint: ruff on src/, tests/ and examples/, and mypy --strict on the package, both configured in
# pyproject.toml ([tool.ruff], [tool.mypy]). Uses .venv's tools when there is
# one (`scripts/bootstrap.sh test` installs them: the test extra has both).
# Runs both and exits non-zero if either finds anything.
set -uo pipefail
cd "$(dirname "$0")/.."

python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python

status=0
"$python" -m ruff check src tests examples || status=1
"$python" -m mypy --strict || status=1
exit "$status"
