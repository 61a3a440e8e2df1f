"""Protocols (budgets, grids, seeds) and the selection arithmetic."""

from __future__ import annotations

import math

import pytest

from critgrad.bench import optimizer_labels, protocols, scoring

# Adam_CM: a memory optimizer of its own, tuned as the _c twins are.
PAIRS = ["sgd", "sgd_c", "sgdm", "sgdm_c", "rmsprop", "rmsprop_c", "adam", "adam_c", "adam_cm"]


@pytest.mark.parametrize("memory_search", ["fixed", "sampled"])
@pytest.mark.parametrize("lrs", [[0.1], [0.1, 0.01, 0.001], list(protocols.PAPER_LRS)])
def test_fair_gives_every_optimizer_the_same_budget(memory_search, lrs):
    protocol = protocols.fair(PAIRS, lrs=lrs, memory_search=memory_search)
    assert set(protocol.budget().values()) == {len(lrs)}
    for label, configs in protocol.configs.items():
        assert len({scoring.config_id(c) for c in configs}) == len(lrs)  # all distinct
        if optimizer_labels.is_memory(label):
            assert all({"topC", "decay", "kappa"} <= set(c) for c in configs)
        else:
            assert all(set(c) <= {"lr"} for c in configs)
    assert protocol.selection_split == "valid" and protocol.selection_reduce == "final"
    assert protocol.reported() == ("test", "final")
    assert protocol.seeds == (0, 1, 2, 3, 4) and protocol.tune_seeds == (0,)


def test_fair_fixed_memory_uses_the_recommended_values_on_the_same_lrs():
    protocol = protocols.fair(["adam", "adam_c"], lrs=[0.01, 0.001])
    assert protocol.configs["adam"] == [{"lr": 0.01}, {"lr": 0.001}]
    assert protocol.configs["adam_c"] == [
        {"topC": 10, "decay": 0.7, "kappa": 1.0, "lr": 0.01},
        {"topC": 10, "decay": 0.7, "kappa": 1.0, "lr": 0.001},
    ]
    assert "topC 10, decay 0.7" in protocol.notes
    assert "the _c twins use the same learning rates" in protocol.notes


def test_fair_tunes_adam_cm_as_the_c_twins_with_the_same_memory_settings():
    fixed = protocols.fair(["adam", "adam_c", "adam_cm"], lrs=[0.01, 0.001])
    assert fixed.configs["adam_cm"] == fixed.configs["adam_c"]
    assert "the _c twins and Adam_CM use the same learning rates" in fixed.notes
    alone = protocols.fair(["adam", "adam_cm"], lrs=[0.01])
    assert "; Adam_CM use the same learning rates with topC 10" in alone.notes
    sampled = protocols.fair(
        ["adam", "adam_c", "adam_cm"], lrs=[0.1, 0.01, 0.001], memory_search="sampled"
    )
    assert len(sampled.configs["adam_cm"]) == 3
    for config in sampled.configs["adam_cm"]:
        assert config["kappa"] == 1.0 and config["lr"] in (0.1, 0.01, 0.001)
        assert config["topC"] in protocols.PAPER_TOPCS and config["decay"] in protocols.PAPER_DECAYS
    assert "the _c twins and Adam_CM get 3 (lr, topC, decay) triples" in sampled.notes
    # A memory setting Adam_CM does not take (it averages: no aggr) reaches only the _c twins.
    with_aggr = protocols.fair(["adam_c", "adam_cm"], lrs=[0.01], memory={"topC": 5, "aggr": "sum"})
    assert with_aggr.configs["adam_c"] == [{"topC": 5, "aggr": "sum", "lr": 0.01}]
    assert with_aggr.configs["adam_cm"] == [{"topC": 5, "lr": 0.01}]


def test_fair_sampled_is_reproducible_and_inside_the_paper_grid():
    first = protocols.fair(["sgd", "sgd_c"], lrs=[0.1, 0.01, 0.001], memory_search="sampled")
    second = protocols.fair(["sgd", "sgd_c"], lrs=[0.1, 0.01, 0.001], memory_search="sampled")
    assert first.configs == second.configs
    for config in first.configs["sgd_c"]:
        assert config["lr"] in (0.1, 0.01, 0.001)
        assert config["topC"] in protocols.PAPER_TOPCS and config["decay"] in protocols.PAPER_DECAYS
    other = protocols.fair(
        ["sgd", "sgd_c"], lrs=[0.1, 0.01, 0.001], memory_search="sampled", sample_seed=1
    )
    assert other.configs["sgd_c"] != first.configs["sgd_c"]


