"""The strongly convex row: L2-regularised multinomial logistic regression.

Problems: ``covtype-logreg`` and ``rcv1-logreg`` (the paper's data, LIBSVM files from a user
folder) and ``mnist-convex``, the same model on MNIST pixels, the offline stand-in.

Setting (the paper's, small enough that ``cpu`` and ``full`` are the same): 5,000 rows drawn at
random once (a fixed data seed, so every optimizer and seed sees the same rows), split 80 / 20 into
train / test, each feature standardised with the training rows' mean and standard deviation (a
constant feature is only centred), batch 25, 25 epochs.

Objective: mean cross-entropy over the batch + (0.01 / 2) * ||theta||^2 over all parameters
(weights and bias, so it is strongly convex). The authors passed ``weight_decay=0.01`` to each
optimizer instead; with the penalty in the loss, every optimizer, and the memory of the _C
variants, sees the same objective and gradient (for SGD, Adam and RMSprop, whose weight decay is
added to the gradient, the gradient is the very same).

Metric ``train_loss``: the objective over all training rows, full batch (lower is better); this row
is about optimisation, so configurations are compared on it. ``evaluate(model, "valid")`` returns
the objective as loss and metric; ``evaluate(model, "test")`` returns the cross-entropy on the
held-out 20 % as loss and the training objective as metric, so the report's test column shows the
quantity the paper plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from critgrad.bench.contract import ProblemSpec, Task, integer, number
from critgrad.bench.datasets import mnist as mnist_data
from critgrad.bench.datasets import svmlight
from critgrad.bench.finite_sum import LinearFiniteSum, cross_entropy_rows
from critgrad.bench.problems import register
from critgrad.bench.problems.classification import shuffled_batches

SETTINGS = {
    "rows": 5_000,
    "test_fraction": 0.2,
    "data_seed": 1234,
    "l2": 0.01,
    "batch_size": 25,
    "epochs": 25,
}
SCHEMA = {
    "rows": integer(2),  # at least one training and one test row
    "test_fraction": number(0, open_minimum=True, maximum=1, open_maximum=True),
    "data_seed": integer(0),
    "l2": number(0),
    "batch_size": integer(1),
    "epochs": integer(1),
}


def standardised_split(
    features: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle rows (features and labels with one permutation), split, standardise on train."""
    order = np.random.default_rng(seed).permutation(len(labels))
    test_count = round(len(labels) * test_fraction)
    if not 0 < test_count < len(labels):
        raise ValueError(
            f"test_fraction {test_fraction} leaves an empty split of {len(labels)} rows"
        )
    test, train = order[:test_count], order[test_count:]
    train_features = features[train]  # one copy: rcv1's rows are wide
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0)
    std[std == 0] = 1.0
    del train_features

    def prepare(rows: np.ndarray):
        x = ((features[rows] - mean) / std).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(labels[rows].astype(np.int64))

    return {"train": prepare(train), "test": prepare(test)}


def _penalty(model: nn.Module, l2: float) -> torch.Tensor:
    return 0.5 * l2 * sum(p.pow(2).sum() for p in model.parameters())


