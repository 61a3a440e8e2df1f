"""The CIFAR problems' splits: the paper's table (40K / 10K / 10K) at size full, the authors'
scripts (45K / 5K / 10K) at size full-45k, CPU sizes unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from critgrad.bench import cli, problems
from critgrad.bench.problems import vision

CIFAR = ("cifar10-cnn", "cifar10-resnet", "cifar100-cnn")
# Each CPU size as it was before the full size changed: the same images for the same seed.
CPU_SPLITS = {
    "cifar10-cnn": (10_000, 5_000, 5_000),
    "cifar10-resnet": (4_000, 1_000, 1_000),
    "cifar100-cnn": (8_000, 2_000, 2_000),
}


def split_of(settings):
    return settings["train_size"], settings["valid_size"], settings["test_size"]


@pytest.mark.parametrize("name", CIFAR)
def test_full_is_the_split_table_and_full_45k_the_authors_split(name):
    sizes = problems.get_problem(name).sizes
    assert split_of(sizes["full"]) == (40_000, 10_000, 10_000)
    assert split_of(sizes["full-45k"]) == (45_000, 5_000, 10_000)
    differences = {k for k in sizes["full"] if sizes["full"][k] != sizes["full-45k"][k]}
    assert differences == {"train_size", "valid_size"}
    assert split_of(sizes["cpu"]) == CPU_SPLITS[name]
    description = problems.get_problem(name).description
    assert "full: 40K/10K/10K" in description and "full-45k: 45K/5K/10K" in description


@pytest.mark.parametrize("classes, valid_size", [(10, 10_000), (10, 5_000), (100, 10_000)])
def test_class_balanced_hold_out_of_the_training_file(classes, valid_size):
    labels = np.repeat(np.arange(classes), 50_000 // classes)
    train, valid = vision.class_balanced_split(labels, valid_size, vision.SPLIT_SEED)
    assert len(valid) == valid_size and len(train) == 50_000 - valid_size
    assert not set(train) & set(valid)
    assert (np.bincount(labels[valid], minlength=classes) == valid_size // classes).all()


def test_critgrad_list_names_the_sizes(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("  cifar10-cnn "))
    assert "cpu/full/full-45k" in line and "the paper's split table" in line
