"""Independent oracles: numbers worked out by hand (the arithmetic is in the comments and tables),
or by the plain-Python model of tests/memory_oracle.py, never by critgrad's own helpers.

All in float64. Every gradient is a small integer vector, so norms are square roots of integers
and the hand numbers are exact fractions; 1e-12 absorbs the rounding of a different summation
order (critgrad keeps a running sum of the store; the hand numbers sum the entries afresh).
"""

from __future__ import annotations

import math

import memory_oracle as oracle
import pytest
import torch

import critgrad

F64 = torch.float64
SQ2, SQ5 = math.sqrt(2.0), math.sqrt(5.0)
TOL = dict(rtol=1e-12, atol=1e-12)


def tensor(values):
    return torch.tensor(values, dtype=F64)


def run(opt_factory, p0, grads_per_step):
    """Parameters from ``p0`` (a list of vectors), the gradients set by hand at every step."""
    params = [torch.nn.Parameter(tensor(p)) for p in p0]
    opt = opt_factory(params)
    trajectory = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = tensor(g)
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return params, opt, trajectory


def held_entries(opt, p):
    """(priority, gradient) of every entry the memory of ``p`` holds, sorted (slot order is free)."""
    mem = opt.memory[p]
    held = mem["critical_age"] >= 0
    return sorted(
        zip(
            mem["critical_priority"][held].tolist(),
            [tuple(g.tolist()) for g in mem["critical_store"][held]],
        )
    )


def assert_same_entries(got, expected):
    """Same priorities (to 1e-12) holding the same gradients (exactly: stored copies)."""
    got = sorted((prio, tuple(float(x) for x in g)) for prio, g in got)
    expected = sorted((prio, tuple(float(x) for x in g)) for prio, g in expected)
    assert len(got) == len(expected), (got, expected)
    for (prio, g), (want_prio, want_g) in zip(got, expected):
        assert prio == pytest.approx(want_prio, rel=1e-12), (got, expected)
        assert g == want_g, (got, expected)


def assert_entries(opt, p, expected):
    assert_same_entries(held_entries(opt, p), expected)


def counts(opt, group=0):
    stats = opt.memory_stats()[group]
    return stats["admitted"], stats["rejected"], stats["evicted"]


# ------------------------------------------------------------------------ aggregations, n >= 2

# SGD with lr 1 from p = (0, 0), so each step moves p by minus the direction. decay 0.5.
# Keys (L2 norms): g1 1, g2 2, g3 4*sqrt(2), g4 sqrt(5), g5 sqrt(5).
AGGR_GRADS = [(1, 0), (0, 2), (4, 4), (2, -1), (1, 2)]
# The memory B before each step, and its sum S:
# topC 4: {}, {g1}, {g1,g2} S=(1,2), {g1,g2,g3} S=(5,6), {g1..g4} S=(7,5) (n = 0, 1, 2, 3, 4).
# topC 2: the same up to step 3; g3 then evicts g1 (priority 0.25 < 4 sqrt 2), g4 evicts g2 (0.5),
#   so step 4 sees {g3, g2} S=(4,6) and step 5 sees {g3, g4} S=(6,3) (n = 2).
# sum: g + kappa S/n;  mid: (g + kappa S/n)/2;  mean: (g + kappa S)/(n + 1);  g alone when n = 0.
AGGR_CASES = [
    # (aggr, kappa, topC, the five directions)
    ("sum", 2.0, 4, [(1, 0), (2, 2), (5, 6), (16 / 3, 3), (4.5, 4.5)]),
    ("mid", 2.0, 4, [(1, 0), (1, 1), (2.5, 3), (8 / 3, 1.5), (2.25, 2.25)]),
    ("mean", 2.0, 4, [(1, 0), (1, 1), (2, 8 / 3), (3, 2.75), (3, 2.4)]),
    ("sum", 0.5, 4, [(1, 0), (0.5, 2), (4.25, 4.5), (17 / 6, 0), (1.875, 2.625)]),
    ("mid", 0.5, 4, [(1, 0), (0.25, 1), (2.125, 2.25), (17 / 12, 0), (0.9375, 1.3125)]),
    ("mean", 0.5, 4, [(1, 0), (0.25, 1), (1.5, 5 / 3), (1.125, 0.5), (0.9, 0.9)]),
    ("sum", 2.0, 2, [(1, 0), (2, 2), (5, 6), (6, 5), (7, 5)]),
    ("mid", 2.0, 2, [(1, 0), (1, 1), (2.5, 3), (3, 2.5), (3.5, 2.5)]),
    ("mean", 2.0, 2, [(1, 0), (1, 1), (2, 8 / 3), (10 / 3, 11 / 3), (13 / 3, 8 / 3)]),
    ("sum", 0.5, 2, [(1, 0), (0.5, 2), (4.25, 4.5), (3, 0.5), (2.5, 2.75)]),
    ("mid", 0.5, 2, [(1, 0), (0.25, 1), (2.125, 2.25), (1.5, 0.25), (1.25, 1.375)]),
    ("mean", 0.5, 2, [(1, 0), (0.25, 1), (1.5, 5 / 3), (4 / 3, 2 / 3), (4 / 3, 7 / 6)]),
]
# What the memory holds after step 5 (priority = key * 0.5 ** steps since stored, its own step
# included), whatever the aggregation: admission only looks at the raw gradients.
AGGR_ENTRIES = {
    4: [(SQ5 / 2, (1, 2)), (2 / 16, (0, 2)), (4 * SQ2 / 8, (4, 4)), (SQ5 / 4, (2, -1))],
    2: [(4 * SQ2 / 8, (4, 4)), (SQ5 / 2, (1, 2))],
}
# (admitted, rejected, evicted): every gradient enters; topC 4 evicts g1 at step 5, topC 2 evicts
# at steps 3, 4 and 5.
AGGR_COUNTS = {4: (5, 0, 1), 2: (5, 0, 3)}


