"""kappa=0 is the base optimizer, bit for bit, with no memory allocated."""

import pytest
import torch
from optim_cases import BASE_IDS, BASES, gradient_sequence, make_params, set_grads

import critgrad


@pytest.mark.parametrize("name, cls, kwargs", BASES, ids=BASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kappa_zero_is_the_base_optimizer(name, cls, kwargs, dtype):
    params_a = make_params(dtype)
    params_b = make_params(dtype)

    # Two groups with different learning rates, to exercise per-group handling.
    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": kwargs["lr"] / 2}]

    plain = cls(groups(params_a), **kwargs)
    wrapped = critgrad.CriticalGradients(cls(groups(params_b), **kwargs), kappa=0.0, topC=3)
    for grads in gradient_sequence(params_a, 25):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        plain.step()
        wrapped.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    assert wrapped.memory == {}
    assert [s["offered"] for s in wrapped.memory_stats()] == [0, 0]


@pytest.mark.parametrize(
    "named, cls",
    [
        (critgrad.SGD_C, torch.optim.SGD),
        (critgrad.RMSprop_C, torch.optim.RMSprop),
        (critgrad.Adam_C, torch.optim.Adam),
        (critgrad.AdamW_C, torch.optim.AdamW),
    ],
)
def test_named_optimizers_with_kappa_zero(named, cls):
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    plain = cls(params_a, lr=0.01, weight_decay=0.01)
    ours = named(params_b, lr=0.01, weight_decay=0.01, kappa=0)
    for grads in gradient_sequence(params_a, 20):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        plain.step()
        ours.step()
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    # Save and reload of the base state is unaffected too.
    assert plain.state_dict()["state"].keys() == ours.state_dict()["state"].keys()


def test_kappa_changed_between_steps():
    params = make_params()
    opt = critgrad.SGD(params, lr=0.1, kappa=0.0)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    assert opt.memory == {}
    opt.param_groups[0]["kappa"] = 1.0
    opt.step()
    assert opt.memory_stats()[0]["admitted"] == 3
