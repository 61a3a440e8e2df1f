"""The main job: SGD, SGD with momentum, RMSprop and Adam against their _C twins on MNIST.

``critgrad main`` (the README's first command ends with it) trains logistic regression and the
784-32-10 MLP with each of the eight optimizers on 3 seeds at the problems' CPU size (full 50k /
10k / 10k split, batch 64, grad-norm clip 10) for 2 epochs, validation and test evaluated twice
per epoch, then prints the tables and writes the report with plots. 48 runs, two at a time: about
2 minutes on two idle cores, 7 when other work shares them.

Protocol ``fixed``: no tuning. Each optimizer uses a well-known good learning rate for this scale
(``optimizer_labels.ROWS``: SGD 0.1, SGD momentum 0.9 at 0.01, RMSprop 1e-3, Adam 1e-3); each _C
twin uses its vanilla optimizer's learning rate with the reference's recommended memory (topC 10,
decay 0.7, kappa 1) and its default aggregation. Equal budget (one configuration each), reported
on the test split; for tuned comparisons use ``critgrad sweep`` with the ``fair`` protocol.
"""

from __future__ import annotations

from pathlib import Path

from critgrad.bench import protocols
from critgrad.bench.sweep import Sweep

PROBLEMS = ("mnist-logreg", "mnist-mlp")
OPTIMIZERS = ("sgd", "sgd_c", "sgdm", "sgdm_c", "rmsprop", "rmsprop_c", "adam", "adam_c")
SEEDS = (0, 1, 2)
EPOCHS = 2  # the CPU size's 3 took 10.5 minutes on a busy two-core machine; 2 leaves a margin
EVALS_PER_EPOCH = 2  # finer curves and time-to-target for little cost (evaluation is ~20 ms)
OUT = "results/main"
WORKERS = 2  # one process per core, one thread each: faster than one process on two threads here


def main_sweep(
    out: str | Path = OUT, workers: int = WORKERS, seeds=SEEDS, data_dir: str | None = None
) -> Sweep:
    protocol = protocols.fixed(
        protocols.default_configs(OPTIMIZERS),
        seeds=seeds,
        note=" - learning rates are well-known good values, not tuned here; each _C twin uses "
        "its vanilla optimizer's learning rate",
    )
    return Sweep(
        problems=list(PROBLEMS),
        protocol=protocol,
        out=Path(out),
        size="cpu",
        overrides={"epochs": EPOCHS},
        evals_per_epoch=EVALS_PER_EPOCH,
        data_dir=data_dir,
        executor={"kind": "local", "workers": workers, "threads": 1},
    )
