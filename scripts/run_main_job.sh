#!/usr/bin/env bash
# Installs critgrad with its benchmark harness and the MNIST data package, then runs the main job:
# SGD, SGD with momentum, RMSprop and Adam against their memory-augmented twins on MNIST
# (logistic regression and an MLP, 3 seeds). Extra arguments go to `critgrad main`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/install.sh bench
export MPLBACKEND=Agg
"$PYTHON" -m critgrad.bench.cli main "$@"
