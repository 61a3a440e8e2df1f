"""A plain, slow implementation of the method, written to be read; the fast path is tested against it.

It keeps each parameter's memory as a Python list of ``[priority, stored_gradient]`` pairs, computes
the mean of the memory from the list every step, and searches the smallest priority by hand. It
reads the memory options from the wrapped optimizer's ``param_groups`` (``topC``, ``decay``,
``kappa``, ``aggr``, ``key``), exactly as :class:`critgrad.CriticalGradients` does.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from .memory import aggregate


class ReferenceCriticalGradients:
    """Critical Gradients around ``optimizer``, one tensor and one number at a time."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.entries: dict[torch.Tensor, list[list]] = {}  # param -> [[priority, gradient], ...]

    @torch.no_grad()
    def step(self) -> None:
        plans = []  # (param, raw gradient, key, topC) for every gradient offered this step
        for group in self.optimizer.param_groups:
            if group["kappa"] == 0:
                continue
            params = [p for p in group["params"] if p.grad is not None]
            norms = [float(torch.linalg.vector_norm(p.grad.double())) for p in params]
            if group["key"] == "sum_of_norms":
                keys = [sum(norms)] * len(params)
            elif group["key"] == "global_norm":
                keys = [math.sqrt(sum(n * n for n in norms))] * len(params)
            else:
                keys = norms
            for p, key in zip(params, keys):
                entries = self.entries.setdefault(p, [])
                raw = p.grad
                stored = [gradient for _, gradient in entries]
                p.grad = aggregate(raw, stored, group["aggr"], group["kappa"])
                plans.append((p, raw, key, group))
        self.optimizer.step()
        for p, raw, key, group in plans:
            p.grad = raw
            entries = self.entries[p]
            if math.isfinite(key):
                stored = raw.to(group["store_dtype"] or raw.dtype).clone()
                if len(entries) < group["topC"]:
                    entries.append([key, stored])
                else:
                    smallest = min(range(len(entries)), key=lambda i: (entries[i][0], i))
                    if key > entries[smallest][0]:
                        entries[smallest] = [key, stored]
            for entry in entries:
                entry[0] *= group["decay"]
