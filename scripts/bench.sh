#!/usr/bin/env bash
# Run the data-plane benchmark suite (python -m bench via tox -e bench); see BENCHMARKS.md.
# Installs wrk (Debian package) first when it is missing and we are root; otherwise says how.
# Arguments go to `python -m bench`, e.g. ./scripts/bench.sh --quick, --repeat 3.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench.sh: installing wrk (apt-get install -y wrk)" >&2
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  else
    echo "bench.sh: wrk is missing. Install it first:  sudo apt-get install -y wrk" >&2
    exit 3
  fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/tox ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "tox>=4.20"
fi
exec .venv/bin/tox -e bench -- "$@"