def test_paper_grid_and_its_imbalance_are_stated():
    protocol = protocols.paper(PAIRS)
    budget = protocol.budget()
    assert budget["adam"] == 5 and budget["adam_c"] == budget["adam_cm"] == 45
    assert protocol.seeds == protocol.tune_seeds == (100, 101, 102, 103, 104)
    assert (protocol.selection_split, protocol.selection_reduce) == ("test", "best")
    assert "9x the budget" in protocol.notes and "TEST" in protocol.notes
    assert {c["kappa"] for c in protocol.configs["sgd_c"]} == {1.0}
    assert {(c["topC"], c["decay"]) for c in protocol.configs["sgd_c"]} == {
        (t, d) for t in (5, 10, 20) for d in (0.7, 0.9, 0.99)
    }


def test_extra_hyperparameters_reach_the_right_optimizers():
    protocol = protocols.fair(
        ["sgd", "sgd_c", "adam_c"],
        lrs=[0.1],
        extra={
            "all": {"weight_decay": 1e-4, "topC": 20},
            "sgd": {"momentum": 0.5},
            "adam_c": {"aggr": "sum"},
        },
    )
    assert protocol.configs["sgd"] == [{"weight_decay": 1e-4, "momentum": 0.5, "lr": 0.1}]
    assert protocol.configs["sgd_c"][0]["momentum"] == 0.5  # the twin follows its vanilla
    assert protocol.configs["sgd_c"][0]["topC"] == 20
    assert protocol.configs["adam_c"][0]["aggr"] == "sum"


def test_fixed_and_default_configs():
    configs = protocols.default_configs(PAIRS)
    assert configs["sgdm"] == {"lr": 0.01} and configs["sgdm_c"]["lr"] == 0.01
    assert configs["adam_c"] == {"lr": 1e-3, "topC": 10, "decay": 0.7, "kappa": 1.0}
    protocol = protocols.fixed(configs, seeds=[0, 1, 2])
    assert set(protocol.budget().values()) == {1}
    assert "fewer than the 5" in protocol.notes


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: protocols.fair(["sgd", "nope"]), "unknown optimizer 'nope'"),
        (lambda: protocols.fair([]), r"optimizers = \[\]: expected a non-empty list of names"),
        (lambda: protocols.fair(["sgd", "sgd"]), "duplicates"),
        (lambda: protocols.fair(["sgd"], seeds=[]), r"seeds = \[\]: expected a non-empty list"),
        (lambda: protocols.fair(["sgd"], seeds=[1, 1]), "seeds has duplicates"),
        (lambda: protocols.fair(["sgd"], lrs=[-0.1]), r"lrs = \[-0.1\]: expected a non-empty"),
        (lambda: protocols.fair(["sgd"], memory_search="all"), r"memory_search = 'all': expected"),
        # Wrong types: a number where a list belongs, a string where a number belongs, ...
        (lambda: protocols.fair(["sgd"], lrs=0.1), r"lrs = 0.1: expected a non-empty list"),
        (lambda: protocols.fair(["sgd"], seeds=3), "seeds = 3: expected a non-empty list"),
        (lambda: protocols.fair(["sgd"], seeds=[0.5]), "integers >= 0"),
        (lambda: protocols.fair(["sgd"], seeds=[-1]), "integers >= 0"),
        (lambda: protocols.fair(["sgd"], seeds=[True]), "integers >= 0"),
        (lambda: protocols.fair("sgd"), "optimizers = 'sgd': expected a non-empty list"),
        (lambda: protocols.fair(["sgd"], lrs=[float("inf")]), "finite numbers > 0"),
        (lambda: protocols.fair(["sgd"], lrs=["0.1"]), "finite numbers > 0"),
        (lambda: protocols.fair(["sgd_c"], topCs=[0]), "topCs = \\[0\\]: expected"),
        (lambda: protocols.fair(["sgd_c"], decays=[1.5]), "decays = \\[1.5\\]: expected"),
        (lambda: protocols.fair(["sgd_c"], memory=5), "memory = 5: expected a table"),
        (lambda: protocols.fair(["sgd"], extra={"sgd": 5}), "hyperparameters.sgd = 5"),
        (lambda: protocols.fair(["sgd"], extra={"sgd": {"lr": float("nan")}}), "finite"),
        (lambda: protocols.paper(["sgd_c"], kappa="1"), "kappa = '1': expected a finite number"),
        (lambda: protocols.fixed({"sgd": 0.1}, seeds=[0]), "fixed.sgd = 0.1: expected a table"),
        (lambda: protocols.fixed({"sgd": {"lr": object()}}, seeds=[0]), "fixed.sgd.lr = "),
    ],
)
def test_invalid_protocol_arguments(call, match):
    with pytest.raises((ValueError, KeyError), match=match):
        call()


