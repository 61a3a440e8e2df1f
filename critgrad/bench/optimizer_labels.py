"""The harness's optimizers: one table that sweeps, records, protocols, the report and plots read.

The core owns the optimizers: their registry names (:func:`critgrad.list_optimizers`), classes and
the memory's keyword arguments (:data:`critgrad.registry.MEMORY_ARGUMENTS`). The harness adds, per
vanilla optimizer, what a comparison needs: the name that tables and plots show, the learning rate
of the untuned ``fixed`` protocol, and aliases that stand for a registry name with some
hyperparameters set (``sgdm`` is SGD with momentum 0.9, the paper's "SGDm"). :data:`ROWS` holds
those additions; :data:`LABELS` joins them with the core's registry, and is what everything reads.

A *label* is what a sweep, a record and a table use: any name of :func:`critgrad.list_optimizers`
("sgd", "adam_c", ...) or an alias such as "sgdm". Labels ending in ``_c`` are the memory-augmented
twins; the twin of label ``x_c`` is ``x``. A memory optimizer of its own, not a vanilla optimizer
plus the memory (``adam_cm``, Adam with critical momenta), has a row that names its vanilla twin
(``adam``: at kappa 0 it is AdamW with the same weight decay, Adam without); it is a memory label
like the ``_c`` ones (it takes the memory settings, the protocols tune it as they tune them) and
the report sets it beside its twin in a pair of its own. A few labels (``saga``) are *task
methods*: they need the problem's data, not only its parameters, and are built by
:func:`create_for_task` from the task (each problem says whether it can).

A *pair* is a vanilla label and one memory label compared with it: ``x`` and ``x_c`` (the pair
``x``), or a memory optimizer of its own and its twin (the pair named after the memory label,
``adam_cm``). A vanilla label may so be in several pairs: ``adam`` with ``adam_c`` and with
``adam_cm``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from critgrad import registry
from critgrad.bench import saga, values

MEMORY_SUFFIX = registry.MEMORY_SUFFIX
# Hyperparameters only the memory-augmented optimizers take: the core's list.
MEMORY_ARGUMENTS = registry.MEMORY_ARGUMENTS


@dataclasses.dataclass(frozen=True)
class Row:
    """What the harness adds to one vanilla optimizer (its ``_c`` twin shares the row), or to a
    memory optimizer of its own (``twin`` set)."""

    display: str  # the name in tables and plots; a _c twin's is this + "_C"
    default_lr: float | None  # the fixed protocol's learning rate; None: the optimizer's default
    alias_of: str | None = None  # for an alias: the registry name it stands for
    # For an alias: the hyperparameters it sets (a value the user gives wins).
    implied: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # A module with create(parameters, hyperparameters) (a dry build that checks the arguments),
    # prepare(task, hyperparameters) -> (task, optimizer) and check_problem(problem): a method
    # that needs the task, not only the parameters.
    task_method: types.ModuleType | None = None
    # For a memory optimizer of its own (a registry name with a memory that is not "<vanilla>_c"):
    # the vanilla label it is compared with. The row's key is then a memory label.
    twin: str | None = None


# One row per vanilla label, and one per memory optimizer of its own. The learning rates are well-known good values for small MNIST-scale
# models at batch 64, used when none is given (`critgrad run` and the main job); a _c twin uses
# its vanilla optimizer's.
ROWS: dict[str, Row] = {
    "sgd": Row("SGD", 0.1),
    "sgdm": Row("SGDm", 0.01, alias_of="sgd", implied={"momentum": 0.9}),
    "rmsprop": Row("RMSprop", 1e-3),
    "adam": Row("Adam", 1e-3),
    "adamw": Row("AdamW", 1e-3),
    "adagrad": Row("Adagrad", 1e-2),
    "adamax": Row("Adamax", 2e-3),
    "nadam": Row("NAdam", 2e-3),
    "radam": Row("RAdam", 1e-3),
    "aggmo": Row("AggMo", None),
    "saga": Row("SAGA", None, task_method=saga),  # its default step is 1/(3L)
    # Adam with critical momenta: at kappa 0 it is AdamW with the same weight decay (decoupled),
    # which is Adam when there is none, the protocols' default; Adam's learning rate.
    "adam_cm": Row("Adam_CM", 1e-3, twin="adam"),
}


@dataclasses.dataclass(frozen=True)
class Label:
    """One label of :data:`LABELS`: the row of its vanilla label, resolved for this label."""

    label: str
    name: str  # the registry name it builds (a task method: its label)
    implied: Mapping[str, Any]  # hyperparameters the label sets
    display: str
    default_lr: float | None
    memory: bool
    task_method: types.ModuleType | None = None
    # The vanilla label of its pairs: itself for a vanilla label, "x" for "x_c", the row's twin
    # for a memory optimizer of its own (None when its row names none).
    vanilla: str | None = None
    # The memory settings (of MEMORY_ARGUMENTS) its optimizer takes: none for a vanilla label.
    memory_arguments: tuple[str, ...] = ()


def _memory_arguments_of(name: str) -> tuple[str, ...]:
    # Read from the class's signature: Adam_CM, for one, has no `aggr` (it averages).
    taken = inspect.signature(registry.optimizer_class(name)).parameters
    return tuple(argument for argument in MEMORY_ARGUMENTS if argument in taken)


def _labels(
    names: Iterable[str], rows: Mapping[str, Row], memory_names: Iterable[str] = ()
) -> dict[str, Label]:
    """Every label: the registry's names (with their rows, or their own name to show), the
    aliases whose target the registry has, the task methods, and the memory optimizers of their
    own (``memory_names`` not ending in ``_c``; their rows name their twins)."""
    names = set(names)
    standalone = {n for n in memory_names if not n.endswith(MEMORY_SUFFIX)} & names
    standalone |= {label for label, row in rows.items() if row.twin is not None}
    labels: dict[str, Label] = {}
    suffixed = {n for n in names if n.endswith(MEMORY_SUFFIX)}
    for vanilla in sorted((names - suffixed | set(rows)) - standalone):
        row = rows.get(vanilla, Row(vanilla, None))
        target = row.alias_of or vanilla
        if row.task_method is not None:
            labels[vanilla] = Label(
                vanilla,
                vanilla,
                {},
                row.display,
                row.default_lr,
                False,
                row.task_method,
                vanilla=vanilla,
            )
            continue
        for memory, suffix in ((False, ""), (True, MEMORY_SUFFIX)):
            if target + suffix in names:
                labels[vanilla + suffix] = Label(
                    vanilla + suffix,
                    target + suffix,
                    dict(row.implied),
                    row.display + ("_C" if memory else ""),
                    row.default_lr,
                    memory,
                    vanilla=vanilla,
                    memory_arguments=_memory_arguments_of(target + suffix) if memory else (),
                )
    for label in sorted(standalone):
        row = rows.get(label, Row(label, None))
        target = row.alias_of or label
        if target not in names:
            continue
        if row.twin is not None and (row.twin not in labels or labels[row.twin].memory):
            raise ValueError(f"row {label!r}: twin {row.twin!r} is not a vanilla label")
        labels[label] = Label(
            label,
            target,
            dict(row.implied),
            row.display,
            row.default_lr,
            True,
            vanilla=row.twin,
            memory_arguments=_memory_arguments_of(target),
        )
    return labels


LABELS: dict[str, Label] = _labels(
    registry.list_optimizers(), ROWS, registry.list_optimizers(memory=True)
)


class UnknownOptimizer(KeyError):
    """An optimizer label that neither the registry nor the aliases know."""

    def __str__(self) -> str:
        return str(self.args[0])


def known_labels() -> list[str]:
    """Every label the harness accepts: registry names, the aliases whose target exists and the
    task methods."""
    return sorted(LABELS)


def entry(label: str) -> Label:
    """The table's entry for ``label``; :class:`UnknownOptimizer` lists the known labels."""
    if label not in LABELS:
        raise UnknownOptimizer(f"unknown optimizer {label!r}; known: {', '.join(known_labels())}")
    return LABELS[label]


