#!/usr/bin/env bash
# Set up Ebb in .venv and run the local platform with the sample app deployed.
# Extra arguments go to `ebb up` (e.g. --http-port 8081 --data-dir /tmp/ebb).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet .
# xds-protos ships an older copy of opentelemetry/proto/*; keep opentelemetry-proto's own.
.venv/bin/pip install --quiet --force-reinstall --no-deps opentelemetry-proto==1.45.2
exec .venv/bin/ebb up --sample "$@"