def test_numpy_scalars_are_the_numbers_they_stand_for():
    np = pytest.importorskip("numpy")
    protocol = protocols.fair(
        ["sgd_c"],
        lrs=np.array([0.1, 0.01]),
        seeds=[np.int64(0)],
        extra={"sgd_c": {"topC": np.int64(5), "decay": np.float32(0.7)}},
    )
    config = protocol.configs["sgd_c"][0]
    assert config == {"topC": 5, "decay": 0.7, "kappa": 1.0, "lr": 0.1}
    assert type(config["topC"]) is int and type(config["decay"]) is float
    assert protocol.seeds == (0,) and type(protocol.seeds[0]) is int


def test_protocol_round_trips_through_the_manifest_dict():
    protocol = protocols.fair(PAIRS, lrs=[0.1, 0.01], memory_search="sampled")
    assert protocols.Protocol.from_dict(protocol.to_dict()) == protocol


# ---- selection arithmetic ------------------------------------------------------------------------


def record(seed, valid_curve, test_curve, higher=True):
    history = [{"valid_metric": v, "test_metric": t} for v, t in zip(valid_curve, test_curve)]
    return {
        "spec": {"seed": seed},
        "higher_is_better": higher,
        "history": history,
        "final": {"valid_metric": valid_curve[-1], "test_metric": test_curve[-1]},
    }


def diverged(run, with_details=True):
    """The run, marked as the runner marks a diverged one (``with_details=False``: as records
    written before the runner recorded where)."""
    run = {**run, "diverged": True}
    if with_details:
        run["divergence"] = {"step": 3, "epoch": 0.1, "cause": "non-finite training loss"}
    return run


@pytest.mark.parametrize(
    "run, expected",
    [
        (record(0, [0.9], [0.9]), False),
        (diverged(record(0, [0.9], [0.9])), True),
        (diverged(record(0, [0.9], [0.9]), with_details=False), True),
        # Older records: a non-finite final number (stored as null) means the run diverged.
        ({**record(0, [0.9], [0.9]), "final": {"valid_metric": 0.9, "test_metric": None}}, True),
        ({**record(0, [0.9], [0.9]), "steps": 5, "final": {"train_loss": None}}, True),
        ({**record(0, [0.9], [0.9]), "steps": 0, "final": {"train_loss": None}}, False),
    ],
)
def test_diverged(run, expected):
    assert scoring.diverged(run) is expected


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("reduce", ["final", "best"])
@pytest.mark.parametrize("higher", [True, False])
def test_a_diverged_run_scores_worst_whatever_it_measured(split, reduce, higher):
    # The paper's "best over epochs" must not pick a point of a run that later diverged either.
    run = diverged(record(0, [0.1, 0.9, 0.8], [0.2, 0.7, 0.5], higher))
    assert scoring.run_score(run, split, reduce) == (-math.inf if higher else math.inf)


@pytest.mark.parametrize(
    "split, reduce, higher, expected",
    [
        ("valid", "final", True, 0.8),
        ("valid", "best", True, 0.9),
        ("test", "final", True, 0.5),
        ("test", "best", True, 0.7),
        ("valid", "best", False, 0.1),
        ("test", "best", False, 0.2),
    ],
)
def test_run_score(split, reduce, higher, expected):
    run = record(0, [0.1, 0.9, 0.8], [0.2, 0.7, 0.5], higher)
    assert scoring.run_score(run, split, reduce) == expected


