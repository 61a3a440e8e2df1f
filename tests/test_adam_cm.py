"""Adam_CM's update: numbers worked out by hand, the plain-Python oracle of tests/adam_cm_oracle.py
(critgrad's variant and the authors'), kappa=0 equal to torch.optim.AdamW bit for bit, and the
for-loop and foreach implementations equal bit for bit."""

from __future__ import annotations

import pytest
import torch
from adam_cm_oracle import AdamCM
from optim_cases import gradient_sequence, make_params, set_grads

import critgrad

F64 = torch.float64


def tensor(values):
    return torch.tensor(values, dtype=F64)


# ---- worked example (float64, one one-element tensor, gradients set by hand) ---------------

# lr 1, betas (1/2, 3/4), eps 1, weight decay 1/2, topC 1, decay 1/2, kappa 2, p0 = 1;
# gradients 2, -3, 3. Bias corrections: 1 - b1^t = 1/2, 3/4, 7/8; 1 - b2^t = 1/4, 7/16, 37/64.
# Step 1: p = 1 * (1 - 1/2) = 1/2; m = 1/2 * 2 = 1; B empty: m~ = 1; v = 1/4 * 1 = 1/4;
#         denom = sqrt((1/4) / (1/4)) + 1 = 2; p = 1/2 - (1 / (1/2)) * 1 / 2 = -1/2.
#         m = 1 offered with key |2| = 2: stored, priority 2 * 1/2 = 1.
# Step 2: p = -1/4; m = 1/2 * 1 + 1/2 * -3 = -1; m~ = -1 + 2 * mean{1} = 1;
#         v = 3/4 * 1/4 + 1/4 * 1 = 7/16; denom = sqrt((7/16) / (7/16)) + 1 = 2;
#         p = -1/4 - (4/3) * 1 / 2 = -11/12.
#         m = -1 offered with key 3 > 1: replaces it, priority 3/2. (A key from |m| = 1 would be
#         rejected: 1 is not above 1.)
# Step 3: p = -11/24; m = 1/2 * -1 + 1/2 * 3 = 1; m~ = 1 + 2 * mean{-1} = -1;
#         v = 3/4 * 7/16 + 1/4 * 1 = 37/64; denom = 2; p = -11/24 + (8/7) * 1 / 2 = 19/168.
#         (Had the aggregate 1 been stored at step 2, m~ would be 3 here.)
#         m = 1 offered with key 3 > 3/2: replaces it, priority 3/2.
WORKED = dict(lr=1.0, betas=(0.5, 0.75), eps=1.0, weight_decay=0.5, topC=1, decay=0.5, kappa=2.0)
WORKED_GRADS = [2.0, -3.0, 3.0]
WORKED_TRAJECTORY = [-1 / 2, -11 / 12, 19 / 168]


@pytest.mark.parametrize("foreach", [False, True])
def test_worked_example(foreach):
    p = torch.nn.Parameter(tensor([1.0]))
    opt = critgrad.Adam_CM([p], foreach=foreach, **WORKED)
    for t, (grad, expected) in enumerate(zip(WORKED_GRADS, WORKED_TRAJECTORY)):
        p.grad = tensor([grad])
        opt.step()
        # Each number is a short chain of float64 operations on exact binary fractions.
        assert p.item() == pytest.approx(expected, rel=1e-15, abs=1e-15), f"step {t + 1}"
    state = opt.state[p]
    assert state["exp_avg"].item() == 1.0  # m_3
    assert state["exp_avg_sq"].item() == 37 / 64
    assert state["step"].item() == 3
    memory = opt.memory[p]
    assert memory["critical_store"].tolist() == [[1.0]]  # m_3, not the aggregate -1
    assert memory["critical_priority"].tolist() == [1.5]
    stats = opt.memory_stats()[0]
    assert (stats["admitted"], stats["rejected"], stats["evicted"]) == (3, 0, 2)
    assert stats["last_key"] == 3.0
    assert p.grad.item() == 3.0  # the user's gradient is untouched


def test_worked_example_in_the_oracle():
    """The hand numbers above, recomputed by the plain-Python oracle: a check of the arithmetic."""
    model = AdamCM([[1.0]], **WORKED)
    for grad, expected in zip(WORKED_GRADS, WORKED_TRAJECTORY):
        model.step([[grad]])
        assert model.params[0][0] == pytest.approx(expected, rel=1e-15)
    assert model.memories[0].entries() == [(1.5, [1.0])]


