"""Image classification problems of the paper's CIFAR rows, and Fashion-MNIST as their CPU stand-in.

=================  =========================================================  ==============
problem            model                                                      data
=================  =========================================================  ==============
fashion-cnn        LeNet-style convnet (2 conv 5x5 + 3 fc), 28x28 padded to   Fashion-MNIST
                   32x32, so that it is the very network of cifar10-cnn
cifar10-cnn        the same LeNet-style convnet on 3x32x32                    CIFAR-10
cifar10-resnet     CIFAR ResNet (He et al. 2016, depth 6n+2, BasicBlocks;     CIFAR-10
                   full: depth 110 as in the authors' script, cpu: depth 20)
cifar100-cnn       deeper convnet with batch norm (3 blocks of 2 conv)        CIFAR-100
=================  =========================================================  ==============

Paper setting (``full``): 40,000 train / 10,000 valid (a class-balanced hold-out of the official
training set, fixed for all seeds) / 10,000 test, the paper's split table; no augmentation, batch
64, gradient-norm clip 10, 100 epochs. Size ``full-45k`` is the same with the split of the
authors' scripts, 45,000 train / 5,000 valid. ``cpu`` (the default) trains a subset for a few epochs so that one run takes about a
minute or less on two cores: fashion-cnn and cifar10-cnn 10,000 training images for 2 epochs;
cifar10-resnet depth 20 on 4,000 images for 1 epoch (1,000 valid and test); cifar100-cnn at width 8
on 8,000 images for 2 epochs (2,000 valid and test). Inputs are standardised per channel with the
training subset's mean and std.

Padding choice for Fashion-MNIST: the 28x28 images are replicate-padded by 2 pixels on each side
(LeNet-5's own treatment of 28x28 digits in a 32x32 field). Replication extends the black border of
the images, where zero padding after standardisation would draw a frame of a different value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from critgrad.bench.contract import ProblemSpec, Task, integer, number
from critgrad.bench.datasets import cifar as cifar_data
from critgrad.bench.problems import register
from critgrad.bench.problems.classification import classification_task
from critgrad.bench.problems.mnist import SCHEMA as IMAGE_SCHEMA
from critgrad.bench.problems.mnist import image_classification_task

SPLIT_SEED = 20220425  # fixed: the train/valid split must not change with the run's seed

# The paper's CIFAR setting; each problem's cpu size below changes only what it lists. The split is
# the paper's table (40K / 10K / 10K); AUTHORS_SPLIT is the one of the authors' scripts.
FULL = {
    "train_size": 40_000,
    "valid_size": 10_000,
    "test_size": 10_000,
    "batch_size": 64,
    "epochs": 100,
    "grad_clip": 10.0,
    "eval_batch_size": 1_000,
}
AUTHORS_SPLIT = {"train_size": 45_000, "valid_size": 5_000}
SPLIT_WORDS = (
    "full: 40K/10K/10K, the paper's split table; full-45k: 45K/5K/10K, the authors' scripts"
)
# Fashion-MNIST is not in the paper: its full size is the CIFAR-10 schedule on the 50k / 10k / 10k
# split of the MNIST loader.
FASHION_FULL = {**FULL, "train_size": 50_000, "valid_size": 10_000, "eval_batch_size": 2_000}


def cifar_schema(classes: int) -> dict:
    """The settings' declarations: the image ones, a class-balanced validation split, and the
    models' depth, width and dropout."""
    return {
        **IMAGE_SCHEMA,
        "valid_size": integer(
            classes, rule=(lambda v: v % classes == 0, f"a multiple of the {classes} classes")
        ),
        "depth": integer(8, rule=(lambda v: (v - 2) % 6 == 0, "6n+2 (20, 32, 56, 110, ...)")),
        "width": integer(1),
        "dropout": number(0, maximum=1, open_maximum=True),
    }


# ---------------------------------------------------------------------------------------------
# Models


