"""Promises of the README and docs/method.md, each checked through the public API only: the
classes, ``opt.memory[p]``, ``opt.memory_stats()`` and ``state_dict()``."""

from __future__ import annotations

import copy

import memory_oracle as oracle
import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads
from torch import nn

import critgrad

F64 = torch.float64

# ------------------------------------------------------------------------ create_optimizer


def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.append(frozen)
    model.double()
    with torch.no_grad():  # nonzero everywhere (LayerNorm starts at ones and zeros)
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    return model


# Names of the parameters that get weight decay: the weight matrices; biases and the LayerNorm's
# 1-d weight do not, unless decay_norm_and_bias=True. The frozen layer is never optimised.
MATRICES = {"0.weight", "2.weight"}
TRAINABLE = {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"}
WD_CASES = [
    ("sgd_c", False, MATRICES),
    ("sgd_c", True, TRAINABLE),
    ("adamw_c", False, MATRICES),
    ("adamw_c", True, TRAINABLE),
]


@pytest.mark.parametrize("name, decay_all, decayed", WD_CASES)
def test_create_optimizer_weight_decay_groups(name, decay_all, decayed):
    model = small_model()
    lr, wd = 0.1, 0.5
    opt = critgrad.create_optimizer(
        model, name, lr=lr, weight_decay=wd, decay_norm_and_bias=decay_all, topC=3
    )
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {}
    for group in opt.param_groups:
        for p in group["params"]:
            by_decay.setdefault(group["weight_decay"], set()).add(names[id(p)])
    expected = {wd: decayed} if decay_all else {wd: decayed, 0.0: TRAINABLE - decayed}
    assert by_decay == expected
    # What the groups do: with zero gradients the direction is zero, so one step only decays.
    # SGD: p - lr * (0 + wd p); AdamW: p (1 - lr wd), its Adam part moves nothing.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n in decayed:
            if name == "sgd_c":
                expected_value = before[n] - lr * (wd * before[n])
            else:
                expected_value = before[n] * (1 - lr * wd)
            torch.testing.assert_close(p.detach(), expected_value, rtol=1e-15, atol=0)
            assert not torch.equal(p.detach(), before[n])
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_create_optimizer_without_weight_decay_is_one_group():
    model = small_model()
    opt = critgrad.create_optimizer(model, "adam_c", lr=0.01)
    assert len(opt.param_groups) == 1
    assert len(opt.param_groups[0]["params"]) == len(TRAINABLE)


# ------------------------------------------------------------------------ low-precision store


def dyadic_grads(params, steps):
    """Gradients of +-(1 + k/128): exact in bfloat16 and float16, while the sum of two of them
    needs 9 significant bits, more than a bfloat16 has: a running sum kept in bfloat16 rounds."""
    sequence = []
    for t in range(steps):
        step = []
        for i, p in enumerate(params):
            k = (torch.arange(p.numel(), dtype=F64) * 37 + t * 11 + i * 5) % 128
            sign = 1 - 2 * ((torch.arange(p.numel()) + t) % 3 == 0).to(F64)
            # Norms differ from step to step (a power of two, to stay exact), so that
            # admissions go both ways.
            factor = 2.0 ** (t * 7 % 3)
            step.append((sign * (1 + k / 128) * factor).reshape(p.shape))
        sequence.append(step)
    return sequence


def memory_bytes(opt, key):
    """Bytes of the tensors under ``key`` in every parameter's memory, and of their storages."""
    tensors = [mem[key] for mem in opt.memory.values()]
    held = sum(t.numel() * t.element_size() for t in tensors)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return held, sum(storages.values())


@pytest.mark.parametrize("store_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_store_halves_the_store(store_dtype):
    topC = 4
    runs = {}
    for dtype in (None, store_dtype):
        params = make_params(torch.float32)
        opt = critgrad.Adam(params, lr=0.01, topC=topC, decay=0.9, store_dtype=dtype)
        for grads in dyadic_grads(params, 9):
            set_grads(params, grads)
            opt.step()
        runs[dtype] = (params, opt)
    n = sum(p.numel() for p in make_params())
    full_held, full_storage = memory_bytes(runs[None][1], "critical_store")
    half_held, half_storage = memory_bytes(runs[store_dtype][1], "critical_store")
    assert full_held == full_storage == topC * n * 4
    assert half_held == half_storage == topC * n * 2 == full_held // 2
    for _, opt in runs.values():  # one float32 running sum in both cases
        assert memory_bytes(opt, "critical_sum") == (n * 4, n * 4)

    params, opt = runs[store_dtype]
    assert opt.memory_stats()[0]["evicted"] > 0  # the sum went through subtractions too
    for p in params:
        mem = opt.memory[p]
        assert mem["critical_store"].dtype == store_dtype
        assert mem["critical_sum"].dtype == torch.float32
        # The running sum is exact: every stored value and every partial sum fits in float32.
        held = mem["critical_age"] >= 0
        exact = mem["critical_store"][held].to(F64).sum(0)
        assert torch.equal(mem["critical_sum"].to(F64), exact)
    # The stored gradients are gradients given, exactly (they are representable).
    given = dyadic_grads(params, 9)
    for i, p in enumerate(params):
        for entry in opt.memory[p]["critical_store"].to(F64):
            assert any(torch.equal(entry, step[i]) for step in given)


# ------------------------------------------------------------------------ GradScaler


def test_grad_scaler_normal_step_stores_the_unscaled_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 1, generator=gen)
    opt = critgrad.Adam(model.parameters(), lr=0.01, topC=3)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    scale = 2.0**10
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=1000)
    for step in range(3):
        opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        # The same gradient without scaling, from an identical copy of the model.
        twin_opt.zero_grad()
        nn.functional.mse_loss(twin(x), y).backward()
        unscaled = [p.grad.clone() for p in twin.parameters()]
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == scale  # a normal step: nothing was skipped
        for p, g in zip(model.parameters(), unscaled):
            # Scaling by a power of two is exact, so unscaling gives back the very same bits.
            assert torch.equal(p.grad, g)
            stored = opt.memory[p]["critical_store"][opt.memory[p]["critical_age"] >= 0]
            assert any(torch.equal(entry, g) for entry in stored), f"step {step}"
            assert not any(torch.equal(entry, g * scale) for entry in stored)
        # The key is the unscaled gradient's: one group, the sum of the tensors' norms.
        key = sum(float(torch.linalg.vector_norm(g.double())) for g in unscaled)
        assert opt.memory_stats()[0]["last_key"] == pytest.approx(key, rel=1e-6)
        # Keep the twin on the same parameters for the next step.
        with torch.no_grad():
            for a, b in zip(model.parameters(), twin.parameters()):
                b.copy_(a)


