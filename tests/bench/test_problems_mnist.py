"""The problem registry and the three MNIST problems, on the tiny fixture."""

from __future__ import annotations

import pytest
import torch

from critgrad.bench import problems
from critgrad.bench.contract import ProblemSpec

MNIST_PROBLEMS = {  # name -> (parameters, cpu epochs, cpu train size)
    "mnist-logreg": (7_850, 3, 50_000),
    "mnist-mlp": (784 * 32 + 32 + 32 * 10 + 10, 3, 50_000),
    "mnist-cnn": (21_840, 2, 10_000),
}


def test_registry_lists_the_mnist_problems_with_the_paper_setting():
    names = [spec.name for spec in problems.list_problems()]
    assert names == sorted(names)
    for name, (_, epochs, train_size) in MNIST_PROBLEMS.items():
        spec = problems.get_problem(name)
        assert spec.dataset == "mnist" and spec.metric == "accuracy" and spec.higher_is_better
        full = spec.sizes["full"]
        assert (full["train_size"], full["valid_size"], full["test_size"]) == (
            50_000,
            10_000,
            10_000,
        )
        assert (full["batch_size"], full["epochs"], full["grad_clip"]) == (64, 10, 10.0)
        assert (spec.sizes["cpu"]["epochs"], spec.sizes["cpu"]["train_size"]) == (
            epochs,
            train_size,
        )


def test_unknown_problem_lists_the_known_ones():
    with pytest.raises(problems.UnknownProblem) as error:
        problems.get_problem("mnist-nope")
    assert "unknown problem 'mnist-nope'" in str(error.value) and "mnist-mlp" in str(error.value)


def test_duplicate_registration_is_an_error():
    spec = problems.get_problem("mnist-mlp")
    assert problems.register(spec) is spec  # the same object again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        problems.register(ProblemSpec("mnist-mlp", "", "mnist", "accuracy", True, {}, None))


@pytest.mark.parametrize(
    "missing, surfaces",
    [
        ("critgrad.bench.problems.fake_family", False),  # the module itself is not there: skipped
        ("some_dependency", True),  # a module that exists fails to import: the error surfaces
    ],
)
def test_registry_skips_absent_modules_but_not_broken_ones(monkeypatch, missing, surfaces):
    real_import = problems.importlib.import_module

    def fake_import(name):
        if name == "critgrad.bench.problems.fake_family":
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real_import(name)

    monkeypatch.setattr(problems.importlib, "import_module", fake_import)
    monkeypatch.setattr(problems, "_MODULES", problems._MODULES + ("fake_family",))
    monkeypatch.setattr(problems, "_loaded", False)
    if surfaces:
        with pytest.raises(ModuleNotFoundError, match="some_dependency"):
            problems.list_problems()
    else:
        assert "mnist-mlp" in [p.name for p in problems.list_problems()]


@pytest.mark.parametrize("name", sorted(MNIST_PROBLEMS))
def test_mnist_problem_builds_trains_and_scores(name, mnist_dir, tiny_overrides):
    torch.manual_seed(0)
    task = problems.get_problem(name).build("cpu", 0, str(mnist_dir), tiny_overrides)
    assert task.info["parameters"] == MNIST_PROBLEMS[name][0]
    assert task.info["steps_per_epoch"] == 4 and task.grad_clip == 10.0
    batches = list(task.train_batches(torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [25, 25, 25, 25]
    assert batches[0][0].shape == (25, 1, 28, 28)
    # The shuffle is a function of the generator's seed.
    again = list(task.train_batches(torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    optimizer = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    task.model.eval()
    before = task.evaluate(task.model, "valid")
    task.model.train()
    for _ in range(15):
        for batch in batches:
            optimizer.zero_grad()
            task.loss(task.model, batch).backward()
            optimizer.step()
    task.model.eval()
    after = task.evaluate(task.model, "valid")
    test = task.evaluate(task.model, "test")
    assert after["loss"] < before["loss"]
    assert 0.0 <= test["metric"] <= 1.0 and test["metric"] > 0.3
