"""The memory optimizers inside real training loops: closures, schedulers, AMP, odd gradients."""

import io

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads
from torch import nn

import critgrad


def tiny_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=gen)
    y = (x @ torch.randn(5, 1, generator=gen)).squeeze(1) + 0.1 * torch.randn(64, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    return model, x, y


def loss_of(model, x, y):
    return nn.functional.mse_loss(model(x).squeeze(1), y)


@pytest.mark.parametrize(
    "name, lr",
    [
        ("sgd_c", 0.05),
        ("rmsprop_c", 0.003),
        ("adam_c", 0.01),
        ("adamw_c", 0.01),
        ("adagrad_c", 0.1),
        ("adamax_c", 0.01),
        ("nadam_c", 0.01),
        ("radam_c", 0.05),
    ],
)
def test_loss_goes_down(name, lr):
    model, x, y = tiny_problem()
    opt = critgrad.create_optimizer(model, name, lr=lr, topC=5)
    start = loss_of(model, x, y).item()
    for _ in range(60):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    assert loss_of(model, x, y).item() < 0.5 * start


def test_closure_is_run_and_its_loss_returned():
    model, x, y = tiny_problem()
    opt = critgrad.Adam(model.parameters(), lr=0.01)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True] and isinstance(loss, torch.Tensor)
    assert opt.memory_stats()[0]["offered"] == 4


def test_scheduler_and_its_resume():
    def run(stop_at=None):
        model, x, y = tiny_problem()
        opt = critgrad.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        lrs = []
        for step in range(10):
            if step == stop_at:
                buffer = io.BytesIO()
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                    },
                    buffer,
                )
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
                model, _, _ = tiny_problem(seed=1)
                model.load_state_dict(saved["model"])
                opt = critgrad.SGD(model.parameters(), lr=0.1, momentum=0.9)
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
                opt.load_state_dict(saved["opt"])
                sched.load_state_dict(saved["sched"])
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return lrs, [p.detach().clone() for p in model.parameters()]

    lrs_a, params_a = run()
    lrs_b, params_b = run(stop_at=5)
    assert lrs_a == lrs_b and lrs_a[-1] == pytest.approx(0.1 * 0.5**3)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_param_groups_are_shared_with_the_base():
    model, _, _ = tiny_problem()
    opt = critgrad.Adam(model.parameters(), lr=0.01)
    assert opt.param_groups is opt.base.param_groups
    opt.param_groups[0]["lr"] = 0.5
    assert opt.base.param_groups[0]["lr"] == 0.5


def test_add_param_group_with_its_own_options():
    a, b = make_params()[:2]
    opt = critgrad.SGD([a], lr=0.1, topC=2)
    opt.add_param_group({"params": [b], "topC": 4, "lr": 0.01})
    assert opt.param_groups[1]["topC"] == 4 and opt.param_groups[1]["decay"] == 0.7
    assert opt.param_groups is opt.base.param_groups and len(opt.param_groups) == 2
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    assert opt.memory[a]["critical_store"].shape[0] == 2
    assert opt.memory[b]["critical_store"].shape[0] == 4


def test_zero_grad_and_hooks():
    model, x, y = tiny_problem()
    opt = critgrad.Adam(model.parameters(), lr=0.01)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    loss_of(model, x, y).backward()
    opt.step()
    opt.zero_grad()
    assert seen == ["pre", "post"]
    assert all(p.grad is None for p in model.parameters())


def test_repr_names_the_optimizer_and_memory():
    text = repr(critgrad.Adam(make_params(), lr=0.01, topC=7))
    assert text.startswith("critgrad.Adam (") and "topC: 7" in text and "lr: 0.01" in text
    wrapped = critgrad.CriticalGradients(torch.optim.SGD(make_params(), lr=0.1))
    assert repr(wrapped).startswith("CriticalGradients(SGD) (")