# ------------------------------------------------------------------------ a failing base step


class FailingSGD(torch.optim.SGD):
    fail = False

    def step(self, closure=None):
        if self.fail:
            raise RuntimeError("the base optimizer failed")
        return super().step(closure)


def wrapped_failing_sgd(params):
    return critgrad.CriticalGradients(FailingSGD(params, lr=0.1), topC=3, decay=0.8, aggr="sum")


def test_grad_is_the_users_again_when_the_base_step_raises():
    params = make_params()
    opt = wrapped_failing_sgd(params)
    grads = gradient_sequence(params, 4)
    for g in grads[:2]:  # fill the memory, so that the direction is not the gradient itself
        set_grads(params, g)
        opt.step()
    set_grads(params, grads[2])
    given = [p.grad for p in params]
    opt.base.fail = True
    with pytest.raises(RuntimeError, match="base optimizer failed"):
        opt.step()
    for p, g, raw in zip(params, given, grads[2]):
        assert p.grad is g
        assert torch.equal(p.grad, raw)


def test_a_failed_step_leaves_the_optimizer_as_it_was():
    params, twin_params = make_params(), make_params()
    opt, twin = wrapped_failing_sgd(params), wrapped_failing_sgd(twin_params)
    grads = gradient_sequence(params, 6)
    for t, g in enumerate(grads):
        if t == 3:  # a failed attempt at this step, then the same step again
            set_grads(params, g)
            opt.base.fail = True
            with pytest.raises(RuntimeError):
                opt.step()
            opt.base.fail = False
        for ps, o in ((params, opt), (twin_params, twin)):
            set_grads(ps, g)
            o.step()
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)
        for key, value in opt.memory[a].items():
            assert torch.equal(value, twin.memory[b][key]), key
    assert opt.memory_stats() == twin.memory_stats()


