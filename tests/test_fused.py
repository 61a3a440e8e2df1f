"""SGD, Adam and AdamW with the memory fused into the update equal the generic path."""

import io

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads

import critgrad

CASES = [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("adam", dict(lr=0.01, maximize=True, betas=(0.8, 0.99))),
    ("adamw", dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True, fused=True)),
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.5, fused=True)),
]


def groups(params, options):
    return [{"params": params[:2], **options}, {"params": params[2:], "lr": 0.003}]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_fused_equals_generic(name, kwargs, aggr):
    cls = critgrad.optimizer_class(name + "_c")
    params_a, params_b = make_params(torch.float64), make_params(torch.float64)
    memory = dict(topC=3, decay=0.8, aggr=aggr)
    generic = cls(
        groups(params_a, dict(key="per_tensor")),
        **memory,
        **{**kwargs, "fused": None},
        foreach=False,
    )
    fused = cls(groups(params_b, dict(key="per_tensor")), **memory, **kwargs, compile=True)
    for grads in gradient_sequence(params_a, 15):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        generic.step()
        fused.step()
        for a, b in zip(params_a, params_b):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
            assert torch.equal(a.grad, b.grad)
    for a, b in zip(params_a, params_b):
        assert generic.state[a].keys() == fused.state[b].keys()
        for key, value in generic.state[a].items():
            torch.testing.assert_close(value, fused.state[b][key])
        torch.testing.assert_close(
            generic.memory[a]["critical_sum"], fused.memory[b]["critical_sum"]
        )
    assert generic.memory_stats() == fused.memory_stats()


def test_checkpoint_moves_between_fused_and_generic_paths():
    params_a, params_b = make_params(torch.float64), make_params(torch.float64)
    fused = critgrad.Adam(params_a, lr=0.01, topC=3, compile=True)
    grads = gradient_sequence(params_a, 10)
    for g in grads[:5]:
        set_grads(params_a, g)
        fused.step()
    buffer = io.BytesIO()
    torch.save(fused.state_dict(), buffer)
    buffer.seek(0)
    with torch.no_grad():
        for a, b in zip(params_a, params_b):
            b.copy_(a)
    generic = critgrad.Adam(params_b, lr=0.01, topC=3)
    generic.load_state_dict(torch.load(buffer, weights_only=True))
    for g in grads[5:]:
        set_grads(params_a, g)
        set_grads(params_b, g)
        fused.step()
        generic.step()
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
