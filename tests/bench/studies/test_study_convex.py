"""The convex study: mu and L of the objective against its explicit Hessian, f* by L-BFGS, the
rate fit, steps of the optimizers, and the quick study end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from critgrad.bench.studies import convex, convex_objective
from critgrad.bench.studies.contract import Options

TINY = {"source": "synthetic", "rows": 40, "features": 4, "classes": 3, "data_seed": 1}


@pytest.fixture(scope="module")
def tiny():
    return convex.problem(TINY, 0, None)


def _hessian(objective, weight, bias):
    sizes = weight.numel()

    def f(flat):
        return objective.value(flat[:sizes].view_as(weight), flat[sizes:])

    return torch.autograd.functional.hessian(f, torch.cat([weight.flatten(), bias]))


def test_mu_is_lambda_and_l_bounds_the_hessian_everywhere(tiny):
    objective, weight, bias = tiny
    bound = convex_objective.smoothness_bound(objective.features, objective.l2)
    for scale in (0.0, 1.0, 5.0):
        eigenvalues = torch.linalg.eigvalsh(_hessian(objective, scale * weight, scale * bias))
        # The class-shift directions have Hessian eigenvalue lambda exactly (rounding aside).
        assert eigenvalues[0].item() == pytest.approx(objective.l2, abs=1e-12)
        assert eigenvalues[-1].item() <= bound
    at_zero = torch.linalg.eigvalsh(_hessian(objective, 0 * weight, 0 * bias))[-1].item()
    assert at_zero >= 0.5 * bound  # the bound is not loose by more than the 1/2 of p(1-p)


def test_power_iteration_finds_the_largest_eigenvalue(tiny):
    objective, weight, bias = tiny
    exact = torch.linalg.eigvalsh(_hessian(objective, weight, bias))[-1].item()
    got = convex_objective.largest_hessian_eigenvalue(objective, weight, bias, iterations=300)
    assert got == pytest.approx(exact, rel=1e-8)


def test_minimise_reaches_the_tolerance_and_is_a_minimum(tiny):
    objective, _, _ = tiny
    found = convex_objective.minimise(objective, tolerance=1e-10)
    assert found.gradient_norm <= 1e-10
    assert found.value == pytest.approx(float(objective.value(found.weight, found.bias)), abs=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        dw = 1e-3 * torch.randn(found.weight.shape, generator=generator, dtype=torch.float64)
        db = 1e-3 * torch.randn(found.bias.shape, generator=generator, dtype=torch.float64)
        assert float(objective.value(found.weight + dw, found.bias + db)) > found.value


def test_minimise_refuses_to_return_short_of_the_tolerance(tiny):
    objective, _, _ = tiny
    with pytest.raises(RuntimeError, match="not the 1e-30 asked for"):
        convex_objective.minimise(objective, tolerance=1e-30, max_iterations=100)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.999])
def test_fit_rate_recovers_a_geometric_sequence(rate):
    steps = np.arange(200)
    gaps = 3.0 * rate**steps
    assert convex.fit_rate(steps, gaps, floor=0.0) == pytest.approx(rate, rel=1e-12)


def test_fit_rate_ignores_the_floor_and_the_first_half():
    steps = np.arange(100)
    gaps = np.where(steps < 50, 1.0, 0.8**steps)  # a plateau, then geometric, then below floor
    gaps[90:] = 1e-20
    assert convex.fit_rate(steps, gaps, floor=1e-13) == pytest.approx(0.8, rel=1e-12)
    assert convex.fit_rate(steps, np.full(100, 1e-20)) is None


def _config(optimizer, memory, steps=2):
    return {
        "kind": "descent",
        "data": TINY,
        "optimizer": optimizer,
        "step_times_L": 1.0,
        "memory": memory,
        "mode": "full",
        "seed": 0,
        "steps": steps,
    }


def test_full_batch_steps_are_gradient_descent_and_the_memory_sum(tiny):
    objective, weight, bias = tiny
    lr = 1.0 / convex_objective.smoothness_bound(objective.features, objective.l2)

    def gradient(w, b):
        w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        return torch.autograd.grad(objective.value(w, b), (w, b))

    g0 = gradient(weight, bias)
    w1, b1 = weight - lr * g0[0], bias - lr * g0[1]
    g1 = gradient(w1, b1)
    w2, b2 = w1 - lr * (g1[0] + g0[0]), b1 - lr * (g1[1] + g0[1])  # sum: g + mean of {g0}
    sgd = convex.descent(_config("sgd", None), Options())
    twin = convex.descent(_config("sgd_c", {"topC": 5, "decay": 0.7, "aggr": "sum"}), Options())
    assert sgd["lr"] == pytest.approx(lr, rel=1e-15)
    values = [float(objective.value(weight, bias)), float(objective.value(w1, b1))]
    # Same float64 operations in another order: agreement to a few ulps of f.
    assert sgd["f"][:2] == pytest.approx(values, rel=1e-14)
    assert twin["f"][:2] == pytest.approx(values, rel=1e-14)
    assert twin["f"][2] == pytest.approx(float(objective.value(w2, b2)), rel=1e-14)
    assert twin["memory"]["offered"] == 2 * 2 and twin["memory"]["admitted"] == 4  # 2 tensors


def test_minibatch_records_every_eval_point_and_is_seeded():
    config = {
        **_config("sgd", None),
        "data": convex.SYNTHETIC,
        "mode": "minibatch",
        "epochs": 2,
        "batch": 25,
        "eval_every": 4,
    }
    del config["steps"]
    one = convex.descent(config, Options())
    assert one["steps"] == [0, 4, 8, 12, 16, 20, 24]  # 12 batches of 25 per epoch over 300 rows
    assert one == convex.descent(config, Options())
    other = convex.descent({**config, "seed": 1}, Options())
    assert other["f"] != one["f"]


def test_quick_study_end_to_end(quick_runs):
    out, outcome = quick_runs["convex"]
    setting = outcome.summary.data["setting"]
    assert setting["mu"] == 0.01
    assert setting["kappa"] == pytest.approx(setting["L_bound"] / setting["mu"])
    assert setting["L_local_at_minimum"] <= setting["L_bound"]
    assert setting["f_star_gradient_norm"] <= convex.QUICK_TOLERANCE
    variants = outcome.summary.data["variants"]
    assert [v["variant"] for v in variants] == [v["name"] for v in convex.variants()]
    for entry in variants:
        assert entry["full_diverged_step"] is None
        assert entry["full_final_gap"] >= -1e-12  # f* is below every iterate
        assert entry["minibatch_final_gap_mean"] >= -1e-12
    sgd = variants[0]
    assert sgd["rate"] is not None and 0 < sgd["rate"] < 1
    assert math.isclose(sgd["step"], setting["alpha"], rel_tol=1e-12)
    assert (out / "convex-gap.png").stat().st_size > 10_000
    assert "| SGD | " in (out / "table.md").read_text()