# ------------------------------------------------------------------------ add_param_group


ADD_GROUP_A = dict(topC=2, decay=0.5, kappa=1.0, aggr="sum", key="sum_of_norms")
ADD_GROUP_B = dict(topC=3, decay=0.8, kappa=0.5, aggr="mean", key="per_tensor")
LR_A, LR_B = 0.1, 0.05


def integer_grads(shapes, steps, seed):
    """Small integer gradients (exact norms' squares) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randint(-4, 5, s, generator=gen).to(F64) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("how", ["named", "wrapper"])
def test_add_param_group_after_steps(how):
    """Group A trains 4 steps alone, then group B joins: A's memory goes on as if nothing
    happened and B gets a memory of its own; both equal the plain model with SGD."""
    a = [
        nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64)),
        nn.Parameter(torch.zeros(3, dtype=F64)),
    ]
    b = [nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64))]
    if how == "named":
        opt = critgrad.SGD(a, lr=LR_A, **ADD_GROUP_A)
    else:
        opt = critgrad.CriticalGradients(torch.optim.SGD(a, lr=LR_A), **ADD_GROUP_A)
    grads_a = integer_grads([p.shape for p in a], 9, seed=0)
    grads_b = integer_grads([p.shape for p in b], 5, seed=1)
    model_a, model_b = oracle.Group(2, **ADD_GROUP_A), oracle.Group(1, **ADD_GROUP_B)
    expect_a = [p.detach().flatten().tolist() for p in a]
    expect_b = [p.detach().flatten().tolist() for p in b]

    def sgd(values, grads, group, lr):
        directions = group.step([g.flatten().tolist() for g in grads])
        for v, d in zip(values, directions):
            for i, x in enumerate(d):
                v[i] -= lr * x

    for t in range(9):
        if t == 4:
            opt.add_param_group({"params": b, "lr": LR_B, **ADD_GROUP_B})
            assert len(opt.param_groups) == 2 and b[0] not in opt.memory
        set_grads(a, grads_a[t])
        sgd(expect_a, grads_a[t], model_a, LR_A)
        if t >= 4:
            set_grads(b, grads_b[t - 4])
            sgd(expect_b, grads_b[t - 4], model_b, LR_B)
        opt.step()
        for params, expected in ((a, expect_a), (b, expect_b)):
            for p, want in zip(params, expected):
                got = p.detach().flatten()
                torch.testing.assert_close(
                    got, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-12
                )
    assert model_a.closest_call() > oracle.TIE_MARGIN
    assert model_b.closest_call() > oracle.TIE_MARGIN
    assert opt.memory[b[0]]["critical_store"].shape == (3, 2, 2)
    for params, model in ((a, model_a), (b, model_b)):
        for p, memory in zip(params, model.memories):
            mem = opt.memory[p]
            held = mem["critical_age"] >= 0
            got = sorted(
                zip(
                    mem["critical_priority"][held].tolist(),
                    [e.flatten().tolist() for e in mem["critical_store"][held]],
                )
            )
            want = memory.entries()
            assert [g for _, g in got] == [g for _, g in want]
            assert [pr for pr, _ in got] == pytest.approx([pr for pr, _ in want], rel=1e-12)
    stats = opt.memory_stats()
    assert [s["offered"] for s in stats] == [18, 5]
    assert [s["admitted"] for s in stats] == [
        sum(m.admitted for m in model_a.memories),
        sum(m.admitted for m in model_b.memories),
    ]
