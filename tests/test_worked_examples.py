"""The worked examples of the method's specification, exactly."""

import math

import pytest
import torch

import critgrad

# float64 throughout; 1e-12 covers a different order of the same few additions.
TOL = dict(rtol=1e-12, atol=1e-12)


def run(opt_factory, p0, grads):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = opt_factory([p])
    trajectory = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        trajectory.append(p.detach().clone())
    return p, opt, trajectory


def test_sgd_sum_example():
    p, opt, trajectory = run(
        lambda ps: critgrad.SGD_C(ps, lr=0.1, topC=3, decay=0.5, kappa=1.0, aggr="sum"),
        [1.0, 2.0],
        [(1.0, 0.0), (0.0, 3.0)],
    )
    torch.testing.assert_close(trajectory[0], torch.tensor([0.9, 2.0], dtype=torch.float64), **TOL)
    torch.testing.assert_close(trajectory[1], torch.tensor([0.8, 1.7], dtype=torch.float64), **TOL)
    mem = opt.memory[p]
    filled = mem["critical_age"] >= 0
    assert sorted(mem["critical_priority"][filled].tolist()) == [0.25, 1.5]
    # The user's gradient is back in p.grad after the step.
    assert torch.equal(p.grad, torch.tensor([0.0, 3.0], dtype=torch.float64))


def test_adam_mean_example():
    p, _, _ = run(
        lambda ps: critgrad.Adam_C(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, topC=5),
        [0.0, 0.0],
        [(1.0, 0.0), (0.0, 2.0)],
    )
    expected = torch.tensor([-0.19321796, -0.07441368], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, atol=5e-9, rtol=0)  # the spec's 8 decimals
    # The same two steps of Adam worked out in plain floats, to 1e-12. Step 1: the memory is
    # empty, d = g = (1, 0). Step 2: mean of g and the stored (1, 0): d = (0.5, 1).
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p_hand, m, v = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for t, d in enumerate([(1.0, 0.0), (0.5, 1.0)], start=1):
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * d[i]
            v[i] = b2 * v[i] + (1 - b2) * d[i] ** 2
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p_hand[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    torch.testing.assert_close(p.detach(), torch.tensor(p_hand, dtype=torch.float64), **TOL)


@pytest.mark.parametrize(
    "key, expected", [("sum_of_norms", 15.0), ("global_norm", 125**0.5), ("per_tensor", None)]
)
def test_key_modes(key, expected):
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = critgrad.SGD([a, b], lr=0.1, topC=2, decay=1.0, key=key)
    a.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    b.grad = torch.tensor([6.0, 8.0], dtype=torch.float64)
    opt.step()
    keys = [float(opt.memory[p]["critical_priority"][0]) for p in (a, b)]
    if expected is None:
        assert keys == [5.0, 10.0]
    else:
        assert keys == pytest.approx([expected, expected], rel=1e-15)


def test_synced_flag_maps_to_key():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert critgrad.SGD_C(p, synced=True).param_groups[0]["key"] == "sum_of_norms"
    assert critgrad.SGD_C(p, synced=False).param_groups[0]["key"] == "per_tensor"
    with pytest.raises(ValueError, match="synced"):
        critgrad.SGD_C(p, synced=True, key="per_tensor")


@pytest.mark.parametrize(
    "aggr, expected",
    [
        # Memory holds (1, 0) [from step 1]; step 2's gradient is (0, 3); kappa 2.
        ("sum", [1.0 * 2, 3.0]),  # g + kappa * mean(B)
        ("mid", [1.0, 1.5]),  # (g + kappa * mean(B)) / 2
        ("mean", [1.0, 1.5]),  # (g + kappa * sum(B)) / (n + 1)
    ],
)
def test_aggregations_with_kappa(aggr, expected):
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = critgrad.SGD([p], lr=1.0, topC=4, decay=0.9, kappa=2.0, aggr=aggr)
    p.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.tensor([0.0, 3.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(
        before - p.detach(), torch.tensor(expected, dtype=torch.float64), **TOL
    )


def test_admission_replaces_smallest_only_when_strictly_greater():
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = critgrad.SGD([p], lr=0.0, topC=2, decay=1.0)
    for g in (2.0, 3.0, 2.0, 1.0, 5.0):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    mem = opt.memory[p]
    assert sorted(mem["critical_priority"].tolist()) == [3.0, 5.0]
    assert sorted(mem["critical_store"].flatten().tolist()) == [3.0, 5.0]
    stats = opt.memory_stats()[0]
    assert (stats["offered"], stats["admitted"], stats["rejected"], stats["evicted"]) == (
        5,
        3,
        2,
        1,
    )
