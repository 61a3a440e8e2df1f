"""The memory probe: a worked example of admission once full and eviction ages, the norms against
the step the optimizer actually took, and the runner's records with and without it."""

from __future__ import annotations

import pytest
import torch

import critgrad
from critgrad.bench import instruments, record_format, runner
from critgrad.bench.record_format import RunSpec


def _stepped(optimizer, parameter, gradients, probe):
    for gradient in gradients:
        parameter.grad = torch.as_tensor(gradient, dtype=parameter.dtype).clone()
        probe.before_step()
        optimizer.step()
        probe.after_step()


def test_worked_example_admission_once_full_and_ages():
    # topC 1, decay 0.5, keys |g| = 1, 3, 1, 1, 1 (one tensor):
    # step 1: room, enters (priority 0.5); 2: 3 > 0.5 enters, evicts age 1 (priority 1.5);
    # 3: 1 < 1.5 turned away (0.75); 4: 1 > 0.75 enters, evicts age 2 (0.5); 5: 1 > 0.5 enters,
    # evicts age 1. While full: 4 offers, 3 admitted. Held at the end: one entry of age 1.
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = critgrad.SGD_C([p], lr=0.1, topC=1, decay=0.5)
    probe = instruments.MemoryProbe(optimizer, norm_every=1)
    _stepped(optimizer, p, [[1.0], [3.0], [1.0], [1.0], [1.0]], probe)
    point = probe.point()
    assert point["offered_when_full"] == 4
    assert point["admitted_when_full"] == 0.75
    assert point["evicted_ages"][:3] == [2, 1, 0] and sum(point["evicted_ages"]) == 3
    assert point["held_ages"][:2] == [1, 0] and sum(point["held_ages"]) == 1
    # The next interval starts from zero.
    again = probe.point()
    assert again["offered_when_full"] == 0 and again["admitted_when_full"] is None
    assert sum(again["evicted_ages"]) == 0 and sum(again["held_ages"]) == 1


def test_age_bins_are_powers_of_two():
    ages = torch.tensor([1, 2, 3, 4, 7, 8, 2**15, 2**20])
    assert instruments.age_bin(ages).tolist() == [0, 1, 1, 2, 2, 3, 15, 15]
    counts = instruments.age_histogram(ages, torch.tensor([1, 1, 0, 1, 1, 1, 1, 1]))
    assert counts.tolist()[:4] == [1, 1, 2, 1] and counts[15] == 2 and counts.sum() == 7


@pytest.mark.parametrize("aggr", ["sum", "mid", "mean"])
@pytest.mark.parametrize("topC,decay", [(3, 0.7), (2, 0.99)])
def test_eviction_ages_match_the_ages_the_memory_replaced(aggr, topC, decay):
    # A second reading of the same events: a slot whose age was a >= 1 before the step and is 1
    # after it was replaced at age a.
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = critgrad.Adam_C(model.parameters(), lr=1e-2, topC=topC, decay=decay, aggr=aggr)
    probe = instruments.MemoryProbe(optimizer, norm_every=2)
    expected = torch.zeros(instruments.AGE_BINS, dtype=torch.int64)
    for step in range(40):
        before = {p: optimizer.state[p]["critical_age"].clone() for p in optimizer.memory}
        model.zero_grad()
        (model(torch.randn(4, 3)) * (1 + step % 5)).square().mean().backward()
        probe.before_step()
        optimizer.step()
        probe.after_step()
        for p, old in before.items():
            new = optimizer.state[p]["critical_age"]
            replaced = (old >= 1) & (new == 1)
            expected += instruments.age_histogram(old.clamp(min=1), replaced)
    point = probe.point()
    assert point["evicted_ages"] == expected.tolist()
    stats = optimizer.memory_stats()[0]
    assert sum(point["evicted_ages"]) == stats["evicted"] > 0
    assert point["offered_when_full"] == stats["evicted"] + stats["rejected"]
    assert sum(point["held_ages"]) == stats["filled"] == 2 * topC


