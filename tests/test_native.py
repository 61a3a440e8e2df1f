"""The native CPU kernels (critgrad/_native.c) against the torch path they replace.

For float32 tensors on the CPU the eager step's memory work (keys, admission, coefficients,
directions, slot writes, running sums, resync, bookkeeping) runs in two or three native calls.
Every value they produce is torch's, operation for operation, but for two sums whose order is
the kernels' own: each gradient's norm (summed in float64, then rounded to float32 as torch's
is: the keys, priorities and last keys are within float32 rounding of the torch path's) and the
resync's sum over the stored rows (taken in row order). Everything else is equal bit for bit
with topC <= 2 on CPUs where torch's kernels use fused multiply-adds (AVX2, AVX-512), and within
float32 rounding everywhere else, as long as the decisions are the same: they are compared
exactly.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch
from torch import nn

import critgrad
from critgrad import _native as N
from critgrad import _state as S
from critgrad import memory as M
from critgrad._compile import LARGE
from critgrad._state import AGE, KEY, PRIORITY, SCALED_SUM, STORE

pytestmark = pytest.mark.skipif(
    not N.available(), reason=f"native kernels unavailable: {N.unavailable_reason()}"
)

# torch's CPU kernels round a * b + c once (a fused multiply-add) where they are built for these
# instruction sets; the native kernels always do. Elsewhere every such operation differs by up
# to one rounding, and 40 steps of RMSprop or Adam amplify that where a second moment is small.
FMA_IN_TORCH = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
TOLERANCE = dict(rtol=1e-5, atol=1e-6) if FMA_IN_TORCH else dict(rtol=1e-4, atol=2e-5)
# The keys (and the priorities and last keys made of them): float32 norms summed in another order.
KEYED = (PRIORITY, KEY)
KEY_TOLERANCE = dict(rtol=1e-6, atol=0.0)


class Snapshot(NamedTuple):
    values: list[torch.Tensor]  # parameters and every state tensor but the keyed ones
    keyed: list[torch.Tensor]  # priorities and last keys


def snapshot(model, opt):
    states = list(opt.state.values())
    values = [p.detach().clone() for p in model.parameters()]
    values += [
        v.clone()
        for state in states
        for name, v in state.items()
        if torch.is_tensor(v) and name not in KEYED
    ]
    keyed = [state[name].clone() for state in states for name in KEYED if name in state]
    return Snapshot(values, keyed)


def train(native, monkeypatch, steps=40, nan_at=None, threads=1, width=30, **options):
    """Parameters, every state tensor and the statistics after ``steps`` steps of a small MLP."""
    monkeypatch.setenv("CRITGRAD_NATIVE", "1" if native else "0")
    base = options.pop("base", (torch.optim.SGD, dict(lr=0.01, momentum=0.9)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 3))
    opt = critgrad.CriticalGradients(base[0](model.parameters(), **base[1]), **options)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    calls = N.calls
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(steps):
            opt.zero_grad()
            # a changing scale, so that keys rise and fall and every rule evicts
            loss = nn.functional.cross_entropy(model(x * (1 + (step % 7) * 0.3)), y)
            loss.backward()
            if step == nan_at:
                next(model.parameters()).grad[0, 0] = float("nan")
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return snapshot(model, opt), opt.memory_stats(), N.calls - calls


def same(a, b):
    return all(
        x.dtype == y.dtype
        and x.shape == y.shape
        and bool(((x == y) | (x.isnan() & y.isnan()) if x.is_floating_point() else x == y).all())
        for x, y in zip(a, b)
    ) and len(a) == len(b)


def assert_equal_or_close(native, torch_path, exact):
    """Snapshots: the values equal (``exact``, where torch fuses multiply-adds too), the keyed
    ones then within the rounding of float32 norms; else all close."""
    exact = exact and FMA_IN_TORCH
    if exact:
        assert same(native.values, torch_path.values)
    else:
        assert len(native.values) == len(torch_path.values)
        for x, y in zip(native.values, torch_path.values):
            torch.testing.assert_close(x, y, equal_nan=True, **TOLERANCE)
    assert len(native.keyed) == len(torch_path.keyed)
    for x, y in zip(native.keyed, torch_path.keyed):
        torch.testing.assert_close(x, y, equal_nan=True, **(KEY_TOLERANCE if exact else TOLERANCE))


def counts(stats):
    """The statistics that count decisions (the others are floats: priorities, keys)."""
    return [{k: v for k, v in group.items() if isinstance(v, int)} for group in stats]


def assert_same_stats(native, torch_path):
    """The same decisions (counts, ages) exactly; the priorities and keys within the rounding of
    float32 norms (and the other float statistics within torch's roundings elsewhere)."""
    assert counts(native) == counts(torch_path)
    for a, b in zip(native, torch_path):
        assert a.keys() == b.keys()
        for name, value in a.items():
            if isinstance(value, float) and name.endswith(("priority", "key")):
                assert math.isclose(value, b[name], rel_tol=1e-6), name
            elif isinstance(value, float) and not FMA_IN_TORCH:
                assert math.isclose(value, b[name], rel_tol=1e-4), name
            else:
                assert value == b[name], name


OPTIONS = [
    dict(selection=selection, key=key, aggr=aggr, topC=topC, decay=0.9, nan_at=nan_at)
    for selection, key, aggr, topC, nan_at in itertools.chain(
        itertools.product(
            ("critical", "recent", "smallest", "random"),
            ("sum_of_norms", "per_tensor", "global_norm"),
            ("mean",),
            (2,),
            (None, 7),
        ),
        itertools.product(("critical",), ("sum_of_norms",), ("sum", "mid"), (1, 2), (None,)),
    )
]


@pytest.mark.parametrize(
    "options",
    OPTIONS,
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_native_step_equals_torch_step(options, monkeypatch):
    native, native_stats, calls = train(True, monkeypatch, **options)
    torch_path, torch_stats, torch_calls = train(False, monkeypatch, **options)
    # The first step is the base's own (it creates its state): plan, directions, finish; then
    # SGD's update runs fused with the memory's: plan, then one pass.
    assert calls == 3 + 2 * 39 and torch_calls == 0
    assert_same_stats(native_stats, torch_stats)
    assert_equal_or_close(native, torch_path, exact=True)


# (base, whether its update runs fused with the memory's, whether that equals torch bit for bit)
# Adam's fused update computes the square root correctly rounded, where torch's vectorized CPU
# square root is sometimes one unit in the last place off: within rounding, not bit for bit.
BASES = [
    (torch.optim.Adam, dict(lr=0.01), True, False),
    (torch.optim.Adam, dict(lr=0.01, fused=True), True, False),
    (torch.optim.Adam, dict(lr=0.01, amsgrad=True, maximize=True, weight_decay=0.1), True, False),
    (torch.optim.Adam, dict(lr=0.01, betas=(0.6, 0.9), eps=1e-6), True, False),
    (torch.optim.AdamW, dict(lr=0.01, foreach=True, weight_decay=0.1), True, False),
    (torch.optim.AdamW, dict(lr=torch.tensor(0.01)), False, True),  # a tensor lr: not fused
    (torch.optim.RMSprop, dict(lr=0.01, centered=True), False, True),
    (torch.optim.SGD, dict(lr=0.05), True, True),
    (torch.optim.SGD, dict(lr=0.05, nesterov=True, momentum=0.9, weight_decay=0.01), True, True),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, maximize=True), True, True),
]


