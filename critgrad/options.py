"""The memory's hyperparameters: their names, and the checks that every value passes.

They live in each ``param_groups`` entry beside ``lr``, so they can be set per group and changed
between steps (``topC`` and ``store_dtype`` only before a group's first step).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import torch

from . import memory as M

MEMORY_OPTIONS = (
    "topC",
    "decay",
    "kappa",
    "aggr",
    "key",
    "store_dtype",
    "selection",
    "include_current",
)
"""Per-group hyperparameters of the memory; they live in ``param_groups`` beside ``lr``."""

SEED = "selection_seed"
"""The group entry holding the seed of ``selection="random"``'s draws (an integer in [0, 2^64)):
drawn from torch's global generator when the group is added with that rule (or at the first step
that uses it), saved and restored with ``param_groups`` by ``state_dict()``."""


NUMERIC_OPTIONS = ("topC", "decay", "kappa", SEED)
"""The memory options that are numbers: numpy scalars are taken as their Python values."""


def python_number(value: Any) -> Any:
    """A numpy scalar integer or float (any ``numbers.Integral`` or ``numbers.Real`` whose type is
    not Python's int, float or bool) as the Python int or float of the same value, as torch.optim
    takes it; anything else unchanged, for the checks to judge (a bool stays a bool: refused
    where a number is asked for; numpy's bool is no ``numbers.Integral``)."""
    if type(value) in (bool, int, float):  # (numpy's float64 is a float: converted below)
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def python_numbers_(options: MutableMapping[str, Any]) -> None:
    """Replace, in place, the numpy scalars among ``options``' numbers by Python values."""
    for name in NUMERIC_OPTIONS:
        value = options.get(name)
        if value is not None and type(value) not in (int, float):
            options[name] = python_number(value)


def checked_lr(lr: Any) -> Any:
    """``lr`` as the optimizer should get it: a numpy scalar as its Python value, a tensor (as
    torch.optim accepts) unchanged. A bool or a non-finite number raises ValueError; the sign
    is the torch optimizer's to check."""
    lr = python_number(lr)
    if isinstance(lr, torch.Tensor):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        raise ValueError(f"Invalid lr: {lr!r} (must be a finite learning rate >= 0, or a tensor)")
    return lr


def check_memory_options(options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first invalid memory hyperparameter and its allowed values."""
    topC = options["topC"]
    if isinstance(topC, bool) or not isinstance(topC, int) or topC < 1:
        raise ValueError(f"Invalid topC: {topC!r} (must be an integer >= 1)")
    decay = options["decay"]
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
        raise ValueError(f"Invalid decay: {decay!r} (must be a number in [0, 1])")
    kappa = options["kappa"]
    # Comparisons, not math.isfinite: a traced step sees a changing number as a symbol.
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 <= kappa < math.inf:
        raise ValueError(f"Invalid kappa: {kappa!r} (must be a finite number >= 0)")
    if options["aggr"] not in M.AGGREGATIONS:
        raise ValueError(f"Invalid aggr: {options['aggr']!r} (must be one of {M.AGGREGATIONS})")
    if options["key"] not in M.KEY_MODES:
        raise ValueError(f"Invalid key: {options['key']!r} (must be one of {M.KEY_MODES})")
    # (Optimizers built on the core's memory without these options, such as Adam_CM, leave
    # them out: the defaults.)
    selection = options.get("selection", "critical")
    if selection not in M.SELECTIONS:
        raise ValueError(f"Invalid selection: {selection!r} (must be one of {M.SELECTIONS})")
    include_current = options.get("include_current", True)
    if not isinstance(include_current, bool):
        raise ValueError(f"Invalid include_current: {include_current!r} (must be True or False)")
    seed = options.get(SEED)
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
    ):
        raise ValueError(f"Invalid {SEED}: {seed!r} (must be an integer in [0, 2**64))")
    store_dtype = options["store_dtype"]
    if store_dtype is not None and (
        not isinstance(store_dtype, torch.dtype) or not store_dtype.is_floating_point
    ):
        raise ValueError(
            f"Invalid store_dtype: {store_dtype!r} (must be None or a floating "
            "point torch.dtype such as torch.bfloat16)"
        )


def draw_seeds(groups: Iterable[dict[str, Any]]) -> None:
    """Give each group whose selection is ``"random"`` and that has no seed yet one drawn from
    torch's global generator (on the host: ``torch.manual_seed`` makes it repeatable). Groups of
    the other rules draw nothing, so that they leave the global generator as they found it."""
    for group in groups:
        if group.get("selection") == "random" and group.get(SEED) is None:
            group[SEED] = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def key_from_synced(synced: bool | None, key: str | None) -> str:
    """Resolve the reference package's ``synced`` flag and the explicit ``key`` into one mode."""
    if synced is not None and not isinstance(synced, bool):
        raise ValueError(f"Invalid synced: {synced!r} (must be True, False or None)")
    implied = None if synced is None else ("sum_of_norms" if synced else "per_tensor")
    if key is None:
        return implied or "sum_of_norms"
    if implied is not None and implied != key:
        raise ValueError(
            f"synced={synced} means key={implied!r}, but key={key!r} was given; "
            "pass only one of them"
        )
    return key
