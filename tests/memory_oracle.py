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


def lowbias32(x: int) -> int:
    """Wellons' 32-bit integer hash: xor-shift 16, times 0x7FEB352D, xor-shift 15, times
    0x846CA68B, xor-shift 16, all modulo 2^32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def random_slot(seed: int, stream: int, counter: int, capacity: int) -> int:
    """The slot ``selection="random"`` replaces at a memory's offer number ``counter`` (counted
    from 0): the seed's two 32-bit halves, then the stream, then the counter's two halves are
    hashed in turn; the 32-bit result h picks slot floor(h * capacity / 2^32)."""
    low, high = seed & 0xFFFFFFFF, seed >> 32
    h = lowbias32(high ^ lowbias32(low))
    h = lowbias32(h ^ stream)
    h = lowbias32(h ^ (counter >> 32))
    h = lowbias32(h ^ (counter & 0xFFFFFFFF))
    return (h * capacity) >> 32


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


def memory_only_direction(stored: list[list[float]], g: list[float], kappa: float) -> list[float]:
    """include_current=False: kappa mean(B) with B the memory after the offer; g if B is empty."""
    if not stored:
        return list(g)
    return [kappa * sum(column) / len(stored) for column in zip(*stored)]


@dataclass
class Memory:
    """One parameter tensor's memory: slots of [priority, gradient], filled in order, and each
    slot's age (steps since its entry entered) in ``ages``.

    ``selection`` is the rule for a full memory (critical: replace the smallest priority if the
    key is greater; smallest: the largest priority if the key is smaller; recent: the oldest;
    random: the slot :func:`random_slot` draws with ``seed`` and ``stream``)."""

    topC: int
    selection: str = "critical"
    seed: int = 0
    stream: int = 0
    slots: list[list] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    offers: int = 0
    admitted: int = 0
    rejected: int = 0
    evicted: int = 0
    draws: list[int] = field(default_factory=list)  # the slots drawn, in order (random)
    closest_call: float = math.inf  # smallest relative gap between a key and what it was beaten by

    def offer(self, g: list[float], key: float) -> None:
        counter = self.offers
        self.offers += 1
        if not math.isfinite(key):
            return
        if len(self.slots) < self.topC:
            self.slots.append([key, list(g)])
            self.ages.append(0)
            self.admitted += 1
            return
        indices = range(len(self.slots))
        if self.selection in ("critical", "smallest"):
            sign = 1 if self.selection == "critical" else -1
            target = min(indices, key=lambda i: (sign * self.slots[i][0], i))
            priority = self.slots[target][0]
            gap = abs(key - priority) / max(abs(key), 1e-300)
            self.closest_call = min(self.closest_call, gap)
            enters = key > priority if self.selection == "critical" else key < priority
        elif self.selection == "recent":
            target = min(indices, key=lambda i: (-self.ages[i], i))
            enters = True
        elif self.selection == "random":
            target = random_slot(self.seed, self.stream, counter, self.topC)
            self.draws.append(target)
            enters = True
        else:
            raise ValueError(self.selection)
        if enters:
            self.slots[target] = [key, list(g)]
            self.ages[target] = 0
            self.admitted += 1
            self.evicted += 1
        else:
            self.rejected += 1

    def decay(self, factor: float) -> None:
        for slot in self.slots:
            slot[0] *= factor
        self.ages = [age + 1 for age in self.ages]

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

    def __init__(
        self,
        n_tensors,
        topC=10,
        decay=0.7,
        kappa=1.0,
        aggr="mean",
        key="sum_of_norms",
        selection="critical",
        include_current=True,
        seed=0,
    ):
        # Random draws: each tensor its own stream (its place) when keys are per tensor, else one.
        self.memories = [
            Memory(topC, selection, seed, i if key == "per_tensor" else 0) for i in range(n_tensors)
        ]
        self.decay, self.kappa, self.aggr, self.key = decay, kappa, aggr, key
        self.include_current = include_current

    def step(self, grads: list[list[float]]) -> list[list[float]]:
        """The directions for this step's gradients, and the gradients offered: after the
        directions were taken from the memory, or before (``include_current=False``)."""
        keys = group_keys(grads, self.key)
        if self.include_current:
            directions = [
                direction(g, [s[1] for s in m.slots], self.aggr, self.kappa)
                for g, m in zip(grads, self.memories)
            ]
        for g, k, m in zip(grads, keys, self.memories):
            m.offer(g, k)
        if not self.include_current:
            directions = [
                memory_only_direction([s[1] for s in m.slots], g, self.kappa)
                for g, m in zip(grads, self.memories)
            ]
        for m in self.memories:
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
