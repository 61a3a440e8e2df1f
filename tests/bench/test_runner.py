"""The runner: one spec -> one record, deterministic but for the timings."""

from __future__ import annotations

import math

import pytest
import torch

from critgrad.bench import optimizer_labels, record_format, runner
from critgrad.bench.record_format import RunSpec

RUNS = {  # label -> hyperparameters; every family of the main job
    "sgd": {"lr": 0.1},
    "sgdm_c": {"lr": 0.01, "topC": 3, "decay": 0.7},
    "rmsprop": {"lr": 1e-3},
    "adam_c": {"lr": 1e-3, "topC": 5, "decay": 0.9},
}


def spec(label, overrides, **fields):
    return RunSpec(
        "mnist-logreg",
        label,
        RUNS[label],
        seed=fields.pop("seed", 7),
        overrides=overrides,
        **fields,
    )


@pytest.mark.parametrize("label", sorted(RUNS))
def test_same_spec_gives_the_same_record(label, mnist_dir, tiny_overrides):
    first = runner.run(spec(label, tiny_overrides), data_dir=str(mnist_dir))
    second = runner.run(spec(label, tiny_overrides), data_dir=str(mnist_dir))
    assert runner.without_timings(first) == runner.without_timings(second)
    other_seed = runner.run(spec(label, tiny_overrides, seed=8), data_dir=str(mnist_dir))
    assert other_seed["history"][-1]["valid_loss"] != first["history"][-1]["valid_loss"]


def test_record_contents(mnist_dir, tiny_overrides):
    record = runner.run(spec("adam_c", tiny_overrides, evals_per_epoch=2), data_dir=str(mnist_dir))
    assert record["optimizer_name"] == "adam_c"
    assert record["optimizer_arguments"] == RUNS["adam_c"]
    assert record["steps"] == 8 and record["epochs"] == 2 and not record["diverged"]
    history = record["history"]
    assert [p["step"] for p in history] == [0, 2, 4, 6, 8]
    assert [p["epoch"] for p in history] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert history[0]["train_loss"] is None and history[0]["memory"]["offered"] == 0
    assert all(p["train_loss"] > 0 for p in history[1:])
    seconds = [p["train_seconds"] for p in history]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(record["train_seconds"])
    assert 0 < record["optimizer_seconds"] < record["train_seconds"] < record["wall_seconds"]
    assert record["final"]["test_metric"] == history[-1]["test_metric"]
    memory = history[-1]["memory"]
    # Every step offers each tensor's gradient (weight and bias) or the group's key.
    assert (
        memory["offered"] in (8, 16)
        and memory["admitted"] + memory["rejected"] <= memory["offered"]
    )
    assert memory["nonfinite"] == 0 and memory["mean_age"] >= 0
    assert record["machine"]["torch"] == torch.__version__
    assert record["problem_info"]["train_size"] == 100


def test_vanilla_optimizer_has_no_memory_statistics(mnist_dir, tiny_overrides):
    record = runner.run(spec("sgd", tiny_overrides), data_dir=str(mnist_dir))
    assert all(p["memory"] is None for p in record["history"])


def test_divergence_stops_the_run_and_is_recorded(mnist_dir, tiny_overrides):
    diverging = RunSpec(
        "mnist-logreg",
        "sgd",
        {"lr": 1e38},
        0,
        overrides={**tiny_overrides, "grad_clip": None, "epochs": 3},
    )
    record = runner.run(diverging, data_dir=str(mnist_dir))
    assert record["diverged"] and record["steps"] < 12
    where = record["divergence"]
    # The first step's loss is finite (the initial model); the run stops at the first that is not.
    assert where["cause"] == "non-finite training loss" and where["step"] == record["steps"] + 1
    assert 1 < where["step"] <= 12 and where["epoch"] == pytest.approx((where["step"] - 1) / 4)
    # No number of a diverged model reaches the record's final numbers.
    assert record["final"] == dict.fromkeys(record_format.FINAL_FIELDS)
    assert all(math.isfinite(p["train_loss"]) for p in record["history"][1:])


