"""Save, reload into a fresh optimizer, continue: identical to never stopping."""

import copy
import io

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads

import critgrad

NAMED = [
    ("sgd_c", dict(lr=0.05, momentum=0.9)),
    ("rmsprop_c", dict(lr=0.01, centered=True)),
    ("adam_c", dict(lr=0.01, amsgrad=True)),
    ("adamw_c", dict(lr=0.01, weight_decay=0.1, store_dtype=torch.bfloat16)),
    ("nadam_c", dict(lr=0.01, key="per_tensor", aggr="mid")),
    ("adagrad_c", dict(lr=0.05, key="global_norm")),
]


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name, kwargs", NAMED, ids=[n for n, _ in NAMED])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_equals_never_stopping(name, kwargs, dtype):
    if name == "nadam_c" and dtype == torch.float64:
        # torch's own NAdam keeps mu_product in float32 and reloads it as float64, so the plain
        # torch.optim.NAdam does not resume exactly in float64 either.
        pytest.skip("torch.optim.NAdam itself does not resume bit-exactly in float64")
    grads = gradient_sequence(make_params(), 24)
    cls = critgrad.optimizer_class(name)
    params_a = make_params(dtype)
    opt_a = cls(params_a, topC=4, decay=0.8, **kwargs)
    for g in grads:
        set_grads(params_a, g)
        opt_a.step()

    params_b = make_params(dtype)
    opt_b = cls(params_b, topC=4, decay=0.8, **kwargs)
    for g in grads[:10]:
        set_grads(params_b, g)
        opt_b.step()
    saved = roundtrip(
        {"model": [p.detach().clone() for p in params_b], "optimizer": opt_b.state_dict()}
    )
    params_c = make_params(dtype)
    with torch.no_grad():
        for p, v in zip(params_c, saved["model"]):
            p.copy_(v)
    opt_c = cls(params_c, topC=4, decay=0.8, **kwargs)
    opt_c.load_state_dict(saved["optimizer"])
    for g in grads[10:]:
        set_grads(params_c, g)
        opt_c.step()
    for a, c in zip(params_a, params_c):
        assert torch.equal(a, c)
    for a, c in zip(params_a, params_c):
        for key, value in opt_a.memory[a].items():
            assert opt_c.memory[c][key].dtype == value.dtype, key
            assert torch.equal(opt_c.memory[c][key], value), key
    assert opt_a.memory_stats() == opt_c.memory_stats()


def test_state_dict_does_not_alias_live_state():
    params = make_params()
    opt = critgrad.Adam(params, lr=0.01)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    sd = opt.state_dict()
    assert "critical_store" in sd["state"][0] and "exp_avg" in sd["state"][0]


def test_refuses_other_topC():
    params = make_params()
    opt = critgrad.Adam(params, topC=4)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    other = critgrad.Adam(make_params(), topC=5)
    with pytest.raises(ValueError, match="topC=4"):
        other.load_state_dict(roundtrip(opt.state_dict()))


def test_refuses_other_parameters():
    params = make_params()
    opt = critgrad.Adam(params, topC=4)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    shapes = [
        torch.nn.Parameter(torch.zeros(3, 4)),
        torch.nn.Parameter(torch.zeros(4)),
        torch.nn.Parameter(torch.zeros(2, 2, 3)),
    ]
    with pytest.raises(ValueError, match="other parameters"):
        critgrad.Adam(shapes, topC=4).load_state_dict(roundtrip(opt.state_dict()))
    with pytest.raises(ValueError):
        critgrad.Adam(shapes[:2], topC=4).load_state_dict(roundtrip(opt.state_dict()))


def test_plain_torch_checkpoint_loads_into_memory_optimizer():
    params = make_params()
    plain = torch.optim.Adam(params, lr=0.01)
    set_grads(params, gradient_sequence(params, 1)[0])
    plain.step()
    ours = critgrad.Adam(make_params(), lr=0.01, topC=3)
    ours.load_state_dict(roundtrip(plain.state_dict()))
    assert ours.param_groups[0]["topC"] == 3 and ours.memory == {}
    set_grads(ours.param_groups[0]["params"], gradient_sequence(params, 1)[0])
    ours.step()
    assert ours.state[ours.param_groups[0]["params"][0]]["step"] == 2


def test_deepcopy_is_independent():
    params = make_params()
    opt = critgrad.SGD(params, lr=0.1, momentum=0.9)
    grads = gradient_sequence(params, 6)
    for g in grads[:3]:
        set_grads(params, g)
        opt.step()
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    assert twin_params[0] is not params[0]
    assert twin.memory.keys() == set(twin_params) or all(p in twin.memory for p in twin_params)
    for g in grads[3:]:
        set_grads(params, g)
        set_grads(twin_params, g)
        opt.step()
        twin.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))
    # The copy's saved memory is its live memory, not the one it was copied from.
    saved, twin_saved = opt.state_dict()["state"], twin.state_dict()["state"]
    for index in saved:
        for key, value in saved[index].items():
            assert torch.equal(value, twin_saved[index][key]), key
    twin.param_groups[0]["lr"] = 0.0
    set_grads(twin_params, grads[0])
    twin.step()
    assert twin.memory_stats()[0]["offered"] == opt.memory_stats()[0]["offered"] + 3
    assert int(twin.state_dict()["state"][0]["critical_stats"][0]) == 7


def test_memory_moves_with_the_parameters_device_and_dtype():
    params = make_params(torch.float32)
    opt = critgrad.Adam(params, lr=0.01, store_dtype=torch.bfloat16)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    sd = roundtrip(opt.state_dict())
    # A float64 copy of the model still gets a bfloat16 store (the chosen store dtype) and an
    # exact float64 sum; counters stay integers.
    params64 = make_params(torch.float64)
    opt64 = critgrad.Adam(params64, lr=0.01, store_dtype=torch.bfloat16)
    opt64.load_state_dict(sd)
    mem = opt64.memory[params64[0]]
    assert mem["critical_store"].dtype == torch.bfloat16
    assert mem["critical_sum"].dtype == torch.float64
    assert mem["critical_age"].dtype == torch.int64 and mem["critical_stats"].dtype == torch.int64
    assert mem["critical_store"].device == params64[0].device
