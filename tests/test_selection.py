"""The memory's variants (docs/method.md, "Variants"): the selection rules ``recent``, ``smallest``
and ``random``, and the memory-only direction (``include_current=False``).

Worked examples by hand (the arithmetic is in the comments), checked against critgrad, the
reference implementation and the plain-Python model of tests/memory_oracle.py; then every fast
path against the reference, resume, kappa=0, the defaults, the random draws, tracing and
validation. All worked examples in float64; 1e-12 absorbs a different summation order (critgrad
keeps a running sum of the store, the hand numbers sum the entries afresh).
"""

from __future__ import annotations

import io
import itertools
import math
import warnings

import memory_oracle as oracle
import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads
from test_oracles import EXAMPLE3_GRADS, assert_entries, counts, run, tensor
from test_reference_equivalence import assert_same_run, build_pair

import critgrad
from critgrad import memory as M
from critgrad._compile import CompiledStep
from critgrad.reference import ReferenceCriticalGradients

F64 = torch.float64
SQ2 = math.sqrt(2.0)
TOL = dict(rtol=1e-12, atol=1e-12)
RULES = ["critical", "recent", "smallest", "random"]
VARIANTS = list(itertools.product(RULES, [True, False]))
VARIANT_IDS = [f"{s}-{'with' if c else 'without'}-current" for s, c in VARIANTS]

# ------------------------------------------------------------------------ worked example 3

