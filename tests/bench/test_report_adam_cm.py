"""A memory optimizer of its own in the report: Adam_CM beside Adam and Adam_C.

The report fixture's records plus Adam_CM runs made from its Adam_C records (same configurations,
timings and memory counts; hand-chosen curves), so that every number below follows by hand.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from benchtools import FIXTURES

from critgrad.bench import records, report, report_files
from critgrad.bench.record_format import RunSpec

# (lr, seed) -> (validation curve at steps 0, 100, 200; final test metric)
ADAM_CM = {
    (0.1, 0): ([0.10, 0.985, 0.99], 0.98),
    (0.1, 1): ([0.10, 0.985, 0.99], 0.99),
    (0.1, 2): ([0.10, 0.985, 0.99], 1.00),
    (0.01, 0): ([0.10, 0.90, 0.92], 0.92),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adam_cm") / "run"
    shutil.copytree(FIXTURES / "report_run", folder)
    for path in sorted(folder.glob("mnist-mlp__adam_c__*.json")):
        record = records.load_record(path)
        spec = record["spec"]
        key = (spec["hyperparameters"]["lr"], spec["seed"])
        if key not in ADAM_CM:
            continue
        valid, test = ADAM_CM[key]
        for point, value in zip(record["history"], valid):
            point["valid_metric"] = value
        record["history"][-1]["test_metric"] = test
        record["final"]["valid_metric"], record["final"]["test_metric"] = valid[-1], test
        new = RunSpec.from_dict({**spec, "optimizer": "adam_cm"})
        record.update(spec=new.to_dict(), key=new.run_id(), optimizer_name="adam_cm")
        records.write_record(folder, record)
    manifest = json.loads((folder / "sweep.json").read_text())
    configs = manifest["protocol"]["configs"]
    configs["adam_cm"] = [dict(c) for c in configs["adam_c"]]
    manifest["protocol"]["budget"]["adam_cm"] = len(configs["adam_cm"])
    (folder / "sweep.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def analysis(run_dir):
    return report.analyse(run_dir)


def test_adam_cm_is_a_pair_of_its_own_beside_adam(analysis):
    (result,) = analysis.problems
    assert result.pairs == [
        ("sgd", "sgd", "sgd_c"),
        ("adam", "adam", "adam_c"),
        ("adam_cm", "adam", "adam_cm"),
    ]
    item = result.results["adam_cm"]
    assert item.config == {"lr": 0.1, "topC": 10, "decay": 0.7, "kappa": 1.0}
    assert item.reported == pytest.approx((0.99, 0.01, 3))


def test_each_pair_has_its_own_target_and_times(analysis):
    (result,) = analysis.problems
    # Adam against Adam_C: the worse validation mean is Adam_C's 0.96; against Adam_CM: Adam's.
    assert result.targets["adam"] == pytest.approx(0.96)
    assert result.targets["adam_cm"] == pytest.approx(0.98)
    assert result.times["adam"]["adam"] == (100, pytest.approx(1.3))
    assert result.times["adam_cm"]["adam"] == (200, pytest.approx(2.5))
    assert result.times["adam_cm"]["adam_cm"] == (100, pytest.approx(2.1))
    # A label's own time is that of its first pair: Adam's with Adam_C.
    assert result.results["adam"].time_to_target == (100, pytest.approx(1.3))
    assert result.target_of("adam") == pytest.approx(0.96)
    assert result.target_of("adam_cm") == pytest.approx(0.98)


def test_markdown_sets_adam_cm_beside_adam_and_adam_c(analysis):
    text = report.markdown(analysis)
    assert "| Adam | **98.00 ± 1.00** | 96.00 ± 1.00 |" in text
    assert "| Adam vs Adam_CM | 98.00 ± 1.00 | **99.00 ± 1.00** |" in text
    assert "- Adam vs Adam_CM: the _C column holds Adam_CM, a memory optimizer of its own" in text
    assert "Adam_C 2, Adam_CM 2." in text
    assert "| Adam vs Adam_CM | 98.00 | 200 | 2.5 | 100 | 2.1 |" in text
    assert "| Adam vs Adam_CM | 2.000 | 5.000 | 2.50x | 12.500 | 20.500 | 75.0 % | 4.0 |" in text


def test_csv_rows_and_plots(run_dir, tmp_path):
    report_files.write_report(run_dir, tmp_path)
    with open(tmp_path / "table.csv") as stream:
        rows = [(r["optimizer"], r["better"]) for r in csv.DictReader(stream)]
    assert rows == [("SGD", "_C"), ("Adam", "vanilla"), ("Adam vs Adam_CM", "_C")]
    with open(tmp_path / "results.csv") as stream:
        results = {r["optimizer"]: r for r in csv.DictReader(stream)}
    assert float(results["adam_cm"]["target"]) == pytest.approx(0.98)
    assert float(results["adam"]["target"]) == pytest.approx(0.96)
    assert results["adam_cm"]["steps_to_target"] == "100"
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["mnist-mlp-curves.png", "mnist-mlp-lr.png"]
