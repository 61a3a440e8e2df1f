#!/usr/bin/env bash
# Installs everything the tests need and runs them (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/install.sh test
export MPLBACKEND=Agg
"$PYTHON" -m pytest -q "$@"
