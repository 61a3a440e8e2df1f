"""Adam with critical momenta once more, in plain Python floats, as an oracle for the tests.

It shares nothing with critgrad (no torch): a tensor is a flat list of floats, and the memory is
the plain model of tests/memory_oracle.py holding momenta instead of gradients. Two variants:

- ``authors=False``: critgrad's Adam_CM (docs/method.md): the first step moves like every other
  step and stores m_1; kappa scales the memory's mean.
- ``authors=True``: the authors' CMOptimizer ``Adam_CM`` as their code runs it: on a tensor's first
  step the state is created, the raw gradient g is stored (its key as usual) and neither moment
  changes, so the parameter does not move (only the weight decay applies) while the step count
  becomes 1; later steps are the same update as ours, except that any kappa > 0 adds the mean of
  the memory unscaled.
"""

from __future__ import annotations

import math

import memory_oracle as oracle


class AdamCM:
    """One parameter group: its tensors, moments and memories, stepped with gradients by hand."""

    def __init__(
        self,
        p0,
        *,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        maximize=False,
        topC=10,
        decay=0.7,
        kappa=1.0,
        key="sum_of_norms",
        authors=False,
    ):
        self.params = [list(map(float, p)) for p in p0]
        self.m = [[0.0] * len(p) for p in p0]
        self.v = [[0.0] * len(p) for p in p0]
        self.v_max = [[0.0] * len(p) for p in p0]
        self.memories = [oracle.Memory(topC) for _ in p0]
        self.t = 0
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.amsgrad, self.maximize = amsgrad, maximize
        self.decay, self.kappa, self.key, self.authors = decay, kappa, key, authors

    def step(self, grads: list[list[float]]) -> None:
        beta1, beta2 = self.betas
        self.t += 1
        t = self.t
        keys = oracle.group_keys(grads, self.key)
        weight = (1.0 if self.kappa > 0 else 0.0) if self.authors else self.kappa
        for k, (p, g) in enumerate(zip(self.params, grads)):
            m, v, v_max, memory = self.m[k], self.v[k], self.v_max[k], self.memories[k]
            for i in range(len(p)):
                p[i] *= 1 - self.lr * self.weight_decay  # decoupled decay first
            if self.authors and t == 1:
                memory.offer(list(g), keys[k])  # theirs: g stored, nothing else moves
                memory.decay(self.decay)
                continue
            stored = [entry for _, entry in memory.slots]  # B before this step's offer
            for i in range(len(p)):
                gi = -g[i] if self.maximize else g[i]
                m[i] = beta1 * m[i] + (1 - beta1) * gi
                mean = sum(entry[i] for entry in stored) / len(stored) if stored else 0.0
                aggregate = m[i] + weight * mean
                v[i] = beta2 * v[i] + (1 - beta2) * aggregate * aggregate
                v_max[i] = max(v_max[i], v[i])
                second = v_max[i] if self.amsgrad else v[i]
                denom = math.sqrt(second / (1 - beta2**t)) + self.eps
                p[i] -= self.lr / (1 - beta1**t) * aggregate / denom
            memory.offer(list(m), keys[k])  # m_t, not the aggregate
            memory.decay(self.decay)
