"""``compile=True``: the whole step compiled, equal to the reference, and shown to have run compiled.

Every test here checks ``last_step_implementation == "compiled"`` for the steps it compares: on a
machine where no compiler works they fail rather than compare the eager step with itself.
"""

import copy
import warnings

import pytest
import torch
from optim_cases import BASES, gradient_sequence, make_params, set_grads
from test_reference_equivalence import assert_same_run, build_pair

import critgrad

# One base per torch optimizer class (each is compiled once: seconds of compilation each).
COMPILED_BASES = [
    base
    for base in BASES
    if base[0]
    in (
        "sgd-momentum",
        "rmsprop-centered",
        "adam-amsgrad",
        "adamw",
        "adagrad",
        "adamax",
        "nadam",
        "radam",
    )
]


@pytest.fixture
def float64_default():
    # torch keeps the step count of Adam and its kin as a tensor of the default dtype; compiled,
    # their bias corrections are computed in that dtype (eager uses Python floats): float32
    # would put differences of 1e-7 into a float64 comparison. With a float64 default every
    # number here is float64, and the comparison can stay tight.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name, cls, kwargs", COMPILED_BASES, ids=[b[0] for b in COMPILED_BASES])
def test_compiled_against_reference(name, cls, kwargs, float64_default):
    groups = [
        dict(aggr="sum", key="sum_of_norms", topC=3, decay=0.7, kappa=1.0),
        dict(aggr="mean", key="per_tensor", topC=2, decay=0.9, kappa=0.5),
    ]
    params_fast, fast, params_slow, slow = build_pair(cls, kwargs, groups)
    fast.compile = True
    # Inductor computes the same float64 formulas in another order (fused loops, its own
    # reductions for the norms): differences of a few ulps, well inside these bounds.
    assert_same_run(
        params_fast, fast, params_slow, slow, atol=1e-11, rtol=1e-9, implementation="compiled"
    )


def test_compiled_equals_eager_in_float32_with_bfloat16_store():
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    eager = critgrad.Adam(params_a, lr=0.01, topC=3, store_dtype=torch.bfloat16)
    compiled = critgrad.Adam(params_b, lr=0.01, topC=3, store_dtype=torch.bfloat16, compile=True)
    for t, grads in enumerate(gradient_sequence(params_a, 12)):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        eager.step()
        compiled.step()
        # The first step creates the memories, and runs eagerly; every later one is compiled.
        assert compiled.last_step_implementation == ("eager" if t == 0 else "compiled")
    # torch's own compiled-optimizer tests allow float32's default tolerances.
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1.3e-6)
    for a, b in zip(params_a, params_b):
        assert torch.equal(eager.memory[a]["critical_store"], compiled.memory[b]["critical_store"])
        torch.testing.assert_close(
            eager.memory[a]["critical_sum"], compiled.memory[b]["critical_sum"]
        )
    assert eager.memory_stats() == compiled.memory_stats()


def test_changing_admissions_and_coefficients_compile_once():
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = critgrad.SGD(params, lr=0.01, topC=4, decay=0.8, kappa=1.0, compile=True)
    for t, grads in enumerate(gradient_sequence(params, 16, seed=3)):
        set_grads(params, grads)
        opt.step()
        if t == 1:
            assert opt.last_step_implementation == "compiled"
            compiles = opt._compiled.compiles
            assert compiles >= 1  # compilation did happen
        if t >= 1:
            assert opt.last_step_implementation == "compiled"
    # Filling, evicting, rejecting: slots and coefficients are tensors, nothing recompiled.
    assert opt._compiled.compiles == compiles
    stats = opt.memory_stats()[0]
    assert stats["evicted"] > 0 and stats["rejected"] > 0
    # A changing Python number (kappa, as a schedule would) recompiles once, then dynamo
    # traces it as a symbol.
    for t, grads in enumerate(gradient_sequence(params, 6, seed=4)):
        set_grads(params, grads)
        opt.param_groups[0]["kappa"] = 1.0 + 0.1 * t
        opt.step()
        assert opt.last_step_implementation == "compiled"
    assert opt._compiled.compiles <= compiles + 1


def test_without_a_compiler_the_step_is_reported_eager(monkeypatch):
    """What a test asking for the compiled path sees where no compiler works: not "compiled"."""

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", broken)
    params_a, params_b = make_params(), make_params()
    eager = critgrad.RMSprop(params_a, lr=0.01, topC=2)
    compiled = critgrad.RMSprop(params_b, lr=0.01, topC=2, compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for grads in gradient_sequence(params_a, 5):
            set_grads(params_a, grads)
            set_grads(params_b, grads)
            eager.step()
            compiled.step()
            assert compiled.last_step_implementation == "eager"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compile=True runs the eager step" in messages[0]
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)


def test_each_optimizer_compiles_its_own_code():
    # Dynamo keeps a budget of graphs per code object; optimizers of other shapes must not use
    # up each other's (past it, dynamo would silently run eagerly).
    runs = []
    for width in range(1, 4):
        p = torch.nn.Parameter(torch.zeros(width))
        opt = critgrad.SGD([p], lr=0.1, topC=2, compile=True)
        for _ in range(3):
            p.grad = torch.ones(width)
            opt.step()
        runs.append((opt.last_step_implementation, opt._compiled.compiles))
    assert runs == [("compiled", 1)] * 3


def test_copies_of_a_compiled_optimizer_compile_their_own_step():
    params = make_params()
    opt = critgrad.SGD(params, lr=0.1, topC=2, compile=True)
    grads = gradient_sequence(params, 6)
    for g in grads[:3]:
        set_grads(params, g)
        opt.step()
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    for g in grads[3:]:
        set_grads(params, g)
        set_grads(twin_params, g)
        opt.step()
        twin.step()
        assert twin.last_step_implementation == "compiled"
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))


def test_compile_is_validated():
    with pytest.raises(ValueError, match="compile"):
        critgrad.CriticalGradients(torch.optim.SGD(make_params(), lr=0.1), compile="yes")