# SGD lr 0.1, topC 2, decay 0.5, kappa 1, aggr sum, p0 (1, 2); grads g1 (1,0) key 1, g2 (0,3)
# key 3, g3 (2,2) key 2.83, g4 (.5,.5) key 0.71, g5 (-1,1) key 1.41, g6 (.1,0) key 0.1.
# Steps 1-2 fill the memory under every rule (priorities then g1 0.25, g2 1.5); from step 3 it
# is full. With the current gradient, d = g + mean(B before); memory-only, d = mean(B after).
#
# recent (FIFO), with g:
# 3: B {g1,g2} mean (.5,1.5): d (2.5,3.5), p (0.55,1.35); g3 replaces the oldest, g1
# 4: B {g3,g2} mean (1,2.5): d (1.5,3), p (0.40,1.05); g4 replaces g2
# 5: B {g3,g4} mean (1.25,1.25): d (.25,2.25), p (0.375,0.825); g5 replaces g3
# 6: B {g5,g4} mean (-.25,.75): d (-.15,.75), p (0.39,0.75); g6 replaces g4
# held: g5 sqrt2 * .5^2, g6 0.1 * .5; 6 admitted, 4 evicted.
#
# smallest, with g (replace the largest priority iff the key is smaller):
# 3: d (2.5,3.5), p (0.55,1.35); 2.83 > 1.5 (g2): rejected; priorities g1 .125, g2 .75
# 4: B {g1,g2} mean (.5,1.5): d (1,2), p (0.45,1.15); .71 < .75: g4 replaces g2; g1 .0625, g4 .35
# 5: B {g1,g4} mean (.75,.25): d (-.25,1.25), p (0.475,1.025); 1.41 > .35 rejected; .03125, .18
# 6: d (.85,.25), p (0.39,1.0); .1 < .18: g6 replaces g4; held g1 1/64, g6 .05
#
# random with seed 1: the slots drawn at offers 2, 3, 4, 5 (steps 3-6) are 1, 0, 0, 1
# (test_generator_of_the_worked_example pins them):
# 3: d (2.5,3.5), p (0.55,1.35); g3 into slot 1 (g2 out): B {g1, g3}
# 4: mean (1.5,1): d (2,1.5), p (0.35,1.2); g4 into slot 0 (g1 out): B {g4, g3}
# 5: mean (1.25,1.25): d (.25,2.25), p (0.325,0.975); g5 into slot 0: B {g5, g3}
# 6: mean (.5,1.5): d (.6,1.5), p (0.265,0.825); g6 into slot 1: held g5 sqrt2/4, g6 .05
#
# critical, memory only (the same admissions as worked example 3 with g):
# 1: B {g1}: d (1,0), p (0.9,2); 2: B {g1,g2}: d (.5,1.5), p (0.85,1.85)
# 3: g3 evicts g1, B {g3,g2}: d (1,2.5), p (0.75,1.6); 4: g4 rejected: d (1,2.5), p (0.65,1.35)
# 5: g5 evicts g2, B {g3,g5}: d (.5,1.5), p (0.60,1.20); 6: g6 rejected: p (0.55,1.05)
#
# recent, memory only: 3: B {g3,g2}: d (1,2.5), p (0.75,1.6); 4: B {g3,g4}: d (1.25,1.25),
# p (0.625,1.475); 5: B {g5,g4}: d (-.25,.75), p (0.65,1.4); 6: B {g5,g6}: d (-.45,.5),
# p (0.695,1.35)
#
# smallest, memory only: 3: rejected, B {g1,g2}: d (.5,1.5), p (0.80,1.70); 4: g4 replaces g2,
# B {g1,g4}: d (.75,.25), p (0.725,1.675); 5: rejected: p (0.65,1.65); 6: g6 replaces g4,
# B {g1,g6}: d (.55,0), p (0.595,1.65)
#
# random (seed 1), memory only: 3: B {g1,g3}: d (1.5,1), p (0.70,1.75); 4: B {g4,g3}:
# d (1.25,1.25), p (0.575,1.625); 5: B {g5,g3}: d (.5,1.5), p (0.525,1.475); 6: B {g5,g6}:
# d (-.45,.5), p (0.57,1.425)
START = [(0.9, 2.0), (0.8, 1.7)]  # steps 1-2 with the current gradient, any rule
START_ONLY = [(0.9, 2.0), (0.85, 1.85)]  # memory only
# The entries held at the end, and their ages (steps since stored, the step itself included).
LAST_TWO = [(SQ2 / 4, (-1, 1)), (0.05, (0.1, 0))], [1, 2]  # g5 and g6
OLDEST_AND_LAST = [(1 / 64, (1, 0)), (0.05, (0.1, 0))], [1, 6]  # g1 and g6
EXAMPLE3 = [
    # (selection, include_current, trajectory, (held entries, their ages),
    #  (admitted, rejected, evicted))
    (
        "recent",
        True,
        START + [(0.55, 1.35), (0.4, 1.05), (0.375, 0.825), (0.39, 0.75)],
        LAST_TWO,
        (6, 0, 4),
    ),
    (
        "smallest",
        True,
        START + [(0.55, 1.35), (0.45, 1.15), (0.475, 1.025), (0.39, 1.0)],
        OLDEST_AND_LAST,
        (4, 2, 2),
    ),
    (
        "random",
        True,
        START + [(0.55, 1.35), (0.35, 1.2), (0.325, 0.975), (0.265, 0.825)],
        LAST_TWO,
        (6, 0, 4),
    ),
    (
        "critical",
        False,
        START_ONLY + [(0.75, 1.6), (0.65, 1.35), (0.6, 1.2), (0.55, 1.05)],
        ([(SQ2 / 8, (2, 2)), (SQ2 / 4, (-1, 1))], [2, 4]),  # g3 and g5
        (4, 2, 2),
    ),
    (
        "recent",
        False,
        START_ONLY + [(0.75, 1.6), (0.625, 1.475), (0.65, 1.4), (0.695, 1.35)],
        LAST_TWO,
        (6, 0, 4),
    ),
    (
        "smallest",
        False,
        START_ONLY + [(0.8, 1.7), (0.725, 1.675), (0.65, 1.65), (0.595, 1.65)],
        OLDEST_AND_LAST,
        (4, 2, 2),
    ),
    (
        "random",
        False,
        START_ONLY + [(0.7, 1.75), (0.575, 1.625), (0.525, 1.475), (0.57, 1.425)],
        LAST_TWO,
        (6, 0, 4),
    ),
]
EXAMPLE3_IDS = [f"{s}-{'with' if c else 'without'}-current" for s, c, *_ in EXAMPLE3]
EXAMPLE3_SEED = 1
EXAMPLE3_DRAWS = [1, 0, 0, 1]  # the slots drawn at offers 2, 3, 4, 5 with seed 1


