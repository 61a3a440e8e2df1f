"""A plain, slow implementation of the method, written to be read; every fast path is tested
against it.

It keeps each parameter's memory as a Python list of ``[priority, stored_gradient]`` pairs in slot
order (with the entries' ages beside it), aggregates the list from scratch every step, and searches
the entry to replace by hand. It shares no code with :mod:`critgrad.memory` or
:mod:`critgrad.wrapper`, so that a misreading of the method in either shows up as a difference. It
reads the memory options from the wrapped optimizer's ``param_groups`` (``topC``, ``decay``,
``kappa``, ``aggr``, ``key``, ``store_dtype``, and ``selection``, ``include_current`` and
``selection_seed`` where present), as :class:`critgrad.CriticalGradients` does.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


def reference_direction(grad: torch.Tensor, stored: list, aggr: str, kappa: float) -> torch.Tensor:
    """The aggregate of the current gradient and the stored ones (the method's step 2)."""
    n = len(stored)
    if n == 0:
        return grad.clone()
    total = torch.zeros_like(grad)
    for gradient in stored:
        total = total + gradient.to(grad.dtype)
    if aggr == "sum":  # g + kappa * mean(B)
        return grad + kappa * (total / n)
    if aggr == "mid":  # (g + kappa * mean(B)) / 2
        return (grad + kappa * (total / n)) / 2
    if aggr == "mean":  # (g + kappa * sum(B)) / (n + 1)
        return (grad + kappa * total) / (n + 1)
    raise ValueError(f"unknown aggr {aggr!r}")


def reference_memory_only_direction(grad: torch.Tensor, stored: list, kappa: float) -> torch.Tensor:
    """``include_current=False``: kappa * mean(B), B the memory after the offer; g if B is empty."""
    if not stored:
        return grad.clone()
    total = torch.zeros_like(grad)
    for gradient in stored:
        total = total + gradient.to(grad.dtype)
    return kappa * (total / len(stored))


def reference_draw(seed: int, stream: int, counter: int, capacity: int) -> int:
    """The slot that ``selection="random"`` replaces: a hash of the group's seed, the memory's
    stream and how many gradients it was offered before, mapped onto ``range(capacity)``."""

    def mix(x: int) -> int:  # Wellons' "lowbias32", a bijection of the 32-bit integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) % 2**32
        x ^= x >> 15
        x = (x * 0x846CA68B) % 2**32
        x ^= x >> 16
        return x

    x = mix((seed >> 32) ^ mix(seed % 2**32))
    x = mix(stream ^ x)
    x = mix(x ^ (counter >> 32))
    x = mix(x ^ (counter % 2**32))
    return x * capacity // 2**32


class ReferenceCriticalGradients:
    """Critical Gradients around ``optimizer``, one tensor and one number at a time."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.entries: dict[torch.Tensor, list[list]] = {}  # param -> [[priority, gradient], ...]
        self.ages: dict[torch.Tensor, list[int]] = {}  # param -> steps since each entry entered
        self.offers: dict[torch.Tensor, int] = {}  # param -> gradients offered so far

    @torch.no_grad()
    def step(self) -> None:
        plans = []  # (param, raw gradient, key, group, stream, offered yet) for every gradient
        for group in self.optimizer.param_groups:
            if group["kappa"] == 0:
                continue
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            for p in group["params"]:  # each parameter once, even if listed twice
                if p.grad is not None and all(p is not q for q in params):
                    params.append(p)
                    grads.append(p.grad)
            norms = [float(torch.linalg.vector_norm(g.to(_wide(g)))) for g in grads]
            if group["key"] == "sum_of_norms":
                keys = [sum(norms)] * len(params)
            elif group["key"] == "global_norm":
                keys = [math.sqrt(sum(n * n for n in norms))] * len(params)
            else:
                keys = norms
            for position, (p, raw, key) in enumerate(zip(params, grads, keys)):
                # Random draws: one stream per tensor when each has its own key, else one.
                stream = position if group["key"] == "per_tensor" else 0
                self.entries.setdefault(p, [])
                self.ages.setdefault(p, [])
                if group.get("include_current", True):
                    stored = [gradient for _, gradient in self.entries[p]]
                    p.grad = reference_direction(raw, stored, group["aggr"], group["kappa"])
                    plans.append((p, raw, key, group, stream, False))
                else:  # the memory alone, after this gradient was offered to it
                    self.offer(p, raw, key, group, stream)
                    stored = [gradient for _, gradient in self.entries[p]]
                    p.grad = reference_memory_only_direction(raw, stored, group["kappa"])
                    plans.append((p, raw, key, group, stream, True))
        self.optimizer.step()
        for p, raw, key, group, stream, offered in plans:
            p.grad = raw
            if not offered:
                self.offer(p, raw, key, group, stream)
            for entry in self.entries[p]:
                entry[0] *= group["decay"]
            self.ages[p] = [age + 1 for age in self.ages[p]]

    def offer(
        self, p: torch.Tensor, raw: torch.Tensor, key: float, group: dict, stream: int
    ) -> None:
        """The method's step 3 under the group's selection rule."""
        entries, ages = self.entries[p], self.ages[p]
        counter = self.offers.get(p, 0)
        self.offers[p] = counter + 1
        if not math.isfinite(key):
            return
        stored = raw.to(group["store_dtype"] or raw.dtype).clone()
        if len(entries) < group["topC"]:
            entries.append([key, stored])
            ages.append(0)
            return
        slots = range(len(entries))
        selection = group.get("selection", "critical")
        if selection == "critical":  # the smallest priority, if the key is strictly greater
            replaced = min(slots, key=lambda i: (entries[i][0], i))
            if not key > entries[replaced][0]:
                return
        elif selection == "smallest":  # the largest priority, if the key is strictly smaller
            replaced = min(slots, key=lambda i: (-entries[i][0], i))
            if not key < entries[replaced][0]:
                return
        elif selection == "recent":  # the oldest entry, always
            replaced = min(slots, key=lambda i: (-ages[i], i))
        elif selection == "random":  # a drawn entry, always
            replaced = reference_draw(group["selection_seed"], stream, counter, len(entries))
        else:
            raise ValueError(f"unknown selection {selection!r}")
        entries[replaced] = [key, stored]
        ages[replaced] = 0


def _wide(tensor: torch.Tensor) -> torch.dtype:
    return torch.complex128 if tensor.is_complex() else torch.float64