@pytest.mark.parametrize("higher, expected", [(True, -math.inf), (False, math.inf)])
def test_missing_or_nan_scores_worst(higher, expected):
    run = record(0, [None, float("nan")], [None, None], higher)
    assert scoring.run_score(run, "valid", "final") == expected
    assert scoring.run_score(run, "test", "best") == expected


@pytest.mark.parametrize(
    "groups, higher, seeds, expected",
    [
        (
            {"a": [record(0, [0.5], [0]), record(1, [0.9], [0])], "b": [record(0, [0.6], [0])]},
            True,
            None,
            "a",
        ),  # mean over seeds: a 0.7 beats b 0.6
        (
            {"a": [record(0, [0.5], [0]), record(1, [0.9], [0])], "b": [record(0, [0.6], [0])]},
            True,
            (0,),
            "b",
        ),  # only seed 0 counts
        ({"a": [record(0, [0.5], [0])], "b": [record(0, [0.5], [0])]}, True, None, "a"),  # tie
        (
            {"a": [record(0, [0.5], [0], False)], "b": [record(0, [0.4], [0], False)]},
            False,
            None,
            "b",
        ),
        # A configuration without a finite score is never selected, even when it is the only one.
        ({"a": [], "b": [record(0, [float("nan")], [0])]}, True, None, None),
        ({"a": []}, True, None, None),
        # A diverged run (a NaN model still predicts one class: 10 %) loses to a poor finite one.
        (
            {"a": [diverged(record(0, [0.10], [0.1]))], "b": [record(0, [0.09], [0])]},
            True,
            None,
            "b",
        ),
        # One diverged seed disqualifies the configuration.
        (
            {
                "a": [record(0, [0.9], [0]), diverged(record(1, [0.9], [0]))],
                "b": [record(0, [0.5], [0])],
            },
            True,
            None,
            "b",
        ),
        # ... on the selection seeds only.
        (
            {
                "a": [record(0, [0.9], [0]), diverged(record(1, [0.9], [0]))],
                "b": [record(0, [0.5], [0])],
            },
            True,
            (0,),
            "a",
        ),
        # Every configuration diverged: none is selected (lower is better: NaN must not win).
        (
            {
                "a": [diverged(record(0, [2.0], [0], False))],
                "b": [diverged(record(0, [3.0], [0], False))],
            },
            False,
            None,
            None,
        ),
    ],
)
def test_select(groups, higher, seeds, expected):
    assert (
        scoring.select(groups, split="valid", reduce="final", higher_is_better=higher, seeds=seeds)
        == expected
    )


@pytest.mark.parametrize(
    "values, mean, std",
    [
        ([0.91, 0.92, 0.93], 0.92, 0.01),
        ([1.0, 3.0], 2.0, math.sqrt(2.0)),
        ([5.0], 5.0, math.nan),
        ([0.9, math.nan, 0.8], math.nan, math.nan),  # a diverged seed: no number at all
    ],
)
def test_mean_std(values, mean, std):
    m, s, n = scoring.mean_std(values)
    assert (math.isnan(m) and math.isnan(mean)) or m == pytest.approx(mean)
    assert n == len(values)
    assert (math.isnan(s) and math.isnan(std)) or s == pytest.approx(std)


def test_time_to_target_uses_the_seed_averaged_curve():
    runs = []
    for seed, curve in enumerate(([0.1, 0.5, 0.8], [0.1, 0.7, 0.9])):
        run = record(seed, curve, curve)
        for step, point in enumerate(run["history"]):
            point.update(step=10 * step, train_seconds=step + seed)
        runs.append(run)
    # Mean curve 0.1, 0.6, 0.85 at steps 0, 10, 20 and mean seconds 0.5, 1.5, 2.5.
    assert scoring.time_to_target(runs, 0.6, True) == (10, 1.5)
    assert scoring.time_to_target(runs, 0.61, True) == (20, 2.5)
    assert scoring.time_to_target(runs, 0.9, True) is None
    assert scoring.pair_target([0.85, 0.9], True) == 0.85
    assert scoring.pair_target([3.0, 2.0], False) == 3.0
