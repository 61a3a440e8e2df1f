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


def snapshot(opt):
    """Deep copies of everything the optimizer holds: groups, base state, memory."""
    return (
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()},
        {id(p): {k: v.clone() for k, v in mem.items()} for p, mem in opt.memory.items()},
    )


def assert_same_snapshot(a, b):
    assert a[0] == b[0]
    for live, saved in ((a[1], b[1]), (a[2], b[2])):
        assert live.keys() == saved.keys()
        for pid in live:
            assert live[pid].keys() == saved[pid].keys()
            for key in live[pid]:
                assert torch.equal(live[pid][key], saved[pid][key]), key


def test_state_dict_does_not_alias_live_state():
    """Editing the returned dict (replacing entries, removing them, changing options) leaves the
    optimizer as it was; the state dict adds nothing to the live per-parameter state."""
    params, twin_params = make_params(), make_params()
    opt = critgrad.Adam(params, lr=0.01, topC=2)
    twin = critgrad.Adam(twin_params, lr=0.01, topC=2)
    grads = gradient_sequence(params, 6)
    for g in grads[:3]:
        for ps, o in ((params, opt), (twin_params, twin)):
            set_grads(ps, g)
            o.step()
    before = snapshot(opt)
    sd = opt.state_dict()
    assert "critical_store" in sd["state"][0] and "exp_avg" in sd["state"][0]
    for index, entry in sd["state"].items():
        entry["critical_store"] = torch.full_like(entry["critical_store"], 7.0)
        del entry["critical_sum_scaled"]
        del entry["exp_avg"]
        entry["step"] = torch.tensor(100.0)
        sd["state"][index] = {}
    sd["param_groups"][0]["lr"] = 123.0
    sd["param_groups"][0]["topC"] = 99
    sd["param_groups"][0]["params"].clear()
    assert_same_snapshot(snapshot(opt), before)
    for g in grads[3:]:  # and it trains on exactly like an optimizer whose dict was not touched
        for ps, o in ((params, opt), (twin_params, twin)):
            set_grads(ps, g)
            o.step()
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)
        for key, value in twin.memory[b].items():
            assert torch.equal(opt.memory[a][key], value), key
    assert opt.memory_stats() == twin.memory_stats()


def test_refuses_other_topC():
    params = make_params()
    # topC 3, unlike the first parameter's leading size (4): the store is (topC, 4, 3), and a
    # message that read the wrong dimension of it would say 4.
    opt = critgrad.Adam(params, topC=3)
    set_grads(params, gradient_sequence(params, 1)[0])
    opt.step()
    other = critgrad.Adam(make_params(), topC=5)
    # The message says what was saved, what this optimizer has, and how to resume.
    expected = "saved with topC=3, this optimizer has topC=5; construct it with topC=3 to resume"
    with pytest.raises(ValueError, match=expected):
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
    # The message names the first parameter that differs and both shapes.
    expected = r"parameter 0 holds gradients of shape \(4, 3\), the parameter has shape \(3, 4\)"
    with pytest.raises(ValueError, match=expected + ": the state was saved for other parameters"):
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


def assert_memory_equal(mem, saved, dtypes):
    """The reloaded memory holds the saved values, in the dtypes given (exact conversions)."""
    for key, value in saved.items():
        if not key.startswith("critical_"):
            continue
        assert mem[key].dtype == dtypes.get(key, value.dtype), key
        assert torch.equal(mem[key].cpu(), value.cpu().to(mem[key].dtype)), key


