"""The table of base optimizers and memory options that the core tests run over."""

from __future__ import annotations

import itertools

import torch

# (id, torch class, keyword arguments): every base the memory must work with.
BASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.05)),
    (
        "sgd-momentum",
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    ),
    ("sgd-nesterov", torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd-foreach", torch.optim.SGD, dict(lr=0.05, momentum=0.9, foreach=True)),
    ("sgd-fused", torch.optim.SGD, dict(lr=0.05, momentum=0.9, fused=True)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01)),
    (
        "rmsprop-centered",
        torch.optim.RMSprop,
        dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01),
    ),
    ("adam", torch.optim.Adam, dict(lr=0.01)),
    ("adam-amsgrad", torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("adam-foreach", torch.optim.Adam, dict(lr=0.01, foreach=True)),
    ("adam-fused", torch.optim.Adam, dict(lr=0.01, fused=True)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.05)),
    ("adamax", torch.optim.Adamax, dict(lr=0.01)),
    ("nadam", torch.optim.NAdam, dict(lr=0.01)),
    ("radam", torch.optim.RAdam, dict(lr=0.01)),
]
BASE_IDS = [b[0] for b in BASES]

# Memory options: every aggregation with every key mode, several sizes and decays.
MEMORY_OPTIONS = [
    dict(aggr=aggr, key=key, topC=topC, decay=decay, kappa=kappa)
    for (aggr, key), (topC, decay, kappa) in itertools.product(
        itertools.product(("sum", "mid", "mean"), ("sum_of_norms", "per_tensor", "global_norm")),
        [(1, 0.7, 1.0), (3, 0.9, 0.5), (5, 0.0, 2.0)],
    )
]


def make_params(dtype=torch.float64, seed=0, device="cpu"):
    """Three tensors of different shapes (a weight, a bias, a conv-like kernel)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (4,), (2, 2, 3)]
    return [
        torch.nn.Parameter(
            torch.randn(s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        )
        for s in shapes
    ]


def gradient_sequence(params, steps, seed=1):
    """Per step, one gradient per parameter; norms vary so that admission goes both ways."""
    gen = torch.Generator().manual_seed(seed)
    sequence = []
    for _ in range(steps):
        scale = float(torch.rand((), generator=gen)) * 3 + 0.1
        sequence.append(
            [torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale for p in params]
        )
    return sequence


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.to(dtype=p.dtype, device=p.device).clone()
