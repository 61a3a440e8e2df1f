"""The ``ablation`` study: its plan, the options reaching the optimizer, the summary's numbers on
hand-made results, and its quick size end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from critgrad.bench import optimizer_labels
from critgrad.bench.studies import ablation
from critgrad.bench.studies.contract import Finished, Options

FULL = Options(quick=False, seeds=(0, 1, 2, 3, 4))


def test_published_plan_has_every_variant_seed_and_problem_once():
    units = ablation.plan(FULL)
    # 2 problems x 5 seeds x 2 bases x (vanilla + 5 variants x 2 decays)
    assert len(units) == 2 * 5 * 2 * 11 == 220
    assert len({unit.id for unit in units}) == len(units)
    keys = {
        (u.config["problem"], u.config["optimizer"], u.config["variant"], u.config["decay"])
        for u in units
    }
    assert len(keys) == 2 * 2 * 11
    # Seed-major: the first 44 units are seed 0 of every configuration.
    assert {u.config["seed"] for u in units[:44]} == {0}


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("vanilla", {"lr": 0.1}),
        ("critical", {"lr": 0.1, "topC": 10, "decay": 0.99, "selection": "critical"}),
        ("recent", {"lr": 0.1, "topC": 10, "decay": 0.99, "selection": "recent"}),
        ("smallest", {"lr": 0.1, "topC": 10, "decay": 0.99, "selection": "smallest"}),
        ("random", {"lr": 0.1, "topC": 10, "decay": 0.99, "selection": "random"}),
        (
            "memory-only",
            {
                "lr": 0.1,
                "topC": 10,
                "decay": 0.99,
                "selection": "critical",
                "include_current": False,
            },
        ),
    ],
)
def test_each_variant_reaches_the_optimizer(variant, expected):
    hyperparameters = ablation.hyperparameters("sgd", 0.1, variant, 0.99)
    assert hyperparameters == expected
    label = "sgd" if variant == "vanilla" else "sgd_c"
    optimizer = optimizer_labels.create(
        label, [torch.nn.Parameter(torch.zeros(3))], hyperparameters
    )
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.1
    if variant == "vanilla":
        assert "selection" not in group
    else:
        assert (group["topC"], group["decay"]) == (10, 0.99)
        assert group["selection"] == expected["selection"]
        assert group["include_current"] is (variant != "memory-only")


def test_unknown_variant_names_the_allowed_ones():
    with pytest.raises(ValueError, match="variant must be one of vanilla, critical"):
        ablation.hyperparameters("sgd", 0.1, "oldest", 0.7)


def _finished(options, scores, higher=True):
    """Finished units of the quick plan with the given final test metric per (base, variant)
    and seed (None: diverged); memory statistics from the seed."""
    out = []
    for unit in ablation.plan(options):
        c = unit.config
        value = scores.get((c["optimizer"].removesuffix("_c"), c["variant"]), {}).get(c["seed"])
        value = 0.5 if (c["optimizer"].removesuffix("_c"), c["variant"]) not in scores else value
        memory = None
        if c["variant"] != "vanilla":
            memory = {"offered": 40, "admitted": 10 + c["seed"], "mean_age": 3.0 + c["seed"]}
        result = {
            "diverged": value is None,
            "final": {"test_metric": value},
            "metric": "accuracy" if higher else "train_loss",
            "higher_is_better": higher,
            "memory": memory,
        }
        out.append(Finished(unit, result, 0.0))
    return out


def _row(data, base, variant):
    return next(e for e in data["rows"]["mnist-mlp"][base] if e["variant"] == variant)


def test_summary_numbers_by_hand():
    options = Options(quick=True, seeds=(0, 1, 2))
    finished = _finished(
        options,
        {
            ("sgd", "vanilla"): {0: 0.90, 1: 0.92, 2: 0.94},
            ("sgd", "critical"): {0: 0.91, 1: 0.95, 2: 0.93},
            ("sgd", "recent"): {0: 0.93, 1: None, 2: 0.93},  # seed 1 diverged
            ("sgd", "random"): {0: None, 1: None, 2: None},
        },
    )
    summary = ablation.summarize(options, finished)
    data = summary.data
    vanilla = _row(data, "sgd", "vanilla")
    assert vanilla["mean"] == pytest.approx(0.92, abs=1e-12)
    # std of (0.90, 0.92, 0.94) with ddof 1 is 0.02; SE = 0.02 / sqrt(3)
    assert vanilla["se"] == pytest.approx(0.02 / math.sqrt(3), abs=1e-12)
    assert vanilla["vs_vanilla"] is None and vanilla["admission"] is None
    critical = _row(data, "sgd", "critical")
    # differences (+0.01, +0.03, -0.01): mean 0.01, std 0.02, SE 0.02 / sqrt(3); 2 better
    assert critical["vs_vanilla"]["mean"] == pytest.approx(0.01, abs=1e-12)
    assert critical["vs_vanilla"]["se"] == pytest.approx(0.02 / math.sqrt(3), abs=1e-12)
    assert (critical["vs_vanilla"]["better"], critical["vs_vanilla"]["worse"]) == (2, 1)
    assert critical["vs_critical"] is None
    # admitted (10, 11, 12) of 40: mean rate 11 / 40; mean ages (3, 4, 5): 4
    assert critical["admission"] == pytest.approx(11 / 40, abs=1e-12)
    assert critical["mean_age"] == pytest.approx(4.0, abs=1e-12)
    recent = _row(data, "sgd", "recent")
    assert (recent["diverged"], recent["seeds"]) == (1, 3)
    assert recent["mean"] == pytest.approx(0.93, abs=1e-12)
    # pairs only where both are finite: seeds 0 and 2, differences vs critical (+0.02, 0.0)
    assert recent["vs_critical"]["pairs"] == 2
    assert recent["vs_critical"]["mean"] == pytest.approx(0.01, abs=1e-12)
    assert (recent["vs_critical"]["better"], recent["vs_critical"]["worse"]) == (1, 0)
    random = _row(data, "sgd", "random")
    assert random["mean"] is None and random["diverged"] == 3
    assert random["vs_vanilla"] == {"mean": None, "se": None, "pairs": 0, "better": 0, "worse": 0}
    # The table prints accuracy in percent and never a score for a diverged run.
    assert "| SGD | – | 92.00 ± 1.15 |" in summary.table
    assert "+1.00 ± 1.15 (2/3 better)" in summary.table
    assert "93.00 ± 0.00 (1 of 3 diverged)" in summary.table
    assert "| SGD_C random | 0.7 | diverged (3 of 3 seeds) | no finite pair | no finite pair" in (
        summary.table
    )
    json.dumps(dict(data), allow_nan=False)


def test_lower_is_better_counts_a_smaller_value_as_better():
    options = Options(quick=True, seeds=(0, 1))
    finished = _finished(
        options,
        {("adam", "vanilla"): {0: 0.30, 1: 0.30}, ("adam", "smallest"): {0: 0.25, 1: 0.35}},
        higher=False,
    )
    smallest = _row(ablation.summarize(options, finished).data, "adam", "smallest")
    assert smallest["vs_vanilla"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert (smallest["vs_vanilla"]["better"], smallest["vs_vanilla"]["worse"]) == (1, 1)


def test_quick_size_end_to_end(quick_runs):
    out, outcome = quick_runs["ablation"]
    units = ablation.plan(Options(quick=True, seeds=(0,)))
    assert len(units) == 12 and outcome.ran == 12
    assert len(list((out / "units").glob("*.json"))) == 12
    summary = json.loads((out / "summary.json").read_text())
    data = summary["summary"]
    for base in ablation.BASES:
        entries = data["rows"]["mnist-mlp"][base]
        assert [e["variant"] for e in entries] == list(ablation.VARIANTS)
        for entry in entries:
            assert entry["diverged"] == 0 and 0.0 < entry["mean"] <= 1.0
        by_variant = {e["variant"]: e for e in entries}
        # recent and random admit every gradient by definition; smallest cannot admit a gradient
        # whose key beats every held priority, so it admits fewer.
        assert by_variant["recent"]["admission"] == 1.0
        assert by_variant["random"]["admission"] == 1.0
        assert by_variant["smallest"]["admission"] < 1.0
    assert summary["figures"] == ["ablation-mnist-mlp.png"]
    assert (out / "ablation-mnist-mlp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SGD_C memory-only" in (out / "table.md").read_text()


def test_a_unit_gives_the_same_result_twice():
    # One thread, as the study runner sets it: the order of float32 reductions depends on it.
    options = Options(quick=True, seeds=(0,))
    unit = next(u for u in ablation.plan(options) if u.config["variant"] == "random")
    first = ablation.run_unit(unit.config, options)
    assert first == ablation.run_unit(unit.config, options)
    assert first["memory"]["admitted"] == first["memory"]["offered"] > 0