def example3_options(selection, include_current):
    return dict(
        lr=0.1,
        topC=2,
        decay=0.5,
        kappa=1.0,
        aggr="sum",
        selection=selection,
        include_current=include_current,
    )


@pytest.mark.parametrize(
    "selection, include_current, trajectory, held, counted", EXAMPLE3, ids=EXAMPLE3_IDS
)
def test_worked_example_3_by_hand(selection, include_current, trajectory, held, counted):
    options = example3_options(selection, include_current)
    (p,), opt, got = run(
        lambda ps: critgrad.SGD([{"params": ps, "selection_seed": EXAMPLE3_SEED}], **options),
        [(1.0, 2.0)],
        [[g] for g in EXAMPLE3_GRADS],
    )
    for t, ((after,), want) in enumerate(zip(got, trajectory)):
        torch.testing.assert_close(after, tensor(want), **TOL, msg=f"step {t + 1}")
    entries, ages = held
    assert_entries(opt, p, entries)
    assert counts(opt) == counted
    # Priorities decayed once per step and ages advanced the same way under every rule.
    assert sorted(opt.memory[p]["critical_age"].tolist()) == ages


@pytest.mark.parametrize(
    "selection, include_current, trajectory, held, counted", EXAMPLE3, ids=EXAMPLE3_IDS
)
def test_worked_example_3_reference(selection, include_current, trajectory, held, counted):
    options = example3_options(selection, include_current)
    p = torch.nn.Parameter(tensor([1.0, 2.0]))
    lr = options.pop("lr")
    group = {"params": [p], "store_dtype": None, "key": "sum_of_norms", **options}
    opt = ReferenceCriticalGradients(
        torch.optim.SGD([{**group, "selection_seed": EXAMPLE3_SEED}], lr=lr)
    )
    for g, want in zip(EXAMPLE3_GRADS, trajectory):
        p.grad = tensor(g)
        opt.step()
        torch.testing.assert_close(p.detach(), tensor(want), **TOL)
    got = sorted((prio, tuple(g.tolist())) for prio, g in opt.entries[p])
    want = sorted((prio, tuple(map(float, g))) for prio, g in held[0])
    assert [g for _, g in got] == [g for _, g in want]
    assert [prio for prio, _ in got] == pytest.approx([prio for prio, _ in want], rel=1e-12)


@pytest.mark.parametrize(
    "selection, include_current, trajectory, held, counted", EXAMPLE3, ids=EXAMPLE3_IDS
)
def test_worked_example_3_table_agrees_with_the_plain_model(
    selection, include_current, trajectory, held, counted
):
    """The hand table, recomputed by the plain-Python model: a check of the arithmetic above."""
    options = example3_options(selection, include_current)
    lr = options.pop("lr")
    got, group = oracle.sgd_trajectory(
        [(1.0, 2.0)],
        [[list(map(float, g))] for g in EXAMPLE3_GRADS],
        lr,
        seed=EXAMPLE3_SEED,
        **options,
    )
    for (after,), want in zip(got, trajectory):
        assert after == pytest.approx(list(want), rel=1e-12, abs=1e-12)
    (memory,) = group.memories
    assert [p for p, _ in memory.entries()] == pytest.approx(sorted(p for p, _ in held[0]))
    assert sorted(memory.ages) == held[1]
    assert (memory.admitted, memory.rejected, memory.evicted) == counted
    assert group.closest_call() > oracle.TIE_MARGIN
    if selection == "random":
        assert memory.draws == EXAMPLE3_DRAWS


