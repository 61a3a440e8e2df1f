"""AggMo (aggregated momentum) and AggMo_C: worked examples, a slow reference, foreach equal to the
for-loop, save and resume, validation, and kappa=0 equal to AggMo bit for bit."""

import io

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads

import critgrad


def _run(opt, params, grads_per_step):
    for grads in grads_per_step:
        set_grads(params, grads)
        opt.step()


# ---- worked examples (float64, gradients set by hand) ---------------------------------------


def test_worked_example_two_betas():
    # betas (0, 0.5), lr 0.1, K = 2, p0 = (1, -2); grads (1, 2) then (2, -1).
    # Step 1: v0 = v1 = (1, 2); p = (1, -2) - 0.05 * (2, 4) = (0.9, -2.2).
    # Step 2: v0 = (2, -1); v1 = 0.5 * (1, 2) + (2, -1) = (2.5, 0); sum (4.5, -1);
    #         p = (0.9, -2.2) - 0.05 * (4.5, -1) = (0.675, -2.15).
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = critgrad.AggMo([p], lr=0.1, betas=(0.0, 0.5))
    p.grad = torch.tensor([1.0, 2.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -2.2], dtype=torch.float64))
    p.grad = torch.tensor([2.0, -1.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.675, -2.15], dtype=torch.float64))
    torch.testing.assert_close(
        opt.state[p]["momentum_buffer"],
        torch.tensor([[2.0, -1.0], [2.5, 0.0]], dtype=torch.float64),
    )


def test_worked_example_default_betas_with_weight_decay():
    # betas (0, 0.9, 0.99), lr 0.3 (lr / K = 0.1), weight decay 0.1, p0 = 2; grads 1 then 0.
    # Step 1: g = 1 + 0.1 * 2 = 1.2; every v = 1.2; p = 2 - 0.1 * 3.6 = 1.64.
    # Step 2: g = 0.1 * 1.64 = 0.164; v = (0.164, 0.9 * 1.2 + 0.164, 0.99 * 1.2 + 0.164)
    #         = (0.164, 1.244, 1.352); sum 2.76; p = 1.64 - 0.276 = 1.364.
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = critgrad.AggMo([p], lr=0.3, weight_decay=0.1)
    assert opt.defaults["betas"] == (0.0, 0.9, 0.99)
    for grad, expected in ((1.0, 1.64), (0.0, 1.364)):
        p.grad = torch.tensor([grad], dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor([expected], dtype=torch.float64))
    torch.testing.assert_close(
        opt.state[p]["momentum_buffer"][:, 0],
        torch.tensor([0.164, 1.244, 1.352], dtype=torch.float64),
    )


def test_worked_example_maximize():
    # betas (0.5,), lr 1, p0 = 0, grads 1 and 1, maximising: g = -1 each step.
    # Step 1: v = -1, p = 1. Step 2: v = 0.5 * -1 - 1 = -1.5, p = 2.5.
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = critgrad.AggMo([p], lr=1.0, betas=(0.5,), maximize=True)
    for expected in (1.0, 2.5):
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        assert p.item() == expected


# ---- a slow reference: plain Python floats, one element at a time ---------------------------


def reference_aggmo(p0, grads_per_step, lr, betas, weight_decay=0.0, maximize=False):
    """The module docstring's update on lists of floats."""
    p = list(p0)
    velocities = [[0.0] * len(p) for _ in betas]
    for grads in grads_per_step:
        for j in range(len(p)):
            g = -grads[j] if maximize else grads[j]
            g = g + weight_decay * p[j]
            for i, beta in enumerate(betas):
                velocities[i][j] = beta * velocities[i][j] + g
            p[j] = p[j] - lr / len(betas) * sum(v[j] for v in velocities)
    return p


CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.05, betas=(0.0, 0.5, 0.9, 0.999)),
    dict(lr=0.02, betas=(0.9,), weight_decay=0.1),
    dict(lr=0.01, betas=(0.0, 0.9, 0.99), weight_decay=0.01, maximize=True),
]
CONFIG_IDS = ["defaults", "four-betas", "one-beta-wd", "maximize-wd"]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_the_slow_reference(config, foreach):
    params = make_params(torch.float64)
    start = [p.detach().flatten().tolist() for p in params]
    sequence = gradient_sequence(params, 12)
    _run(critgrad.AggMo(params, foreach=foreach, **config), params, sequence)
    ref_config = {"betas": critgrad.aggmo.DEFAULT_BETAS, **config}
    for k, p in enumerate(params):
        expected = reference_aggmo(
            start[k],
            [[float(x) for x in step[k].flatten()] for step in sequence],
            ref_config["lr"],
            ref_config["betas"],
            ref_config.get("weight_decay", 0.0),
            ref_config.get("maximize", False),
        )
        # float64; the reference sums the velocities and scales by lr/K in a different
        # association than torch's add(alpha=...), so the last bits may differ.
        torch.testing.assert_close(
            p.detach().flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_equals_for_loop(config, dtype):
    # Same operations in the same order: on the CPU the two paths agree bit for bit. Two groups,
    # and one parameter without a gradient on some steps.
    runs = []
    for foreach in (False, True):
        params = make_params(dtype)
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": config["lr"] / 2}]
        opt = critgrad.AggMo(groups, foreach=foreach, **config)
        for step, grads in enumerate(gradient_sequence(params, 15)):
            set_grads(params, grads)
            if step % 4 == 1:
                params[1].grad = None
            opt.step()
        runs.append((params, opt))
    (params_a, opt_a), (params_b, opt_b) = runs
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
        assert torch.equal(opt_a.state[a]["momentum_buffer"], opt_b.state[b]["momentum_buffer"])


def test_state_is_lazy_and_shaped_k_by_param():
    params = make_params()
    opt = critgrad.AggMo(params, betas=(0.0, 0.9))
    assert len(opt.state) == 0
    set_grads(params, gradient_sequence(params, 1)[0])
    params[2].grad = None
    opt.step()
    assert set(opt.state) == {params[0], params[1]}
    for p in params[:2]:
        buffer = opt.state[p]["momentum_buffer"]
        assert buffer.shape == (2, *p.shape) and buffer.dtype == p.dtype


# ---- save and resume ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aggmo", "aggmo_c"])
def test_resume_equals_never_stopping(name):
    kwargs = dict(lr=0.01, weight_decay=0.01)
    if name == "aggmo_c":
        kwargs.update(topC=3, decay=0.7)
    sequence = gradient_sequence(make_params(), 10)
    straight = make_params()
    opt = critgrad.create_optimizer(straight, name, **kwargs)
    _run(opt, straight, sequence)

    resumed = make_params()
    first = critgrad.create_optimizer(resumed, name, **kwargs)
    _run(first, resumed, sequence[:4])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in resumed], "opt": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = make_params(seed=7)  # other values: everything must come from the checkpoint
    with torch.no_grad():
        for p, value in zip(fresh, saved["params"]):
            p.copy_(value)
    second = critgrad.create_optimizer(fresh, name, **kwargs)
    second.load_state_dict(saved["opt"])
    _run(second, fresh, sequence[4:])
    for a, b in zip(straight, fresh):
        assert torch.equal(a, b)


# ---- validation -----------------------------------------------------------------------------

INVALID = [
    (dict(lr=-0.1), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(betas=()), "betas"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(-0.1,)), "betas"),
    (dict(betas="0.9"), "betas"),
    (dict(betas=(0.9, True)), "betas"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(maximize=1), "maximize"),
    (dict(foreach="yes"), "foreach"),
]


