"""The prepared step (critgrad/_prepared.py): a step whose groups all ran in the native kernels
(one fused pass with torch's Adam, AdamW or SGD; the directions, the base's own step and the slot
writes with any other base) is kept, and the next steps reuse it while everything it was
prepared from holds. Reused, it gives
the general path's results bit for bit (the same kernels, the same arguments); whenever something
changes between steps (options, hyperparameters, state tensors, gradients, groups) the step
decides afresh, as if nothing had been kept.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import critgrad
from critgrad import _native as N
from critgrad import _prepared as P
from critgrad._state import STORE

pytestmark = pytest.mark.skipif(
    not N.available(), reason=f"native kernels unavailable: {N.unavailable_reason()}"
)

CURRENT = P.current


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.randn(32, 12), torch.randint(0, 3, (32,))


def prepared(name="adam"):
    """A model and its optimizer ``BUILDS[name]`` after four steps: the last two reused a
    prepared step."""
    model, x, y = model_and_data()
    opt = BUILDS[name](model)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert opt._prepared is not None
    return model, opt


def run(reuse, build, steps=12, between=None, monkeypatch=None):
    """Train ``steps`` steps with the optimizer ``build(model)``; ``reuse=False``: every step
    decides afresh. ``between(step, opt, model)`` runs before each step's backward pass.
    Returns the parameters and every state tensor, and how many steps reused a prepared one."""
    model, x, y = model_and_data()
    opt = build(model)
    reused = 0

    def counted(*args):
        nonlocal reused
        ready = CURRENT(*args) if reuse else None
        reused += ready is not None
        return ready

    monkeypatch.setattr(P, "current", counted)
    for step in range(steps):
        opt.zero_grad()
        if between is not None:
            between(step, opt, model)
        # a changing scale, so that keys rise and fall and the memories evict
        nn.functional.cross_entropy(model(x * (1 + (step % 5) * 0.4)), y).backward()
        opt.step()
    tensors = [p.detach().clone() for p in model.parameters()]
    tensors += [
        v.clone() for state in opt.state.values() for v in state.values() if torch.is_tensor(v)
    ]
    return tensors, reused


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y)


def check(build, monkeypatch, steps=12, between=None, reused=None):
    """The prepared run equals the general one bit for bit; it reused ``reused`` steps (default:
    every step after the first two: torch's own first step, then the first fused one)."""
    prepared, count = run(True, build, steps, between, monkeypatch)
    general, none = run(False, build, steps, between, monkeypatch)
    assert none == 0
    assert_same(prepared, general)
    assert count == (steps - 2 if reused is None else reused)


BUILDS = {
    "adam": lambda m: critgrad.Adam(m.parameters(), lr=0.01, topC=3),
    "adamw-amsgrad": lambda m: critgrad.AdamW(
        m.parameters(), lr=0.01, topC=2, amsgrad=True, weight_decay=0.1, aggr="sum"
    ),
    "adam-random-per-tensor": lambda m: critgrad.Adam(
        m.parameters(), lr=0.01, topC=2, selection="random", key="per_tensor"
    ),
    "sgd": lambda m: critgrad.SGD(m.parameters(), lr=0.05, topC=3, key="global_norm"),
    "sgd-nesterov": lambda m: critgrad.SGD(
        m.parameters(), lr=0.05, topC=3, momentum=0.9, nesterov=True, aggr="mid"
    ),
    "groups": lambda m: critgrad.Adam(
        [
            dict(params=m[0].parameters(), topC=2, decay=0.5),
            dict(params=m[2].parameters(), selection="recent", lr=0.02),
        ],
        lr=0.01,
    ),
    # bases that step on their own: directions, their step, then the slot writes
    "rmsprop": lambda m: critgrad.RMSprop(m.parameters(), lr=0.01, topC=3, centered=True),
    "adagrad": lambda m: critgrad.Adagrad(m.parameters(), lr=0.05, topC=2, key="per_tensor"),
    "nadam-any-optimizer": lambda m: critgrad.CriticalGradients(
        torch.optim.NAdam(m.parameters(), lr=0.01), topC=3, aggr="mid"
    ),
    # one group fused, one whose tensor learning rate the base's own step takes
    "adam-fused-and-not": lambda m: critgrad.Adam(
        [
            dict(params=m[0].parameters()),
            dict(params=m[2].parameters(), lr=torch.tensor(0.02)),
        ],
        lr=0.01,
        topC=2,
    ),
}


@pytest.mark.parametrize("build", BUILDS.values(), ids=BUILDS.keys())
def test_prepared_steps_equal_general_steps(build, monkeypatch):
    check(build, monkeypatch)


def test_parameters_without_gradients_stay_out(monkeypatch):
    def freeze(step, opt, model):
        model[0].bias.requires_grad_(step < 4 or step > 8)

    # steps 4 (the bias has no gradient) and 9 (it has one again) decide afresh
    check(BUILDS["adam"], monkeypatch, between=freeze, reused=12 - 2 - 2)


def test_a_group_without_gradients(monkeypatch):
    def build(model):
        model[0].requires_grad_(False)
        return critgrad.Adam(
            [dict(params=model[0].parameters()), dict(params=model[2].parameters())], lr=0.01
        )

    check(build, monkeypatch)


def set_in_groups(name, value, at):
    def between(step, opt, model):
        if step == at:
            for group in opt.param_groups:
                group[name] = value

    return between


@pytest.mark.parametrize(
    ("name", "value", "afresh"),
    [
        ("kappa", 0.5, True),
        ("kappa", np.float32(2.0), True),  # a numpy scalar: made Python's by the general path
        ("decay", 0.9, True),
        ("aggr", "sum", True),
        ("key", "per_tensor", True),
        ("selection", "smallest", True),
        ("selection", "random", True),  # a seed is drawn
        ("maximize", True, True),
        # the base's numbers are read at every step: no need to decide afresh
        ("betas", (0.8, 0.99), False),
        ("weight_decay", 0.01, False),
        ("eps", 1e-3, False),
    ],
)
def test_changed_options_take_effect(name, value, afresh, monkeypatch):
    changed = set_in_groups(name, value, at=6)
    check(BUILDS["adam"], monkeypatch, between=changed, reused=12 - 2 - afresh)


def test_a_scheduled_learning_rate_is_read_at_every_step(monkeypatch):
    schedulers = []

    def between(step, opt, model):
        if step == 0:
            schedulers.append(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7))
        else:
            schedulers[-1].step()

    check(BUILDS["sgd-nesterov"], monkeypatch, between=between)


