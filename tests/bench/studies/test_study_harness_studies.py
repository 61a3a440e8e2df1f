"""The studies made of harness runs (sensitivity, aggregation, controls): their plans at every
size, what a unit keeps of a record, and each quick study end to end on the real data sets."""

from __future__ import annotations

import json
import math

import pytest

from critgrad.bench.record_format import RunSpec
from critgrad.bench.studies import aggregation, controls, harness_units, sensitivity
from critgrad.bench.studies.contract import Options

DEFAULT = Options(seeds=(0, 1, 2))
QUICK = Options(quick=True, seeds=(0,))


# ------------------------------------------------------------------ plans


def test_sensitivity_plans_the_whole_grid_and_three_reference_seeds():
    units = sensitivity.sensitivity().units(Options(seeds=(0,)))
    twins = [u for u in units if u.config["optimizer"].endswith("_c")]
    assert len(twins) == 2 * 2 * 7 * 5  # problems x twins x topC x decay
    assert len(units) - len(twins) == 2 * 2 * 3  # each vanilla optimizer on seeds 0, 1, 2
    cells = {
        (u.config["hyperparameters"]["topC"], u.config["hyperparameters"]["decay"]) for u in twins
    }
    assert cells == {(c, d) for c in sensitivity.TOPC for d in sensitivity.DECAY}
    for unit in units:  # every configuration is a run spec the harness accepts
        assert RunSpec.from_dict(unit.config).to_dict() == dict(unit.config)
    lr = {(u.config["problem"], u.config["optimizer"]) for u in units}
    assert {(p, o) for p, o in lr} >= {("ptb-lstm", "sgd_c"), ("mnist-mlp", "adam")}
    assert sensitivity.reference_seeds(Options(seeds=(4,))) == [4, 0, 1]


def test_aggregation_plans_every_aggregation_and_kappa():
    units = aggregation.aggregation().units(DEFAULT)
    twins = [u for u in units if u.config["optimizer"].endswith("_c")]
    # mnist-mlp on 3 seeds, ptb-lstm on 1: (3 + 1) x 2 twins x 3 aggregations x 4 kappas
    assert len(twins) == 4 * 2 * 3 * 4 and len(units) - len(twins) == 4 * 2
    settings = {
        (u.config["hyperparameters"]["aggr"], u.config["hyperparameters"]["kappa"]) for u in twins
    }
    assert settings == {(a, k) for a in ("sum", "mid", "mean") for k in (0.25, 0.5, 1.0, 2.0)}
    assert {u.config["seed"] for u in units if u.config["problem"] == "ptb-lstm"} == {0}


def test_controls_grid_holds_twice_the_learning_rate_and_the_matched_window():
    arms = {arm: (label, h) for arm, label, h in controls.arms("mnist-mlp", DEFAULT)}
    grid = sorted(h["lr"] for label, h in arms.values() if label == "sgd" and "momentum" not in h)
    assert grid == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.8])
    assert all(b / a == pytest.approx(2.0) for a, b in zip(grid, grid[1:]))
    twin = arms["sgd_c sum"][1]
    assert twin["lr"] * (1 + twin["kappa"]) in grid
    ema = arms["ema (matched window)"][1]
    beta = ema["momentum"]
    # total weight 2 (weight-1 average at twice the lr), mean lag 2.75 = (0 + 5.5) / 2
    assert ema["dampening"] == beta and ema["lr"] == 2 * twin["lr"]
    assert beta / (1 - beta) == pytest.approx(2.75, rel=1e-5)
    units = controls.controls().units(DEFAULT)
    assert len(units) == 11 * 3 + 11  # mnist-mlp on 3 seeds, ptb-lstm on 1
    assert all(u.config["evals_per_epoch"] == 4 for u in units)


# ------------------------------------------------------------------ condensing a record


def _record(probe_points, norms):
    point = {
        "epoch": 1.0,
        "step": 10,
        "train_loss": 0.5,
        "valid_metric": 0.8,
        "test_metric": 0.79,
        "memory": {"offered": 20, "admitted": 14, "rejected": 6, "evicted": 4, "mean_age": 2.5},
    }
    history = [dict(point, step=0, epoch=0.0, train_loss=None, probe=probe_points[0])]
    history += [dict(point, probe=p) for p in probe_points[1:]]
    return {
        "metric": "accuracy",
        "higher_is_better": True,
        "diverged": False,
        "final": {"test_metric": 0.79, "valid_metric": 0.8},
        "steps": 10,
        "train_seconds": 1.0,
        "history": history,
        "probe": {"age_edges": [1, 2, 4], "norm_every": 1, "norms": norms},
    }


