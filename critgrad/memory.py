"""The critical-gradient memory as pure functions on tensors.

Nothing here knows about optimizers or parameter groups. The wrapper in :mod:`critgrad.wrapper`
gathers the per-parameter state, calls these functions and writes the results back.

Vocabulary
----------
store
    ``(C, *shape)`` copies of past gradients of one parameter tensor (C = ``topC``).
priority
    ``(C,)`` the key of each stored gradient, multiplied by ``decay`` once per step since it was
    stored. Entries that were never filled have priority 0 and age -1.
age
    ``(C,)`` int64, steps since each entry was stored (0 right after admission, then +1 per step);
    -1 marks an empty slot. The number of filled entries is ``(age >= 0).sum()``.
key
    the number that decides admission: an L2 norm of the raw gradient (see :data:`KEY_MODES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

AGGREGATIONS = ("sum", "mid", "mean")
"""How the current gradient g and the n stored gradients B are combined (kappa scales B):

- ``sum``:  g + kappa * mean(B)            (the reference package's name; it adds the *mean*)
- ``mid``:  (g + kappa * mean(B)) / 2
- ``mean``: (g + kappa * sum(B)) / (n + 1)
"""

KEY_MODES = ("sum_of_norms", "per_tensor", "global_norm")
"""Which norm ranks a gradient:

- ``sum_of_norms``: one key per parameter group, the SUM of the per-tensor L2 norms (the reference
  package's ``synced=True``; for grads (3, 4) and (6, 8) it is 15, not 11.18);
- ``per_tensor``: each tensor ranked by its own L2 norm (the reference's ``synced=False``);
- ``global_norm``: one key per group, the true L2 norm of all the group's gradients together.
"""

# Slot contents of the per-parameter statistics vector (int64).
STAT_FIELDS = ("offered", "admitted", "rejected", "nonfinite", "evicted", "evicted_age_sum")


def keys_from_norms(norms: Tensor, mode: str) -> Tensor:
    """Admission keys for n tensors of one group from their L2 norms ``(n,)``; returns ``(n,)``.

    The per-tensor norms are the only reduction over gradient elements, so a sharded (FSDP)
    gradient needs one collective per group: on the squared per-tensor norms, before this call.
    """
    if mode == "per_tensor":
        return norms
    if mode == "sum_of_norms":
        return norms.sum().expand_as(norms)
    if mode == "global_norm":
        return torch.linalg.vector_norm(norms).expand_as(norms)
    raise ValueError(f"key must be one of {KEY_MODES}, got {mode!r}")


def aggregation_coefficients(aggr: str, n: int, kappa: float) -> tuple[float, float]:
    """``(c, s)`` such that the direction is ``(g + c * S) * s`` with S the sum of n stored grads.

    With an empty memory (n = 0) the direction is g itself, whatever the aggregation.
    """
    if aggr not in AGGREGATIONS:
        raise ValueError(f"aggr must be one of {AGGREGATIONS}, got {aggr!r}")
    if n == 0:
        return 0.0, 1.0
    if aggr == "sum":
        return kappa / n, 1.0
    if aggr == "mid":
        return kappa / n, 0.5
    return kappa, 1.0 / (n + 1)


def aggregate(grad: Tensor, stored: Sequence[Tensor], aggr: str, kappa: float) -> Tensor:
    """The direction from the current gradient and the stored ones, written plainly (slow path)."""
    n = len(stored)
    if n == 0:
        return grad.clone()
    memory_mean = torch.stack([s.to(grad.dtype) for s in stored]).mean(0)
    if aggr == "sum":
        return grad + kappa * memory_mean
    if aggr == "mid":
        return 0.5 * (grad + kappa * memory_mean)
    if aggr == "mean":
        return (grad + kappa * n * memory_mean) / (n + 1)
    raise ValueError(f"aggr must be one of {AGGREGATIONS}, got {aggr!r}")


# The bookkeeping below works on small host arrays (numpy): the admission decision has to reach
# the host anyway (it picks which slot to write), and numpy does these few-element operations
# several times faster than dispatching torch operators.


def admission(
    keys: np.ndarray, priority: np.ndarray, age: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide, for n memories at once, whether each key enters and in which slot.

    Args:
        keys: ``(n,)`` the keys of the current gradients.
        priority: ``(n, C)`` current priorities.
        age: ``(n, C)`` ages, -1 for empty slots.

    Returns:
        ``admit`` ``(n,)`` bool, ``slot`` ``(n,)`` int, ``filled`` ``(n,)`` int (entries before
        this step). A non-finite key is never admitted. With room, the next empty slot is used;
        when full, the key replaces the smallest priority only if it is strictly greater (ties go
        to the lowest slot index).
    """
    capacity = priority.shape[1]
    filled = (age >= 0).sum(1)
    has_room = filled < capacity
    smallest_slot = priority.argmin(1)  # the first index among equal minima
    smallest = priority.min(1)
    # Slots are filled in order 0, 1, ... and never emptied, so the first empty one is `filled`.
    slot = np.where(has_room, filled, smallest_slot)
    with np.errstate(invalid="ignore"):
        admit = np.isfinite(keys) & (has_room | (keys > smallest))
    return admit, slot, filled


def update_bookkeeping_(
    keys: np.ndarray,
    priority: np.ndarray,
    age: np.ndarray,
    admit: np.ndarray,
    slot: np.ndarray,
    decay: float,
) -> np.ndarray:
    """Admit, decay and age in place; returns the ages of the entries that admissions evicted.

    The admitted key takes its slot with age 0, then every priority is multiplied by ``decay``
    and every filled entry ages by one step. The returned ``(n,)`` holds the age of the entry each
    admission overwrote, -1 where none was overwritten.
    """
    rows = np.arange(len(keys))
    old_age = age[rows, slot]
    priority[rows, slot] = np.where(admit, keys, priority[rows, slot])
    age[rows, slot] = np.where(admit, 0, old_age)
    priority *= decay
    age += age >= 0
    return np.where(admit, old_age, -1)


def add_statistics_(
    stats: np.ndarray,
    keys: np.ndarray,
    admit: np.ndarray,
    filled: np.ndarray,
    capacity: int,
    evicted_age: np.ndarray,
) -> None:
    """Add one step to the ``(n, len(STAT_FIELDS))`` counts, in place."""
    finite = np.isfinite(keys)
    evicted = evicted_age >= 0
    stats[:, 0] += 1  # offered
    stats[:, 1] += admit  # admitted
    stats[:, 2] += finite & (filled >= capacity) & ~admit  # rejected when full
    stats[:, 3] += ~finite  # nonfinite
    stats[:, 4] += evicted  # evicted
    stats[:, 5] += np.where(evicted, evicted_age, 0)  # evicted_age_sum