class LeNet(nn.Module):
    """conv 5x5 (6) - max pool - conv 5x5 (16) - max pool - fc 120 - fc 84 - fc classes, ReLU."""

    def __init__(self, channels: int = 3, classes: int = 10, side: int = 32):
        super().__init__()
        if side > 32 or side % 2:
            raise ValueError(f"side must be even and <= 32, got {side}")
        self.pad = nn.ReplicationPad2d((32 - side) // 2) if side < 32 else nn.Identity()
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(self.pad(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (a 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 3x3 stem, 3 stages of (depth-2)/6 blocks at width w, 2w, 4w."""

    def __init__(self, depth: int = 20, classes: int = 10, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, 110, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DeepConvNet(nn.Module):
    """Three blocks of two 3x3 conv-BN-ReLU layers and a 2x2 max pool (channels w,2w / 4w,4w /
    8w,8w), then a dropout MLP head (32w, 16w hidden units)."""

    def __init__(self, classes: int = 100, width: int = 32, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for block in ((width, 2 * width), (4 * width, 4 * width), (8 * width, 8 * width)):
            for out_channels in block:
                layers += [
                    nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                ]
                channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(channels * 4 * 4, 32 * width),
            nn.ReLU(),
            nn.Linear(32 * width, 16 * width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(16 * width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# Data and task


def class_balanced_split(
    labels: np.ndarray, valid_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, valid indices): ``valid_size / classes`` random images of each class held
    out, the rest in a random order; the authors' split, with a fixed seed."""
    classes = int(labels.max()) + 1
    if valid_size % classes:
        raise ValueError(
            f"valid_size must be a multiple of the {classes} classes, got {valid_size}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    valid = np.concatenate(
        [order[labels[order] == c][: valid_size // classes] for c in range(classes)]
    )
    is_valid = np.zeros(len(labels), dtype=bool)
    is_valid[valid] = True
    return order[~is_valid[order]], np.sort(valid)


_TENSOR_CACHE: dict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


def cifar_tensors(name: str, settings: dict[str, Any], data_dir: str | None):
    """Standardised float images (N, 3, 32, 32) and labels per split, cached per process."""
    data = cifar_data.load(name, data_dir)
    key = (name, data.source, settings["train_size"], settings["valid_size"], settings["test_size"])
    if key not in _TENSOR_CACHE:
        train_idx, valid_idx = class_balanced_split(
            data.train_labels, settings["valid_size"], SPLIT_SEED
        )
        train_idx = train_idx[: settings["train_size"]]
        train = data.train_images[train_idx].astype(np.float32) / 255.0
        mean = train.mean(axis=(0, 2, 3), keepdims=True)
        std = train.std(axis=(0, 2, 3), keepdims=True) + 1e-8

        def prepare(images: np.ndarray, labels: np.ndarray):
            x = (images.astype(np.float32) / 255.0 - mean) / std
            return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels)

        test_size = settings["test_size"]
        _TENSOR_CACHE[key] = {
            "train": (
                torch.from_numpy((train - mean) / std),
                torch.from_numpy(data.train_labels[train_idx]),
            ),
            "valid": prepare(data.train_images[valid_idx], data.train_labels[valid_idx]),
            "test": prepare(data.test_images[:test_size], data.test_labels[:test_size]),
        }
    return _TENSOR_CACHE[key], data.source


def _cifar_task(
    name: str, make_model: Callable[[int], nn.Module], settings: dict[str, Any], seed: int, data_dir
) -> Task:
    data, source = cifar_tensors(name, settings, data_dir)
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    model = make_model(cifar_data.LAYOUTS[name].classes)
    return classification_task(data, model, settings, {"data_folder": source})


def _cifar_problem(
    name: str, dataset: str, description: str, builder, cpu: dict[str, Any], full: dict[str, Any]
) -> ProblemSpec:
    """A CIFAR problem: ``full`` (and the authors' ``full-45k`` split) and ``cpu`` differ from
    :data:`FULL` by the settings given."""
    return ProblemSpec(
        name=name,
        description=f"{description} ({SPLIT_WORDS})",
        dataset=dataset,
        metric="accuracy",
        higher_is_better=True,
        sizes={
            "cpu": {**FULL, **full, **cpu},
            "full": {**FULL, **full},
            "full-45k": {**FULL, **full, **AUTHORS_SPLIT},
        },
        builder=builder,
        schema=cifar_schema(cifar_data.LAYOUTS[dataset].classes),
    )


def fashion_cnn(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    # The idx image pipeline (split, standardisation, batches) is the MNIST problems' own.
    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return LeNet(channels=1, classes=10, side=28)

    return image_classification_task("fashion-mnist", make_model, settings, data_dir)


def cifar10_cnn(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _cifar_task("cifar10", lambda classes: LeNet(3, classes), settings, seed, data_dir)


def cifar10_resnet(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    def make_model(classes: int) -> nn.Module:
        return CifarResNet(settings["depth"], classes, settings["width"])

    return _cifar_task("cifar10", make_model, settings, seed, data_dir)


def cifar100_cnn(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    def make_model(classes: int) -> nn.Module:
        return DeepConvNet(classes, settings["width"], settings["dropout"])

    return _cifar_task("cifar100", make_model, settings, seed, data_dir)


register(
    ProblemSpec(
        name="fashion-cnn",
        description="Fashion-MNIST, LeNet-style convnet (CPU stand-in for cifar10-cnn)",
        dataset="fashion-mnist",
        metric="accuracy",
        higher_is_better=True,
        sizes={
            "cpu": {**FASHION_FULL, "train_size": 10_000, "epochs": 2},
            "full": dict(FASHION_FULL),
        },
        builder=fashion_cnn,
        schema=IMAGE_SCHEMA,
    )
)
register(
    _cifar_problem(
        "cifar10-cnn",
        "cifar10",
        "CIFAR-10, LeNet-style convnet",
        cifar10_cnn,
        cpu={"train_size": 10_000, "valid_size": 5_000, "test_size": 5_000, "epochs": 2},
        full={},
    )
)
register(
    _cifar_problem(
        "cifar10-resnet",
        "cifar10",
        "CIFAR-10, CIFAR ResNet (depth 110 full, 20 cpu)",
        cifar10_resnet,
        cpu={
            "train_size": 4_000,
            "valid_size": 1_000,
            "test_size": 1_000,
            "epochs": 1,
            "depth": 20,
            "width": 16,
        },
        full={"depth": 110, "width": 16},
    )
)
register(
    _cifar_problem(
        "cifar100-cnn",
        "cifar100",
        "CIFAR-100, deeper convnet with batch norm",
        cifar100_cnn,
        cpu={
            "train_size": 8_000,
            "valid_size": 2_000,
            "test_size": 2_000,
            "epochs": 2,
            "width": 8,
            "dropout": 0.1,
        },
        full={"width": 32, "dropout": 0.1},
    )
)
