"""The fast path equals the readable reference implementation, step by step."""

import pytest
import torch
from optim_cases import BASE_IDS, BASES, MEMORY_OPTIONS, gradient_sequence, make_params, set_grads

import critgrad
from critgrad.reference import ReferenceCriticalGradients

STEPS = 20


def build_pair(cls, kwargs, groups_options, dtype=torch.float64, store_dtype=None):
    params_fast, params_slow = make_params(dtype), make_params(dtype)
    splits = [slice(0, 2), slice(2, 3)]

    def groups(params):
        return [{"params": params[s], **opts} for s, opts in zip(splits, groups_options)]

    fast = critgrad.CriticalGradients(cls(groups(params_fast), **kwargs), store_dtype=store_dtype)
    slow_base = cls(groups(params_slow), **kwargs)
    for group, fast_group in zip(slow_base.param_groups, fast.param_groups):
        group.setdefault("store_dtype", store_dtype)
        if "selection_seed" in fast_group:  # selection="random": the same draws
            group["selection_seed"] = fast_group["selection_seed"]
    return params_fast, fast, params_slow, ReferenceCriticalGradients(slow_base)


def assert_same_run(
    params_fast,
    fast,
    params_slow,
    slow,
    steps=STEPS,
    atol=1e-12,
    rtol=1e-10,
    implementation="eager",
):
    for t, grads in enumerate(gradient_sequence(params_fast, steps)):
        set_grads(params_fast, grads)
        set_grads(params_slow, grads)
        fast.step()
        slow.step()
        if t > 0:  # (the first step, which creates the memories, is always eager)
            assert fast.last_step_implementation == implementation, f"step {t}: implementation"
        for a, b in zip(params_fast, params_slow):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=f"step {t}")
        for a, b in zip(params_fast, params_slow):
            assert torch.equal(a.grad, b.grad)
    for p_fast, p_slow in zip(params_fast, params_slow):
        mem = fast.memory[p_fast]
        held = mem["critical_age"] >= 0
        fast_entries = sorted(
            zip(
                mem["critical_priority"][held].tolist(),
                [s.flatten().tolist() for s in mem["critical_store"][held]],
            )
        )
        slow_entries = sorted((pr, g.flatten().tolist()) for pr, g in slow.entries[p_slow])
        assert len(fast_entries) == len(slow_entries)
        for (pa, ga), (pb, gb) in zip(fast_entries, slow_entries):
            assert pa == pytest.approx(pb, rel=1e-12)
            assert ga == pytest.approx(gb, rel=1e-12)


@pytest.mark.parametrize(
    "options", MEMORY_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_options_against_reference(options):
    # The second group has different options, to show that groups are independent.
    other = dict(aggr="mean", key="per_tensor", topC=2, decay=0.5, kappa=1.0)
    pair = build_pair(torch.optim.SGD, dict(lr=0.05, momentum=0.9), [options, other])
    assert_same_run(*pair)


@pytest.mark.parametrize("name, cls, kwargs", BASES, ids=BASE_IDS)
def test_bases_against_reference(name, cls, kwargs):
    options = dict(aggr="sum", key="sum_of_norms", topC=3, decay=0.7, kappa=1.0)
    pair = build_pair(cls, kwargs, [options, {**options, "aggr": "mean", "key": "per_tensor"}])
    assert_same_run(*pair)


def test_bfloat16_store_against_reference():
    options = dict(aggr="mean", key="sum_of_norms", topC=3, decay=0.8, kappa=1.0)
    params_fast, fast, params_slow, slow = build_pair(
        torch.optim.Adam,
        dict(lr=0.01),
        [options, options],
        dtype=torch.float32,
        store_dtype=torch.bfloat16,
    )
    # The sum of a bfloat16 store is exact in float32 up to float32 rounding of the sum itself.
    for grads in gradient_sequence(params_fast, STEPS):
        set_grads(params_fast, grads)
        set_grads(params_slow, grads)
        fast.step()
        slow.step()
    for a, b in zip(params_fast, params_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for p in params_fast:
        assert fast.memory[p]["critical_store"].dtype == torch.bfloat16
        assert fast.memory[p]["critical_sum"].dtype == torch.float32


def test_keys_that_tie_go_to_the_first_slot():
    p_fast = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    p_slow = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    opts = dict(topC=2, decay=1.0, kappa=1.0, aggr="sum", key="per_tensor", store_dtype=None)
    fast = critgrad.CriticalGradients(torch.optim.SGD(p_fast, lr=0.1), **opts)
    slow_base = torch.optim.SGD([{"params": p_slow, **opts}], lr=0.1)
    slow = ReferenceCriticalGradients(slow_base)
    for g in ([1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [2.0, 0.0]):
        for ps, opt in ((p_fast, fast), (p_slow, slow)):
            ps[0].grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
    torch.testing.assert_close(p_fast[0], p_slow[0], rtol=0, atol=1e-15)
    # [2, 0] replaced the first of the three tied entries: the store is ([2, 0], [0, 1]).
    assert fast.memory[p_fast[0]]["critical_store"].tolist() == [[2.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    "aggr, expected",
    [
        # Memory holds (1, 0) and (0, 3) [steps 1 and 2]; step 3's gradient is (2, 2); kappa 2.
        # mean(B) = (0.5, 1.5), sum(B) = (1, 3), n = 2.
        ("sum", [3.0, 5.0]),  # g + kappa * mean(B) = (2, 2) + (1, 3)
        ("mid", [1.5, 2.5]),  # (g + kappa * mean(B)) / 2
        ("mean", [4.0 / 3.0, 8.0 / 3.0]),  # (g + kappa * sum(B)) / (n + 1) = (4, 8) / 3
    ],
)
@pytest.mark.parametrize("implementation", [critgrad.CriticalGradients, ReferenceCriticalGradients])
def test_aggregations_of_two_stored_gradients_by_hand(aggr, expected, implementation):
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    options = dict(topC=4, decay=1.0, kappa=2.0, aggr=aggr, key="per_tensor", store_dtype=None)
    if implementation is ReferenceCriticalGradients:
        opt = implementation(torch.optim.SGD([{"params": [p], **options}], lr=1.0))
    else:
        opt = implementation(torch.optim.SGD([p], lr=1.0), **options)
    for g in ([1.0, 0.0], [0.0, 3.0]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    before = p.detach().clone()
    p.grad = torch.tensor([2.0, 2.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(
        before - p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0
    )
