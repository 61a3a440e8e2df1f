"""A plain, slow implementation of the method, written to be read; every fast path is tested
against it.

It keeps each parameter's memory as a Python list of ``[priority, stored_gradient]`` pairs,
aggregates the list from scratch every step, and searches the smallest priority by hand. It shares
no code with :mod:`critgrad.memory` or :mod:`critgrad.wrapper`, so that a misreading of the method
in either shows up as a difference. It reads the memory options from the wrapped optimizer's
``param_groups`` (``topC``, ``decay``, ``kappa``, ``aggr``, ``key``, ``store_dtype``), as
:class:`critgrad.CriticalGradients` does.
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


class ReferenceCriticalGradients:
    """Critical Gradients around ``optimizer``, one tensor and one number at a time."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.entries: dict[torch.Tensor, list[list]] = {}  # param -> [[priority, gradient], ...]

    @torch.no_grad()
    def step(self) -> None:
        plans = []  # (param, raw gradient, key, group) for every gradient offered this step
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
            for p, raw, key in zip(params, grads, keys):
                entries = self.entries.setdefault(p, [])
                stored = [gradient for _, gradient in entries]
                p.grad = reference_direction(raw, stored, group["aggr"], group["kappa"])
                plans.append((p, raw, key, group))
        self.optimizer.step()
        for p, raw, key, group in plans:
            p.grad = raw
            entries = self.entries[p]
            if math.isfinite(key):
                copy = raw.to(group["store_dtype"] or raw.dtype).clone()
                if len(entries) < group["topC"]:
                    entries.append([key, copy])
                else:
                    smallest = min(range(len(entries)), key=lambda i: (entries[i][0], i))
                    if key > entries[smallest][0]:
                        entries[smallest] = [key, copy]
            for entry in entries:
                entry[0] *= group["decay"]


def _wide(tensor: torch.Tensor) -> torch.dtype:
    return torch.complex128 if tensor.is_complex() else torch.float64