def test_first_step_moves_by_lr_g_over_one_minus_beta1_g_plus_eps():
    # With an empty memory, m~ = m_1 = (1 - b1) g and v_1 = (1 - b2) m_1^2, so the first step is
    # lr * g / ((1 - b1) |g| + eps) per element: lr / (1 - b1) = 10 lr for |g| >> eps (Adam: lr).
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = critgrad.Adam_CM([p], lr=0.01, eps=1e-8)
    g = tensor([2.0, -0.5, 1e-9])
    p.grad = g.clone()
    opt.step()
    expected = [-0.01 * x / (0.1 * abs(x) + 1e-8) for x in g.tolist()]
    torch.testing.assert_close(p.detach(), tensor(expected), rtol=1e-12, atol=0)


# ---- the oracle: critgrad's variant on random sequences ------------------------------------

ORACLE_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.02, betas=(0.8, 0.99), topC=3, decay=0.9, kappa=0.5, key="per_tensor"),
    dict(lr=0.01, weight_decay=0.1, topC=2, decay=0.5, kappa=2.0, key="global_norm"),
    dict(lr=0.01, amsgrad=True, topC=4, decay=0.0, eps=1e-3),
    dict(lr=0.005, maximize=True, weight_decay=0.01, topC=1, decay=1.0),
]
ORACLE_IDS = ["defaults", "per-tensor", "global-norm-wd", "amsgrad-decay0", "maximize-topC1"]


def flat(step):
    return [[float(x) for x in g.flatten()] for g in step]


@pytest.mark.parametrize("config", ORACLE_CONFIGS, ids=ORACLE_IDS)
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_the_oracle(config, foreach):
    params = make_params(F64)
    model = AdamCM([p.detach().flatten().tolist() for p in params], **config)
    opt = critgrad.Adam_CM(params, foreach=foreach, **config)
    for t, grads in enumerate(gradient_sequence(params, 14)):
        set_grads(params, grads)
        opt.step()
        model.step(flat(grads))
        for p, expected in zip(params, model.params):
            # float64: critgrad keeps a running sum of the store and computes m with lerp; the
            # oracle sums the entries afresh and writes b1 m + (1 - b1) g: last-bit differences.
            torch.testing.assert_close(
                p.detach().flatten(), tensor(expected), rtol=1e-10, atol=1e-12, msg=f"step {t + 1}"
            )
    for p, memory in zip(params, model.memories):
        held = opt.memory[p]["critical_age"] >= 0
        got = sorted(opt.memory[p]["critical_priority"][held].tolist())
        assert got == pytest.approx(sorted(prio for prio, _ in memory.entries()), rel=1e-12)
    stats = opt.memory_stats()[0]
    assert stats["admitted"] == sum(m.admitted for m in model.memories)
    assert stats["rejected"] == sum(m.rejected for m in model.memories)
    assert stats["evicted"] == sum(m.evicted for m in model.memories)


def test_the_oracle_sequences_evict_and_reject():
    """The sequences above exercise admission both ways (else the comparison proves little)."""
    params = make_params(F64)
    model = AdamCM([p.detach().flatten().tolist() for p in params], **ORACLE_CONFIGS[1])
    for grads in gradient_sequence(params, 14):
        model.step(flat(grads))
    assert sum(m.evicted for m in model.memories) > 0
    assert sum(m.rejected for m in model.memories) > 0
    assert min(m.closest_call for m in model.memories) > 1e-9  # no decision on a knife's edge


# ---- the authors' variant -------------------------------------------------------------------

AUTHORS_CONFIGS = [
    dict(lr=0.01, topC=3, decay=0.7, key="sum_of_norms"),
    dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.05, topC=2, decay=0.9, key="per_tensor"),
    dict(lr=0.01, amsgrad=True, topC=5, decay=0.5),
]


@pytest.mark.parametrize("config", AUTHORS_CONFIGS, ids=["synced", "layerwise-wd", "amsgrad"])
def test_equals_the_authors_variant_after_a_zero_first_gradient(config):
    """docs/method.md: with a zero first gradient and kappa 1, critgrad's Adam_CM and the authors'
    agree on every step (their first step stores g = 0 and does not move; ours stores m_1 = 0 and
    moves by 0)."""
    params = make_params(F64)
    theirs = AdamCM([p.detach().flatten().tolist() for p in params], authors=True, **config)
    ours = critgrad.Adam_CM(params, kappa=1.0, **config)
    sequence = gradient_sequence(params, 12)
    sequence[0] = [torch.zeros_like(g) for g in sequence[0]]
    for t, grads in enumerate(sequence):
        set_grads(params, grads)
        ours.step()
        theirs.step(flat(grads))
        for p, expected in zip(params, theirs.params):
            # float64; as in test_matches_the_oracle, only the association of sums differs.
            torch.testing.assert_close(
                p.detach().flatten(), tensor(expected), rtol=1e-10, atol=1e-12, msg=f"step {t + 1}"
            )
    assert ours.memory_stats()[0]["evicted"] > 0