@pytest.mark.parametrize(
    ("base", "fused", "exact"),
    [(b[:2], b[2], b[3]) for b in BASES],
    ids=[b[0].__name__ + str(sorted(b[1].items())) for b in BASES],
)
@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_native_step_with_each_base_equals_torch_step(base, fused, exact, aggr, monkeypatch):
    native, native_stats, calls = train(True, monkeypatch, base=base, topC=2, aggr=aggr)
    torch_path, torch_stats, _ = train(False, monkeypatch, base=base, topC=2, aggr=aggr)
    assert calls == (3 + 2 * 39 if fused else 3 * 40)
    assert counts(native_stats) == counts(torch_stats)
    assert_equal_or_close(native, torch_path, exact)


@pytest.mark.parametrize(
    "options",
    [
        dict(topC=2),
        dict(topC=2, amsgrad=True, weight_decay=0.1, key="per_tensor"),
        dict(topC=2, foreach=True, maximize=True),
        dict(topC=5, decay=0.9),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_adam_cm_memory_in_native_kernels_equals_torch_path(options, monkeypatch):
    """Adam_CM's whole step in the native kernels (its memory holds momenta): within rounding of
    the torch path (torch's square root), with the same decisions."""

    def run(native):
        monkeypatch.setenv("CRITGRAD_NATIVE", "1" if native else "0")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3))
        opt = critgrad.Adam_CM(model.parameters(), lr=0.01, **options)
        x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
        calls = N.calls
        for step in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x * (1 + (step % 7) * 0.3)), y).backward()
            opt.step()
        return snapshot(model, opt), opt.memory_stats(), N.calls - calls

    native, native_stats, calls = run(True)
    torch_path, torch_stats, _ = run(False)
    assert calls == 2 * 30  # plan, then one pass
    assert counts(native_stats) == counts(torch_stats)
    assert_equal_or_close(native, torch_path, exact=False)


