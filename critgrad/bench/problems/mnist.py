"""MNIST problems of the paper: logistic regression, MLP 784-32-10, small convnet.

Paper setting (``full`` size): 50k train / 10k valid / 10k test, batch 64, gradient-norm clip 10,
10 epochs. ``cpu`` size (the default) keeps the data and batch and trains fewer epochs (the convnet
also on a 10,000-image subset of the training split), so that one run takes seconds on two cores.
Inputs are scaled to [0, 1] and standardised with the training split's pixel mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from critgrad.bench.contract import ProblemSpec, Task, integer, number
from critgrad.bench.datasets import mnist as mnist_data
from critgrad.bench.problems import register
from critgrad.bench.problems.classification import classification_task

# The paper's setting; the cpu sizes below differ only where listed.
FULL = {
    "train_size": 50_000,
    "valid_size": 10_000,
    "test_size": 10_000,
    "batch_size": 64,
    "epochs": 10,
    "grad_clip": 10.0,
    "eval_batch_size": 2_000,
}
# What each setting accepts (checked before anything is loaded): sizes and counts >= 1, a positive
# clipping norm or none.
SCHEMA = {
    "train_size": integer(1),
    "valid_size": integer(1),
    "test_size": integer(1),
    "batch_size": integer(1),
    "epochs": integer(1),
    "grad_clip": number(0, open_minimum=True, none="no clipping"),
    "eval_batch_size": integer(1),
}


def logistic_regression() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def mlp() -> nn.Module:
    """784-32-10 with ReLU, as in the paper."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


class ConvNet(nn.Module):
    """Two 5x5 convolutions with max pooling, two fully connected layers, dropout."""

    def __init__(self, channels: int = 1, classes: int = 10, side: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(0.5)
        flat = 20 * (((side - 4) // 2 - 4) // 2) ** 2
        self.fc1 = nn.Linear(flat, 50)
        self.fc2 = nn.Linear(50, classes)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


_TENSOR_CACHE: dict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


def _tensors(dataset: str, settings: dict[str, Any], data_dir: str | None):
    """Standardised float images (N, 1, 28, 28) and labels per split, cached per process."""
    splits = mnist_data.load(dataset, data_dir, valid_size=settings["valid_size"])
    key = (
        dataset,
        splits.folder,
        settings["valid_size"],
        settings["train_size"],
        settings["test_size"],
    )
    if key not in _TENSOR_CACHE:
        train_x = splits.train_images[: settings["train_size"]]
        scaled = train_x.astype(np.float32) / 255.0
        mean, std = float(scaled.mean()), float(scaled.std()) or 1.0

        def prepare(images: np.ndarray, labels: np.ndarray):
            x = torch.from_numpy((images.astype(np.float32) / 255.0 - mean) / std)
            return x.unsqueeze(1).contiguous(), torch.from_numpy(labels)

        _TENSOR_CACHE[key] = {
            "train": prepare(train_x, splits.train_labels[: settings["train_size"]]),
            "valid": prepare(splits.valid_images, splits.valid_labels),
            "test": prepare(
                splits.test_images[: settings["test_size"]],
                splits.test_labels[: settings["test_size"]],
            ),
        }
    return _TENSOR_CACHE[key], splits.folder


def image_classification_task(
    dataset: str,
    make_model: Callable[[], nn.Module],
    settings: dict[str, Any],
    data_dir: str | None,
) -> Task:
    """A classification :class:`Task` over an idx image data set ("mnist", "fashion-mnist")."""
    data, folder = _tensors(dataset, settings, data_dir)
    return classification_task(data, make_model(), settings, {"data_folder": folder})


def _mnist_problem(name: str, description: str, builder, cpu: dict[str, Any]) -> ProblemSpec:
    """An MNIST problem: the paper's setting at size ``full``, with ``cpu``'s changes at ``cpu``."""
    return ProblemSpec(
        name=name,
        description=description,
        dataset="mnist",
        metric="accuracy",
        higher_is_better=True,
        sizes={"cpu": {**FULL, **cpu}, "full": dict(FULL)},
        builder=builder,
        schema=SCHEMA,
    )


# The runner seeds torch before building (the initial weights), and the splits do not depend on
# the seed: the builders below need not look at it.


def mnist_logreg(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return image_classification_task("mnist", logistic_regression, settings, data_dir)


def mnist_mlp(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return image_classification_task("mnist", mlp, settings, data_dir)


def mnist_cnn(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return image_classification_task("mnist", ConvNet, settings, data_dir)


register(
    _mnist_problem(
        "mnist-logreg", "MNIST, multinomial logistic regression", mnist_logreg, {"epochs": 3}
    )
)
register(_mnist_problem("mnist-mlp", "MNIST, MLP 784-32-10 (ReLU)", mnist_mlp, {"epochs": 3}))
register(
    _mnist_problem(
        "mnist-cnn",
        "MNIST, 2 conv + 2 fc with dropout",
        mnist_cnn,
        {"epochs": 2, "train_size": 10_000},
    )
)
