"""The optimizer pairs the studies compare, built through critgrad's public factory.

A *label* is a base (``sgd``, ``sgdm``, ``rmsprop``, ``adam``) or its twin with the memory
(``sgd_c``, ...). ``sgdm`` is SGD with momentum 0.9. Every other argument is torch's default, and
the twins take the reference package's memory defaults (``aggr`` sum for SGD, mean for RMSprop
and Adam; kappa 1) unless a study passes ``topC``/``decay``/``aggr``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

import critgrad

# base label -> (critgrad registry name, the base optimizer's own arguments)
BASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("sgd", {}),
    "sgdm": ("sgd", {"momentum": 0.9}),
    "rmsprop": ("rmsprop", {}),
    "adam": ("adam", {}),
}
MEMORY_SUFFIX = "_c"
DISPLAY = {"sgd": "SGD", "sgdm": "SGDm", "rmsprop": "RMSprop", "adam": "Adam"}
MEMORY_ARGUMENTS = ("topC", "decay", "kappa", "aggr")


def labels() -> list[str]:
    """Every label, each base followed by its twin."""
    return [label for base in BASES for label in (base, base + MEMORY_SUFFIX)]


def split_label(label: str) -> tuple[str, bool]:
    """``"adam_c"`` -> ``("adam", True)``; a ValueError lists the labels otherwise."""
    memory = label.endswith(MEMORY_SUFFIX)
    base = label[: -len(MEMORY_SUFFIX)] if memory else label
    if base not in BASES:
        raise ValueError(f"unknown optimizer label {label!r}; known: {', '.join(labels())}")
    return base, memory


def display(label: str) -> str:
    """``"sgdm_c"`` -> ``"SGDm_C"``."""
    base, memory = split_label(label)
    return DISPLAY[base] + ("_C" if memory else "")


def build(
    label: str,
    params: Iterable[torch.Tensor],
    lr: float,
    memory: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer called ``label`` over ``params``; ``memory`` reaches only a twin."""
    base, with_memory = split_label(label)
    name, arguments = BASES[base]
    arguments = dict(arguments)
    if with_memory:
        unknown = sorted(set(memory or {}) - set(MEMORY_ARGUMENTS))
        if unknown:
            raise ValueError(f"memory arguments must be among {MEMORY_ARGUMENTS}, got {unknown}")
        arguments.update(memory or {})
        name += MEMORY_SUFFIX
    return critgrad.create_optimizer(list(params), name, lr=lr, **arguments)