def test_fused_groups_and_groups_the_base_steps_together(monkeypatch):
    """A group without memory (kappa=0) is the base's; the other runs fused."""

    def run(native):
        monkeypatch.setenv("CRITGRAD_NATIVE", "1" if native else "0")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3))
        groups = [
            dict(params=model[0].parameters(), kappa=0.0),
            dict(params=model[2].parameters()),
        ]
        opt = critgrad.Adam(groups, lr=0.01, topC=2)
        x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
        calls = N.calls
        for _ in range(10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return snapshot(model, opt), opt, N.calls - calls

    native, opt, calls = run(True)
    torch_path, _, _ = run(False)
    assert calls == 3 + 2 * 9
    assert all(int(opt.state[p]["step"]) == 10 for p in opt.param_groups[0]["params"])
    assert_equal_or_close(native, torch_path, exact=False)


def test_fused_step_resumes_exactly(monkeypatch):
    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    torch.manual_seed(0)
    model = nn.Linear(20, 3)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))

    def steps(opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    start = copy.deepcopy(model.state_dict())
    opt = critgrad.AdamW(model.parameters(), lr=0.01, topC=3)
    steps(opt, 12)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(start)
    opt = critgrad.AdamW(model.parameters(), lr=0.01, topC=3)
    steps(opt, 5)
    saved = copy.deepcopy(opt.state_dict())
    opt = critgrad.AdamW(model.parameters(), lr=0.01, topC=3)
    opt.load_state_dict(saved)
    calls = N.calls
    steps(opt, 7)
    assert N.calls == calls + 2 * 7  # fused from the first step after loading
    assert same([p.detach() for p in model.parameters()], uninterrupted)


@pytest.mark.parametrize("topC", [3, 10])
def test_larger_memories_differ_only_by_the_resync_order(topC, monkeypatch):
    native, native_stats, _ = train(True, monkeypatch, topC=topC, decay=0.9)
    torch_path, torch_stats, _ = train(False, monkeypatch, topC=topC, decay=0.9)
    # the same decisions, keys and values within rounding
    assert counts(native_stats) == counts(torch_stats)
    for a, b in zip(native_stats, torch_stats):
        assert a == pytest.approx(b, rel=1e-6 if FMA_IN_TORCH else 1e-4)
    assert_equal_or_close(native, torch_path, exact=False)


def one_group_step(memories, grads, threads, key="sum_of_norms"):
    """The native kernels' step of one group, on copies of ``memories``, at ``threads``: the
    keys, the directions and the memories after it."""
    memories = [{name: t.clone() for name, t in m.items()} for m in memories]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        found = N.layout(memories)
        decided = N.plan(
            found,
            grads,
            key=key,
            selection="critical",
            seed=None,
            aggr="mean",
            kappa=1.0,
            scale=M.sum_scale(3),
        )
        directions = N.directions(grads, decided)
        N.finish(decided, M.sum_scale(3), 0.9)
    finally:
        torch.set_num_threads(previous)
    keys = torch.tensor(list(decided.keys), dtype=torch.float64)
    return [keys] + directions + [t for m in memories for t in m.values()]


def test_threads_split_the_work_without_changing_a_bit():
    # large enough that each of two threads takes a part (critgrad/_native.c: MIN_PER_THREAD)
    gen = torch.Generator().manual_seed(0)
    shapes = [(300, 500), (7,), (100_003,)]
    memories = []
    for shape in shapes:
        memory = S.new_memory(torch.zeros(shape), dict(topC=3, store_dtype=None))
        memory[STORE].normal_(generator=gen)
        memory[SCALED_SUM].normal_(generator=gen)
        memory[AGE].copy_(torch.tensor([4, 0, 7]))
        memory[PRIORITY].copy_(torch.tensor([3.0, 1.0, 2.0]))
        memories.append(memory)
    grads = [torch.randn(shape, generator=gen) for shape in shapes]
    one = one_group_step(memories, grads, threads=1)
    two = one_group_step(memories, grads, threads=2)
    assert same(one, two)  # the keys (norms summed in parallel chunks) too
    before = [t for m in memories for t in m.values()]
    assert not same(one[1 + len(grads) :], before)  # (the step changed the memories)


def exact_norm(g):
    """The L2 norm of a float32 tensor from the exact sum of its float32 squares, rounded once to
    float32 (infinite past float32's range; one element's is its absolute value, as torch's)."""
    if g.numel() == 1:
        return abs(float(g))
    total = math.fsum((g * g).double().reshape(-1).tolist())
    if total > torch.finfo(torch.float32).max:
        return math.inf
    return float(torch.tensor(math.sqrt(total), dtype=torch.float32))


@pytest.mark.parametrize("threads", [1, 2])
def test_native_keys_are_float32_norms_combined_in_float64(threads):
    """Each norm sums the float32 squares in float64 (a fixed order, whatever the threads) and is
    rounded to float32 as torch's float32 norms are: the rounding of the exact sum's root here
    (torch's own sums in float32 are off by a few roundings on large tensors); the group keys
    combine them in float64, in tensor order."""
    gen = torch.Generator().manual_seed(3)
    # several chunks of critgrad/_native.c's NORM_CHUNK, a tail, a scalar, an empty tensor
    shapes = [(1000, 300), (1,), (0,), (65_537,), (17,)]
    grads = [torch.randn(shape, generator=gen) * 10.0**k for k, shape in enumerate(shapes)]
    memories = [S.new_memory(torch.zeros(s), dict(topC=3, store_dtype=None)) for s in shapes]
    norms = [exact_norm(g) for g in grads]
    for g, norm in zip(grads, norms):
        assert math.isclose(norm, float(torch.linalg.vector_norm(g)), rel_tol=1e-5)
    expected = {
        "per_tensor": norms,
        "sum_of_norms": [math.fsum(norms)] * len(norms),
        "global_norm": [math.sqrt(sum(n * n for n in norms))] * len(norms),
    }
    for key, values in expected.items():
        keys = one_group_step(memories, grads, threads, key=key)[0].tolist()
        if key == "sum_of_norms":  # (a sum in order: within rounding of the exact sum)
            assert keys == pytest.approx(values, rel=1e-15)
            ordered = 0.0
            for norm in norms:
                ordered += norm
            assert keys == [ordered] * len(norms)
        else:
            assert keys == values


@pytest.mark.parametrize(
    ("value", "numel"),
    [
        (3e38, 4),  # the square is infinite
        (2e19, 4),  # the square too, past float32's range (4e38)
        (1.5e19, 4),  # each square within range, their sum of four not
        (1e-24, 4),  # the square vanishes in float32: a zero norm
        (3e-23, 4),  # the squares are subnormal
        (1e-19, 4),  # every square normal
        (3e38, 1),  # one element: its absolute value, in range however large or small
        (-1e-24, 1),
    ],
)
def test_native_keys_have_the_range_of_torch_norms(value, numel):
    """Zero and infinite keys where torch's float32 norms are zero and infinite (an infinite key
    is never admitted): the torch path takes the same decisions for huge and tiny gradients."""
    memories = [S.new_memory(torch.zeros(numel), dict(topC=3, store_dtype=None))]
    grads = [torch.full((numel,), value)]
    norm = float(torch.linalg.vector_norm(grads[0]))
    (key,) = one_group_step(memories, grads, threads=1, key="per_tensor")[0].tolist()
    assert key == exact_norm(grads[0])
    assert key == norm if norm in (0.0, math.inf) else math.isclose(key, norm, rel_tol=1e-6)


@pytest.mark.parametrize("scale", [1e20, 1e-24])
def test_huge_and_tiny_gradients_take_the_torch_paths_decisions(scale, monkeypatch):
    def run(native):
        monkeypatch.setenv("CRITGRAD_NATIVE", "1" if native else "0")
        p = nn.Parameter(torch.zeros(3, 4))
        opt = critgrad.SGD([p], lr=0.0, topC=2)
        gen = torch.Generator().manual_seed(0)
        for _ in range(4):
            p.grad = torch.randn(3, 4, generator=gen) * scale
            opt.step()
        return opt.memory_stats()

    native, torch_path = run(True), run(False)
    assert counts(native) == counts(torch_path)
    assert native[0]["nonfinite"] == (4 if scale > 1 else 0)


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD])
def test_fused_steps_split_across_threads_without_changing_a_bit(base):
    def run(threads):
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(300, 500)), nn.Parameter(torch.randn(7))]
        opt = critgrad.CriticalGradients(base(params, lr=0.01), topC=3)
        gen = torch.Generator().manual_seed(1)
        previous = torch.get_num_threads()
        for step in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * (1 + step % 3)
            torch.set_num_threads(threads)  # (only around the step: the norms' sums too)
            try:
                opt.step()
            finally:
                torch.set_num_threads(previous)
        return [p.detach() for p in params] + [
            v for p in params for k, v in opt.state[p].items() if k in ("exp_avg", "exp_avg_sq")
        ]

    assert same(run(1), run(2))


