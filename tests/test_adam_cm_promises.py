"""Adam_CM keeps the core's promises: exact resume through torch.load(weights_only=True), a bfloat16
store with a float32 running sum, the core's statistics, one traced graph per step, a compiled
step equal to the eager one, a real signature, clear errors, and its names in the registry and
the harness."""

from __future__ import annotations

import copy
import inspect
import io
import typing
import warnings

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads

import critgrad


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def run(opt, params, sequence):
    for grads in sequence:
        set_grads(params, grads)
        opt.step()


# ---- save and resume ------------------------------------------------------------------------

RESUME = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1, amsgrad=True, key="per_tensor", kappa=0.5),
    dict(lr=0.01, store_dtype=torch.bfloat16, maximize=True, key="global_norm", foreach=True),
    dict(lr=0.01, kappa=0.0, weight_decay=0.05),
]
RESUME_IDS = ["defaults", "amsgrad-wd-per-tensor", "bf16-store-maximize", "kappa0"]


@pytest.mark.parametrize("config", RESUME, ids=RESUME_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_equals_never_stopping(config, dtype):
    sequence = gradient_sequence(make_params(), 20)
    straight = make_params(dtype)
    opt = critgrad.Adam_CM(straight, topC=4, decay=0.8, **config)
    run(opt, straight, sequence)

    first_params = make_params(dtype)
    first = critgrad.Adam_CM(first_params, topC=4, decay=0.8, **config)
    run(first, first_params, sequence[:9])
    saved = roundtrip({"model": [p.detach() for p in first_params], "opt": first.state_dict()})
    fresh = make_params(dtype, seed=7)  # other values: everything must come from the checkpoint
    with torch.no_grad():
        for p, value in zip(fresh, saved["model"]):
            p.copy_(value)
    second = critgrad.Adam_CM(fresh, topC=4, decay=0.8, **config)
    second.load_state_dict(saved["opt"])
    run(second, fresh, sequence[9:])
    for a, b in zip(straight, fresh):
        assert torch.equal(a, b)
        assert opt.state[a].keys() == second.state[b].keys()
        for key, value in opt.state[a].items():
            assert second.state[b][key].dtype == value.dtype, key
            assert second.state[b][key].device == value.device, key
            assert torch.equal(second.state[b][key], value), key
    assert opt.memory_stats() == second.memory_stats()


def test_an_adamw_checkpoint_continues_as_adamw_with_kappa_zero():
    sequence = gradient_sequence(make_params(), 12)
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    plain = torch.optim.AdamW(params_a, lr=0.01, weight_decay=0.1)
    run(plain, params_a, sequence[:5])
    with torch.no_grad():
        for a, b in zip(params_a, params_b):
            b.copy_(a)
    ours = critgrad.Adam_CM(params_b, lr=0.01, weight_decay=0.1, kappa=0.0, topC=3)
    ours.load_state_dict(roundtrip(plain.state_dict()))
    assert ours.param_groups[0]["topC"] == 3  # options AdamW did not save are kept
    run(plain, params_a, sequence[5:])
    run(ours, params_b, sequence[5:])
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_state_dict_entries_are_fresh_dicts():
    params = make_params()
    opt = critgrad.Adam_CM(params, lr=0.01, topC=2)
    run(opt, params, gradient_sequence(params, 3))
    state_dict = opt.state_dict()
    assert {"exp_avg", "critical_store", "critical_sum_scaled"} <= set(state_dict["state"][0])
    state_dict["state"][0].clear()
    assert "critical_store" in opt.state[params[0]]


def test_checkpoint_with_another_topC_is_refused():
    params = make_params()
    opt = critgrad.Adam_CM(params, lr=0.01, topC=2)
    run(opt, params, gradient_sequence(params, 3))
    other = critgrad.Adam_CM(make_params(), lr=0.01, topC=3)
    with pytest.raises(ValueError, match="topC=2"):
        other.load_state_dict(opt.state_dict())


def test_deepcopy_continues_identically():
    params = make_params()
    opt = critgrad.Adam_CM(params, lr=0.01, topC=2)
    sequence = gradient_sequence(params, 8)
    run(opt, params, sequence[:4])
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    run(opt, params, sequence[4:])
    run(twin, twin_params, sequence[4:])
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))


# ---- the memory: dtypes, statistics, the view ---------------------------------------------


def test_bfloat16_store_with_a_float32_running_sum():
    params = make_params(torch.float32)
    opt = critgrad.Adam_CM(params, lr=0.01, topC=3, store_dtype=torch.bfloat16)
    run(opt, params, gradient_sequence(params, 10))
    for p in params:
        state = opt.state[p]
        assert state["critical_store"].dtype == torch.bfloat16
        assert state["critical_store"].shape == (3, *p.shape)
        assert state["critical_sum_scaled"].dtype == torch.float32
        held = state["critical_age"] >= 0
        exact = state["critical_store"][held].float().sum(0)
        # The running sum adds and removes exact bfloat16 values in float32: a few float32 ulps
        # of the stored magnitudes at most.
        torch.testing.assert_close(opt.memory[p]["critical_sum"], exact, rtol=1e-5, atol=1e-6)
        # The store holds the momentum rounded to bfloat16 (its last entry is this step's m_t).
        newest = state["critical_age"].argmin()
        if state["critical_age"][newest] == 0:
            expected = state["exp_avg"].to(torch.bfloat16)
            assert torch.equal(state["critical_store"][newest], expected)


