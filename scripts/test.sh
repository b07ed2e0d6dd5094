#!/usr/bin/env bash
# Set up and run every test: lint (ruff, buf, import-linter), gen/ freshness, unit,
# integration and e2e. Needs only python3 (>= 3.11) and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/tox ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "tox>=4.20"
fi
exec .venv/bin/tox -e lint,py -- "$@"
