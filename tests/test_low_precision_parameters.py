"""Low-precision (bfloat16, float16) parameters: the base optimizer receives the memory's direction
as a gradient of the parameter's own dtype, as autograd gives it, and its state stays in that
dtype."""

import pytest
import torch
from torch import nn

import critgrad

BASES = [
    (torch.optim.Adam, dict(lr=0.01)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
]


def gradients(steps, numel, seed=0):
    """Gradient t is +-(t + 1)/8 in each element: norms that grow with t, so each new gradient
    is admitted and, once the memory is full, evicts the oldest (the smallest decayed key)."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (steps, numel), generator=gen).double() * 2 - 1
    return [signs[t] * (t + 1) / 8 for t in range(steps)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls, kwargs", BASES, ids=[cls.__name__ for cls, _ in BASES])
def test_base_steps_on_the_direction_in_the_parameter_dtype(dtype, cls, kwargs):
    # topC=2, aggr="sum", kappa=1: the direction is g + mean of the last two gradients. With the
    # gradients above it is a multiple of 1/16 below 2 in magnitude: exact in float32 (where
    # critgrad computes it) and in both dtypes (5 significant bits), so a plain base optimizer fed
    # the directions computed here in float64 is an exact oracle.
    p = nn.Parameter(torch.linspace(-1, 1, 6).to(dtype))
    twin = nn.Parameter(p.detach().clone())
    opt = critgrad.CriticalGradients(
        cls([p], **kwargs), topC=2, decay=0.5, kappa=1.0, aggr="sum", key="per_tensor"
    )
    plain = cls([twin], **kwargs)
    given = gradients(6, p.numel())
    for t, g in enumerate(given):
        memory = given[max(0, t - 2) : t]
        direction = g + sum(memory) / len(memory) if memory else g
        p.grad = g.to(dtype)
        opt.step()
        twin.grad = direction.to(dtype)
        assert torch.equal(twin.grad.double(), direction)  # exact in the dtype, as planned
        plain.step()
        assert torch.equal(p, twin), (t, p, twin)
        assert p.grad.dtype == dtype and torch.equal(p.grad.double(), g)  # the raw gradient back
    for name, value in plain.state[twin].items():  # the base's own state (momentum, moments)
        if value.is_floating_point() and value.ndim:
            assert opt.base.state[p][name].dtype == dtype, name
            assert torch.equal(opt.base.state[p][name], value), name