def test_a_tensor_learning_rate_is_the_base_steps_own(monkeypatch):
    # step 5 decides afresh: Adam's own step takes the tensor; then that dispatch is reused
    lr = set_in_groups("lr", torch.tensor(0.02), 5)
    check(BUILDS["adam"], monkeypatch, between=lr, reused=12 - 2 - 1)


def test_a_group_without_memory_is_never_prepared(monkeypatch):
    def build(model):
        return critgrad.Adam(
            [dict(params=model[0].parameters(), kappa=0.0), dict(params=model[2].parameters())],
            lr=0.01,
        )

    check(build, monkeypatch, reused=0)


def test_an_error_in_the_base_step_leaves_memory_and_gradients_as_they_were(monkeypatch):
    model, opt = prepared("rmsprop")
    grads = [p.grad for p in model.parameters()]
    memory = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    stats = opt.memory_stats()

    def fail(*args, **kwargs):
        raise RuntimeError("the base failed")

    monkeypatch.setattr(type(opt.base), "step", fail)
    with pytest.raises(RuntimeError, match="the base failed"):
        opt.step()
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    assert_same(list(opt.state[model[0].weight].values()), list(memory.values()))
    assert opt.memory_stats() == stats


def test_a_changed_topC_is_refused_as_before(monkeypatch):
    _, opt = prepared()
    opt.param_groups[0]["topC"] = 5
    with pytest.raises(ValueError, match="topC and store_dtype can only be set before"):
        opt.step()


def replace(kind, at=6):
    def between(step, opt, model):
        if step != at:
            return
        p = model[0].weight
        if kind == "state":
            opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].clone()
        elif kind == "storage":
            kept = opt.state[p]["exp_avg_sq"].clone()
            opt.state[p]["exp_avg_sq"].set_(kept.untyped_storage(), 0, kept.shape, kept.stride())
        elif kind == "memory":
            opt.state[p][STORE] = opt.state[p][STORE].clone()
        elif kind == "parameter":
            p.data = p.data.clone()
        elif kind == "gradient-layout":
            p.grad = torch.zeros(p.shape[::-1]).t()  # not contiguous: the torch path, this step
        elif kind == "state-dict":
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    return between


@pytest.mark.parametrize(
    "kind", ["state", "storage", "memory", "parameter", "state-dict", "gradient-layout"]
)
def test_replaced_tensors_are_seen(kind, monkeypatch):
    # the step after the change decides afresh, and prepares again
    reused = 12 - 2 - (2 if kind == "gradient-layout" else 1)
    check(BUILDS["adam"], monkeypatch, between=replace(kind), reused=reused)


def test_added_groups_and_parameters_are_seen(monkeypatch):
    def between(step, opt, model):
        if step == 5:
            opt.add_param_group(dict(params=[nn.Parameter(torch.ones(3))], lr=0.02))
        if step == 8:
            opt.param_groups[0]["params"].append(nn.Parameter(torch.zeros(2)))
        for k, p in enumerate(
            (opt.param_groups[-1]["params"][0], opt.param_groups[0]["params"][-1])
        ):
            if step >= (5, 8)[k]:
                p.grad = torch.full(p.shape, float(step))

    # steps 5 and 6: the new group's first steps (torch's own, then fused); 8 and 9 the same for
    # the appended parameter
    check(BUILDS["adam"], monkeypatch, between=between, reused=12 - 2 - 4)


def test_switched_off_kernels_are_seen(monkeypatch):
    def between(step, opt, model):
        if step == 6:
            monkeypatch.setenv("CRITGRAD_NATIVE", "0")

    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    calls = N.calls
    prepared, count = run(True, BUILDS["sgd"], 12, between, monkeypatch)
    assert N.calls - calls == 3 + 2 * 5  # none after the switch
    assert count == 6 - 2
    monkeypatch.setenv("CRITGRAD_NATIVE", "1")
    general, _ = run(False, BUILDS["sgd"], 12, between, monkeypatch)
    assert_same(prepared, general)


def test_copies_prepare_their_own(monkeypatch):
    model, opt = prepared()
    clone = copy.deepcopy(opt)  # (its own parameters and state)
    assert clone._prepared is None
    params = [p for group in clone.param_groups for p in group["params"]]
    for step in range(3):
        for p, q in zip(model.parameters(), params):
            p.grad = torch.full(p.shape, 0.1 * step)
            q.grad = p.grad.clone()
        opt.step()
        clone.step()
    assert clone._prepared is not None
    assert_same(list(model.parameters()), params)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("decay", 1.5, "Invalid decay"),
        ("kappa", torch.tensor([1.0, 2.0]), "Invalid kappa"),  # (does not even compare)
        ("selection", "largest", "Invalid selection"),
    ],
)
def test_invalid_options_set_between_steps_are_refused_as_before(name, value, message):
    _, opt = prepared()
    opt.param_groups[0][name] = value
    with pytest.raises(ValueError, match=message):
        opt.step()
