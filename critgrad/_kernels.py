"""The memory's elementwise work for one group in a single compiled pass per tensor.

Eager foreach operations read and write each buffer several times (direction, then the running
sum, then the slot); compiled, each element of g, S and the evicted slot is read once and each of
d, S and the slot written once. The function is traced once per group layout; coefficients and
admission flags come in as a tensor so that changing them never recompiles.
"""

from __future__ import annotations

import torch
from torch import Tensor


def memory_pass(grads: list[Tensor], sums: list[Tensor], slots: list[Tensor],
                coefficients: Tensor) -> list[Tensor]:
    """Directions ``(g + c * S) * s``, and, where admitted, ``S += g - slot; slot = g``.

    ``coefficients`` is ``(n, 3)``: ``c``, ``s`` and the admission flag (1.0 or 0.0) per tensor.
    ``slots`` are views of the store entries that an admitted gradient overwrites (zeros while
    the memory has room, so the same formula fills and evicts). Mutates ``sums`` and ``slots``.
    """
    directions = []
    for i in range(len(grads)):
        g, total, slot = grads[i], sums[i], slots[i]
        c, s, admit = coefficients[i, 0], coefficients[i, 1], coefficients[i, 2] > 0
        directions.append(((g + c * total) * s).to(g.dtype))
        stored = g.to(slot.dtype)
        total.add_(torch.where(admit, stored.to(total.dtype) - slot.to(total.dtype), 0.0))
        slot.copy_(torch.where(admit, stored, slot))
    return directions


_compiled = None


def compiled_memory_pass():
    """:func:`memory_pass` through ``torch.compile`` (built on first use)."""
    global _compiled
    if _compiled is None:
        # Traced once per group layout. Past torch's recompile limit (8 layouts in a process)
        # dynamo runs this same function eagerly: slower, never different.
        # Rounding to a low-precision store must happen before the running sum adds the value,
        # as in eager mode; inductor would otherwise keep the intermediate in float32.
        _compiled = torch.compile(memory_pass, fullgraph=False, dynamic=False,
                                  options={"emulate_precision_casts": True})
    return _compiled