def test_differs_from_the_authors_variant_otherwise():
    """With a nonzero first gradient the authors' first step does not move, ours does; with kappa
    other than 1 theirs adds the mean unscaled. Both change the trajectory."""
    for kappa, zero_first in ((1.0, False), (0.5, True)):
        params = make_params(F64)
        start = [p.detach().flatten().tolist() for p in params]
        theirs = AdamCM(start, authors=True, kappa=kappa, lr=0.01, topC=3)
        ours = AdamCM(start, kappa=kappa, lr=0.01, topC=3)
        sequence = gradient_sequence(params, 6)
        if zero_first:
            sequence[0] = [torch.zeros_like(g) for g in sequence[0]]
        for grads in sequence:
            theirs.step(flat(grads))
            ours.step(flat(grads))
        gap = max(abs(a - b) for pa, pb in zip(theirs.params, ours.params) for a, b in zip(pa, pb))
        assert gap > 1e-3, kappa


# ---- kappa = 0 is AdamW; the two implementations agree ------------------------------------


ADAMW_CONFIGS = [
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.0, amsgrad=True, betas=(0.8, 0.95), eps=1e-6),
    dict(lr=0.003, weight_decay=0.01, maximize=True),
]


@pytest.mark.parametrize("config", ADAMW_CONFIGS, ids=["wd", "amsgrad", "maximize"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kappa_zero_is_adamw_bit_for_bit(config, foreach, dtype):
    params_a, params_b = make_params(dtype), make_params(dtype)

    # Two groups with different learning rates; one parameter sometimes without a gradient.
    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": config["lr"] / 2}]

    plain = torch.optim.AdamW(groups(params_a), foreach=foreach, **config)
    ours = critgrad.Adam_CM(groups(params_b), foreach=foreach, kappa=0.0, topC=3, **config)
    for t, grads in enumerate(gradient_sequence(params_a, 20)):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        if t % 5 == 2:
            params_a[1].grad = params_b[1].grad = None
        plain.step()
        ours.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
        assert plain.state[a].keys() == ours.state[b].keys()
        for key, value in plain.state[a].items():
            assert torch.equal(ours.state[b][key], value), key
    assert ours.memory == {}
    assert [s["offered"] for s in ours.memory_stats()] == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_moment_is_adamws_whatever_kappa(dtype):
    """The memory never feeds back into m_t: Adam_CM's exp_avg is AdamW's on the same gradients."""
    params_a, params_b = make_params(dtype), make_params(dtype)
    plain = torch.optim.AdamW(params_a, lr=0.01, weight_decay=0.1)
    ours = critgrad.Adam_CM(params_b, lr=0.01, weight_decay=0.1, topC=3, kappa=2.0)
    for grads in gradient_sequence(params_a, 10):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        plain.step()
        ours.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(plain.state[a]["exp_avg"], ours.state[b]["exp_avg"])
        assert not torch.equal(a, b)


FOREACH_CONFIGS = [
    dict(lr=0.01, weight_decay=0.1, topC=3),
    dict(lr=0.01, amsgrad=True, maximize=True, topC=2, kappa=0.5, key="per_tensor"),
    dict(lr=0.01, topC=3, store_dtype=torch.bfloat16, key="global_norm"),
]


@pytest.mark.parametrize("config", FOREACH_CONFIGS, ids=["wd", "amsgrad-maximize", "bf16-store"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_equals_for_loop(config, dtype):
    # Same operations in the same order; on the CPU torch's foreach operations run tensor by
    # tensor, so the two paths agree bit for bit. Two groups, a parameter sometimes without grad.
    runs = []
    for foreach in (False, True):
        params = make_params(dtype)
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": config["lr"] / 2}]
        opt = critgrad.Adam_CM(groups, foreach=foreach, **config)
        for t, grads in enumerate(gradient_sequence(params, 15)):
            set_grads(params, grads)
            if t % 4 == 1:
                params[1].grad = None
            opt.step()
        runs.append((params, opt))
    (params_a, opt_a), (params_b, opt_b) = runs
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
        for key, value in opt_a.state[a].items():
            assert torch.equal(opt_b.state[b][key], value), key
    assert opt_a.memory_stats() == opt_b.memory_stats()


def test_minimises_a_quadratic():
    # (At lr 0.05 it keeps circling the minimum at a distance of a few lr: the memory's old
    # momenta, normalised by a second moment of the aggregate, keep the steps near lr in size.)
    target = torch.tensor([1.0, -2.0, 3.0])
    p = torch.nn.Parameter(torch.zeros(3))
    opt = critgrad.Adam_CM([p], lr=0.01, topC=5)
    for _ in range(1000):
        opt.zero_grad()
        (p - target).square().sum().backward()
        opt.step()
    torch.testing.assert_close(p.detach(), target, atol=1e-3, rtol=0)