def test_memory_moves_to_the_parameters_dtype():
    params = make_params(torch.float32)
    opt = critgrad.Adam(params, lr=0.01, topC=3, store_dtype=torch.bfloat16)
    grads = gradient_sequence(params, 8)
    for g in grads[:5]:
        set_grads(params, g)
        opt.step()
    saved = opt.state_dict()
    # Two copies: torch's load_state_dict keeps a loaded "step" tensor as it is, so two
    # optimizers loaded from one dict would count their steps in one shared tensor.
    sd, sd_fresh = roundtrip(saved), roundtrip(saved)
    # A float64 copy of the model keeps the chosen bfloat16 store and gets an exact float64 sum;
    # priorities, ages and counts keep their dtypes and values.
    params64 = make_params(torch.float64)
    opt64 = critgrad.Adam(params64, lr=0.01, topC=3, store_dtype=torch.bfloat16)
    opt64.load_state_dict(sd)
    for index, p in enumerate(params64):
        mem = opt64.memory[p]
        assert_memory_equal(
            opt64.state[p],
            sd["state"][index],
            {"critical_store": torch.bfloat16, "critical_sum_scaled": torch.float64},
        )
        assert mem["critical_store"].device == p.device and mem["critical_sum"].device == p.device
    # All statistics but last_key, which describes the last step() of this very optimizer.
    for got, want in zip(opt64.memory_stats(), opt.memory_stats()):
        assert {**got, "last_key": None} == {**want, "last_key": None}
    # The reloaded memory is used: the next direction includes it, so the float64 copy follows
    # the float32 run (to float32 precision) rather than a fresh optimizer's.
    fresh = make_params(torch.float64)
    with torch.no_grad():
        for p, q, src in zip(params64, fresh, params):
            p.copy_(src)
            q.copy_(src)
    fresh_opt = critgrad.Adam(fresh, lr=0.01, topC=3, store_dtype=torch.bfloat16)
    fresh_opt.load_state_dict(
        {
            **sd_fresh,
            "state": {
                i: {k: v for k, v in e.items() if not k.startswith("critical_")}
                for i, e in sd_fresh["state"].items()
            },
        }
    )
    for g in grads[5:]:
        for ps, o in ((params, opt), (params64, opt64), (fresh, fresh_opt)):
            set_grads(ps, g)
            o.step()
    for a, b, c in zip(params, params64, fresh):
        torch.testing.assert_close(b.float(), a.detach(), rtol=1e-5, atol=1e-6)
        assert (c.float() - a.detach()).abs().max() > 1e-4


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("source, target", [("cpu", "cuda"), ("cuda", "cpu")])
def test_memory_moves_between_cpu_and_cuda(source, target):
    """Saved on one device, loaded for parameters on the other: the memory lands on the
    parameters' device with the same values, and training goes on as on the source device."""
    grads = gradient_sequence(make_params(), 10)
    params = make_params(torch.float64, device=source)
    opt = critgrad.SGD(params, lr=0.05, momentum=0.9, topC=3, aggr="mean")
    for g in grads[:6]:
        set_grads(params, g)
        opt.step()
    sd = roundtrip(opt.state_dict())
    moved = make_params(torch.float64, device=target)
    with torch.no_grad():
        for p, q in zip(moved, params):
            p.copy_(q.to(target))
    opt_moved = critgrad.SGD(moved, lr=0.05, momentum=0.9, topC=3, aggr="mean")
    opt_moved.load_state_dict(sd)
    for index, p in enumerate(moved):
        mem = opt_moved.memory[p]
        assert mem["critical_store"].device == p.device and mem["critical_sum"].device == p.device
        assert opt_moved.state[p]["momentum_buffer"].device == p.device
        assert_memory_equal(mem, sd["state"][index], {})
    for g in grads[6:]:
        for ps, o in ((params, opt), (moved, opt_moved)):
            set_grads(ps, g)
            o.step()
    # CPU and CUDA kernels (norms, foreach or for-loop SGD) round differently in the last bits:
    # float64, 4 steps, so 1e-12 is thousands of roundings away. Counts are decisions: exact.
    for a, b in zip(params, moved):
        torch.testing.assert_close(b.detach().cpu(), a.detach().cpu(), rtol=1e-12, atol=1e-12)
    for got, want in zip(opt_moved.memory_stats(), opt.memory_stats()):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-12), key
            else:
                assert got[key] == value, key
