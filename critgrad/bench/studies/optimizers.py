"""The optimizer pairs the analysis studies compare, read from the harness's one table.

A *label* is a base (``sgd``, ``sgdm``, ``rmsprop``, ``adam``) or its twin with the memory
(``sgd_c``, ...): labels of :data:`critgrad.bench.optimizer_labels.LABELS`, which gives their
registry names, the hyperparameters an alias implies (``sgdm`` is SGD with momentum 0.9) and their
display names. Every other argument is torch's default, and the twins take the reference package's
memory defaults (``aggr`` sum for SGD, mean for RMSprop and Adam; kappa 1) unless a study passes
``topC``/``decay``/``aggr``. This module only says which pairs the toy studies use, in which order
(their colours follow it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from critgrad.bench import optimizer_labels

BASES: tuple[str, ...] = ("sgd", "sgdm", "rmsprop", "adam")  # the studies' pairs, in order
MEMORY_SUFFIX = optimizer_labels.MEMORY_SUFFIX
DISPLAY = {base: optimizer_labels.display_name(base) for base in BASES}
MEMORY_ARGUMENTS = ("topC", "decay", "kappa", "aggr")


def labels() -> list[str]:
    """Every label, each base followed by its twin."""
    return [label for base in BASES for label in (base, base + MEMORY_SUFFIX)]


def split_label(label: str) -> tuple[str, bool]:
    """``"adam_c"`` -> ``("adam", True)``; a ValueError lists the labels otherwise."""
    base = optimizer_labels.base_label(label)
    if base not in BASES:
        raise ValueError(f"unknown optimizer label {label!r}; known: {', '.join(labels())}")
    return base, optimizer_labels.is_memory(label)


def display(label: str) -> str:
    """``"sgdm_c"`` -> ``"SGDm_C"``."""
    split_label(label)
    return optimizer_labels.display_name(label)


def build(
    label: str,
    params: Iterable[torch.Tensor],
    lr: float,
    memory: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer called ``label`` over ``params``; ``memory`` reaches only a twin."""
    _, with_memory = split_label(label)
    arguments: dict[str, Any] = {"lr": lr}
    if with_memory:
        unknown = sorted(set(memory or {}) - set(MEMORY_ARGUMENTS))
        if unknown:
            raise ValueError(f"memory arguments must be among {MEMORY_ARGUMENTS}, got {unknown}")
        arguments.update(memory or {})
    return optimizer_labels.create(label, list(params), arguments)