@pytest.mark.parametrize(
    "aggr, kappa, topC, directions",
    AGGR_CASES,
    ids=[f"{a}-kappa{k}-topC{c}" for a, k, c, _ in AGGR_CASES],
)
def test_aggregation_by_hand(aggr, kappa, topC, directions):
    (p,), opt, trajectory = run(
        lambda ps: critgrad.SGD(ps, lr=1.0, topC=topC, decay=0.5, kappa=kappa, aggr=aggr),
        [(0.0, 0.0)],
        [[g] for g in AGGR_GRADS],
    )
    before = tensor([0.0, 0.0])
    for t, ((after,), d) in enumerate(zip(trajectory, directions)):
        torch.testing.assert_close(before - after, tensor(d), **TOL, msg=f"step {t + 1}")
        before = after
    assert_entries(opt, p, AGGR_ENTRIES[topC])
    assert counts(opt) == AGGR_COUNTS[topC]
    torch.testing.assert_close(p.grad, tensor(AGGR_GRADS[-1]), rtol=0, atol=0)


def test_aggregation_table_agrees_with_the_plain_model():
    """The hand table, recomputed by the plain-Python model: a check of the arithmetic above."""
    for aggr, kappa, topC, directions in AGGR_CASES:
        group = oracle.Group(1, topC=topC, decay=0.5, kappa=kappa, aggr=aggr)
        for g, d in zip(AGGR_GRADS, directions):
            (got,) = group.step([list(map(float, g))])
            assert got == pytest.approx(list(d), rel=1e-12, abs=1e-12)
        assert_same_entries(group.memories[0].entries(), AGGR_ENTRIES[topC])


# ------------------------------------------------------------------------ key modes

# Two tensors, topC 1, decay 0.5, kappa 1, aggr sum, SGD lr 1 from zero.
# step 1: a (3, 0) norm 3, b (0, 4) norm 4;  step 2: a (0, 3) norm 3, b (0, 0) norm 0;
# step 3: both zero (the direction is then the memory alone, which shows what was kept).
# sum_of_norms: key 7 -> priorities 3.5; step 2 key 3 < 3.5: both rejected.
# global_norm: key 5 -> 2.5; step 2 key 3 > 2.5: both admitted (b's zero gradient too).
# per_tensor: a 3 -> 1.5, b 4 -> 2; step 2 a 3 > 1.5 admitted, b 0 < 2 rejected.
# Step 3's key 0 is rejected everywhere. Steps 1-2 move a to (-6, -3) and b to (0, -8) in all modes.
KEY_GRADS = [[(3, 0), (0, 4)], [(0, 3), (0, 0)], [(0, 0), (0, 0)]]
KEY_CASES = [
    # (key, a after step 3, b after step 3, a's entry, b's entry, (admitted, rejected, evicted))
    ("sum_of_norms", (-9, -3), (0, -12), (7 / 8, (3, 0)), (7 / 8, (0, 4)), (2, 4, 0)),
    ("global_norm", (-6, -6), (0, -8), (3 / 4, (0, 3)), (3 / 4, (0, 0)), (4, 2, 2)),
    ("per_tensor", (-6, -6), (0, -12), (3 / 4, (0, 3)), (4 / 8, (0, 4)), (3, 3, 1)),
]