def test_generator_of_the_worked_example():
    """Seed 1 draws slots 1, 0, 0, 1 at offers 2-5 of a memory of two (stream 0): critgrad's
    tensor arithmetic and the plain-Python model agree."""
    counters = torch.arange(2, 6)
    drawn = M.random_slots(EXAMPLE3_SEED, torch.zeros_like(counters), counters, 2)
    assert drawn.tolist() == EXAMPLE3_DRAWS
    assert [oracle.random_slot(EXAMPLE3_SEED, 0, c, 2) for c in range(2, 6)] == EXAMPLE3_DRAWS


# ------------------------------------------------------------------------ memory only, example 1

# Worked example 1 (SGD lr 0.1, topC 3, decay 0.5, p0 (1, 2); grads (1,0) then (0,3)), memory
# only: step 1's memory after the offer is {(1,0)}: d = kappa (1,0); step 2's is {(1,0), (0,3)}:
# d = kappa (.5,1.5). kappa 1: p (0.9, 2.0) then (0.85, 1.85); kappa 2: (0.8, 2.0) then (0.7, 1.7).
# Priorities {0.25, 1.5}, as with the current gradient (admission does not change).
EXAMPLE1_ONLY = [(1.0, [(0.9, 2.0), (0.85, 1.85)]), (2.0, [(0.8, 2.0), (0.7, 1.7)])]


@pytest.mark.parametrize("kappa, trajectory", EXAMPLE1_ONLY)
@pytest.mark.parametrize("aggr", ["sum", "mid", "mean"])
def test_memory_only_worked_example_1(kappa, trajectory, aggr):
    (p,), opt, got = run(
        lambda ps: critgrad.SGD(
            ps, lr=0.1, topC=3, decay=0.5, kappa=kappa, aggr=aggr, include_current=False
        ),
        [(1.0, 2.0)],
        [[(1.0, 0.0)], [(0.0, 3.0)]],
    )
    for t, ((after,), want) in enumerate(zip(got, trajectory)):
        # aggr does not apply: every aggregation gives the hand numbers.
        torch.testing.assert_close(after, tensor(want), **TOL, msg=f"step {t + 1}")
    assert_entries(opt, p, [(0.25, (1, 0)), (1.5, (0, 3))])


def test_memory_only_ignores_a_nonfinite_gradient_once_the_memory_holds_one():
    """A non-finite gradient never enters, so the memory-only direction stays the mean of what
    the memory holds; while nothing was ever admitted the direction is the gradient itself."""
    p = torch.nn.Parameter(tensor([1.0, 2.0]))
    opt = critgrad.SGD([p], lr=0.1, topC=3, decay=0.5, include_current=False)
    for g, want in (
        ((1.0, 0.0), (0.9, 2.0)),  # stored; d = (1, 0)
        ((math.inf, 0.0), (0.8, 2.0)),  # not stored; d = mean {(1, 0)}
        ((math.nan, 5.0), (0.7, 2.0)),  # not stored; d = mean {(1, 0)}
        ((0.0, 3.0), (0.65, 1.85)),  # stored; d = mean {(1, 0), (0, 3)}
    ):
        p.grad = tensor(g)
        opt.step()
        torch.testing.assert_close(p.detach(), tensor(want), **TOL)
    assert opt.memory_stats()[0]["nonfinite"] == 2
    q = torch.nn.Parameter(tensor([1.0, 2.0]))
    opt = critgrad.SGD([q], lr=0.1, include_current=False)
    q.grad = tensor([math.nan, 1.0])
    opt.step()  # nothing admitted: d = g
    torch.testing.assert_close(q.detach(), tensor([math.nan, 1.9]), equal_nan=True, **TOL)
    assert opt.memory_stats()[0]["filled"] == 0


# ------------------------------------------------------------------------ the random draws