@pytest.mark.parametrize(
    ("numel", "compile"),
    [
        pytest.param(1000, False, id="eager"),
        # compile=True: a large sum's resync runs after the compiled step, natively
        pytest.param(LARGE, True, id="after-a-compiled-step"),
    ],
)
def test_resync_recomputes_the_sum_in_row_order(numel, compile, monkeypatch):
    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    topC = 5
    p = nn.Parameter(torch.zeros(numel))
    opt = critgrad.SGD([p], lr=0.0, topC=topC, decay=1.0, compile=compile)
    gen = torch.Generator().manual_seed(0)
    for step in range(40):  # growing keys: every gradient evicts, the sum drifts
        p.grad = torch.randn(numel, generator=gen) * (1.0 + step) ** 2
        opt.step()
    state = opt.state[p]
    scale = M.sum_scale(topC)
    exact = state[STORE][0] * scale
    for row in state[STORE][1:]:
        exact = exact + row * scale
    assert not torch.equal(state[SCALED_SUM], exact)
    calls = N.calls
    for _ in range(M.RESYNC_PER_SLOT * topC):  # all rejected: the store stays as it is
        p.grad = torch.randn(numel, generator=gen) * 1e-3
        opt.step()
    assert opt.last_step_implementation == ("compiled" if compile else "eager")
    assert N.calls >= calls + M.RESYNC_PER_SLOT * topC
    assert torch.equal(state[SCALED_SUM], exact)


