#!/usr/bin/env bash
# The test suite, on a fresh Debian 12 machine or an already prepared one:
# set-up (the C extension built with warnings as errors), lint (ruff,
# mypy --strict), the docs (Sphinx, warnings as errors, into build/docs),
# then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
BURSTIO_WERROR=1 scripts/bootstrap.sh test
scripts/lint.sh
.venv/bin/python -m sphinx -q -W --keep-going -b html docs build/docs
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