def test_memory_stats_have_the_cores_fields():
    params = make_params()
    ours = critgrad.Adam_CM(params, lr=0.01, topC=2)
    core = critgrad.Adam(make_params(), lr=0.01, topC=2)
    assert [s["offered"] for s in ours.memory_stats()] == [0]
    run(ours, params, gradient_sequence(params, 6))
    run(core, core.param_groups[0]["params"], gradient_sequence(params, 6))
    (row,) = ours.memory_stats()
    assert row.keys() == core.memory_stats()[0].keys()
    # 3 tensors x 6 steps offered; two slots each, so at least 6 admitted.
    assert row["offered"] == 18 and row["filled"] == 6 and row["capacity"] == 6
    assert row["admitted"] + row["rejected"] == 18 and row["admitted"] >= 6
    assert set(ours.memory) == set(params)
    assert ours.memory[params[0]]["critical_store"].shape == (2, 4, 3)


# ---- no host synchronisation, one graph, a compiled step ------------------------------------


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return model, [torch.randn(8, 16) for _ in range(10)]


def backward(model, batch):
    for p in model.parameters():
        p.grad = None
    model(batch).square().mean().backward()


@pytest.mark.parametrize(
    "config", [dict(), dict(amsgrad=True, weight_decay=0.1, foreach=True, key="per_tensor")]
)
def test_step_is_one_graph_once_the_memory_is_full(config):
    model, batches = model_and_data()
    opt = critgrad.Adam_CM(model.parameters(), lr=1e-2, topC=4, decay=0.9, **config)
    for batch in batches[:6]:
        backward(model, batch)
        opt.step()
    stats = opt.memory_stats()[0]
    assert stats["filled"] == stats["capacity"] and stats["evicted"] > 0
    backward(model, batches[6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's note that the profiler's record is ignored
        result = torch._dynamo.explain(lambda: opt.step())()
    reasons = [str(r.reason).splitlines()[0] for r in result.break_reasons]
    assert (result.graph_count, result.graph_break_count, reasons) == (1, 0, [])
    torch._dynamo.reset()


def test_compiled_step_equals_eager():
    # float32 parameters, bfloat16 store: the setting compile=True is for. One compilation.
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    config = dict(lr=0.01, weight_decay=0.1, topC=3, decay=0.8, store_dtype=torch.bfloat16)
    eager = critgrad.Adam_CM(params_a, **config)
    compiled = critgrad.Adam_CM(params_b, compile=True, **config)
    for t, grads in enumerate(gradient_sequence(params_a, 12)):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        eager.step()
        compiled.step()
        # The first step creates the state and runs eagerly; every later one ran compiled code.
        assert compiled.last_step_implementation == ("eager" if t == 0 else "compiled")
    # Filling, evicting, rejecting: admissions are tensors, nothing recompiled.
    assert compiled._compiled.compiles == 1
    stats = compiled.memory_stats()
    assert stats == eager.memory_stats() and stats[0]["evicted"] > 0 and stats[0]["rejected"] > 0
    # Compiled, torch's bias corrections are computed from the float32 step count (eagerly in
    # float64) and inductor fuses the elementwise chain: float32 differences of a few ulps, inside
    # the bounds torch's own compiled-optimizer tests use.
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)
        for key in ("exp_avg", "exp_avg_sq", "critical_sum_scaled"):
            torch.testing.assert_close(eager.state[a][key], compiled.state[b][key])
        assert torch.equal(eager.state[a]["critical_age"], compiled.state[b]["critical_age"])
    torch._dynamo.reset()


# ---- signature and validation ---------------------------------------------------------------

SIGNATURE = [
    ("params", inspect.Parameter.empty),
    ("lr", 1e-3),
    ("betas", (0.9, 0.999)),
    ("eps", 1e-8),
    ("weight_decay", 0.0),
    ("amsgrad", False),
    ("maximize", False),
    ("foreach", None),
    ("topC", 10),
    ("decay", 0.7),
    ("kappa", 1.0),
    ("synced", None),
    ("key", None),
    ("store_dtype", None),
    ("compile", False),
]


def test_real_signature():
    parameters = inspect.signature(critgrad.Adam_CM).parameters
    assert [(name, p.default) for name, p in parameters.items()] == SIGNATURE
    keyword_only = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == [name for name, _ in SIGNATURE[6:]]
    hints = typing.get_type_hints(critgrad.Adam_CM.__init__)
    assert hints["topC"] is int and hints["store_dtype"] == (torch.dtype | None)
    assert typing.get_args(typing.get_args(hints["key"])[0]) == critgrad.KEY_MODES
    with pytest.raises(TypeError, match="aggr"):
        critgrad.Adam_CM(make_params(), aggr="sum")


def test_synced_is_the_key_mode():
    for synced, key in ((True, "sum_of_norms"), (False, "per_tensor")):
        assert critgrad.Adam_CM(make_params(), synced=synced).defaults["key"] == key
    with pytest.raises(ValueError, match="synced=False means key='per_tensor'"):
        critgrad.Adam_CM(make_params(), synced=False, key="global_norm")


INVALID = [
    (dict(lr=-0.1), "lr", "a finite number >= 0"),
    (dict(lr=float("nan")), "lr", "a finite number >= 0"),
    (dict(betas=(0.9,)), "betas", r"two numbers, each in \[0, 1\)"),
    (dict(betas=(0.9, 1.0)), "betas", r"two numbers, each in \[0, 1\)"),
    (dict(betas="ab"), "betas", r"two numbers, each in \[0, 1\)"),
    (dict(eps=-1e-8), "eps", "a finite number >= 0"),
    (dict(weight_decay=-0.1), "weight_decay", "a finite number >= 0"),
    (dict(amsgrad=1), "amsgrad", "True or False"),
    (dict(maximize="no"), "maximize", "True or False"),
    (dict(foreach="yes"), "foreach", "True, False or None"),
    (dict(topC=0), "topC", "an integer >= 1"),
    (dict(topC=2.0), "topC", "an integer >= 1"),
    (dict(decay=1.5), "decay", r"a number in \[0, 1\]"),
    (dict(kappa=-1.0), "kappa", "a finite number >= 0"),
    (dict(key="bogus"), "key", "one of"),
    (dict(synced="yes"), "synced", "True, False or None"),
    (dict(store_dtype=torch.int32), "store_dtype", "floating point"),
    (dict(compile="yes"), "compile", "True or False"),
]
INVALID_IDS = [f"{name}-{i}" for i, (_, name, _) in enumerate(INVALID)]


@pytest.mark.parametrize("kwargs, name, allowed", INVALID, ids=INVALID_IDS)
def test_invalid_argument(kwargs, name, allowed):
    with pytest.raises(ValueError, match=rf"Invalid {name}: .*{allowed}"):
        critgrad.Adam_CM(make_params(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, name, allowed",
    [case for case in INVALID if case[1] not in ("synced", "compile")],
    ids=[i for i, case in zip(INVALID_IDS, INVALID) if case[1] not in ("synced", "compile")],
)
def test_invalid_argument_in_a_param_group(kwargs, name, allowed):
    params = make_params()
    with pytest.raises(ValueError, match=rf"Invalid {name}: .*{allowed}"):
        critgrad.Adam_CM([{"params": params[:2]}, {"params": params[2:], **kwargs}])
    opt = critgrad.Adam_CM(params[:2])
    with pytest.raises(ValueError, match=rf"Invalid {name}"):
        opt.add_param_group({"params": params[2:], **kwargs})
    assert len(opt.param_groups) == 1


def test_values_changed_between_steps_are_checked():
    params = make_params()
    opt = critgrad.Adam_CM(params, lr=0.01, topC=2)
    run(opt, params, gradient_sequence(params, 1))
    opt.param_groups[0]["kappa"] = -1.0
    with pytest.raises(ValueError, match="Invalid kappa"):
        opt.step()
    opt.param_groups[0]["kappa"] = 0.5
    opt.param_groups[0]["topC"] = 3
    with pytest.raises(ValueError, match="topC and store_dtype can only be set before"):
        opt.step()


def test_sparse_gradients_and_complex_parameters_are_refused():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = critgrad.Adam_CM([p])
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    with pytest.raises(ValueError, match="complex"):
        critgrad.Adam_CM([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])


# ---- names ----------------------------------------------------------------------------------


def test_registry_and_harness_names():
    from critgrad.bench import optimizer_labels

    model = torch.nn.Linear(3, 2)
    assert "adam_cm" in critgrad.list_optimizers()
    assert "adam_cm" in critgrad.list_optimizers(memory=True)
    assert "adam_cm" not in critgrad.list_optimizers(memory=False)
    assert critgrad.optimizer_class("Adam_CM") is critgrad.Adam_CM
    opt = critgrad.create_optimizer(model, "adam_cm", lr=0.01, weight_decay=0.1, topC=5)
    assert type(opt) is critgrad.Adam_CM
    # Biases get no weight decay, as for every optimizer built by name.
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["topC"] == 5
    assert "adam_cm" in optimizer_labels.known_labels()
    built = optimizer_labels.create("adam_cm", model, {"lr": 0.01})
    assert type(built) is critgrad.Adam_CM
    assert optimizer_labels.check_hyperparameters("adam_cm", {"lr": 0.01}) == {"lr": 0.01}
    assert optimizer_labels.display_name("adam_cm") == "Adam_CM"
    # A memory label whose vanilla twin is Adam: it takes the memory settings.
    assert (
        optimizer_labels.is_memory("adam_cm") and optimizer_labels.base_label("adam_cm") == "adam"
    )
    assert optimizer_labels.resolve("adam_cm", {"topC": 5, "kappa": 0.0}) == (
        "adam_cm",
        {"topC": 5, "kappa": 0.0},
    )