@pytest.mark.parametrize(
    "key, a_end, b_end, a_entry, b_entry, expected_counts",
    KEY_CASES,
    ids=[c[0] for c in KEY_CASES],
)
def test_key_modes_by_hand(key, a_end, b_end, a_entry, b_entry, expected_counts):
    (a, b), opt, trajectory = run(
        lambda ps: critgrad.SGD(ps, lr=1.0, topC=1, decay=0.5, kappa=1.0, aggr="sum", key=key),
        [(0.0, 0.0), (0.0, 0.0)],
        KEY_GRADS,
    )
    torch.testing.assert_close(trajectory[1][0], tensor([-6.0, -3.0]), **TOL)
    torch.testing.assert_close(trajectory[1][1], tensor([0.0, -8.0]), **TOL)
    torch.testing.assert_close(a.detach(), tensor(a_end), **TOL)
    torch.testing.assert_close(b.detach(), tensor(b_end), **TOL)
    assert_entries(opt, a, [a_entry])
    assert_entries(opt, b, [b_entry])
    assert counts(opt) == expected_counts


def test_synced_flag_is_the_key_mode():
    """The reference package's synced=True / False behave as sum_of_norms / per_tensor."""
    for synced, key in ((True, "sum_of_norms"), (False, "per_tensor")):
        case = next(c for c in KEY_CASES if c[0] == key)
        (a, b), opt, _ = run(
            lambda ps, s=synced: critgrad.SGD_C(
                ps, lr=1.0, topC=1, decay=0.5, kappa=1.0, aggr="sum", synced=s
            ),
            [(0.0, 0.0), (0.0, 0.0)],
            KEY_GRADS,
        )
        torch.testing.assert_close(a.detach(), tensor(case[1]), **TOL)
        torch.testing.assert_close(b.detach(), tensor(case[2]), **TOL)
        assert counts(opt) == case[5]


# ------------------------------------------------------------------------ worked example 3

# SGD lr 0.1, topC 2, decay 0.5, kappa 1, sum, p0 (1, 2), critical selection (docs/method.md):
# 1: g (1,0) key 1, B {} -> d (1,0); p (0.9, 2.0); stored, priority 0.5
# 2: g (0,3) key 3, B {(1,0)} -> d (1,3); p (0.8, 1.7); stored; priorities 0.25, 1.5
# 3: g (2,2) key 2.83, mean B (0.5,1.5) -> d (2.5,3.5); p (0.55, 1.35); evicts (1,0); 1.41, 0.75
# 4: g (.5,.5) key 0.71, mean B (1,2.5) -> d (1.5,3); p (0.40, 1.05); rejected (0.71 < 0.75)
# 5: g (-1,1) key 1.41, mean B (1,2.5) -> d (0,3.5); p (0.40, 0.70); evicts (0,3); 0.35, 0.71
# 6: g (.1,0) key 0.1, mean B (0.5,1.5) -> d (0.6,1.5); p (0.34, 0.55); rejected; 0.18, 0.35
EXAMPLE3_GRADS = [(1, 0), (0, 3), (2, 2), (0.5, 0.5), (-1, 1), (0.1, 0)]
EXAMPLE3_TRAJECTORY = [(0.9, 2.0), (0.8, 1.7), (0.55, 1.35), (0.4, 1.05), (0.4, 0.7), (0.34, 0.55)]


def test_worked_example_3_critical_selection():
    (p,), opt, trajectory = run(
        lambda ps: critgrad.SGD(ps, lr=0.1, topC=2, decay=0.5, kappa=1.0, aggr="sum"),
        [(1.0, 2.0)],
        [[g] for g in EXAMPLE3_GRADS],
    )
    for t, ((got,), want) in enumerate(zip(trajectory, EXAMPLE3_TRAJECTORY)):
        torch.testing.assert_close(got, tensor(want), **TOL, msg=f"step {t + 1}")
    # 2 sqrt(2) stored at step 3 and sqrt(2) at step 5, decayed 4 and 2 times.
    assert_entries(opt, p, [(SQ2 / 8, (2, 2)), (SQ2 / 4, (-1, 1))])
    assert [round(x, 7) for x in sorted(e[0] for e in held_entries(opt, p))] == [
        0.1767767,
        0.3535534,
    ]
    assert counts(opt) == (4, 2, 2)


# ------------------------------------------------------------------------ the named classes

