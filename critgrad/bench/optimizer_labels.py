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


# What the hyperparameters of torch's optimizers and of the memory accept, by name, checked before
# the optimizer sees them: the optimizers themselves take ``lr=True`` as 1.0 and ``lr=inf``
# without a word, and refuse ``topC=np.int64(5)``. Other names are left to the optimizer.
NUMBER_KEYS = frozenset(
    {
        "lr",
        "momentum",
        "dampening",
        "weight_decay",
        "alpha",
        "eps",
        "lr_decay",
        "initial_accumulator_value",
        "momentum_decay",
        "decay",
        "kappa",
    }
)
INTEGER_KEYS = frozenset({"topC"})
BOOLEAN_KEYS = frozenset(
    {
        "nesterov",
        "amsgrad",
        "maximize",
        "centered",
        "capturable",
        "differentiable",
        "decoupled_weight_decay",
        "decay_norm_and_bias",
        "compile",
    }
)
OPTIONAL_BOOLEAN_KEYS = frozenset({"foreach", "fused", "synced"})
PAIR_KEYS = frozenset({"betas"})


def check_hyperparameters(label: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """``hyperparameters`` of ``label`` as plain values, checked: the kinds above, then the
    optimizer built over a probe parameter and stepped once, so that what it refuses is refused
    now, before any run. :class:`~critgrad.bench.values.ConfigError` says which, on one line."""
    from critgrad.bench import values

    checked = {}
    for key, value in values.table(f"hyperparameters of {label}", hyperparameters).items():
        name = f"{label}.{key}" if label else key
        value = values.plain(value, name)
        if key in NUMBER_KEYS:
            if value is not None:  # None: the optimizer's own default (saga: 1/(3L))
                values.number(name, value)
        elif key in INTEGER_KEYS:
            values.integer(name, value)
        elif key in BOOLEAN_KEYS:
            values.boolean(name, value)
        elif key in OPTIONAL_BOOLEAN_KEYS and value is not None:
            if not isinstance(value, bool):
                raise values.fail(name, value, "true, false or null")
        elif key in PAIR_KEYS and not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(values.is_number(v) for v in value)
        ):
            raise values.fail(name, value, "a list of two numbers")
        checked[key] = value
    name, _ = resolve(label, checked)  # unknown label, memory settings given to a vanilla one
    probe = torch.nn.Parameter(torch.zeros(2))
    try:
        optimizer = create(label, [probe], checked)
        if name not in TASK_METHODS:  # a task method's dry build cannot step without its task
            probe.grad = torch.ones_like(probe)
            optimizer.step()
    except Exception as error:  # whatever the optimizer refuses, in its own words
        message = " ".join(str(error).split()) or type(error).__name__
        raise values.ConfigError(f"optimizer {label} with {checked}: {message}") from None
    return checked
