"""The label-noise study: the data and its flipped labels, the per-sample gradient, determinism,
and the quick study end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from critgrad.bench.studies import label_noise
from critgrad.bench.studies.contract import Options


@pytest.fixture(scope="module")
def clean():
    return label_noise.noisy_problem(label_noise.DATA, 0.0, 0)


def test_split_sizes_and_standardised_features(clean):
    x, y, x_test, y_test = clean
    assert x.shape == (400, 11) and x_test.shape == (100, 11)
    assert torch.equal(x[:, -1], torch.ones(400, dtype=torch.float64))  # the bias column
    assert torch.allclose(x[:, :-1].mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x[:, :-1].std(0, unbiased=False), torch.ones(10, dtype=torch.float64))
    assert set(y.tolist()) == {0.0, 1.0} and abs(float(y.mean()) - 0.5) < 0.01  # stratified
    assert len(y_test) == 100


@pytest.mark.parametrize("noise", label_noise.NOISE_LEVELS)
def test_exactly_the_fraction_is_flipped_nested_and_test_labels_are_clean(clean, noise):
    x, y, x_test, y_test = clean
    nx, ny, nx_test, ny_test = label_noise.noisy_problem(label_noise.DATA, noise, 0)
    flipped = (ny != y).nonzero().flatten()
    assert len(flipped) == round(noise * 400)
    assert torch.equal(nx, x) and torch.equal(nx_test, x_test)
    assert np.array_equal(ny_test, y_test)
    # Nested: what is flipped at a lower level is flipped here too.
    lower = round(noise - 0.1, 1)
    if lower >= 0:
        _, ly, _, _ = label_noise.noisy_problem(label_noise.DATA, lower, 0)
        assert set((ly != y).nonzero().flatten().tolist()) <= set(flipped.tolist())


def test_log_loss_gradient_matches_autograd(clean):
    x, y, _, _ = clean
    theta = torch.linspace(-1, 1, 11, dtype=torch.float64, requires_grad=True)
    for i in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[i] @ theta, y[i])
        expected = torch.autograd.grad(loss, theta)[0]
        got = label_noise.log_loss_gradient(theta.detach(), x[i], y[i])
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_first_step_of_sgd_is_the_gradient_step(clean):
    x, y, _, _ = clean
    generator = torch.Generator().manual_seed(0)
    first = torch.randperm(len(x), generator=generator)[0]
    # One epoch over a single row: theta_1 = -lr * (sigmoid(0) - y) * x.
    theta, _ = label_noise.train("sgd", 0.1, x[first : first + 1], y[first : first + 1], 1, 0)
    assert torch.allclose(theta, -0.1 * (0.5 - y[first]) * x[first], rtol=0, atol=1e-15)


def test_unit_is_deterministic_and_scores_a_probability():
    config = label_noise.plan(Options(quick=True, seeds=(2,)))[-1].config
    one = label_noise.run_unit(config, Options())
    assert one == label_noise.run_unit(config, Options())
    assert 0.0 <= one["test_f1"] <= 1.0 and one["diverged"] is False
    assert one["memory"]["offered"] == config["epochs"] * 80  # one gradient per training row


def test_quick_study_end_to_end(quick_runs):
    out, outcome = quick_runs["label-noise"]
    data = outcome.summary.data
    labels = ["sgd", "sgd_c", "adam", "adam_c"]
    assert list(data["curves"]) == labels
    for label in labels:
        points = data["curves"][label]
        assert [p["noise"] for p in points] == list(label_noise.QUICK_NOISE_LEVELS)
        assert all(0.0 <= p["mean"] <= 1.0 and p["std"] == 0.0 for p in points)
    assert set(data["differences"]) == {"sgd", "adam"}
    assert data["differences"]["sgd"]["pairs"] == 3
    assert (out / "label-noise.png").stat().st_size > 10_000
    table = (out / "table.md").read_text()
    assert table.startswith("| flipped | SGD | SGD_C | Adam | Adam_C |")
    assert len(list((out / "units").glob("*.json"))) == 12


@pytest.mark.parametrize(
    "wins, losses, p",
    [(0, 0, 1.0), (3, 3, 1.0), (5, 0, 2 / 32), (0, 5, 2 / 32), (8, 2, 2 * 56 / 1024)],
)
def test_sign_test(wins, losses, p):
    # (8, 2): P(X <= 2) for X ~ Binomial(10, 1/2) is (1 + 10 + 45) / 1024, doubled.
    assert label_noise.sign_test(wins, losses) == pytest.approx(p, rel=1e-12)