def test_replaced_memory_tensors_are_used_not_the_old_ones(monkeypatch):
    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    p = nn.Parameter(torch.zeros(6))
    opt = critgrad.SGD([p], lr=0.0, topC=2)
    for step in range(3):
        p.grad = torch.full((6,), float(step + 1))
        opt.step()
    old = opt.state[p][STORE]
    opt.state[p][STORE] = old.clone()
    p.grad = torch.full((6,), 100.0)
    opt.step()
    assert 100.0 in opt.state[p][STORE]
    assert 100.0 not in old


@pytest.mark.parametrize("replace", ["object", "storage"])
def test_replaced_base_state_is_used_not_the_old_one(replace, monkeypatch):
    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    p = nn.Parameter(torch.zeros(6))
    opt = critgrad.Adam([p], lr=0.1, topC=2)
    for step in range(3):  # the first is torch's own, the others fused
        p.grad = torch.full((6,), float(step + 1))
        opt.step()
    old = opt.state[p]["exp_avg"]
    kept = old.clone()
    if replace == "object":
        opt.state[p]["exp_avg"] = old.clone()
    else:  # the same tensor object, its data elsewhere
        old.set_(old.clone())
    calls = N.calls
    p.grad = torch.full((6,), 100.0)
    opt.step()
    assert N.calls == calls + 2  # (fused)
    assert not torch.equal(opt.state[p]["exp_avg"], kept)  # the state read now was updated
    if replace == "object":
        assert torch.equal(old, kept)  # and the old tensor was not


