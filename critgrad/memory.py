"""The critical-gradient memory as pure functions on tensors.

Nothing here knows about optimizers or parameter groups. The wrapper in :mod:`critgrad.wrapper`
gathers the per-parameter state, calls these functions and writes the results back. Every
function works on the memory's device and never reads a value back to the host, so a whole step
can be traced as one graph.

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
selection
    the rule that decides which gradients the memory keeps (see :data:`SELECTIONS`).
scaled sum
    the sum of the stored gradients times :func:`sum_scale` (a power of two no larger than
    ``1 / topC``): it can never overflow where the stored values do not, and the scaling is exact.
"""

from __future__ import annotations

import math
from typing import Any

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

SELECTIONS = ("critical", "recent", "smallest", "random")
"""Which gradients the memory keeps. With room every finite gradient enters (the next empty slot);
when the memory is full:

- ``critical``: the key replaces the entry with the smallest priority iff it is strictly greater;
- ``recent``: the gradient always replaces the entry with the largest age (first in, first out);
- ``smallest``: the key replaces the entry with the largest priority iff it is strictly smaller;
- ``random``: the gradient always replaces an entry drawn uniformly (see :func:`random_slots`).

Ties go to the lowest slot index. Priorities decay and ages advance the same way under every rule.
"""

STAT_FIELDS = ("offered", "admitted", "rejected", "nonfinite", "evicted", "evicted_age_sum")
"""Slot contents of the per-parameter statistics vector (int64)."""

RESYNC_PER_SLOT = 8
"""The running sum of element i is recomputed from the store once every ``8 * topC`` steps."""


def sum_scale(topC: int) -> float:
    """2^-k for the smallest k >= 1 with 2^k >= topC: the scaled sum of topC values of magnitude
    at most M stays at most M/2, the scaled difference of two such values at most M, and
    multiplying by a power of two loses nothing (above the subnormal range)."""
    return 2.0 ** -max(1, math.ceil(math.log2(topC)))


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