def test_condense_pools_admission_and_ages_over_the_points():
    empty = {
        "admitted_when_full": None,
        "offered_when_full": 0,
        "held_ages": [0, 0, 0],
        "evicted_ages": [0, 0, 0],
    }
    first = {
        "admitted_when_full": 0.5,
        "offered_when_full": 4,
        "held_ages": [1, 1, 0],
        "evicted_ages": [2, 0, 0],
    }
    second = {
        "admitted_when_full": 0.25,
        "offered_when_full": 8,
        "held_ages": [0, 1, 1],
        "evicted_ages": [1, 1, 0],
    }
    norms = {
        "step": [1, 2, 3],
        "grad": [1.0, 2.0, 4.0],
        "stored_mean": [0.0, 1.0, 2.0],
        "direction": [1.0, 3.0, 4.0],
        "cosine": [None, 0.5, 1.0],
    }
    result = harness_units.condense(_record([empty, first, second], norms))
    probe = result["probe"]
    assert probe["offered_when_full"] == 12
    assert probe["admitted_when_full"] == pytest.approx((2 + 2) / 12)
    assert probe["admitted_when_full_per_point"] == [0.5, 0.25]
    assert probe["held_ages"] == [0, 1, 1] and probe["evicted_ages"] == [3, 1, 0]
    assert probe["norms"]["median_direction_over_grad"] == pytest.approx(1.0)  # 1, 1.5, 1
    assert probe["norms"]["median_stored_over_grad"] == pytest.approx(0.5)  # 0, 0.5, 0.5
    assert probe["norms"]["mean_cosine"] == pytest.approx(0.75)
    assert result["memory"]["mean_age"] == 2.5 and harness_units.score(result) == 0.79


def test_better_than_is_signed_by_the_metric_direction():
    assert harness_units.better_than(0.99, 0.9, True) == pytest.approx(10.0)
    assert harness_units.better_than(90.0, 100.0, False) == pytest.approx(10.0)
    assert harness_units.better_than(110.0, 100.0, False) == pytest.approx(-10.0)
    assert math.isnan(harness_units.better_than(None, 1.0, True))


# ------------------------------------------------------------------ the quick studies


def test_quick_sensitivity_end_to_end(quick_runs):
    out, outcome = quick_runs["sensitivity"]
    data = outcome.summary.data
    assert len(list((out / "units").glob("*.json"))) == 2 * 2 * (1 + 4)
    for problem in sensitivity.PROBLEMS:
        for twin in sensitivity.OPTIMIZERS:
            cells = data["problems"][problem][twin]["cells"]
            assert [(c["topC"], c["decay"]) for c in cells] == [
                (1, 0.3),
                (1, 0.99),
                (5, 0.3),
                (5, 0.99),
            ]
            for cell in cells:
                admitted = cell["admitted_when_full"]
                # Quick runs are 3 (PTB) or 4 (MNIST) steps: a memory of 5 never fills.
                assert (admitted is None) == (cell["topC"] == 5)
                assert admitted is None or 0.0 <= admitted <= 1.0
    # decay 0.3 at topC 1: the one entry's priority falls below any new key within a step
    assert data["problems"]["mnist-mlp"]["sgd_c"]["cells"][0]["admitted_when_full"] == 1.0
    assert (out / "sensitivity.png").stat().st_size > 10_000
    assert (out / "table.md").read_text().startswith("| problem | twin | vanilla |")
    stored = json.loads((out / "summary.json").read_text())
    assert stored["summary"]["topC"] == [1, 5]


def test_quick_aggregation_end_to_end(quick_runs):
    out, outcome = quick_runs["aggregation"]
    data = outcome.summary.data
    for problem in aggregation.PROBLEMS:
        assert "adam_c" not in data["problems"][problem]  # the quick size runs SGD_C only
        for twin in aggregation.QUICK_OPTIMIZERS:
            rows = data["problems"][problem][twin]["rows"]
            assert [(r["aggr"], r["kappa"]) for r in rows] == [
                (a, k) for a in ("sum", "mid", "mean") for k in aggregation.QUICK_KAPPA
            ]
            ratio = {(r["aggr"], r["kappa"]): r["direction_over_grad"] for r in rows}
            # A larger kappa gives a larger step with every aggregation, and sum > mid.
            for aggr in ("sum", "mid", "mean"):
                assert ratio[(aggr, 2.0)] > ratio[(aggr, 0.5)]
            assert ratio[("sum", 2.0)] > ratio[("mid", 2.0)]
    assert (out / "aggregation.png").stat().st_size > 10_000


def test_quick_controls_end_to_end(quick_runs):
    out, outcome = quick_runs["controls"]
    data = outcome.summary.data
    for problem in controls.PROBLEMS:
        rows = {r["arm"]: r for r in data["problems"][problem]["rows"]}
        assert set(rows) == {arm for arm, _, _ in controls.arms(problem, QUICK)}
        assert rows["sgd lr x1"]["admitted_when_full"] is None  # no memory: no probe
        assert rows["sgd_c sum"]["direction_over_grad"] > rows["sgd_c mid"]["direction_over_grad"]
        assert all(len(r["curve"]) == len(rows["sgd lr x1"]["curve"]) for r in rows.values())
    assert [v["problem"] for v in data["verdicts"]] == list(controls.PROBLEMS)
    # One seed: no spread to weigh the difference against, and the text says so.
    assert all(v["word"] in ("better than", "worse than", "equal to") for v in data["verdicts"])
    assert all("one seed, no spread measured" in v["text"] for v in data["verdicts"])
    assert (out / "controls.png").stat().st_size > 10_000