def test_nonfinite_gradient_never_enters_the_memory():
    params = make_params()
    opt = critgrad.SGD(params, lr=0.01, topC=3, key="per_tensor")
    grads = gradient_sequence(params, 6)
    grads[2][0] = torch.full_like(grads[2][0], float("inf"))
    grads[4][1] = grads[4][1].clone()
    grads[4][1][0] = float("nan")
    for g in grads:
        set_grads(params, g)
        opt.step()
    for p in params:
        assert torch.isfinite(opt.memory[p]["critical_store"]).all()
        assert torch.isfinite(opt.memory[p]["critical_sum"]).all()
    stats = opt.memory_stats()[0]
    assert stats["nonfinite"] == 2 and stats["offered"] == 18


def test_grad_scaler_skipped_step_leaves_memory_untouched():
    model, x, y = tiny_problem()
    opt = critgrad.Adam(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step in range(4):
        opt.zero_grad()
        scaler.scale(loss_of(model, x, y)).backward()
        if step == 3:
            before = {p: {k: v.clone() for k, v in mem.items()} for p, mem in opt.memory.items()}
            stats_before = opt.memory_stats()
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() < 2.0**8  # the scaler did see the inf and skip the step
    assert stats_before == opt.memory_stats()
    for p, mem in opt.memory.items():
        for key, value in mem.items():
            assert torch.equal(before[p][key], value), key


def test_sparse_gradients_are_refused_clearly():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = critgrad.SGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    # With kappa=0 for that group the base optimizer handles it as usual.
    opt.param_groups[0]["kappa"] = 0
    opt.step()


def test_parameters_without_gradients_are_skipped():
    a, b = make_params()[:2]
    opt = critgrad.Adam([a, b], lr=0.01)
    a.grad = torch.ones_like(a)
    opt.step()
    assert a in opt.memory and b not in opt.memory
    b.grad = torch.ones_like(b)
    opt.step()
    assert opt.memory_stats()[0]["offered"] == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_memory_follows_parameter_dtype(dtype):
    p = nn.Parameter(torch.randn(6, dtype=dtype))
    opt = critgrad.Adam([p], lr=0.01)
    for _ in range(3):
        p.grad = torch.randn(6, dtype=dtype)
        opt.step()
    mem = opt.memory[p]
    assert mem["critical_store"].dtype == dtype and mem["critical_store"].device == p.device
    expected_sum = torch.float32  # float32 at least, whatever the low-precision dtype
    assert mem["critical_sum"].dtype == expected_sum
    assert p.dtype == dtype and torch.isfinite(p).all()


def test_running_sum_stays_exact_over_thousands_of_steps():
    p = nn.Parameter(torch.zeros(1000))
    opt = critgrad.SGD([p], lr=0.0, topC=10, decay=0.5)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for step in range(3000):
        p.grad = torch.randn(1000, generator=gen) * (1 + 100 * (step % 7))
        opt.step()
        if step % 97 == 0 or step > 2990:
            mem = opt.memory[p]
            exact = mem["critical_store"].double().sum(0)
            scale = mem["critical_store"].double().abs().sum(0).clamp_min(1.0)
            worst = max(worst, float(((mem["critical_sum"].double() - exact).abs() / scale).max()))
    # float32 rounding of a sum of 10 terms is ~1e-7 relative; drift would grow without bound.
    assert worst < 1e-5
    assert opt.memory_stats()[0]["evicted"] > 2000


def test_memory_stats_track_ages():
    p = nn.Parameter(torch.zeros(2))
    opt = critgrad.SGD([p], lr=0.0, topC=2, decay=1.0)
    for g in (1.0, 2.0, 0.5, 3.0):
        p.grad = torch.full((2,), g)
        opt.step()
    stats = opt.memory_stats()[0]
    # Entries: key 2 (stored at step 2, age 3) and key 3 (step 4, age 1); key 1 evicted at age 3.
    assert stats["filled"] == 2 and stats["mean_age"] == 2.0 and stats["max_age"] == 3
    assert stats["evicted"] == 1 and stats["mean_eviction_age"] == 3.0
    assert stats["last_key"] == pytest.approx(3 * 2**0.5)
    assert stats["min_priority"] == pytest.approx(2 * 2**0.5)
    assert stats["mean_priority"] == pytest.approx(2.5 * 2**0.5)
