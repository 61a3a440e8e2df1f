"""The compiled memory pass equals the reference, and compiles once per group layout."""

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads
from test_reference_equivalence import assert_same_run, build_pair

import critgrad

CASES = [
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9), dict(aggr="sum", key="sum_of_norms")),
    (torch.optim.Adam, dict(lr=0.01), dict(aggr="mean", key="per_tensor")),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1), dict(aggr="mid", key="global_norm")),
]


@pytest.mark.parametrize("cls, kwargs, options", CASES, ids=["sgd", "adam", "adamw"])
def test_compiled_against_reference(cls, kwargs, options):
    groups = [
        dict(options, topC=3, decay=0.7, kappa=1.0),
        dict(options, topC=2, decay=0.9, kappa=0.5),
    ]
    params_fast, fast, params_slow, slow = build_pair(cls, kwargs, groups)
    fast.compile = True
    assert_same_run(params_fast, fast, params_slow, slow, atol=1e-11, rtol=1e-9)


def test_compiled_equals_eager_in_float32_with_bfloat16_store():
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    eager = critgrad.Adam(params_a, lr=0.01, topC=3, store_dtype=torch.bfloat16)
    compiled = critgrad.Adam(params_b, lr=0.01, topC=3, store_dtype=torch.bfloat16, compile=True)
    for grads in gradient_sequence(params_a, 12):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        eager.step()
        compiled.step()
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(params_a, params_b):
        assert torch.equal(eager.memory[a]["critical_store"], compiled.memory[b]["critical_store"])
        torch.testing.assert_close(
            eager.memory[a]["critical_sum"], compiled.memory[b]["critical_sum"]
        )


def test_changing_slots_and_coefficients_do_not_recompile():
    from torch._dynamo.utils import counters

    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = critgrad.SGD(params, lr=0.01, topC=4, decay=0.8, kappa=1.0, compile=True)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    graphs = counters["stats"]["unique_graphs"]
    for t, grads in enumerate(gradient_sequence(params, 15, seed=3)):
        set_grads(params, grads)
        opt.param_groups[0]["kappa"] = 1.0 + 0.1 * t  # a changing coefficient
        opt.step()
    assert counters["stats"]["unique_graphs"] == graphs
    stats = opt.memory_stats()[0]
    assert stats["evicted"] > 0 and stats["admitted"] < stats["offered"]


def test_falls_back_to_eager_when_compiling_fails(monkeypatch):
    from critgrad import _kernels

    def broken_compile(function, **kwargs):
        def fail(*args):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("no cc"), None)

        return fail

    monkeypatch.setattr(_kernels, "_compiled", {})
    monkeypatch.setattr(_kernels, "_failed", set())
    monkeypatch.setattr(torch, "compile", broken_compile)
    params_a, params_b = make_params(), make_params()
    eager = critgrad.RMSprop(params_a, lr=0.01, topC=2)
    compiled = critgrad.RMSprop(params_b, lr=0.01, topC=2, compile=True)
    for step, grads in enumerate(gradient_sequence(params_a, 5)):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        eager.step()
        if step == 0:
            with pytest.warns(RuntimeWarning, match="falls back"):
                compiled.step()
        else:
            compiled.step()
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