@pytest.mark.parametrize("cls", [critgrad.AggMo, critgrad.AggMo_C])
@pytest.mark.parametrize(
    "kwargs, name", INVALID, ids=[n + str(i) for i, (_, n) in enumerate(INVALID)]
)
def test_invalid_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: .*\(must be"):
        cls([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_invalid_value_set_between_steps():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = critgrad.AggMo([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["betas"] = (0.0, 0.9)  # K fixed at the first step
    with pytest.raises(ValueError, match=r"Invalid betas: .*fixed at a group's first step"):
        opt.step()
    opt.param_groups[0]["betas"] = (0.0, 0.9, 0.999)  # same K, other values: allowed
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid lr"):
        opt.step()


def test_sparse_gradient_is_refused():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = critgrad.AggMo([p])
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_minimises_a_quadratic():
    target = torch.tensor([1.0, -2.0, 3.0])
    p = torch.nn.Parameter(torch.zeros(3))
    opt = critgrad.AggMo([p], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        (p - target).square().sum().backward()
        opt.step()
    torch.testing.assert_close(p.detach(), target, atol=1e-3, rtol=0)


# ---- AggMo_C: the memory around it ----------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kappa_zero_is_aggmo_bit_for_bit(foreach, dtype):
    params_a, params_b = make_params(dtype), make_params(dtype)
    kwargs = dict(lr=0.01, betas=(0.0, 0.9, 0.99), weight_decay=0.01, foreach=foreach)
    plain = critgrad.AggMo(params_a, **kwargs)
    ours = critgrad.AggMo_C(params_b, kappa=0.0, topC=3, **kwargs)
    for grads in gradient_sequence(params_a, 20):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        plain.step()
        ours.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
        assert torch.equal(plain.state[a]["momentum_buffer"], ours.state[b]["momentum_buffer"])
    assert ours.memory == {}


def test_aggmo_c_worked_example_one_velocity_is_sgd_c():
    # With betas (0,), AggMo is SGD; AggMo_C then reproduces the method's worked example 1:
    # aggr sum, lr 0.1, topC 3, decay 0.5, kappa 1, p0 = (1, 2); grads (1, 0) then (0, 3).
    # Step 1: empty memory, p = (0.9, 2.0). Step 2: d = (0, 3) + mean{(1, 0)} = (1, 3);
    # p = (0.8, 1.7); priorities {1 * 0.25, 3 * 0.5}.
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = critgrad.AggMo_C([p], lr=0.1, betas=(0.0,), topC=3, decay=0.5, kappa=1.0)
    assert opt.param_groups[0]["aggr"] == "sum"
    p.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 2.0], dtype=torch.float64))
    p.grad = torch.tensor([0.0, 3.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.8, 1.7], dtype=torch.float64))
    priorities = sorted(x for x in opt.memory[p]["critical_priority"].tolist() if x > 0)
    assert priorities == pytest.approx([0.25, 1.5])


def test_aggmo_c_velocities_accumulate_the_aggregate():
    # Two velocities (0, 0.5), lr 0.2 (lr / K = 0.1), topC 1, decay 0.5, kappa 1, p0 = 0.
    # Step 1: d = g1 = 2; v = (2, 2); p = -0.4; memory {2, priority 2 * 0.5 = 1}.
    # Step 2: g2 = 1; d = 1 + 2 = 3; v = (3, 0.5 * 2 + 3 = 4); p = -0.4 - 0.7 = -1.1;
    #         key 1 is not above priority 1: rejected.
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = critgrad.AggMo_C([p], lr=0.2, betas=(0.0, 0.5), topC=1, decay=0.5)
    for grad, expected in ((2.0, -0.4), (1.0, -1.1)):
        p.grad = torch.tensor([grad], dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor([expected], dtype=torch.float64))
    torch.testing.assert_close(
        opt.state[p]["momentum_buffer"][:, 0], torch.tensor([3.0, 4.0], dtype=torch.float64)
    )
    assert opt.memory_stats()[0]["rejected"] == 1


def test_registry_and_harness_names():
    from critgrad.bench import optimizer_labels

    model = torch.nn.Linear(3, 2)
    assert type(critgrad.create_optimizer(model, "aggmo", lr=0.01)) is critgrad.AggMo
    assert type(critgrad.create_optimizer(model, "aggmo_c", lr=0.01)) is critgrad.AggMo_C
    assert critgrad.optimizer_class("AggMo_C") is critgrad.AggMo_C
    assert {"aggmo", "aggmo_c"} <= set(optimizer_labels.known_labels())
    assert optimizer_labels.base_label("aggmo_c") == "aggmo"
    opt = optimizer_labels.create("aggmo_c", model, {"lr": 0.01, "topC": 5})
    assert opt.param_groups[0]["topC"] == 5 and isinstance(opt.base, critgrad.AggMo)
    with pytest.raises(ValueError, match="no memory"):
        optimizer_labels.create("aggmo", model, {"lr": 0.01, "topC": 5})
