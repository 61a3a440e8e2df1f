"""Checkpoints saved by critgrad 0.1.0 load into today's code and continue as 0.1.0 did.

``fixtures/checkpoint_v1.pt`` was written by ``fixtures/make_checkpoint_fixture.py`` with the
0.1.0 code: for each case, the state after the memory was full and evicting, the gradients that
followed, the parameters after each of those steps, and the memory at the end.
"""

import os

import pytest
import torch
from optim_cases import make_params, set_grads

import critgrad

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = torch.load(os.path.join(HERE, "fixtures", "checkpoint_v1.pt"), weights_only=True)

# The same construction as the fixture's generator (kept in step with it by hand: the generator
# is a record of how 0.1.0 was run, not a module imported here).
CASES = {
    "sgd_momentum_two_groups": (
        "sgd_c",
        torch.float64,
        [dict(key="sum_of_norms", topC=3), dict(key="per_tensor", topC=2, aggr="mean")],
        dict(lr=0.05, momentum=0.9, decay=0.8),
    ),
    "adam_bfloat16_store": (
        "adam_c",
        torch.float32,
        [dict(), dict(key="per_tensor")],
        dict(lr=0.01, topC=3, decay=0.7, store_dtype=torch.bfloat16),
    ),
    "adamw_global_norm_mid": (
        "adamw_c",
        torch.float64,
        [dict(key="global_norm", aggr="mid"), dict(key="per_tensor", kappa=0.5)],
        dict(lr=0.01, weight_decay=0.1, topC=2, decay=0.9),
    ),
    "rmsprop_centered": (
        "rmsprop_c",
        torch.float32,
        [dict(), dict(topC=4)],
        dict(lr=0.01, centered=True, topC=3, decay=0.6),
    ),
}


def unflatten(vector, like):
    out, start = [], 0
    for p in like:
        out.append(vector[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def resume(name):
    registry_name, dtype, group_options, kwargs = CASES[name]
    case = FIXTURE["cases"][name]
    params = make_params(dtype)
    with torch.no_grad():
        for p, saved in zip(params, case["params"]):
            p.copy_(saved)
    groups = [
        {"params": params[:2], **group_options[0]},
        {"params": params[2:], **group_options[1]},
    ]
    opt = critgrad.optimizer_class(registry_name)(groups, **kwargs)
    opt.load_state_dict(case["state_dict"])
    return params, opt, case


def test_fixture_covers_what_it_should():
    assert set(FIXTURE["cases"]) == set(CASES)
    for case in FIXTURE["cases"].values():
        for row in case["memory_stats"]:
            assert row["evicted"] > 0 and row["filled"] == row["capacity"]
    stores = [
        entry["critical_store"].dtype
        for case in FIXTURE["cases"].values()
        for entry in case["state_dict"]["state"].values()
    ]
    assert torch.bfloat16 in stores


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_memory_loads_as_it_was(name):
    params, opt, case = resume(name)
    for index, p in enumerate(params):
        saved = case["state_dict"]["state"][index]
        mem = opt.memory[p]
        for key in ("critical_store", "critical_priority", "critical_age", "critical_stats"):
            assert mem[key].dtype == saved[key].dtype, key
            assert torch.equal(mem[key], saved[key]), key
        assert mem["critical_sum"].dtype == saved["critical_sum"].dtype
        assert torch.equal(mem["critical_sum"], saved["critical_sum"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_resumed_run_continues_as_0_1_0_did(name):
    params, opt, case = resume(name)
    eps = torch.finfo(params[0].dtype).eps
    for t, (grads, expected) in enumerate(zip(case["grads"], case["trajectory"])):
        set_grads(params, unflatten(grads, params))
        opt.step()
        for p, e in zip(params, unflatten(expected, params)):
            # 0.1.0 formed g + c * S with one fused multiply-add; the same formula with tensor
            # coefficients rounds once more, so the last bit may differ (measured: 1.5 eps).
            torch.testing.assert_close(p.detach(), e, rtol=8 * eps, atol=8 * eps, msg=f"step {t}")
    for p, saved in zip(params, case["memory"]):
        # What entered the memory and where: exactly as 0.1.0 decided.
        for key in ("critical_store", "critical_age", "critical_stats"):
            assert torch.equal(opt.memory[p][key], saved[key]), key
        # With which priority: the same keys, but where float32 gradients' norms are now summed
        # in float64 by the native kernels (0.1.0: torch's float32 sums), within their rounding.
        torch.testing.assert_close(
            opt.memory[p]["critical_priority"], saved["critical_priority"], rtol=1e-6, atol=0
        )
        # The running sums differ by rounding only: 0.1.0's carried the rounding of its updates
        # since the last resync, ours are recomputed from the store piece by piece (measured:
        # 1.8e-15 in float64, 4.8e-7 in float32 for entries of magnitude up to 10).
        atol = 1e-13 if saved["critical_sum"].dtype == torch.float64 else 4e-6
        torch.testing.assert_close(
            opt.memory[p]["critical_sum"], saved["critical_sum"], rtol=0, atol=atol
        )
    for ours, theirs in zip(opt.memory_stats(), case["memory_stats"]):
        assert ours.keys() == theirs.keys()
        for field, value in theirs.items():
            if isinstance(value, float):  # means over the entries: summed in another order
                # (and the priorities and keys of float32 norms, as above)
                rel = 1e-6 if "priority" in field or "key" in field else 1e-14
                assert ours[field] == pytest.approx(value, rel=rel), field
            else:
                assert ours[field] == value, field