def test_non_finite_parameters_are_divergence(mnist_dir, tiny_overrides, monkeypatch):
    # Parameters that turn non-finite in the step right before an evaluation point are found by
    # the parameter check there, before any loss could see them.
    real_create = optimizer_labels.create

    def poisoning(label, model, hyperparameters):
        optimizer = real_create(label, model, hyperparameters)
        parameters = list(model.parameters())
        step = optimizer.step

        def poisoned_step(*args, **kwargs):
            result = step(*args, **kwargs)
            if optimizer.state[parameters[0]]["step"] == 4:
                with torch.no_grad():
                    parameters[1][0] = math.inf
            return result

        optimizer.step = poisoned_step
        return optimizer

    monkeypatch.setattr(optimizer_labels, "create", poisoning)
    record = runner.run(spec("adam_c", {**tiny_overrides, "epochs": 3}), data_dir=str(mnist_dir))
    assert record["diverged"] and record["steps"] == 4
    assert record["divergence"] == {"step": 4, "epoch": 1.0, "cause": "non-finite parameters"}
    assert record["final"]["valid_metric"] is None


@pytest.mark.parametrize(
    "steps, evals, expected",
    [
        (10, 1, [10]),
        (10, 2, [5, 10]),
        (10, 3, [3, 7, 10]),
        (3, 5, [1, 2, 3]),
        (1, 4, [1]),
    ],
)
def test_evaluation_steps(steps, evals, expected):
    assert runner.evaluation_steps(steps, evals) == expected


def test_evaluation_steps_rejects_zero():
    with pytest.raises(ValueError, match="evals_per_epoch"):
        runner.evaluation_steps(10, 0)


@pytest.mark.parametrize(
    "stats, expected",
    [
        (None, None),
        ([], None),
        (
            [
                {
                    "offered": 4,
                    "admitted": 3,
                    "rejected": 1,
                    "nonfinite": 0,
                    "mean_age": 2.0,
                    "max_age": 5,
                    "last_key": 1.5,
                },
                {
                    "offered": 2,
                    "admitted": 2,
                    "rejected": 0,
                    "nonfinite": 1,
                    "mean_age": None,
                    "max_age": 7,
                    "last_key": 0.5,
                },
            ],
            {
                "offered": 6,
                "admitted": 5,
                "rejected": 1,
                "nonfinite": 1,
                "mean_age": 2.0,
                "max_age": 7,
            },
        ),
        (
            [
                {"offered": 1, "admitted": 1, "rejected": 0, "nonfinite": 0, "mean_age": 1.0},
                {"offered": 1, "admitted": 1, "rejected": 0, "nonfinite": 0, "mean_age": 3.0},
            ],
            {"offered": 2, "admitted": 2, "rejected": 0, "nonfinite": 0, "mean_age": 2.0},
        ),
    ],
)
def test_summarise_memory(stats, expected):
    assert runner.summarise_memory(stats) == expected


@pytest.mark.parametrize(
    "label, hyper, name, arguments",
    [
        ("sgdm", {"lr": 0.01}, "sgd", {"momentum": 0.9, "lr": 0.01}),
        ("sgdm_c", {"lr": 0.01, "topC": 5}, "sgd_c", {"momentum": 0.9, "lr": 0.01, "topC": 5}),
        ("sgdm", {"momentum": 0.5}, "sgd", {"momentum": 0.5}),
        ("adam", {}, "adam", {}),
    ],
)
def test_optimizer_labels_resolve(label, hyper, name, arguments):
    assert optimizer_labels.resolve(label, hyper) == (name, arguments)


@pytest.mark.parametrize(
    "label, hyper, error, match",
    [
        ("adamx", {}, optimizer_labels.UnknownOptimizer, "unknown optimizer 'adamx'; known: "),
        ("adam", {"topC": 5}, ValueError, "topC apply only to the _c optimizers"),
    ],
)
def test_optimizer_labels_errors(label, hyper, error, match):
    with pytest.raises(error, match=match):
        optimizer_labels.resolve(label, hyper)


@pytest.mark.parametrize(
    "label, base, memory",
    [("adam", "adam", "adam_c"), ("adam_c", "adam", "adam_c"), ("sgdm_c", "sgdm", "sgdm_c")],
)
def test_pairing(label, base, memory):
    assert optimizer_labels.base_label(label) == base
    assert optimizer_labels.memory_label(label) == memory
