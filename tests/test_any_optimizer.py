"""Any torch optimizer: the base's own methods stay reachable, what cannot be wrapped is refused,
and the wrapper leaves the base's protocol with torch (hooks, GradScaler, errors) intact."""

import pytest
import torch
from optim_cases import gradient_sequence, make_params, set_grads
from torch.optim.optimizer import register_optimizer_step_pre_hook

import critgrad


class AveragingSGD(torch.optim.Optimizer):
    """A stand-in for schedule-free optimizers: plain SGD whose parameters are switched between a
    training point and an average by ``train()``/``eval()``, methods torch's Optimizer lacks."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))
        self.training = True
        self.switches = 0

    def train(self):
        self._switch(to_training=True)

    def eval(self):
        self._switch(to_training=False)

    @torch.no_grad()
    def _switch(self, to_training):
        if self.training == to_training:
            return
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "average" in state:
                    point = p.detach().clone()
                    p.copy_(state["average"])
                    state["average"].copy_(point)
        self.training = to_training
        self.switches += 1

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:  # the lazy initialisation the memory must not disturb
                    state["average"] = p.detach().clone()
                    state["count"] = 0
                p.add_(p.grad, alpha=-group["lr"])  # as torch's SGD writes it
                state["count"] += 1
                state["average"].lerp_(p, 1.0 / state["count"])


def test_methods_of_the_base_are_reachable():
    params = make_params()
    opt = critgrad.CriticalGradients(AveragingSGD(params, lr=0.1), topC=2, aggr="sum")
    opt.train()
    for grads in gradient_sequence(params, 4):
        set_grads(params, grads)
        opt.step()
    trained = [p.detach().clone() for p in params]
    opt.eval()
    assert opt.base.switches == 1 and opt.training is False
    assert not all(torch.equal(p, t) for p, t in zip(params, trained))
    opt.train()
    assert all(torch.equal(p, t) for p, t in zip(params, trained))
    assert opt.memory_stats()[0]["admitted"] > 0
    with pytest.raises(AttributeError, match="no_such_method"):
        opt.no_such_method()


def test_the_base_sees_the_aggregate_and_initialises_its_own_state():
    params_a, params_b = make_params(), make_params()
    ours = critgrad.CriticalGradients(AveragingSGD(params_a, lr=0.1), topC=3, aggr="sum")
    plain = critgrad.CriticalGradients(torch.optim.SGD(params_b, lr=0.1), topC=3, aggr="sum")
    for grads in gradient_sequence(params_a, 6):
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        ours.step()
        plain.step()
    # The averaging optimizer takes the same steps as SGD: same memory, same parameters.
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert ours.state[a]["count"] == 6


def test_private_attributes_are_not_forwarded():
    # A fused base tells GradScaler that it unscales gradients itself; the wrapper must not
    # inherit that flag, or the memory would see scaled gradients.
    opt = critgrad.Adam(make_params(), lr=0.01, fused=True)
    assert opt.base._step_supports_amp_scaling
    assert not hasattr(opt, "_step_supports_amp_scaling")


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_normal_step_stores_the_unscaled_gradient(fused):
    params_a, params_b = make_params(torch.float32), make_params(torch.float32)
    plain = critgrad.Adam(params_a, lr=0.01, topC=3, fused=fused)
    scaled = critgrad.Adam(params_b, lr=0.01, topC=3, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for grads in gradient_sequence(params_a, 4):
        set_grads(params_a, grads)
        plain.step()
        scaler.scale(torch.ones(()))  # what a training loop scales is its loss
        set_grads(params_b, [g * 2.0**10 for g in grads])  # as backward of the scaled loss
        scaler.step(scaled)
        scaler.update()
    assert scaler.get_scale() == 2.0**10  # no step was skipped
    for a, b in zip(params_a, params_b):
        # Unscaling multiplies by 2**-10: exact, so the two runs are the same run.
        assert torch.equal(plain.memory[a]["critical_store"], scaled.memory[b]["critical_store"])
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_closure_re_evaluating_optimizers_are_refused():
    with pytest.raises(TypeError, match="closure is called several times"):
        critgrad.CriticalGradients(torch.optim.LBFGS(make_params()))

    class NeedsClosure(torch.optim.SGD):
        def step(self, closure):
            return super().step(closure)

    with pytest.raises(TypeError, match="NeedsClosure re-evaluates"):
        critgrad.CriticalGradients(NeedsClosure(make_params(), lr=0.1))


def test_failing_base_step_restores_gradients_and_leaves_memory_untouched():
    params = make_params()
    opt = critgrad.SGD(params, lr=0.1, topC=2)
    grads = gradient_sequence(params, 3)
    for g in grads[:2]:
        set_grads(params, g)
        opt.step()
    before = {p: {k: v.clone() for k, v in opt.memory[p].items()} for p in params}
    stats = opt.memory_stats()
    set_grads(params, grads[2])
    raw = [p.grad for p in params]

    def broken_step(self, closure=None):
        raise RuntimeError("the base failed")

    opt.base.step = broken_step.__get__(opt.base)
    with pytest.raises(RuntimeError, match="the base failed"):
        opt.step()
    assert all(p.grad is g for p, g in zip(params, raw))
    assert opt.memory_stats() == stats
    for p in params:
        for key, value in opt.memory[p].items():
            assert torch.equal(before[p][key], value), key


def test_step_hooks_run_once_per_step():
    calls = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: calls.append(type(opt).__name__)
    )
    try:
        params = make_params()
        opt = critgrad.Adam(params, lr=0.01)
        set_grads(params, gradient_sequence(params, 1)[0])
        opt.step()
    finally:
        handle.remove()
    assert calls == ["Adam"]  # the wrapper's step; the base's own is called without its hooks