CASES_FOR_TORCH = [
    pytest.param(dict(dtype=torch.float64), dict(), id="float64"),
    pytest.param(dict(), dict(store_dtype=torch.bfloat16), id="bfloat16-store"),
    pytest.param(dict(), dict(include_current=False), id="memory-only"),
    pytest.param(dict(transposed=True), dict(), id="non-contiguous-gradient"),
]


@pytest.mark.parametrize(("param", "options"), CASES_FOR_TORCH)
def test_what_the_kernels_do_not_take_goes_to_torch(param, options, monkeypatch):
    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    p = nn.Parameter(torch.randn(4, 3, dtype=param.get("dtype", torch.float32)))
    opt = critgrad.SGD([p], lr=0.1, topC=2, **options)
    calls = N.calls
    for step in range(4):
        g = torch.randn(3, 4, dtype=p.dtype) * (step + 1)
        p.grad = g.t() if param.get("transposed") else g.t().contiguous()
        opt.step()
    assert N.calls == calls
    assert opt.memory_stats()[0]["admitted"] > 0


def test_switched_off_and_unbuildable_the_step_takes_the_torch_path(tmp_path):
    script = (
        "import torch, critgrad\n"
        "from critgrad import _native as N\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "opt = critgrad.SGD([p], lr=0.1, topC=2)\n"
        "for _ in range(3):\n"
        "    p.grad = torch.ones(3); opt.step()\n"
        "print(N.calls, N.unavailable_reason())\n"
        "print(p.tolist())\n"
    )
    base = {**os.environ, "CRITGRAD_CACHE": str(tmp_path)}
    runs = {
        "off": {**base, "CRITGRAD_NATIVE": "0"},
        "no compiler": {**base, "CC": "false", "PATH": "/nonexistent"},
        "compiler fails": {**base, "CC": "false"},
        "on": {**base},
    }
    outputs = {}
    for name, env in runs.items():
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        outputs[name] = done.stdout.splitlines()
    assert outputs["off"][0] == "0 switched off by CRITGRAD_NATIVE=0"
    assert outputs["no compiler"][0].startswith("0 no C compiler found")
    assert outputs["compiler fails"][0].startswith("0 the native kernels could not be built")
    assert outputs["on"][0] == "7 None"  # 3 calls, then SGD fused with the memory: 2, 2
    assert len({tuple(lines[1:]) for lines in outputs.values()}) == 1  # the same parameters


def test_a_negative_view_of_a_gradient_goes_to_torch(monkeypatch):
    """A gradient whose memory holds its values with the other sign (torch's negative views) is
    read through torch, never as raw memory."""

    def run(native, negative):
        monkeypatch.setenv("CRITGRAD_NATIVE", "1" if native else "0")
        p = nn.Parameter(torch.zeros(5))
        opt = critgrad.SGD([p], lr=0.1, topC=2)
        for step in range(3):
            g = torch.arange(5.0) - step
            p.grad = torch._neg_view(-g) if negative else g
            opt.step()
        return [p.detach().clone(), opt.state[p][STORE].clone()]

    assert same(run(True, True), run(False, False))
