"""Optimizers by name, and a factory in the style of timm's ``create_optimizer``.

Names are lowercase: ``"adam"`` is ``torch.optim.Adam``; ``"adam_c"`` is :class:`critgrad.Adam`
(its memory-augmented twin). ``"sgd"`` with ``momentum=0.9`` is SGD with momentum. ``"aggmo"`` is
:class:`critgrad.AggMo` and ``"aggmo_c"`` its twin :class:`critgrad.AggMo_C`. ``"adam_cm"`` is
:class:`critgrad.Adam_CM` (Adam with critical momenta), a memory-augmented optimizer of its own
with no vanilla twin of that name (its vanilla counterpart is ``"adamw"``, or ``"adam"`` without
weight decay).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from . import optimizers
from .adam_cm import Adam_CM
from .aggmo import AggMo
from .options import checked_lr

_BASES: dict[str, tuple[type[torch.optim.Optimizer], type[torch.optim.Optimizer]]] = {
    "sgd": (torch.optim.SGD, optimizers.SGD),
    "rmsprop": (torch.optim.RMSprop, optimizers.RMSprop),
    "adam": (torch.optim.Adam, optimizers.Adam),
    "adamw": (torch.optim.AdamW, optimizers.AdamW),
    "adagrad": (torch.optim.Adagrad, optimizers.Adagrad),
    "adamax": (torch.optim.Adamax, optimizers.Adamax),
    "nadam": (torch.optim.NAdam, optimizers.NAdam),
    "radam": (torch.optim.RAdam, optimizers.RAdam),
    "aggmo": (AggMo, optimizers.AggMo_C),
}
# Memory-augmented optimizers that are not a torch optimizer plus the memory (no "_c" twin).
_STANDALONE: dict[str, type[torch.optim.Optimizer]] = {"adam_cm": Adam_CM}

MEMORY_SUFFIX = "_c"


def _memory_arguments() -> tuple[str, ...]:
    # Read from the named classes' real signatures, so that this list cannot drift from them.
    named = inspect.signature(optimizers.SGD).parameters
    base = inspect.signature(torch.optim.SGD).parameters
    return tuple(name for name in named if name not in base)


MEMORY_ARGUMENTS: tuple[str, ...] = _memory_arguments()
"""The keyword arguments that every ``_c`` optimizer takes beyond its base optimizer's: the
memory's (``topC``, ``decay``, ``kappa``, ``aggr``, ``synced``, ``key``, ``store_dtype``,
``selection``, ``include_current``, ``compile``)."""


def list_optimizers(memory: bool | None = None) -> list[str]:
    """Names accepted by :func:`create_optimizer`: all, only those with a memory (the ``_c`` ones
    and ``adam_cm``), or only vanilla."""
    names = []
    for base in _BASES:
        if memory in (None, False):
            names.append(base)
        if memory in (None, True):
            names.append(base + MEMORY_SUFFIX)
    if memory in (None, True):
        names.extend(_STANDALONE)
    return names


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind a name (case-insensitive)."""
    lowered = name.lower()
    if lowered in _STANDALONE:
        return _STANDALONE[lowered]
    memory = lowered.endswith(MEMORY_SUFFIX)
    base = lowered[: -len(MEMORY_SUFFIX)] if memory else lowered
    if base not in _BASES:
        raise ValueError(f"Invalid optimizer name: {name!r} (must be one of {list_optimizers()})")
    return _BASES[base][1 if memory else 0]


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    # Biases and the weights of normalisation layers are 1-d: decaying them only hurts.
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, skip: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Two groups: parameters with weight decay, and biases/normalisation weights without it."""
    skip = set(skip)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in skip or _is_no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    name: str,
    lr: float | None = None,
    weight_decay: float = 0.0,
    *,
    decay_norm_and_bias: bool = False,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    Args:
        model_or_params: a module, or what a torch optimizer accepts as ``params``.
        name: one of :func:`list_optimizers` (e.g. ``"sgd"``, ``"adam_c"``).
        lr: learning rate (default: the optimizer's own).
        weight_decay: L2 (or decoupled, for AdamW) weight decay.
        decay_norm_and_bias: when a module is given, biases and normalisation weights get no
            weight decay unless this is True.
        **kwargs: the optimizer's other arguments (``momentum``, ``betas``, and for ``_c`` names
            :data:`MEMORY_ARGUMENTS`).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = create_optimizer(model, "adam_c", lr=1e-3, weight_decay=1e-4, topC=5)
    """
    # Every registered class takes weight_decay (torch.optim.Optimizer's own __init__ does not).
    cls: Callable[..., torch.optim.Optimizer] = optimizer_class(name)
    if isinstance(model_or_params, nn.Module):
        if weight_decay and not decay_norm_and_bias:
            params: Any = param_groups_weight_decay(model_or_params, weight_decay)
        else:
            params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = model_or_params
    if lr is not None:
        kwargs["lr"] = checked_lr(lr)
    return cls(params, weight_decay=weight_decay, **kwargs)