@pytest.mark.parametrize("aggr", ["sum", "mid", "mean"])
def test_direction_norm_is_the_step_sgd_took(aggr):
    # Plain SGD moves by lr * d: the probe's |d| (computed before the step from g and the memory)
    # must equal |change of the parameters| / lr, up to float32 rounding of the update.
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 3)
    lr = 0.5
    optimizer = critgrad.SGD_C(model.parameters(), lr=lr, topC=4, decay=0.9, kappa=0.7, aggr=aggr)
    probe = instruments.MemoryProbe(optimizer, norm_every=1)
    moved = []
    for _ in range(12):
        model.zero_grad()
        model(torch.randn(6, 5)).square().mean().backward()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        stored = [
            optimizer.memory[p]["critical_store"][optimizer.memory[p]["critical_age"] >= 0]
            if p in optimizer.memory
            else None
            for p in model.parameters()
        ]
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        probe.before_step()
        optimizer.step()
        probe.after_step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        means = [
            s.mean(0).flatten() if s is not None and len(s) else torch.zeros(p.numel())
            for s, p in zip(stored, model.parameters())
        ]
        moved.append(((after - before).norm() / lr, grads, torch.cat(means)))
    norms = probe.summary()["norms"]
    assert norms["step"] == list(range(1, 13))
    for i, (step_norm, grad, mean) in enumerate(moved):
        # float32 update rounding: relative 1e-5 is far above it and far below any formula error
        assert norms["direction"][i] == pytest.approx(float(step_norm), rel=1e-5)
        assert norms["grad"][i] == pytest.approx(float(grad.norm()), rel=1e-6)
        assert norms["stored_mean"][i] == pytest.approx(float(mean.norm()), rel=1e-5, abs=0)
        if i == 0:
            assert norms["cosine"][0] is None  # nothing stored before the first step
        else:
            cosine = float(grad @ mean / (grad.norm() * mean.norm()))
            assert norms["cosine"][i] == pytest.approx(cosine, rel=1e-5)


def test_norm_every_samples_every_kth_step_and_checks_its_argument():
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = critgrad.SGD_C([p], lr=0.1)
    probe = instruments.MemoryProbe(optimizer, norm_every=3)
    _stepped(optimizer, p, [[1.0, 2.0]] * 10, probe)
    assert probe.summary()["norms"]["step"] == [3, 6, 9]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="norm_every"):
            instruments.MemoryProbe(optimizer, norm_every=bad)
    assert instruments.norm_interval(None) == 1 and instruments.norm_interval(100) == 1
    assert instruments.norm_interval(2560) == 10 and instruments.norm_interval(2561) == 11


def _spec(label, hyperparameters, overrides):
    return RunSpec("mnist-logreg", label, hyperparameters, seed=3, overrides=overrides)


def test_runner_records_the_probe_for_memory_runs_only(mnist_dir, tiny_overrides):
    memory = runner.run(
        _spec("sgd_c", {"lr": 0.1, "topC": 2, "decay": 0.7}, tiny_overrides),
        data_dir=str(mnist_dir),
        norm_every=1,
    )
    assert record_format.check_record(memory) is None
    steps = memory["steps"]
    assert memory["probe"]["norm_every"] == 1
    assert memory["probe"]["norms"]["step"] == list(range(1, steps + 1))
    assert memory["probe"]["age_edges"][:4] == [1, 2, 4, 8]
    history = memory["history"]
    assert history[0]["probe"]["offered_when_full"] == 0
    tensors = 2  # weight and bias: counts are of tensor-gradients
    full = sum(p["probe"]["offered_when_full"] for p in history)
    assert full == tensors * (steps - 2)  # full from the third step on (topC 2)
    assert sum(history[-1]["probe"]["held_ages"]) == tensors * 2
    plain = runner.run(_spec("sgd", {"lr": 0.1}, tiny_overrides), data_dir=str(mnist_dir))
    assert "probe" not in plain and all("probe" not in p for p in plain["history"])


def test_the_probe_does_not_change_the_run(mnist_dir, tiny_overrides):
    spec = _spec("adam_c", {"lr": 1e-3, "topC": 3, "decay": 0.9}, tiny_overrides)
    every_step = runner.without_timings(runner.run(spec, data_dir=str(mnist_dir), norm_every=1))
    rarely = runner.without_timings(runner.run(spec, data_dir=str(mnist_dir), norm_every=1000))
    assert rarely["probe"]["norms"]["step"] == []
    for record in (every_step, rarely):
        record.pop("probe")
    assert every_step == rarely
