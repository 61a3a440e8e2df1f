"""The report on a checked-in records fixture: exact table values, marking, CSV, plots."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
from benchtools import FIXTURES

from critgrad.bench import report, report_files

FIXTURE = FIXTURES / "report_run"


@pytest.fixture(scope="module")
def analysis():
    return report.analyse(FIXTURE)


def test_selection_follows_the_validation_split(analysis):
    (result,) = analysis.problems
    chosen = {label: item.config["lr"] for label, item in result.results.items()}
    assert chosen == {"sgd": 0.1, "sgd_c": 0.01, "adam": 0.01, "adam_c": 0.1}
    assert result.results["sgd_c"].config == {"lr": 0.01, "topC": 10, "decay": 0.7, "kappa": 1.0}
    assert all(
        sorted(r["spec"]["seed"] for r in item.runs) == [0, 1, 2]
        for item in result.results.values()
    )


@pytest.mark.parametrize(
    "label, mean, std, valid_mean",
    [
        ("sgd", 0.92, 0.01, 0.91),
        ("sgd_c", 0.95, 0.01, 0.94),
        ("adam", 0.98, 0.01, 0.98),
        ("adam_c", 0.96, 0.01, 0.96),
    ],
)
def test_reported_mean_and_std(analysis, label, mean, std, valid_mean):
    item = analysis.problems[0].results[label]
    assert item.reported[0] == pytest.approx(mean, abs=1e-12)
    assert item.reported[1] == pytest.approx(std, abs=1e-12)
    assert item.reported[2] == 3
    assert item.valid[0] == pytest.approx(valid_mean, abs=1e-12)


@pytest.mark.parametrize(
    "label, reached",
    [("sgd", (200, 2.1)), ("sgd_c", (100, 1.6)), ("adam", (100, 1.3)), ("adam_c", (200, 4.1))],
)
def test_time_to_target(analysis, label, reached):
    result = analysis.problems[0]
    assert result.targets["sgd"] == pytest.approx(0.91) and result.targets["adam"] == pytest.approx(
        0.96
    )
    steps, seconds = result.results[label].time_to_target
    assert steps == reached[0] and seconds == pytest.approx(reached[1])


@pytest.mark.parametrize(
    "label, step_ms, train_ms, admitted",
    [
        ("sgd", 1.0, 10.5, math.nan),
        ("sgd_c", 3.0, 15.5, 0.75),
        ("adam", 2.0, 12.5, math.nan),
        ("adam_c", 5.0, 20.5, 0.75),
    ],
)
def test_costs_and_memory(analysis, label, step_ms, train_ms, admitted):
    item = analysis.problems[0].results[label]
    assert item.step_ms == pytest.approx((step_ms, train_ms))
    assert (math.isnan(item.admitted) and math.isnan(admitted)) or item.admitted == admitted


def test_markdown_table_marks_the_better_of_each_pair(analysis):
    text = report.markdown(analysis)
    assert "| optimizer | vanilla | _C |" in text
    assert "| SGD | 92.00 ± 1.00 | **95.00 ± 1.00** |" in text
    assert "| Adam | **98.00 ± 1.00** | 96.00 ± 1.00 |" in text
    assert "| SGD | 91.00 | 200 | 2.1 | 100 | 1.6 |" in text
    assert "| Adam | 2.000 | 5.000 | 2.50x | 12.500 | 20.500 | 75.0 % | 4.0 |" in text


def test_markdown_states_protocol_budget_seeds_machine_and_wall_time(analysis):
    text = report.markdown(analysis)
    for expected in (
        "- Protocol: fair: 2 configurations per optimizer",
        "selection on the mean final validation metric over seeds [0]",
        "fewer than the 5 the fair protocol asks for",
        "- Budget (configurations per optimizer): SGD 2, SGD_C 2, Adam 2, Adam_C 2.",
        "- Seeds: 0, 1, 2.",
        "- Machine: fixture CPU, 2 cores, torch 2.13.0+cpu",
        "- Wall time: 55 s summed over this problem's runs; 60 s elapsed",
        "Reproduce: `critgrad sweep fixture.toml`",
        "Metric: test accuracy (%), final; higher is better.",
    ):
        assert expected in text


@pytest.mark.parametrize(
    "summary, expected",
    [
        ((0.92, 0.01, 3), "92.00 ± 1.00"),
        ((0.5, math.nan, 1), "50.00 (n=1)"),
        ((math.nan, math.nan, 2), "diverged"),
        ((math.nan, math.nan, 0), "-"),
    ],
)
def test_format_value(summary, expected):
    assert report.format_value("accuracy", summary) == expected


def test_lower_is_better_marks_the_smaller_mean():
    result = report.ProblemResult("p", "", "perplexity", False, {}, [], {}, 0.0, [0])
    for label, mean in (("adam", 120.0), ("adam_c", 110.0)):
        result.results[label] = report.OptimizerResult(
            label, {}, [], {}, (mean, 1.0, 2), (mean, 1.0, 2), (1.0, 1.0), math.nan, None
        )
    result.pairs = [("adam", "adam", "adam_c")]
    assert report.pair_rows(result)[0]["better"] == "_C"
    result.results["adam_c"].reported = (120.0, 1.0, 2)
    assert report.pair_rows(result)[0]["better"] is None  # a tie marks nothing


def test_written_files_csv_and_plots(tmp_path):
    _analysis, text, path = report_files.write_report(FIXTURE, tmp_path)
    assert path.read_text() == text
    with open(tmp_path / "table.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["optimizer"], r["better"]) for r in rows] == [("SGD", "_C"), ("Adam", "vanilla")]
    assert float(rows[0]["vanilla_mean"]) == pytest.approx(0.92)
    assert float(rows[0]["c_std"]) == pytest.approx(0.01)
    with open(tmp_path / "results.csv") as stream:
        results = {r["optimizer"]: r for r in csv.DictReader(stream)}
    assert results["adam_c"]["steps_to_target"] == "200"
    assert float(results["sgd_c"]["admitted_fraction"]) == 0.75
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["mnist-mlp-curves.png", "mnist-mlp-lr.png"]  # no topC x decay axis here
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert "![mnist-mlp-curves](plots/mnist-mlp-curves.png)" in text


def test_heat_map_when_the_sweep_varies_topc_and_decay(tmp_path):
    from critgrad.bench import plots

    analysis = report.analyse(FIXTURE)
    result = analysis.problems[0]
    # Pretend the adam_c runs of each configuration spread over a topC x decay grid.
    groups = {}
    for index, runs in enumerate(result.results["adam_c"].groups.values()):
        for top, decay in ((5, 0.7), (10, 0.9)):
            key = f'{{"decay": {decay}, "lr": {0.1 / (index + 1)}, "topC": {top}}}'
            groups[key] = runs
    result.results["adam_c"].groups = groups
    path = plots.memory_heatmap(result, "adam_c", analysis.protocol, tmp_path / "heat.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_broken_record_is_reported_in_the_report(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    (tmp_path / "run" / "mnist-mlp__sgd__ffffffffffffffff.json").write_text("{")
    analysis = report.analyse(tmp_path / "run")
    assert len(analysis.broken) == 1
    assert "1 broken record(s) were skipped" in report.markdown(analysis)
    assert analysis.problems[0].results["sgd"].reported[0] == pytest.approx(0.92)


def test_a_folder_without_manifest_is_reported_with_an_inferred_protocol(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    (tmp_path / "run" / "sweep.json").unlink()
    analysis = report.analyse(tmp_path / "run")
    assert analysis.protocol.name == "unknown"
    # All seeds now count for selection; here the choices stay the same.
    assert analysis.problems[0].results["adam"].config == {"lr": 0.01}


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: p, FileNotFoundError, "not found"),
        (lambda p: p.mkdir() or p, ValueError, "no run records"),
    ],
)
def test_report_errors(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        report.analyse(make(tmp_path / "empty"))


# ---- diverged runs ------------------------------------------------------------------------------


def _mark_diverged(folder, label, lr, seeds, valid_metric=0.99):
    """Rewrite fixture records as the runner writes a diverged run; ``valid_metric`` stays in the
    history as what a NaN model measured, to show that it is never used."""
    from critgrad.bench import records

    for path in folder.glob(f"mnist-mlp__{label}__*.json"):
        record = records.load_record(path)
        spec = record["spec"]
        if spec["hyperparameters"]["lr"] == lr and spec["seed"] in seeds:
            record["history"][-1]["valid_metric"] = valid_metric
            record["history"][-1]["test_metric"] = valid_metric
            record["final"] = dict.fromkeys(record["final"])
            record["diverged"] = True
            record["divergence"] = {"step": 150, "epoch": 1.5, "cause": "non-finite training loss"}
            records.atomic_write_json(path, record)


@pytest.fixture
def copied(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    return tmp_path / "run"


def test_a_diverged_configuration_is_never_selected(copied):
    _mark_diverged(copied, "sgd", 0.1, {0})  # the better of SGD's two on the tuning seed
    result = report.analyse(copied).problems[0]
    sgd = result.results["sgd"]
    assert sgd.config == {"lr": 0.01} and sgd.status == "ok"
    assert (sgd.tried_configs, sgd.diverged_configs) == (2, 1)
    assert sgd.cell("accuracy") == "86.00 (n=1)"
    text = report.markdown(report.analyse(copied))
    assert "- Diverged (never selected, never averaged into a number): SGD: 1 of 2" in text


def test_a_diverged_seed_of_the_selected_configuration_is_shown_not_averaged(copied):
    _mark_diverged(copied, "sgd", 0.1, {2})  # a stage-2 seed
    analysis = report.analyse(copied)
    result = analysis.problems[0]
    assert result.results["sgd"].config == {"lr": 0.1}
    assert result.results["sgd"].cell("accuracy") == "diverged (1 of 3 seeds)"
    assert math.isnan(result.results["sgd"].reported[0])
    assert "| SGD | diverged (1 of 3 seeds) | **95.00 ± 1.00** |" in report.markdown(analysis)
    assert "sgd" not in result.targets  # no time-to-target against a diverged side


def test_a_pair_where_everything_diverged_still_gets_its_report(copied, tmp_path):
    for label, lrs in (("sgd", (0.1, 0.01)), ("sgd_c", (0.1, 0.01))):
        for lr in lrs:
            _mark_diverged(copied, label, lr, {0, 1, 2})
    analysis, text, _ = report_files.write_report(copied, tmp_path / "out")  # with plots
    row = "| SGD | diverged (all 2 configurations) | diverged (all 2 configurations) |"
    assert row in text and "| Adam | **98.00 ± 1.00** | 96.00 ± 1.00 |" in text
    assert report.unresolved_lines(analysis) == [
        "mnist-mlp: every configuration of SGD diverged (2 tried); the table says so",
        "mnist-mlp: every configuration of SGD_C diverged (2 tried); the table says so",
    ]
    with open(tmp_path / "out" / "table.csv") as stream:
        rows = {r["optimizer"]: r for r in csv.DictReader(stream)}
    assert (rows["SGD"]["vanilla_status"], rows["SGD"]["c_status"]) == ("diverged", "diverged")
    assert rows["SGD"]["better"] == "" and rows["Adam"]["c_status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == [
        "mnist-mlp-curves.png",
        "mnist-mlp-lr.png",
    ]


def test_one_diverged_side_loses_to_a_finite_one(copied):
    for lr in (0.1, 0.01):
        _mark_diverged(copied, "adam", lr, {0, 1, 2})
    (row,) = [
        r for r in report.pair_rows(report.analyse(copied).problems[0]) if r["base"] == "adam"
    ]
    assert row["better"] == "_C" and row["vanilla_status"] == "diverged"
