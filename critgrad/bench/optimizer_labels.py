"""Optimizer labels of the harness: the core registry's names plus a few aliases.

A *label* is what a sweep, a record and a table use: any name of :func:`critgrad.list_optimizers`
("sgd", "adam_c", ...) or an alias such as "sgdm" (SGD with momentum 0.9, the paper's "SGDm").
Labels ending in ``_c`` are the memory-augmented twins; the twin of label ``x_c`` is ``x``.
A few labels (``saga``) are *task methods*: they need the problem's data, not only its parameters,
and are built by :func:`create_for_task` from the task (each problem says whether it can).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

# label -> (registry name, hyperparameters fixed by the label). A user value for a fixed key wins.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sgdm": ("sgd", {"momentum": 0.9}),
    "sgdm_c": ("sgd_c", {"momentum": 0.9}),
}
# label -> module with create(parameters, hyperparameters) (a dry build that checks the
# arguments) and prepare(task, hyperparameters) -> (task, optimizer): methods that need the task.
TASK_METHODS: dict[str, str] = {"saga": "critgrad.bench.saga"}
MEMORY_SUFFIX = "_c"
# Hyperparameters only the memory-augmented optimizers take.
MEMORY_KEYS = ("topC", "decay", "kappa", "aggr", "synced")


class UnknownOptimizer(KeyError):
    """An optimizer label that neither the registry nor the aliases know."""

    def __str__(self) -> str:
        return str(self.args[0])


def _registry() -> tuple[Callable[..., torch.optim.Optimizer], Callable[[], Iterable[str]]]:
    """The core's (create_optimizer, list_optimizers); replaced in tests that avoid the core."""
    import critgrad

    try:
        return critgrad.create_optimizer, critgrad.list_optimizers
    except AttributeError:
        raise RuntimeError(
            "critgrad.create_optimizer is missing: the optimizer core is not installed"
        ) from None


def registry_names() -> list[str]:
    return sorted(_registry()[1]())


def known_labels() -> list[str]:
    """Every label the harness accepts: registry names, the aliases whose target exists and the
    task methods."""
    names = set(registry_names())
    aliases = {alias for alias, (name, _) in ALIASES.items() if name in names}
    return sorted(names | aliases | set(TASK_METHODS))


def is_memory(label: str) -> bool:
    return label.endswith(MEMORY_SUFFIX)


def base_label(label: str) -> str:
    """The vanilla label of a pair: "adam_c" -> "adam", "adam" -> "adam"."""
    return label[: -len(MEMORY_SUFFIX)] if is_memory(label) else label


def memory_label(label: str) -> str:
    return label if is_memory(label) else label + MEMORY_SUFFIX


def resolve(label: str, hyperparameters: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registry name and the full keyword arguments that ``label`` with ``hyperparameters``
    stands for; :class:`UnknownOptimizer` lists the known labels otherwise."""
    name, fixed = ALIASES.get(label, (label, {}))
    if name not in registry_names() and name not in TASK_METHODS:
        raise UnknownOptimizer(f"unknown optimizer {label!r}; known: {', '.join(known_labels())}")
    if not is_memory(label):
        stray = sorted(set(hyperparameters) & set(MEMORY_KEYS))
        if stray:
            raise ValueError(
                f"optimizer {label!r} has no memory; {', '.join(stray)} apply only "
                f"to the _c optimizers"
            )
    return name, {**fixed, **hyperparameters}


def create(
    label: str,
    parameters: Iterable[torch.nn.Parameter] | torch.nn.Module,
    hyperparameters: Mapping[str, Any],
) -> torch.optim.Optimizer:
    """Build the optimizer ``label`` stands for over ``parameters``.

    A module is handed to the registry as it is, so that its rules (no weight decay on biases
    and normalisation weights unless asked) apply to vanilla and _c optimizers alike.
    """
    name, arguments = resolve(label, hyperparameters)
    if name in TASK_METHODS:
        return importlib.import_module(TASK_METHODS[name]).create(parameters, arguments)
    return _registry()[0](parameters, name, **arguments)


def check_problem(label: str, problem: str) -> None:
    """ValueError when ``label`` is a task method that ``problem`` cannot run (before any run)."""
    name = ALIASES.get(label, (label, {}))[0]
    if name in TASK_METHODS:
        importlib.import_module(TASK_METHODS[name]).check_problem(problem)


def create_for_task(label: str, task: Any, hyperparameters: Mapping[str, Any]) -> tuple[Any, Any]:
    """(task, optimizer) for a run: the task itself and :func:`create` over its model, or, for a
    task method, the method's own version of the task (a ValueError if the problem has no use
    for it)."""
    name, arguments = resolve(label, hyperparameters)
    if name in TASK_METHODS:
        return importlib.import_module(TASK_METHODS[name]).prepare(task, arguments)
    return task, create(label, task.model, hyperparameters)