def logistic_regression_task(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    classes: int,
    settings: dict[str, Any],
    info: dict[str, Any],
) -> Task:
    """Multinomial logistic regression with an L2 penalty in the loss; see the module docstring."""
    train_x, train_y = data["train"]
    batch_size, l2 = settings["batch_size"], settings["l2"]
    model = nn.Linear(train_x.shape[1], classes)

    def train_batches(generator: torch.Generator):
        return shuffled_batches(train_x, train_y, batch_size, generator)

    def loss(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y) + _penalty(model, l2)

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        with torch.no_grad():
            objective = (F.cross_entropy(model(train_x), train_y) + _penalty(model, l2)).item()
            if split != "test":
                return {"loss": objective, "metric": objective}
            test_x, test_y = data["test"]
            return {"loss": F.cross_entropy(model(test_x), test_y).item(), "metric": objective}

    return Task(
        model=model,
        train_batches=train_batches,
        loss=loss,
        evaluate=evaluate,
        metric="train_loss",
        higher_is_better=False,
        epochs=settings["epochs"],
        grad_clip=None,
        # The same objective, row by row, for per-row methods (the harness's SAGA).
        finite_sum=LinearFiniteSum(train_x, train_y, l2, cross_entropy_rows, curvature=0.5),
        info={
            **info,
            "train_size": len(train_x),
            "test_size": len(data["test"][0]),
            "features": train_x.shape[1],
            "classes": classes,
            "batch_size": batch_size,
            "l2": l2,
            "steps_per_epoch": -(-len(train_x) // batch_size),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )


_CACHE: dict[tuple, tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int, str]] = {}


def _svmlight_data(name: str, settings: dict[str, Any], data_dir: str | None):
    path = svmlight.locate(name, data_dir)
    key = (
        name,
        str(path.resolve()),
        settings["rows"],
        settings["data_seed"],
        settings["test_fraction"],
    )
    if key not in _CACHE:
        rows = svmlight.sample(path, settings["rows"], settings["data_seed"], name)
        split = standardised_split(
            rows.features, rows.labels, settings["test_fraction"], settings["data_seed"]
        )
        _CACHE[key] = (split, rows.classes, str(path))
    return _CACHE[key]


def _mnist_data(settings: dict[str, Any], data_dir: str | None):
    # The images of MNIST's training file (60,000) as 784 pixels: the loader's train and valid
    # halves put back together, so its split size is irrelevant (1 fits any file).
    splits = mnist_data.load("mnist", data_dir, valid_size=1)
    key = (
        "mnist",
        splits.folder,
        settings["rows"],
        settings["data_seed"],
        settings["test_fraction"],
    )
    if key not in _CACHE:
        images = np.concatenate([splits.train_images, splits.valid_images])
        labels = np.concatenate([splits.train_labels, splits.valid_labels])
        rng = np.random.default_rng(settings["data_seed"])
        rows = rng.choice(len(labels), size=min(settings["rows"], len(labels)), replace=False)
        features = images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0
        split = standardised_split(
            features, labels[rows], settings["test_fraction"], settings["data_seed"]
        )
        _CACHE[key] = (split, 10, splits.folder)
    return _CACHE[key]


def _task(data, classes: int, source: str, settings: dict[str, Any], seed: int) -> Task:
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    return logistic_regression_task(data, classes, settings, {"data_folder": source})


def _convex_problem(name: str, dataset: str, description: str, builder) -> ProblemSpec:
    """A problem of this row: the same settings at both sizes."""
    return ProblemSpec(
        name=name,
        description=description,
        dataset=dataset,
        metric="train_loss",
        higher_is_better=False,
        sizes={"cpu": dict(SETTINGS), "full": dict(SETTINGS)},
        builder=builder,
        schema=SCHEMA,
    )


def covtype_logreg(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _task(*_svmlight_data("covtype", settings, data_dir), settings, seed)


def rcv1_logreg(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _task(*_svmlight_data("rcv1", settings, data_dir), settings, seed)


def mnist_convex(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _task(*_mnist_data(settings, data_dir), settings, seed)


register(
    _convex_problem(
        "covtype-logreg",
        "covtype",
        "covtype (LIBSVM), L2 multinomial logistic regression",
        covtype_logreg,
    )
)
register(
    _convex_problem(
        "rcv1-logreg",
        "rcv1",
        "rcv1 (LIBSVM, binary), L2 multinomial logistic regression",
        rcv1_logreg,
    )
)
register(
    _convex_problem(
        "mnist-convex",
        "mnist",
        "MNIST 5,000-row subset, L2 multinomial logistic regression "
        "(offline stand-in for covtype/rcv1)",
        mnist_convex,
    )
)