def is_memory(label: str) -> bool:
    """Whether ``label`` has a memory: the ``_c`` twins and the memory optimizers of their own
    (``adam_cm``); a label the table does not know, by its suffix."""
    if label in LABELS:
        return LABELS[label].memory
    return label.endswith(MEMORY_SUFFIX)


def base_label(label: str) -> str:
    """The vanilla label of ``label``'s pairs: "adam_c" -> "adam", "adam_cm" -> "adam",
    "adam" -> "adam" (a memory optimizer whose row names no twin: itself)."""
    if label in LABELS:
        return LABELS[label].vanilla or label
    return label[: -len(MEMORY_SUFFIX)] if label.endswith(MEMORY_SUFFIX) else label


def memory_label(label: str) -> str:
    """The ``_c`` twin of a vanilla label ("adam" -> "adam_c"); a memory label: itself."""
    return label if is_memory(label) else label + MEMORY_SUFFIX


def memory_arguments(label: str) -> tuple[str, ...]:
    """The memory settings ``label``'s optimizer takes: all of :data:`MEMORY_ARGUMENTS` for a
    ``_c`` twin, those of its signature for a memory optimizer of its own (``adam_cm`` has no
    ``aggr``), none for a vanilla label. A label the table does not know: by its suffix."""
    if label in LABELS:
        return LABELS[label].memory_arguments
    return MEMORY_ARGUMENTS if label.endswith(MEMORY_SUFFIX) else ()