# Two tensors, 14 steps of small integer gradients: the memory (topC 10 by default) fills and
# evicts, and each default (topC 10, decay 0.7, kappa 1, sum_of_norms, aggr) changes the
# directions if it is changed (test_default_sequence_tells_the_defaults_apart checks that).
DEFAULTS_GRADS = [
    [[-4, -2], [-3, 0, 2]],
    [[-4, 2], [0, -3, -4]],
    [[-4, 3], [-1, -2, -2]],
    [[-3, -3], [4, -1, -1]],
    [[-1, 0], [1, 2, 0]],
    [[4, 4], [3, -4, 0]],
    [[4, -2], [3, -3, 2]],
    [[-3, -4], [1, -4, 3]],
    [[-4, 4], [4, -2, -2]],
    [[0, -3], [-4, -4, 4]],
    [[-2, 2], [4, 3, 2]],
    [[0, -3], [-1, 0, -4]],
    [[1, 3], [-2, 0, 4]],
    [[4, 4], [1, -2, 4]],
]
DEFAULTS_P0 = [(0.5, -1.0), (1.5, 0.25, -0.75)]
METHOD_DEFAULTS = dict(topC=10, decay=0.7, kappa=1.0, key="sum_of_norms")
# The reference package's defaults (docs/method.md, README "Migrating"): sum for SGD, mean for
# RMSprop, Adam and AdamW; critgrad's other classes take mean too.
NAMED = [
    ("SGD", torch.optim.SGD, "sum"),
    ("SGD_C", torch.optim.SGD, "sum"),
    ("RMSprop", torch.optim.RMSprop, "mean"),
    ("RMSprop_C", torch.optim.RMSprop, "mean"),
    ("Adam", torch.optim.Adam, "mean"),
    ("Adam_C", torch.optim.Adam, "mean"),
    ("AdamW", torch.optim.AdamW, "mean"),
    ("AdamW_C", torch.optim.AdamW, "mean"),
    ("Adagrad", torch.optim.Adagrad, "mean"),
    ("Adamax", torch.optim.Adamax, "mean"),
    ("NAdam", torch.optim.NAdam, "mean"),
    ("RAdam", torch.optim.RAdam, "mean"),
]


def float_grads(step):
    return [[float(x) for x in g] for g in step]


@pytest.mark.parametrize("name, base, aggr", NAMED, ids=[n for n, _, _ in NAMED])
def test_named_class_defaults(name, base, aggr):
    """Built with no argument but the parameters, the class is torch's optimizer (its defaults)
    stepping on the directions of the plain model with the method's defaults and ``aggr``."""
    cls = getattr(critgrad, name)
    ours_params = [torch.nn.Parameter(tensor(p)) for p in DEFAULTS_P0]
    ours = cls(ours_params)
    torch_params = [torch.nn.Parameter(tensor(p)) for p in DEFAULTS_P0]
    plain = base(torch_params)
    model = oracle.Group(len(DEFAULTS_P0), aggr=aggr, **METHOD_DEFAULTS)
    for t, step in enumerate(DEFAULTS_GRADS):
        grads = float_grads(step)
        for p, d in zip(torch_params, model.step(grads)):
            p.grad = tensor(d)
        plain.step()
        for p, g in zip(ours_params, grads):
            p.grad = tensor(g)
        ours.step()
        for a, b in zip(ours_params, torch_params):
            torch.testing.assert_close(a.detach(), b.detach(), **TOL, msg=f"{name} step {t + 1}")
    assert model.closest_call() > oracle.TIE_MARGIN
    group = ours.param_groups[0]
    assert {k: group[k] for k in (*METHOD_DEFAULTS, "aggr")} == {**METHOD_DEFAULTS, "aggr": aggr}
    assert group["lr"] == plain.param_groups[0]["lr"]
    for p, memory in zip(ours_params, model.memories):
        assert_entries(ours, p, memory.entries())


@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_default_sequence_tells_the_defaults_apart(aggr):
    """Changing any one default changes the directions of the sequence above by a lot."""
    reference = oracle.Group(2, aggr=aggr, **METHOD_DEFAULTS)
    expected = [reference.step(float_grads(s)) for s in DEFAULTS_GRADS]
    other_aggr = "mean" if aggr == "sum" else "sum"
    alternatives = [
        dict(topC=9),
        dict(topC=11),
        dict(decay=0.6),
        dict(decay=0.8),
        dict(kappa=0.9),
        dict(key="per_tensor"),
        dict(key="global_norm"),
        dict(aggr="mid"),
        dict(aggr=other_aggr),
    ]
    for change in alternatives:
        group = oracle.Group(2, **{**METHOD_DEFAULTS, "aggr": aggr, **change})
        got = [group.step(float_grads(s)) for s in DEFAULTS_GRADS]
        gap = max(
            abs(x - y)
            for step_a, step_b in zip(expected, got)
            for da, db in zip(step_a, step_b)
            for x, y in zip(da, db)
        )
        assert gap > 0.1, change
