"""Inputs torch's optimizers accept: complex and meta parameters, a parameter listed twice,
gradients near the largest float; and options changed when they no longer can be."""

import io

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads
from test_reference_equivalence import assert_same_run

import critgrad
from critgrad.reference import ReferenceCriticalGradients

MEMORY = dict(aggr="mean", key="sum_of_norms", topC=3, decay=0.8, kappa=1.0, store_dtype=None)


def complex_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, dtype=torch.complex128, generator=gen))
        for shape in ((4, 3), (4,))
    ]


@pytest.mark.parametrize(
    "cls, kwargs",
    [(torch.optim.SGD, dict(lr=0.05, momentum=0.9)), (torch.optim.Adam, dict(lr=0.01))],
)
def test_complex_parameters_against_reference(cls, kwargs):
    params_fast, params_slow = complex_params(), complex_params()
    fast = critgrad.CriticalGradients(cls(params_fast, **kwargs), **MEMORY)
    slow = ReferenceCriticalGradients(cls([{"params": params_slow, **MEMORY}], **kwargs))
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        grads = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params_fast]
        set_grads(params_fast, grads)
        set_grads(params_slow, grads)
        fast.step()
        slow.step()
    for a, b in zip(params_fast, params_slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert fast.memory[a]["critical_store"].dtype == torch.complex128
    assert fast.memory_stats()[0]["evicted"] > 0


def test_complex_parameter_refuses_a_real_store():
    p = complex_params()[:1]
    opt = critgrad.SGD(p, lr=0.1, store_dtype=torch.bfloat16)
    p[0].grad = torch.ones_like(p[0])
    with pytest.raises(ValueError, match="store_dtype"):
        opt.step()


@pytest.mark.parametrize(
    "cls, kwargs", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9)), (torch.optim.Adam, dict(lr=0.1))]
)
def test_meta_parameters_step_where_torch_does(cls, kwargs):
    params = [torch.nn.Parameter(torch.empty(5, 3, device="meta"))]
    plain = cls([torch.nn.Parameter(torch.empty(5, 3, device="meta"))], **kwargs)
    plain.param_groups[0]["params"][0].grad = torch.empty(5, 3, device="meta")
    plain.step()  # torch's own optimizer steps meta parameters
    opt = critgrad.CriticalGradients(cls(params, **kwargs), topC=2)
    for _ in range(3):
        params[0].grad = torch.empty(5, 3, device="meta")
        opt.step()
    mem = opt.memory[params[0]]
    assert mem["critical_store"].device.type == "meta" and mem["critical_store"].shape == (2, 5, 3)


def test_parameter_listed_twice_has_one_memory():
    params_fast, params_slow = make_params(), make_params()

    def twice(params):
        return [{"params": [params[0], params[1], params[0]], **MEMORY}, {"params": params[2:]}]

    with pytest.warns(UserWarning, match="duplicate parameters"):  # as torch warns
        fast = critgrad.CriticalGradients(torch.optim.SGD(twice(params_fast), lr=0.05), **MEMORY)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        slow_base = torch.optim.SGD(twice(params_slow), lr=0.05)
    slow_base.param_groups[1].update(MEMORY)
    slow = ReferenceCriticalGradients(slow_base)
    assert_same_run(params_fast, fast, params_slow, slow, steps=10)
    for p in params_fast:
        mem = fast.memory[p]
        torch.testing.assert_close(mem["critical_sum"], mem["critical_store"].sum(0))
    # Counted once: 2 distinct tensors offered per step in the first group.
    stats = fast.memory_stats()[0]
    assert stats["offered"] == 20 and stats["capacity"] == 2 * MEMORY["topC"]


def test_running_sum_cannot_overflow_where_the_stored_gradients_do_not():
    # Float32 gradients near the largest float32 (3.4e38): the sum of two is not a float32, but
    # each is, and so is their mean, which is what the step uses.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = critgrad.SGD([p], lr=0.0, topC=2, decay=0.5, aggr="mean")
    for g in (2.0e38, 2.5e38, 3.0e38):
        p.grad = torch.tensor([g])
        opt.step()
    state = opt.state[p]
    stored = opt.memory[p]["critical_store"].double()
    expected_store = torch.tensor([2.5e38, 3.0e38]).double()  # (rounded to float32)
    assert torch.equal(stored.flatten().sort().values, expected_store)
    # The sum is kept times 2**-1 (topC 2): finite, and exactly what it stands for.
    assert torch.isfinite(state["critical_sum_scaled"]).all()
    assert state["critical_sum_scaled"].double() == stored.sum(0) * 0.5
    # The next aggregate, (g + S) / 3, is a float32 too, and is computed without overflow.
    p.grad = torch.tensor([3.2e38])
    opt.param_groups[0]["lr"] = 1e-38
    opt.step()
    expected = -1e-38 * ((3.2e38 + stored.sum()) / 3)
    torch.testing.assert_close(p.detach().double(), expected.reshape(1), rtol=1e-6, atol=0)


def test_store_dtype_cannot_change_after_the_first_step():
    params = make_params(torch.float32)
    opt = critgrad.Adam(params, lr=0.01, topC=2)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    opt.param_groups[0]["store_dtype"] = torch.bfloat16
    with pytest.raises(ValueError, match="store_dtype can only be set before"):
        opt.step()


def test_checkpoint_whose_store_disagrees_with_its_store_dtype_is_refused():
    # What critgrad 0.1.0 saved after store_dtype was changed between steps: a float32 store
    # under a group that says bfloat16. Loading it must not silently convert the memory.
    params = make_params(torch.float32)
    opt = critgrad.Adam(params, lr=0.01, topC=2)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        group["store_dtype"] = torch.bfloat16
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    fresh = critgrad.Adam(make_params(torch.float32), lr=0.01, topC=2)
    with pytest.raises(ValueError, match="store_dtype cannot change"):
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.memory == {}  # refused before anything was loaded
