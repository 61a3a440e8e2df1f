"""The tuned study: its plan covers every protocol's runs, its arithmetic on records whose numbers
are chosen by hand (selection, margins, intervals, divergence, the decomposition), and the quick
study end to end against the harness's own runner."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from critgrad.bench import runner, scoring
from critgrad.bench.record_format import RECORD_FORMAT, RunSpec, check_record
from critgrad.bench.studies import tuned
from critgrad.bench.studies.contract import Finished, Options, Unit
from critgrad.bench.studies.runner import run_study

SEEDS = (0, 1, 2)
TOY = tuned.Size(
    problems={"toy": {}},
    pairs=("sgd",),
    lrs=(0.1, 0.01),
    topCs=(10,),
    decays=(0.7, 0.9),
    evals_per_epoch=1,
    sample_draws=3,
    words="a hand-made problem",
)
# Accuracies in 64ths, so that differences and their means are exact in binary floating point:
# one 64th is 1.5625 percentage points.
UNIT = 1.5625
# (label, lr, decay) -> (final validation, final test per seed, best test during the run or None)
TABLE = {
    ("sgd", 0.1, None): (58, (58, 59, 60), None),
    ("sgd", 0.01, None): (51, (51, 51, 51), None),
    ("sgd_c", 0.1, 0.7): (54, (54, 54, 54), None),
    ("sgd_c", 0.01, 0.7): (56, (57, 58, 59), None),  # the fair protocol's pick: valid 56 > 54
    ("sgd_c", 0.1, 0.9): (61, (61, 62, 63), None),  # the best on validation: (d)'s pick
    ("sgd_c", 0.01, 0.9): (45, (45, 45, 45), 63),  # worst at the end, best test mid-run: (c)'s
}


def toy_record(label, config, seed, *, diverged=False):
    valid, tests, peak = TABLE[(label, config["lr"], config.get("decay"))]
    test = tests[seed]

    def point(step, valid_metric, test_metric):
        return {
            "epoch": step / 10,
            "step": step,
            "train_seconds": step / 100,
            "train_loss": 1.0,
            "valid_loss": 1.0,
            "valid_metric": valid_metric / 64,
            "test_loss": 1.0,
            "test_metric": test_metric / 64,
            "memory": None,
        }

    history = [point(0, 6, 6), point(5, valid, peak or test), point(10, valid, test)]
    final = {key: history[-1][key] for key in ("train_loss", "valid_loss", "valid_metric")}
    final.update(test_loss=1.0, test_metric=history[-1]["test_metric"])
    if diverged:
        history = history[:2]
        final = dict.fromkeys(final)
    spec = RunSpec("toy", label, dict(config), seed, evals_per_epoch=1)
    return {
        "format": RECORD_FORMAT,
        "spec": spec.to_dict(),
        "metric": "accuracy",
        "higher_is_better": True,
        "history": history,
        "final": final,
        "diverged": diverged,
        "steps": history[-1]["step"],
        "wall_seconds": 1.0,
        "train_seconds": 0.5,
        "optimizer_seconds": 0.1,
    }


def toy_records(diverge=()):
    """Every configuration of the paper's grid on every seed; ``diverge``: (label, lr, decay, seed)
    of the runs that diverged."""
    grid = tuned.study_protocols(TOY, SEEDS)["paper"]
    return [
        toy_record(label, c, seed, diverged=(label, c["lr"], c.get("decay"), seed) in diverge)
        for label, configs in grid.configs.items()
        for c in configs
        for seed in SEEDS
    ]


def test_toy_records_are_records():
    assert all(check_record(r) is None for r in toy_records())


@pytest.mark.parametrize(
    "values, mean, std, clear",
    [
        ([2.0, 3.0, 4.0], 3.0, 1.0, True),  # 3 -/+ 4.303 / sqrt(3) = [0.516, 5.484]
        ([1.0, 2.0, 3.0], 2.0, 1.0, False),  # [-0.484, 4.484]: the interval holds 0
        ([-1.0, -1.0], -1.0, 0.0, True),  # no spread: the interval is the point
        ([5.0], 5.0, None, False),  # one seed: no interval, never "clear"
    ],
)
def test_margin_summary(values, mean, std, clear):
    summary = tuned.margin_summary(values)
    assert (summary["mean"], summary["std"], summary["n"], summary["clear"]) == (
        mean,
        std,
        len(values),
        clear,
    )
    if std is not None:
        # Student's t 0.975 quantile in closed form: tan(pi (p - 1/2)) for 1 degree of freedom,
        # a sqrt(2 / (1 - a^2)) with a = 2p - 1 for 2.
        t = {1: math.tan(math.pi * 0.475), 2: 0.95 * math.sqrt(2 / (1 - 0.95**2))}
        half = t[len(values) - 1] * std / math.sqrt(len(values))
        # scipy inverts the distribution function numerically: equal to ~1e-12 relative.
        assert summary["low"] == pytest.approx(mean - half, rel=1e-9, abs=1e-12)
        assert summary["high"] == pytest.approx(mean + half, rel=1e-9, abs=1e-12)


def test_decomposition_worked_example():
    margins = {"fair": -1.0, "fair-sampled": 0.0, "paper-valid": 1.0, "paper": 3.0}
    assert tuned.decomposition(margins) == {
        "paper_gain": 4.0,
        "budget": 2.0,
        "test_selection": 2.0,
        "equal_budget": 1.0,
    }
    missing = tuned.decomposition({**margins, "paper": None})
    assert missing == {
        "paper_gain": None,
        "budget": 2.0,
        "test_selection": None,
        "equal_budget": 1.0,
    }


def _expected_sampled_pick(sample_seed):
    """(b) draw ``sample_seed``: the drawn twin configuration with the best validation metric."""
    configs = tuned.sampled(TOY, SEEDS, sample_seed).configs["sgd_c"]
    return max(configs, key=lambda c: TABLE[("sgd_c", c["lr"], c["decay"])][0])


def test_protocols_select_and_score_as_constructed():
    records = toy_records()
    every = tuned.study_protocols(TOY, SEEDS)
    found = {name: tuned.compare(records, p, ("sgd",))["sgd"] for name, p in every.items()}
    assert [found[n]["budget"] for n in tuned.PROTOCOL_NAMES] == [
        {"sgd": 2, "sgd_c": 2},
        {"sgd": 2, "sgd_c": 2},
        {"sgd": 2, "sgd_c": 4},
        {"sgd": 2, "sgd_c": 4},
    ]
    for entry in found.values():
        assert entry["vanilla"]["config"] == {"lr": 0.1}
    picks = {name: found[name]["twin"]["config"] for name in found}
    assert picks["fair"] == {"lr": 0.01, "topC": 10, "decay": 0.7, "kappa": 1.0}
    assert picks["fair-sampled"] == _expected_sampled_pick(0)
    assert picks["paper-valid"] == {"lr": 0.1, "topC": 10, "decay": 0.9, "kappa": 1.0}
    assert picks["paper"] == {"lr": 0.01, "topC": 10, "decay": 0.9, "kappa": 1.0}
    # Per seed, in 64ths: fair 57-58, 58-59, 59-60; (d) 61-58, ...; (c) best test 63 against the
    # vanilla's best (its final) 58, 59, 60.
    assert found["fair"]["margin"]["per_seed"] == [-UNIT] * 3
    assert found["fair"]["winner"] == "vanilla" and found["fair"]["twin_better_seeds"] == 0
    assert found["fair"]["margin"]["clear"]  # no spread at all
    assert found["paper-valid"]["margin"]["per_seed"] == [3 * UNIT] * 3
    paper = found["paper"]["margin"]
    assert paper["per_seed"] == [5 * UNIT, 4 * UNIT, 3 * UNIT]
    assert (paper["mean"], paper["std"], paper["n"]) == (4 * UNIT, UNIT, 3)
    assert found["paper"]["winner"] == "_C" and found["paper"]["twin_better_seeds"] == 3


def test_a_diverged_reported_run_is_reported_as_diverged_never_as_a_margin():
    # (d)'s pick diverged on seed 2: selection (seed 0) still picks it, its report says so.
    records = toy_records(diverge={("sgd_c", 0.1, 0.9, 2)})
    every = tuned.study_protocols(TOY, SEEDS)
    entry = tuned.compare(records, every["paper-valid"], ("sgd",))["sgd"]
    assert entry["twin"]["status"] == "diverged"
    assert entry["twin"]["cell"] == "diverged (1 of 3 seeds)"
    assert entry["winner"] == "vanilla" and entry["margin"] is None
    # The paper's protocol selects on every seed: the diverged configuration is never picked.
    paper = tuned.compare(records, every["paper"], ("sgd",))["sgd"]
    assert paper["twin"]["config"]["decay"] == 0.9 and paper["twin"]["config"]["lr"] == 0.01
    assert paper["twin"]["diverged_configs"] == 1 and paper["margin"] is not None


@pytest.fixture
def toy_size(monkeypatch):
    monkeypatch.setattr(tuned, "QUICK", TOY)


def _finished(records):
    return [
        Finished(Unit("tuned", tuned._unit_name(RunSpec.from_dict(r["spec"])), r["spec"]), r, 1.0)
        for r in records
    ]


def test_summary_table_and_figure_from_hand_made_records(toy_size, tmp_path):
    options = Options(quick=True, seeds=SEEDS)
    finished = _finished(toy_records(diverge={("sgd_c", 0.1, 0.9, 2)}))
    summary = tuned.summarize(options, finished)
    pair = summary.data["results"]["toy"]["pairs"]["sgd"]
    assert pair["protocols"]["paper-valid"]["margin"] is None  # diverged: no number
    parts = pair["decomposition"]
    assert parts["paper_gain"] == 4 * UNIT - (-UNIT)  # (c) - (a), both exact
    assert parts["budget"] is None and parts["test_selection"] is None  # (d) has no margin
    # (a) goes to the vanilla optimizer, (c) to the twin; (d)'s diverged twin loses as in (a).
    assert "paper" in pair["verdict_changes"] and "paper-valid" not in pair["verdict_changes"]
    draws = pair["sample_draws"]
    assert draws["draws"] == 3
    assert draws["twin_configs"] == [_expected_sampled_pick(k) for k in range(3)]
    table = summary.table
    assert (
        "| toy | SGD | (a) fair, lr only | 2 / 2 | 92.19 ± 1.56 at lr 0.1 | 90.62 ± 1.56 at lr "
        "0.01, C 10, d 0.7 | vanilla | **-1.56 ± 0.00 [-1.56, -1.56]** | 0/3 |" in table
    )
    assert "| diverged (1 of 3 seeds) at lr 0.1, C 10, d 0.9 | vanilla | - | - |" in table
    assert "(c) paper's protocol | 2 / 4 |" in table
    json.dumps(summary.data, allow_nan=False)  # the summary is plain JSON
    figure = tuned.figures(options, finished, summary, tmp_path)[0]
    assert figure.name == "tuned.png" and figure.stat().st_size > 10_000


def test_plan_runs_the_paper_grid_on_every_seed_and_covers_every_protocol():
    options = Options(seeds=(0, 1, 2, 3, 4))
    units = tuned.tuned().units(options)
    # 3 problems x (2 vanilla x 3 lrs + 2 twins x 27) x 5 seeds
    assert len(units) == 3 * (2 * 3 + 2 * 27) * 5
    planned = {RunSpec.from_dict(u.config).run_id() for u in units}
    for protocol in tuned.study_protocols(tuned.CPU, options.seeds).values():
        for problem, overrides in tuned.CPU.problems.items():
            for spec in protocol.tuning_specs(problem, "cpu", overrides, 2):
                for seed in options.seeds:  # the final stage runs the selected one on all seeds
                    assert dataclasses.replace(spec, seed=seed).run_id() in planned


def test_plan_refuses_a_protocol_outside_the_grid(monkeypatch):
    original = tuned.sampled

    def stray(size, seeds, sample_seed):
        protocol = original(size, seeds, sample_seed)
        configs = {**protocol.configs, "sgd_c": [{**protocol.configs["sgd_c"][0], "lr": 0.5}]}
        return dataclasses.replace(protocol, configs=configs)

    monkeypatch.setattr(tuned, "sampled", stray)
    with pytest.raises(ValueError, match="not in the paper's grid"):
        tuned.plan(Options(quick=True))


def test_quick_study_end_to_end(quick_runs):
    out, outcome = quick_runs["tuned"]
    assert len(list((out / "units").glob("*.json"))) == 2 * (2 + 8)
    data = outcome.summary.data
    assert list(data["results"]) == ["mnist-convex"]
    fair = data["results"]["mnist-convex"]["pairs"]["sgd"]["protocols"]["fair"]
    # The table's number is the harness's: rerun the selected vanilla run with the runner.
    spec = RunSpec(
        "mnist-convex",
        "sgd",
        fair["vanilla"]["config"],
        0,
        overrides=tuned.QUICK.problems["mnist-convex"],
        evals_per_epoch=2,
    )
    again = runner.run(spec)
    assert fair["vanilla"]["mean"] == scoring.run_score(again, "test", "final")
    assert (out / "tuned.png").stat().st_size > 10_000
    assert (out / "table.md").read_text().startswith("| problem | pair | protocol | budget |")


def test_quick_study_resumes_without_running_again(quick_runs):
    out, _ = quick_runs["tuned"]
    outcome = run_study(
        tuned.tuned(), Options(quick=True), out, progress=False, log=lambda message: None
    )
    assert (outcome.ran, outcome.skipped) == (0, 20)