def pair_key(label: str) -> str:
    """The pair a memory label is compared in: its vanilla label for a ``_c`` twin ("adam_c" ->
    "adam"), its own label for a memory optimizer of its own ("adam_cm" -> "adam_cm"); a vanilla
    label's own pair (with its ``_c`` twin) is its label."""
    if is_memory(label) and not label.endswith(MEMORY_SUFFIX):
        return label
    return base_label(label)


def pairs(labels: Iterable[str]) -> list[tuple[str, str | None, str | None]]:
    """(pair key, vanilla label or None, memory label or None) for every pair among ``labels``,
    in the order their first label comes: every memory label with its vanilla label when that is
    among ``labels``, and every vanilla label that no memory label pairs (alone). ``["adam",
    "adam_c", "adam_cm"]`` -> ``[("adam", "adam", "adam_c"), ("adam_cm", "adam", "adam_cm")]``."""
    labels = list(labels)
    present = set(labels)
    found: dict[str, tuple[str | None, str | None]] = {}
    for label in labels:
        if is_memory(label):
            vanilla = base_label(label)  # itself when its row names no twin
            found[pair_key(label)] = (
                vanilla if vanilla != label and vanilla in present else None,
                label,
            )
        else:
            found.setdefault(label, (label, None))
    paired = {vanilla for vanilla, twin in found.values() if twin is not None}
    return [
        (key, vanilla, twin)
        for key, (vanilla, twin) in found.items()
        if twin is not None or vanilla not in paired
    ]


def display_name(label: str) -> str:
    """The name in tables and plots ("SGDm_C"); a label the table does not know (a record of an
    optimizer since removed) shows as itself."""
    if label in LABELS:
        return LABELS[label].display
    base = base_label(label)
    name = ROWS[base].display if base in ROWS else base
    return name + "_C" if is_memory(label) else name


def pair_name(key: str) -> str:
    """The name of a pair in tables and plots: its vanilla label's for a ``_c`` pair ("Adam":
    the columns say vanilla and _C), both names for a memory optimizer of its own ("Adam vs
    Adam_CM")."""
    if is_memory(key) and base_label(key) != key:
        return f"{display_name(base_label(key))} vs {display_name(key)}"
    return display_name(key)


def default_lr(label: str) -> float | None:
    """The fixed protocol's learning rate of ``label`` (a twin: its vanilla's); None when the
    optimizer's own default applies or the label is unknown."""
    return LABELS[label].default_lr if label in LABELS else None


def resolve(label: str, hyperparameters: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registry name and the full keyword arguments that ``label`` with ``hyperparameters``
    stands for; :class:`UnknownOptimizer` lists the known labels otherwise."""
    found = entry(label)
    stray = sorted(set(hyperparameters) & set(MEMORY_ARGUMENTS) - set(found.memory_arguments))
    if stray and not found.memory:
        others = [n for n, e in LABELS.items() if e.memory and not n.endswith(MEMORY_SUFFIX)]
        raise ValueError(
            f"optimizer {label!r} has no memory; {', '.join(stray)} apply only "
            f"to the _c optimizers" + (f" and {', '.join(others)}" if others else "")
        )
    if stray:
        raise ValueError(
            f"optimizer {label!r} takes no {', '.join(stray)}; its memory settings: "
            f"{', '.join(found.memory_arguments)}"
        )
    return found.name, {**found.implied, **hyperparameters}


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
    method = LABELS[label].task_method
    if method is not None:
        return method.create(parameters, arguments)
    return registry.create_optimizer(parameters, name, **arguments)


def check_problem(label: str, problem: str) -> None:
    """ValueError when ``label`` is a task method that ``problem`` cannot run (before any run)."""
    method = LABELS[label].task_method if label in LABELS else None
    if method is not None:
        method.check_problem(problem)


def create_for_task(label: str, task: Any, hyperparameters: Mapping[str, Any]) -> tuple[Any, Any]:
    """(task, optimizer) for a run: the task itself and :func:`create` over its model, or, for a
    task method, the method's own version of the task (a ValueError if the problem has no use
    for it)."""
    _, arguments = resolve(label, hyperparameters)
    method = LABELS[label].task_method
    if method is not None:
        return method.prepare(task, arguments)
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
    resolve(label, checked)  # unknown label, memory settings given to a vanilla one
    probe = torch.nn.Parameter(torch.zeros(2))
    try:
        optimizer = create(label, [probe], checked)
        if (
            LABELS[label].task_method is None
        ):  # a task method's dry build cannot step without its task
            probe.grad = torch.ones_like(probe)
            optimizer.step()
    except Exception as error:  # whatever the optimizer refuses, in its own words
        message = " ".join(str(error).split()) or type(error).__name__
        raise values.ConfigError(f"optimizer {label} with {checked}: {message}") from None
    return checked
