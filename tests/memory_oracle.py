"""The method of docs/method.md once more, in plain Python floats, as an oracle for the tests.

It shares nothing with critgrad (no torch, no import of critgrad.memory or critgrad.reference):
a gradient is a flat list of floats, a memory a list of [priority, gradient] slots. Where the
tests need a base optimizer's update, they hand the directions computed here to torch's own
optimizer, which is independent of critgrad too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# How close a key may come to the priority it is compared with before the sequence is called
# fragile: critgrad computes norms with torch (float64, possibly another summation order), so
# a decision closer than this could go either way on some machine.
TIE_MARGIN = 1e-9


def norm(g: list[float]) -> float:
    return math.sqrt(sum(x * x for x in g))


def direction(g: list[float], stored: list[list[float]], aggr: str, kappa: float) -> list[float]:
    """sum: g + kappa mean(B); mid: (g + kappa mean(B)) / 2; mean: (g + kappa sum(B)) / (n + 1)."""
    n = len(stored)
    if n == 0:
        return list(g)
    total = [sum(column) for column in zip(*stored)]
    if aggr == "sum":
        return [x + kappa * s / n for x, s in zip(g, total)]
    if aggr == "mid":
        return [0.5 * (x + kappa * s / n) for x, s in zip(g, total)]
    if aggr == "mean":
        return [(x + kappa * s) / (n + 1) for x, s in zip(g, total)]
    raise ValueError(aggr)


@dataclass
class Memory:
    """One parameter tensor's memory: slots of [priority, gradient], filled in order."""

    topC: int
    slots: list[list] = field(default_factory=list)
    admitted: int = 0
    rejected: int = 0
    evicted: int = 0
    closest_call: float = math.inf  # smallest relative gap between a key and what it was beaten by

    def offer(self, g: list[float], key: float) -> None:
        if not math.isfinite(key):
            return
        if len(self.slots) < self.topC:
            self.slots.append([key, list(g)])
            self.admitted += 1
            return
        smallest = min(range(len(self.slots)), key=lambda i: (self.slots[i][0], i))
        priority = self.slots[smallest][0]
        self.closest_call = min(self.closest_call, abs(key - priority) / max(abs(key), 1e-300))
        if key > priority:
            self.slots[smallest] = [key, list(g)]
            self.admitted += 1
            self.evicted += 1
        else:
            self.rejected += 1

    def decay(self, factor: float) -> None:
        for slot in self.slots:
            slot[0] *= factor

    def entries(self) -> list[tuple[float, list[float]]]:
        """(priority, gradient) of every held entry, sorted: independent of slot order."""
        return sorted((p, list(g)) for p, g in self.slots)


def group_keys(grads: list[list[float]], mode: str) -> list[float]:
    norms = [norm(g) for g in grads]
    if mode == "per_tensor":
        return norms
    if mode == "sum_of_norms":
        return [sum(norms)] * len(grads)
    if mode == "global_norm":
        return [math.sqrt(sum(n * n for n in norms))] * len(grads)
    raise ValueError(mode)


class Group:
    """One parameter group's memories and the method's step (without the base update)."""

    def __init__(self, n_tensors, topC=10, decay=0.7, kappa=1.0, aggr="mean", key="sum_of_norms"):
        self.memories = [Memory(topC) for _ in range(n_tensors)]
        self.decay, self.kappa, self.aggr, self.key = decay, kappa, aggr, key

    def step(self, grads: list[list[float]]) -> list[list[float]]:
        """The directions for this step's gradients; then the gradients are offered."""
        directions = [
            direction(g, [s[1] for s in m.slots], self.aggr, self.kappa)
            for g, m in zip(grads, self.memories)
        ]
        for g, k, m in zip(grads, group_keys(grads, self.key), self.memories):
            m.offer(g, k)
            m.decay(self.decay)
        return directions

    def closest_call(self) -> float:
        return min(m.closest_call for m in self.memories)


def sgd_trajectory(p0, grads_per_step, lr, **options):
    """Plain SGD on the directions: the parameters after every step, and the group's memories."""
    group = Group(len(p0), **options)
    params = [list(p) for p in p0]
    trajectory = []
    for grads in grads_per_step:
        for p, d in zip(params, group.step(grads)):
            for i, x in enumerate(d):
                p[i] -= lr * x
        trajectory.append([list(p) for p in params])
    return trajectory, group