def admission(
    keys: Tensor,
    priority: Tensor,
    age: Tensor,
    selection: str = "critical",
    drawn: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Decide, for n memories at once, whether each key enters and in which slot.

    Args:
        keys: ``(n,)`` the keys of the current gradients.
        priority: ``(n, C)`` current priorities.
        age: ``(n, C)`` ages, -1 for empty slots.
        selection: one of :data:`SELECTIONS`.
        drawn: ``(n,)`` int64, the slots drawn for ``"random"`` (see :func:`random_slots`).

    Returns:
        ``admit`` ``(n,)`` bool, ``slot`` ``(n,)`` int64, ``filled`` ``(n,)`` int64 (entries
        before this step). A non-finite key is never admitted. With room, the next empty slot is
        used; when full, the slot that :data:`SELECTIONS` names for the rule (ties go to the
        lowest slot index).
    """
    filled = (age >= 0).sum(1)
    has_room = filled < priority.shape[1]
    finite = torch.isfinite(keys)
    # argmin/argmax give the first index among equal values. When full, every age is >= 0.
    if selection == "critical":
        victim = priority.argmin(1)
        enters = has_room | (keys > priority.gather(1, victim[:, None]).squeeze(1))
    elif selection == "smallest":
        victim = priority.argmax(1)
        enters = has_room | (keys < priority.gather(1, victim[:, None]).squeeze(1))
    elif selection == "recent":
        victim = age.argmax(1)
        enters = torch.ones_like(has_room)
    elif selection == "random":
        if drawn is None:
            raise ValueError('selection="random" needs the drawn slots')
        victim = drawn
        enters = torch.ones_like(has_room)
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    # Slots are filled in order 0, 1, ... and never emptied, so the first empty one is `filled`.
    slot = torch.where(has_room, filled, victim)
    admit = finite & enters
    return admit, slot, filled


_MASK32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """``x * c mod 2^32`` for ``0 <= x, c < 2^32``, with no intermediate beyond 2^49 (int64
    tensors must not overflow: compiled code may treat signed overflow as impossible)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def hash32(x: Any) -> Any:
    """A bijection of [0, 2^32) that mixes every input bit into every output bit (Wellons'
    "lowbias32": xor-shifts and odd multiplications), on Python ints or int64 tensors alike."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def random_slots(seed: int, streams: Tensor, counters: Tensor, capacity: int) -> Tensor:
    """``(n,)`` int64 slots in [0, capacity), drawn uniformly for ``selection="random"``.

    A counter-based generator: the draw is a hash of the group's ``seed``, the memory's stream
    and its counter (how many gradients it was offered before), so it needs no state of its own,
    runs on the counters' device without reading anything back, traces into a compiled step
    like any integer arithmetic and gives compiled and eager steps the same draws; a resumed run
    draws what the uninterrupted one would. ``h * capacity >> 32`` maps the 32-bit hash h onto
    the slots (each slot has probability within capacity / 2^32 of 1 / capacity).

    Args:
        seed: the group's seed, an integer in [0, 2^64).
        streams: ``(n,)`` int64 in [0, 2^32): memories with the same stream and counter draw
            the same slot.
        counters: ``(n,)`` int64 >= 0.
        capacity: the number of slots, C.
    """
    base = hash32((seed >> 32) ^ hash32(seed & _MASK32))  # a Python int
    x = hash32(streams ^ base)
    x = hash32(x ^ (counters >> 32))
    x = hash32(x ^ (counters & _MASK32))
    return (x * capacity) >> 32


def coefficients(aggr: str, filled: Tensor, kappa: float) -> tuple[Tensor, Tensor]:
    """``(c, s)``, each ``(n,)`` float64, such that the direction is ``(g + c * S) * s`` with S
    the sum of the n = ``filled`` stored gradients. With an empty memory it is g itself."""
    n = filled.to(torch.float64)
    empty = filled == 0
    if aggr == "mean":
        c = torch.full_like(n, kappa)
        s = 1.0 / (n + 1.0)
    elif aggr in ("sum", "mid"):
        c = kappa / n.clamp(min=1.0)
        s = torch.full_like(n, 1.0 if aggr == "sum" else 0.5)
    else:
        raise ValueError(f"aggr must be one of {AGGREGATIONS}, got {aggr!r}")
    return torch.where(empty, 0.0, c), torch.where(empty, 1.0, s)


def directions(
    grads: list[Tensor],
    scaled_sums: list[Tensor],
    b: list[Tensor],
    s: list[Tensor] | None,
    out: list[Tensor | None] | None = None,
) -> list[Tensor]:
    """``s * g + b * T`` for each tensor (``s`` None means 1), in the gradients' dtypes, with T
    the scaled sum and ``b = c * s / scale``: the direction ``(g + c * S) * s``, written so that
    no intermediate overflows where the direction does not.

    ``out[i]``, where given, receives the direction (it must have the dtype of both the gradient
    and the sum): the same operations, into a buffer the caller reuses afterwards.
    """
    # Coefficients in the dtype the arithmetic happens in: the same values (a 0-d operand is
    # converted to it anyway), but a float64 0-d operand sends mul down a slow CPU loop.
    b = [x.to(t.dtype) for x, t in zip(b, scaled_sums)]
    if s is not None:
        s = [x.to(t.dtype) for x, t in zip(s, scaled_sums)]
    if out is not None and any(o is not None for o in out):
        results = []
        for i, (g, t, o) in enumerate(zip(grads, scaled_sums, out)):
            if o is None:
                o = torch.empty_like(t)
            if s is None:
                results.append(torch.addcmul(g, t, b[i], out=o))
            else:
                results.append(torch.mul(t, b[i], out=o).addcmul_(g, s[i]))
        return [d if d.dtype == g.dtype else d.to(g.dtype) for d, g in zip(results, grads)]
    if s is None:
        directions = torch._foreach_addcmul(grads, scaled_sums, b)
    else:
        directions = torch._foreach_mul(scaled_sums, b)
        torch._foreach_addcmul_(directions, grads, s)
    return [d if d.dtype == g.dtype else d.to(g.dtype) for d, g in zip(directions, grads)]


def memory_only_coefficients(
    admit: Tensor, filled: Tensor, capacity: int, kappa: float, scale: float
) -> tuple[Tensor, Tensor]:
    """``(b, empty)``, each ``(n,)``, for ``include_current=False``: the direction is
    ``kappa * mean(memory after the offer) = b * T'`` with T' the scaled sum after the offer
    (:func:`offered_directions`), and g itself where ``empty`` (nothing was ever admitted)."""
    after = filled + (admit & (filled < capacity)).to(filled.dtype)
    empty = after == 0
    n = after.to(torch.float64).clamp(min=1.0)
    return torch.where(empty, 0.0, kappa / n) / scale, empty


def offered_directions(
    grads: list[Tensor],
    stores: list[Tensor],
    scaled_sums: list[Tensor],
    slots: list[Tensor],
    admits: list[Tensor],
    b: list[Tensor],
    empty: list[Tensor],
    scale: float,
) -> list[Tensor]:
    """``b * T'`` for each tensor (g itself where ``empty``), in the gradients' dtypes, with T' the
    scaled sum as :func:`write_slot_` will leave it: the memory-only direction, computed before
    the memory changes. ``slots`` are ``(1,)`` indices; ``admits``, ``b``, ``empty`` 0-d."""
    out = []
    for g, store, scaled_sum, slot, admit, b_i, empty_i in zip(
        grads, stores, scaled_sums, slots, admits, b, empty
    ):
        old = store.index_select(0, slot)[0]
        # The same terms as write_slot_ adds (a non-admitted gradient is never read: where, not a
        # product, so that an inf or NaN gradient cannot reach the direction).
        new = torch.where(admit, g.to(store.dtype), old)
        after = scaled_sum + torch.mul(new.to(scaled_sum.dtype), scale).sub_(old, alpha=scale)
        d = torch.where(empty_i, g, (after * b_i).to(g.dtype))
        out.append(d)
    return out


def write_slot_(
    store: Tensor,
    scaled_sum: Tensor,
    grad: Tensor,
    slot: Tensor,
    admit: Tensor,
    scale: float,
    scratch: Tensor | None = None,
) -> None:
    """Where ``admit``: ``store[slot] = grad`` and the scaled sum gains the new entry and loses the
    one it replaced (zeros while the memory has room). Otherwise nothing changes: the entry is
    written back as it was and the sum changes by exactly 0. ``slot`` is a ``(1,)`` index and
    ``admit`` a 0-d bool, both on the store's device. ``scratch``, if given, is a free
    ``(2, *shape)`` buffer of the store's dtype (eager only; else one is allocated).

    The sum first loses the scaled old entry, then gains the scaled new one: both terms are
    scaled before they meet the sum, and the intermediate holds topC - 1 entries, so nothing
    exceeds the magnitudes the scaled sum stands for. A refused gradient (possibly non-finite)
    never meets the sum: the value written is the old entry, and its weight is 0.
    """
    weight = admit.to(scaled_sum.dtype) * scale
    if torch.compiler.is_compiling():
        # Traced: one elementwise loop that inductor fuses with the rest of the step.
        old = store.index_select(0, slot)
        new = torch.where(admit, grad.to(store.dtype).unsqueeze(0), old)
        store.index_put_((slot,), new)
        scaled_sum.addcmul_(old[0], weight, value=-1).addcmul_(new[0], weight)
    else:
        # Eager, torch.where with a 0-d condition and index_copy_ cost several passes each on the
        # CPU. Here: the old entry is read into row 0 of a scratch pair, leaves the sum, and is
        # overwritten by the gradient if admitted (else the gradient goes to row 1, unused).
        pair = store.new_empty((2, *store.shape[1:])) if scratch is None else scratch
        torch.index_select(store, 0, slot, out=pair[:1])
        scaled_sum.addcmul_(pair[0], weight, value=-1)
        refused = (~admit).to(torch.int64).reshape(1)
        pair.index_put_((refused,), grad.to(store.dtype).unsqueeze(0))
        scaled_sum.addcmul_(pair[0], weight)
        store.index_put_((slot,), pair[:1])


def resync_(store: Tensor, scaled_sum: Tensor, count: Tensor, scale: float) -> None:
    """Recompute the scaled sum exactly from the store on one chunk of its elements.

    ``sum += new - evicted`` accumulates rounding error; each call recomputes a rotating chunk of
    ``1 / (RESYNC_PER_SLOT * C)`` of the elements (chosen by the device counter ``count``), so
    every element is exact again at least once every ``RESYNC_PER_SLOT * C`` steps, at the cost
    of one pass over ``1 / RESYNC_PER_SLOT`` of the elements per step whatever C is.
    """
    numel = scaled_sum.numel()
    if numel == 0:
        return
    capacity = store.shape[0]
    period = RESYNC_PER_SLOT * capacity
    length = -(-numel // period)
    start = (count % period) * length
    index = torch.arange(length, device=store.device).add_(start)
    if numel >= period:  # the last chunk wraps around once: cheaper than an int64 remainder
        index = torch.where(index >= numel, index - numel, index)
    else:
        index = index % numel
    chunk = store.reshape(capacity, numel).index_select(1, index).to(scaled_sum.dtype)
    exact = chunk.mul_(scale).sum(0)  # (chunk is a fresh copy: scaled in place)
    scaled_sum.view(-1).index_copy_(0, index, exact)


def bookkeeping(
    keys: Tensor,
    priority: Tensor,
    age: Tensor,
    admit: Tensor,
    slot: Tensor,
    filled: Tensor,
    decay: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Admit, decay and age: the new ``(n, C)`` priorities and ages, and the ``(n, 6)`` increment
    of the statistics (see :data:`STAT_FIELDS`).

    The admitted key takes its slot with age 0, then every priority is multiplied by ``decay``
    and every filled entry ages by one step.
    """
    capacity = priority.shape[1]
    taken = (torch.arange(capacity, device=slot.device) == slot[:, None]) & admit[:, None]
    old_age = age.gather(1, slot[:, None]).squeeze(1)
    priority = torch.where(taken, keys[:, None], priority) * decay
    age = torch.where(taken, 0, age)
    age = age + (age >= 0).to(age.dtype)
    finite = torch.isfinite(keys)
    evicted = admit & (old_age >= 0)
    increment = torch.stack(
        [
            torch.ones_like(admit),
            admit,
            finite & (filled >= capacity) & ~admit,  # rejected when full
            ~finite,
            evicted,
        ],
        1,
    ).to(torch.int64)
    evicted_age = torch.where(evicted, old_age, 0)
    return priority, age, torch.cat([increment, evicted_age[:, None]], 1)
