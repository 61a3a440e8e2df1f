"""The surfaces study: formulas at their known minima, hand-written gradients against autograd,
trajectories stepped as the optimizers define them, divergence, and the quick study end to end."""

from __future__ import annotations

import math

import pytest
import torch

from critgrad.bench.studies import surfaces
from critgrad.bench.studies.contract import Options
from critgrad.bench.studies.surface_formulas import SURFACES

F = SURFACES


@pytest.mark.parametrize(
    "name, point, value, places",
    [
        ("beale", (3.0, 0.5), 0.0, 15),
        ("goldstein-price", (0.0, -1.0), 3.0, 12),
        ("goldstein-price", (-0.6, -0.4), 30.0, 12),
        ("goldstein-price", (1.8, 0.2), 84.0, 11),
        ("goldstein-price", (1.2, 0.8), 840.0, 10),
        ("camel", (0.0898, -0.7126), -1.0316, 4),  # the published 4-decimal values
        ("camel", (0.08984201310031807, -0.7126564030207396), -1.0316284534898774, 14),
        ("camel", (1.703606714969981, -0.7960835686726251), -0.21546382438371836, 14),
        ("camel", (1.6071047529201974, 0.5686514548841313), 2.1042503103112598, 14),
        ("rosenbrock", (1.0, 1.0), 0.0, 15),
        # away from the minima, worked by hand
        ("beale", (0.0, 0.0), 1.5**2 + 2.25**2 + 2.625**2, 13),
        ("goldstein-price", (0.0, 0.0), (1 + 19) * 30, 12),
        ("camel", (1.0, 1.0), (4 - 2.1 + 1 / 3) + 1 + 0, 13),
        ("rosenbrock", (-1.0, 2.0), 4 + 100, 13),
    ],
)
def test_formula_values(name, point, value, places):
    assert F[name].function(*point) == pytest.approx(value, abs=10.0**-places)


@pytest.mark.parametrize("name", list(F))
def test_gradients_match_autograd(name):
    generator = torch.Generator().manual_seed(0)
    x0, x1, y0, y1 = F[name].window
    for _ in range(20):
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        point = torch.stack([x0 + (x1 - x0) * u[0], y0 + (y1 - y0) * u[1]]).requires_grad_(True)
        expected = torch.autograd.grad(F[name].function(point[0], point[1]), point)[0]
        got = torch.stack(F[name].gradient(point[0].detach(), point[1].detach()))
        # Same polynomial, different evaluation order: agreement to rounding of the larger terms.
        scale = 1.0 + expected.abs().max()
        assert torch.allclose(got, expected, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("name", list(F))
def test_listed_minima_are_minima(name):
    surface = F[name]
    for x, y in surface.minima:
        gradient = math.hypot(*surface.gradient(x, y))
        assert gradient < 1e-9, (x, y, gradient)
        point = torch.tensor([x, y], dtype=torch.float64)
        hessian = torch.autograd.functional.hessian(lambda p: surface.function(p[0], p[1]), point)
        assert torch.linalg.eigvalsh(hessian).min() > 0
    # The global minimum (or minima) first, and its value is the one the gaps are taken from.
    assert surface.gap(*surface.minima[0]) == pytest.approx(0.0, abs=1e-12)
    assert all(surface.gap(*m) >= -1e-12 for m in surface.minima)


def test_first_steps_are_the_optimizers_own():
    beale, lr = F["beale"], 0.01
    start = beale.start
    g0 = beale.gradient(*start)
    p1 = (start[0] - lr * g0[0], start[1] - lr * g0[1])
    g1 = beale.gradient(*p1)
    sgd = surfaces.trajectory(beale, "sgd", lr, 2)
    assert sgd["path"][1] == [float(f"{v:.6g}") for v in p1]
    # SGD_C (aggr sum): the memory is empty at step 1, then holds g0: direction g1 + mean(B).
    twin = surfaces.trajectory(beale, "sgd_c", lr, 2)
    assert twin["path"][1] == sgd["path"][1]
    p2 = (p1[0] - lr * (g1[0] + g0[0]), p1[1] - lr * (g1[1] + g0[1]))
    assert twin["path"][2] == [float(f"{v:.6g}") for v in p2]
    assert twin["gap"][0] == pytest.approx(beale.gap(*start), rel=1e-5)  # 6 digits stored


def test_noise_is_seeded_and_shared_by_a_pair():
    camel = F["camel"]
    one = surfaces.trajectory(camel, "adam", 0.01, 20, sigma=1.0, seed=3)
    again = surfaces.trajectory(camel, "adam", 0.01, 20, sigma=1.0, seed=3)
    other = surfaces.trajectory(camel, "adam", 0.01, 20, sigma=1.0, seed=4)
    clean = surfaces.trajectory(camel, "adam", 0.01, 20)
    assert one == again
    assert one["path"] != other["path"] and one["path"] != clean["path"]


def test_divergence_is_reported_not_scored():
    result = surfaces.trajectory(F["goldstein-price"], "sgd", 0.1, 50)
    assert result["diverged"] and result["end"] is None
    assert 1 <= result["diverged_step"] <= 50
    assert len(result["path"]) == result["diverged_step"] + 1


def test_ending_names_the_minimum_and_when_it_settled():
    result = surfaces.trajectory(F["beale"], "sgd", 0.03, 1000)
    end = result["end"]
    assert end["kind"] == "global" and end["minimum"] == [3.0, 0.5]
    assert 0 < end["settled_step"] < 1000
    assert end["gap"] < 1e-6


def test_quick_study_end_to_end(quick_runs):
    out, outcome = quick_runs["surfaces"]
    data = outcome.summary.data
    assert [(e["surface"], e["pair"]) for e in data["pairs"]] == [
        (s, p) for s in surfaces.QUICK_SURFACES for p in surfaces.QUICK_PAIRS
    ]
    for entry in data["pairs"]:
        assert entry["lr"] == surfaces.LEARNING_RATES[entry["surface"]][entry["pair"]]
        for side in ("vanilla", "twin"):
            assert entry[side]["noisy"]["seeds"] == 1
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(
        [f"surfaces-{s}.png" for s in surfaces.QUICK_SURFACES] + ["surfaces-lr-scan.png"]
    )
    # 2 surfaces x 2 pairs x (vanilla, twin) x (2 learning rates in the scan + 1 noisy seed),
    # and per surface SGD at twice its learning rate
    assert len(list((out / "units").glob("*.json"))) == 2 * 2 * 2 * 3 + 2
    for entry in data["pairs"]:
        assert (entry["vanilla_twice_lr"] is None) == (entry["pair"] == "adam")
    assert all((out / n).stat().st_size > 10_000 for n in names)
    assert "| Beale | SGD | 0.03 |" in (out / "table.md").read_text()


def test_control_runs_the_vanilla_optimizer_at_twice_the_rate():
    units = surfaces.plan(Options(seeds=(0,)))
    controls = [u for u in units if u.config.get("control")]
    assert [(u.config["surface"], u.config["optimizer"]) for u in controls] == [
        (s, p) for s in F for p in surfaces.CONTROL_PAIRS
    ]
    for unit in controls:
        c = unit.config
        assert c["lr"] == 2 * surfaces.LEARNING_RATES[c["surface"]][c["optimizer"]]
        assert c["noise"] == 0.0 and c["memory"] is None
    assert len({u.id for u in units}) == len(units)
