"""The memory's elementwise work for one group in a single compiled pass per tensor.

Eager foreach operations read and write each buffer several times (direction, then the running
sum, then the slot); compiled, each element of g, S and the evicted slot is read once and each of
d, S and the slot written once. The function is traced once per group layout; coefficients and
admission flags come in as a tensor so that changing them never recompiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from torch import Tensor


def memory_step(
    g: Tensor, total: Tensor, slot: Tensor, c: Tensor, s: Tensor, admit: Tensor
) -> Tensor:
    """For one tensor: the direction ``(g + c * S) * s``; where admitted, ``S += g - slot`` and
    ``slot = g`` (in place). ``slot`` is the store entry an admission overwrites: zeros while the
    memory has room, so the same formula fills and evicts."""
    direction = ((g + c * total) * s).to(g.dtype)
    stored = g.to(slot.dtype)
    total.add_(torch.where(admit, stored.to(total.dtype) - slot.to(total.dtype), 0.0))
    slot.copy_(torch.where(admit, stored, slot))
    return direction


def memory_pass(
    grads: list[Tensor], sums: list[Tensor], slots: list[Tensor], coefficients: Tensor
) -> list[Tensor]:
    """:func:`memory_step` for every tensor of a group; mutates ``sums`` and ``slots``.

    ``coefficients`` is ``(n, 3)``: ``c``, ``s`` and the admission flag (1.0 or 0.0) per tensor.
    """
    return [
        memory_step(
            grads[i],
            sums[i],
            slots[i],
            coefficients[i, 0],
            coefficients[i, 1],
            coefficients[i, 2] > 0,
        )
        for i in range(len(grads))
    ]


_compiled: dict[str, Callable[..., Any]] = {}
_failed: set[str] = set()


def run_compiled(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``torch.compile(function)``, or ``function`` itself where compiling is impossible.

    Traced once per group layout; past torch's recompile limit (8 layouts in a process) dynamo
    runs the same function eagerly: slower, never different. Where no compiler backend works
    (no C++ compiler, an unsupported Python) a warning says so once and the eager function runs;
    a failure at compile time happens before the function touches any tensor.
    """
    name = function.__qualname__
    if name in _failed:
        return function(*args)
    if name not in _compiled:
        # Rounding to a low-precision store must happen before the running sum adds the value,
        # as in eager mode; inductor would otherwise keep the intermediate in float32.
        _compiled[name] = torch.compile(
            function, fullgraph=False, dynamic=False, options={"emulate_precision_casts": True}
        )
    try:
        return _compiled[name](*args)
    except torch._dynamo.exc.BackendCompilerFailed as error:
        _failed.add(name)
        warnings.warn(
            f"critgrad: torch.compile is unavailable here ({type(error).__name__}); "
            "compile=True falls back to the eager memory pass",
            RuntimeWarning,
            stacklevel=3,
        )
        return function(*args)