def test_draws_agree_with_plain_python():
    """The device arithmetic (int64 tensors, no intermediate beyond 2^49) equals the model's
    Python integers, for 64-bit seeds, large streams and counters beyond 2^32."""
    streams = [0, 1, 7, 2**32 - 1]
    counters = [0, 1, 2, 2**31, 2**32 - 1, 2**32, 2**40 + 3, 2**62]
    grid = list(itertools.product(streams, counters))
    stream_t = torch.tensor([s for s, _ in grid])
    counter_t = torch.tensor([c for _, c in grid])
    for seed in (0, 1, 12345, 2**32 - 1, 2**32, 2**63 - 2, 2**64 - 1):
        for capacity in (1, 2, 3, 10, 1000):
            got = M.random_slots(seed, stream_t, counter_t, capacity).tolist()
            want = [oracle.random_slot(seed, s, c, capacity) for s, c in grid]
            assert got == want, (seed, capacity)
    assert M.random_slots(5, stream_t, counter_t, 1).eq(0).all()


@pytest.mark.parametrize("capacity", [3, 10])
def test_draws_are_uniform(capacity):
    """30000 consecutive offers of one memory: every slot drawn about equally often (Pearson's
    chi-square below its 0.1 % critical value: 13.8 for 2 degrees of freedom, 27.9 for 9). The
    draws are a fixed function of seed and counter, so this cannot fail by chance."""
    n = 30000
    counters = torch.arange(n)
    drawn = M.random_slots(2024, torch.zeros_like(counters), counters, capacity)
    observed = torch.bincount(drawn, minlength=capacity).double()
    expected = n / capacity
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < {3: 13.8, 10: 27.9}[capacity]
    # And successive draws are not tied to each other: repeats as often as chance has them.
    repeats = float((drawn[1:] == drawn[:-1]).double().mean())
    assert repeats == pytest.approx(1 / capacity, abs=0.01)


def random_run(seed=None, key="sum_of_norms", steps=12, **kwargs):
    """Three tensors, SGD with the random rule, topC 3; returns the optimizer."""
    if seed is not None:
        torch.manual_seed(seed)
    params = make_params()
    opt = critgrad.SGD(params, lr=0.05, topC=3, key=key, selection="random", **kwargs)
    for grads in gradient_sequence(params, steps):
        set_grads(params, grads)
        opt.step()
    return opt


def stores(opt):
    return [m["critical_store"].clone() for m in opt.memory.values()]


def test_manual_seed_makes_random_runs_repeatable():
    first, again, other = random_run(seed=0), random_run(seed=0), random_run(seed=1)
    assert first.param_groups[0]["selection_seed"] == again.param_groups[0]["selection_seed"]
    assert all(torch.equal(a, b) for a, b in zip(stores(first), stores(again)))
    assert first.param_groups[0]["selection_seed"] != other.param_groups[0]["selection_seed"]
    assert not all(torch.equal(a, b) for a, b in zip(stores(first), stores(other)))


def test_group_keys_draw_one_slot_for_the_group_and_per_tensor_keys_one_each():
    """With a key per group, the group's memories hold the same steps in the same slots; with
    per-tensor keys each tensor draws from its own stream (the model's draws, slot by slot)."""
    for key, same in (("sum_of_norms", True), ("global_norm", True), ("per_tensor", False)):
        opt = random_run(seed=3, key=key, steps=10)
        seed = opt.param_groups[0]["selection_seed"]
        ages = [m["critical_age"] for m in opt.memory.values()]
        assert all(torch.equal(ages[0], a) for a in ages) == same, key
        for stream, age in enumerate(ages):
            # Replay: full from offer 3 on; every offer enters (the gradients are finite).
            slots = [0, 1, 2] + [
                oracle.random_slot(seed, 0 if same else stream, c, 3) for c in range(3, 10)
            ]
            expected = [-1, -1, -1]
            for step, slot in enumerate(slots):
                expected[slot] = 10 - step  # the age at the end of step 10
            assert age.tolist() == expected, (key, stream)


