"""The memory's hyperparameters: their names, and the checks that every value passes.

They live in each ``param_groups`` entry beside ``lr``, so they can be set per group and changed
between steps (``topC`` and ``store_dtype`` only before a group's first step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from . import memory as M

MEMORY_OPTIONS = ("topC", "decay", "kappa", "aggr", "key", "store_dtype")
"""Per-group hyperparameters of the memory; they live in ``param_groups`` beside ``lr``."""


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
    store_dtype = options["store_dtype"]
    if store_dtype is not None and (
        not isinstance(store_dtype, torch.dtype) or not store_dtype.is_floating_point
    ):
        raise ValueError(
            f"Invalid store_dtype: {store_dtype!r} (must be None or a floating "
            "point torch.dtype such as torch.bfloat16)"
        )


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