def test_seed_is_drawn_only_for_the_random_rule():
    """Building and stepping with the other rules leaves torch's global generator as it was (a
    training script's later draws do not change); the random rule draws one seed per group at
    construction, or at the first step after a group is switched to it."""
    state = torch.get_rng_state()
    params = make_params()
    opt = critgrad.Adam([{"params": params[:2]}, {"params": params[2:], "selection": "recent"}])
    for grads in gradient_sequence(params, 3):
        set_grads(params, grads)
        opt.step()
    assert torch.equal(torch.get_rng_state(), state)
    assert all("selection_seed" not in g for g in opt.param_groups)
    opt.param_groups[1]["selection"] = "random"
    opt.step()
    assert "selection_seed" not in opt.param_groups[0]
    torch.set_rng_state(state)
    assert opt.param_groups[1]["selection_seed"] == int(torch.randint(0, 2**63 - 1, ()))
    explicit = critgrad.SGD([{"params": make_params(), "selection_seed": 7}], selection="random")
    assert explicit.param_groups[0]["selection_seed"] == 7


# ------------------------------------------------------------------------ against the reference


@pytest.mark.parametrize("selection, include_current", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("key", ["sum_of_norms", "per_tensor", "global_norm"])
def test_variants_against_reference(selection, include_current, key):
    # topC 1, 3: full after one or three steps; the second group has other options.
    groups = [
        dict(aggr="sum", key=key, topC=3, decay=0.7, kappa=1.0),
        dict(aggr="mean", key="per_tensor", topC=1, decay=0.9, kappa=0.5),
    ]
    for group in groups:
        group.update(selection=selection, include_current=include_current)
    pair = build_pair(torch.optim.SGD, dict(lr=0.05, momentum=0.9), groups)
    assert_same_run(*pair)


BASES = [
    (torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    (torch.optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.5)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, foreach=True)),
]


@pytest.mark.parametrize("cls, kwargs", BASES, ids=[c.__name__ for c, _ in BASES])
@pytest.mark.parametrize("selection, include_current", VARIANTS, ids=VARIANT_IDS)
def test_variants_with_other_bases_against_reference(cls, kwargs, selection, include_current):
    options = dict(aggr="mean", key="per_tensor", topC=2, decay=0.8, kappa=1.5)
    options.update(selection=selection, include_current=include_current)
    pair = build_pair(cls, kwargs, [options, {**options, "key": "sum_of_norms", "topC": 4}])
    assert_same_run(*pair)


def test_bfloat16_store_memory_only_against_reference():
    options = dict(aggr="sum", key="sum_of_norms", topC=3, decay=0.8, kappa=1.0)
    options.update(selection="random", include_current=False)
    params_fast, fast, params_slow, slow = build_pair(
        torch.optim.SGD,
        dict(lr=0.05),
        [options, options],
        dtype=torch.float32,
        store_dtype=torch.bfloat16,
    )
    for grads in gradient_sequence(params_fast, 16):
        set_grads(params_fast, grads)
        set_grads(params_slow, grads)
        fast.step()
        slow.step()
    # The direction is the mean of the bfloat16 entries, summed in float32 by both.
    for a, b in zip(params_fast, params_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture
def float64_default():
    # As in test_compiled.py: compiled bias corrections are computed in the default dtype.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_compiled_variants_against_reference(float64_default, monkeypatch):
    """compile=True, one optimizer whose groups take every rule, with and without the current
    gradient: equal to the reference (the random draws included, so the entries are the same)."""
    shapes = [(3, 2), (4,), (2, 2), (3,), (5,)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
    groups = [
        ([0], dict(selection="critical", include_current=False, key="sum_of_norms", aggr="sum")),
        ([1], dict(selection="recent", include_current=True, key="per_tensor", aggr="mean")),
        ([2], dict(selection="smallest", include_current=False, key="global_norm", aggr="mid")),
        ([3, 4], dict(selection="random", include_current=True, key="per_tensor", aggr="sum")),
    ]

    def build(params, cls):
        param_groups = [
            {"params": [params[i] for i in index], "topC": 2, "decay": 0.8, "kappa": 1.0, **o}
            for index, o in groups
        ]
        return cls(torch.optim.Adam(param_groups, lr=0.01))

    params_fast = [torch.nn.Parameter(t.clone()) for t in init]
    params_slow = [torch.nn.Parameter(t.clone()) for t in init]
    fast = build(params_fast, lambda base: critgrad.CriticalGradients(base, compile=True))
    slow = build(params_slow, ReferenceCriticalGradients)
    for group in slow.optimizer.param_groups:
        group.setdefault("store_dtype", None)
    seed = fast.param_groups[3]["selection_seed"]
    slow.optimizer.param_groups[3]["selection_seed"] = seed
    # How many compiled runs came before each compilation: none (dynamo may call the compiler
    # more than once for the one graph, restarting its analysis); draws and admissions that
    # change later must not compile again.
    compiled_before = []
    count = CompiledStep._count_compile

    def counting(self):
        compiled_before.append(self.runs)
        count(self)

    monkeypatch.setattr(CompiledStep, "_count_compile", counting)
    # Inductor computes the float64 formulas in another order: differences of a few ulps.
    assert_same_run(
        params_fast,
        fast,
        params_slow,
        slow,
        steps=12,
        atol=1e-11,
        rtol=1e-9,
        implementation="compiled",
    )
    assert compiled_before and set(compiled_before) == {0}, compiled_before
    assert fast._compiled.runs >= 11  # every step after the first ran compiled graphs
    assert fast.memory_stats()[3]["evicted"] > 0


# ------------------------------------------------------------------------ resume, kappa=0, defaults


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("selection, include_current", VARIANTS, ids=VARIANT_IDS)
def test_resume_equals_never_stopping(selection, include_current):
    key = "per_tensor" if selection == "random" else "sum_of_norms"
    options = dict(lr=0.01, topC=3, decay=0.8, key=key)
    options.update(selection=selection, include_current=include_current)
    grads = gradient_sequence(make_params(), 20)

    torch.manual_seed(0)
    params_a = make_params()
    opt_a = critgrad.Adam(params_a, **options)
    for g in grads:
        set_grads(params_a, g)
        opt_a.step()

    torch.manual_seed(0)
    params_b = make_params()
    opt_b = critgrad.Adam(params_b, **options)
    for g in grads[:8]:
        set_grads(params_b, g)
        opt_b.step()
    saved = roundtrip({"model": [p.detach().clone() for p in params_b], "opt": opt_b.state_dict()})
    torch.manual_seed(1)  # the fresh optimizer draws another seed: loading must restore it
    params_c = make_params()
    with torch.no_grad():
        for p, v in zip(params_c, saved["model"]):
            p.copy_(v)
    opt_c = critgrad.Adam(params_c, **options)
    if selection == "random":
        group_a, group_c = opt_a.param_groups[0], opt_c.param_groups[0]
        assert group_c["selection_seed"] != group_a["selection_seed"]
    opt_c.load_state_dict(saved["opt"])
    for g in grads[8:]:
        set_grads(params_c, g)
        opt_c.step()
    assert opt_c.param_groups[0].get("selection_seed") == opt_a.param_groups[0].get(
        "selection_seed"
    )
    for a, c in zip(params_a, params_c):
        assert torch.equal(a, c)
    for a, c in zip(params_a, params_c):
        for name in ("critical_store", "critical_age", "critical_priority", "critical_stats"):
            assert torch.equal(opt_a.memory[a][name], opt_c.memory[c][name]), name
    assert opt_a.memory_stats()[0]["evicted"] > 0


@pytest.mark.parametrize("selection, include_current", VARIANTS, ids=VARIANT_IDS)
def test_kappa_zero_is_the_base_optimizer(selection, include_current):
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    plain = torch.optim.SGD(params_a, lr=0.05, momentum=0.9)
    ours = critgrad.SGD(
        params_b,
        lr=0.05,
        momentum=0.9,
        kappa=0.0,
        selection=selection,
        include_current=include_current,
    )
    for grads in gradient_sequence(params_a, 12):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        plain.step()
        ours.step()
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert ours.memory == {}


def test_defaults_are_the_critical_rule_with_the_current_gradient():
    """Left out, the options are today's rule: the same bits as naming them explicitly, and as
    the table of tests/test_oracles.py's worked example 3."""
    params_a, params_b = make_params(), make_params()
    implicit = critgrad.Adam(params_a, lr=0.01, topC=3)
    explicit = critgrad.Adam(params_b, lr=0.01, topC=3, selection="critical", include_current=True)
    assert implicit.param_groups[0]["selection"] == "critical"
    assert implicit.param_groups[0]["include_current"] is True
    for grads in gradient_sequence(params_a, 15):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        implicit.step()
        explicit.step()
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert implicit.memory_stats() == explicit.memory_stats()


def test_options_can_change_between_steps():
    """selection and include_current live in param_groups: a changed value applies at the next
    step, the memory carrying on (here: the reference, switched at the same step, agrees)."""
    options = dict(aggr="sum", key="per_tensor", topC=2, decay=0.7, kappa=1.0)
    params_fast, fast, params_slow, slow = build_pair(torch.optim.SGD, dict(lr=0.05), [options])
    changes = {4: dict(selection="recent"), 8: dict(include_current=False), 12: {}}
    for t, grads in enumerate(gradient_sequence(params_fast, 16)):
        if t in changes:
            for group in (fast.param_groups[0], slow.optimizer.param_groups[0]):
                group.update(changes[t])
        set_grads(params_fast, grads)
        set_grads(params_slow, grads)
        fast.step()
        slow.step()
        for a, b in zip(params_fast, params_slow):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------ tracing, validation


def traced_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    batches = [torch.randn(4, 6) for _ in range(7)]
    return model, batches


def backward(model, batch):
    for p in model.parameters():
        p.grad = None
    model(batch).square().mean().backward()


@pytest.mark.parametrize("selection, include_current", VARIANTS, ids=VARIANT_IDS)
def test_step_is_one_graph_under_every_rule(selection, include_current):
    model, batches = traced_model()
    opt = critgrad.Adam_C(
        model.parameters(),
        lr=1e-2,
        topC=3,
        decay=0.9,
        key="per_tensor",
        selection=selection,
        include_current=include_current,
    )
    for batch in batches[:6]:
        backward(model, batch)
        opt.step()
    assert opt.memory_stats()[0]["filled"] == opt.memory_stats()[0]["capacity"]
    backward(model, batches[6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's note that the profiler's record is ignored
        result = torch._dynamo.explain(lambda: opt.step())()
    reasons = [str(r.reason).splitlines()[0] for r in result.break_reasons]
    assert (result.graph_count, result.graph_break_count, reasons) == (1, 0, [])
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "seed", [-1, 2**64, 1.5, "7", True], ids=["negative", "too-large", "float", "str", "bool"]
)
def test_invalid_seed_is_refused(seed):
    with pytest.raises(ValueError, match=r"Invalid selection_seed: .*must be an integer in"):
        critgrad.SGD([{"params": make_params(), "selection_seed": seed}], selection="random")
    opt = critgrad.SGD(make_params(), selection="random")
    opt.param_groups[0]["selection_seed"] = seed
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="selection_seed"):
        opt.step()


def test_admission_refuses_an_unknown_rule_and_random_without_draws():
    keys, priority, age = torch.ones(1), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="selection must be one of"):
        M.admission(keys, priority, age, "fifo")
    with pytest.raises(ValueError, match="drawn slots"):
        M.admission(keys, priority, age, "random")
