"""SAGA: two steps pinned by hand, a readable dense-table reference, convergence to independently
computed optima (ridge regression in closed form, L2 logistic regression by Newton's method), and
its place in the harness (the convex problems take it, the others refuse it)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from benchtools import write_tiny_mnist
from fixtures_other import write_svmlight

from critgrad.bench import optimizer_labels, problems, runner, saga
from critgrad.bench.contract import Task
from critgrad.bench.finite_sum import LinearFiniteSum, cross_entropy_rows, half_squared_error_rows
from critgrad.bench.record_format import RunSpec

DOUBLE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: on a busy machine a second intra-op thread only adds waiting (x10 here).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def linear_task(finite_sum: LinearFiniteSum, model: torch.nn.Linear) -> Task:
    """The smallest task SAGA can prepare: a model, its finite sum, no clipping."""
    return Task(
        model=model,
        train_batches=lambda generator: iter(()),
        loss=lambda model, batch: torch.zeros(()),
        evaluate=lambda model, split: {"loss": 0.0, "metric": 0.0},
        metric="train_loss",
        higher_is_better=False,
        epochs=1,
        info={},
        finite_sum=finite_sum,
    )


def one_step(task: Task, optimizer: saga.SAGA, batch) -> float:
    """What the runner does with one batch."""
    optimizer.zero_grad(set_to_none=True)
    loss = task.loss(task.model, batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train(task: Task, optimizer: saga.SAGA, epochs: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(epochs):
        for batch in task.train_batches(generator):
            rows.append(int(batch.index[0]))
            one_step(task, optimizer, batch)
    return rows


def parameters_of(model: torch.nn.Linear) -> torch.Tensor:
    parts = [model.weight.detach().flatten()]
    if model.bias is not None:
        parts.append(model.bias.detach().flatten())
    return torch.cat(parts)


# ---- two steps by hand ----------------------------------------------------------------------


def test_two_steps_by_hand():
    # f_i(w) = (w x_i - y_i)^2 / 2 with x = (1, 2), y = (1, 0), no bias; lambda 0.5, gamma 0.1,
    # w0 = 0. Table at w0: r = (-1, 0), so gradients (-1, 0) and their mean -0.5.
    # Row 1: r_new = 0, nothing changes in the table; w = 0 + 0.1 * 0.5 = 0.05, prox: / 1.05
    #        -> w1 = 1/21.
    # Row 0: r_new = 1/21 - 1 = -20/21; change = r_new - r_old = 1/21; direction = 1/21 - 1/2
    #        = -19/42; w = 1/21 + 0.1 * 19/42 = 3.9/42; / 1.05 -> w2 = 13/147.
    #        Table r = (-20/21, 0); mean gradient (-20/21 * 1 + 0 * 2) / 2 = -10/21.
    features = torch.tensor([[1.0], [2.0]], dtype=DOUBLE)
    targets = torch.tensor([1.0, 0.0], dtype=DOUBLE)
    finite_sum = LinearFiniteSum(features, targets, 0.5, half_squared_error_rows, curvature=1.0)
    model = torch.nn.Linear(1, 1, bias=False).to(DOUBLE)
    torch.nn.init.zeros_(model.weight)
    task, optimizer = saga.prepare(linear_task(finite_sum, model), {"lr": 0.1})
    loss = one_step(task, optimizer, saga.RowBatch(torch.tensor([1])))
    assert loss == 0.0  # row 1's loss at w = 0 (y = 0) plus a zero penalty
    assert model.weight.item() == pytest.approx(1 / 21, abs=1e-15)
    one_step(task, optimizer, saga.RowBatch(torch.tensor([0])))
    assert model.weight.item() == pytest.approx(13 / 147, abs=1e-15)
    state = optimizer.state[model.weight]
    torch.testing.assert_close(
        state["output_gradients"][:, 0], torch.tensor([-20 / 21, 0.0], dtype=DOUBLE)
    )
    assert state["mean_gradient"].item() == pytest.approx(-10 / 21, abs=1e-15)
    assert model.weight.grad is None  # SAGA's row gradient comes from the outputs, not p.grad


# ---- a readable reference: a dense table of whole per-row gradients --------------------------


def reference_saga(finite_sum, theta0, rows, gamma, has_bias):
    """SAGA as the paper writes it, on a flat parameter vector, gradients by autograd."""
    n, d = finite_sum.features.shape

    def unpack(theta):
        k = theta.numel() // (d + int(has_bias))
        weight = theta[: k * d].reshape(k, d)
        return weight, (theta[k * d :] if has_bias else None)

    def row_gradient(theta, i):
        theta = theta.detach().requires_grad_(True)
        weight, bias = unpack(theta)
        z = finite_sum.outputs(weight, bias, slice(i, i + 1))
        (grad,) = torch.autograd.grad(
            finite_sum.loss(z, finite_sum.targets[i : i + 1]).sum(), theta
        )
        return grad

    theta = theta0.clone()
    table = torch.stack([row_gradient(theta, i) for i in range(n)])
    for j in rows:
        new = row_gradient(theta, j)
        w = theta - gamma * (new - table[j] + table.mean(dim=0))
        theta = w / (1 + gamma * finite_sum.l2)
        table[j] = new
    return theta


@pytest.mark.parametrize("has_bias", [True, False])
def test_matches_the_dense_reference(has_bias):
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(12, 4, generator=gen, dtype=DOUBLE)
    targets = torch.randint(0, 3, (12,), generator=gen)
    finite_sum = LinearFiniteSum(features, targets, 0.05, cross_entropy_rows, curvature=0.5)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=has_bias).to(DOUBLE)
    theta0 = parameters_of(model)
    task, optimizer = saga.prepare(linear_task(finite_sum, model), {"lr": 0.2})
    rows = train(task, optimizer, epochs=3)  # 36 steps: the running mean is resynced 3 times
    expected = reference_saga(finite_sum, theta0, rows, 0.2, has_bias)
    # float64; the table's mean is a running sum here and a fresh mean in the reference, and
    # r x^T is formed directly rather than by autograd: equal up to rounding.
    torch.testing.assert_close(parameters_of(model), expected, rtol=1e-12, atol=1e-14)


def test_rows_are_drawn_uniformly_with_replacement():
    features = torch.randn(50, 2, dtype=DOUBLE)
    finite_sum = LinearFiniteSum(
        features, torch.zeros(50, dtype=torch.long), 0.0, cross_entropy_rows, 0.5
    )
    task, _ = saga.prepare(linear_task(finite_sum, torch.nn.Linear(2, 2).to(DOUBLE)), {})
    first = [int(b.index[0]) for b in task.train_batches(torch.Generator().manual_seed(5))]
    again = [int(b.index[0]) for b in task.train_batches(torch.Generator().manual_seed(5))]
    assert first == again and len(first) == 50  # n steps per epoch, a function of the seed
    assert len(set(first)) < 50  # with replacement: 50 draws from 50 rows repeat (p ~ 1)
    assert task.info["batch_size"] == 1 and task.info["steps_per_epoch"] == 50


# ---- convergence to optima computed independently --------------------------------------------


def test_converges_to_the_ridge_regression_solution():
    # min (1/n) sum (w.x_i + b - y_i)^2 / 2 + (lambda/2)(|w|^2 + b^2): with X1 = [X, 1], the
    # optimum solves (X1^T X1 / n + lambda I) theta = X1^T y / n.
    gen = torch.Generator().manual_seed(0)
    n, d, lam = 20, 3, 0.1
    features = torch.randn(n, d, generator=gen, dtype=DOUBLE)
    targets = features @ torch.tensor([1.0, -2.0, 0.5], dtype=DOUBLE) + 0.3
    targets = targets + 0.1 * torch.randn(n, generator=gen, dtype=DOUBLE)
    x1 = torch.cat([features, torch.ones(n, 1, dtype=DOUBLE)], dim=1)
    optimum = torch.linalg.solve(
        x1.T @ x1 / n + lam * torch.eye(d + 1, dtype=DOUBLE), x1.T @ targets / n
    )

    finite_sum = LinearFiniteSum(features, targets, lam, half_squared_error_rows, curvature=1.0)
    model = torch.nn.Linear(d, 1).to(DOUBLE)
    task, optimizer = saga.prepare(linear_task(finite_sum, model), {})  # gamma = 1/(3L)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        1 / (3 * float((features.pow(2).sum(1) + 1).max()))
    )
    train(task, optimizer, epochs=120)
    torch.testing.assert_close(parameters_of(model), optimum, rtol=0, atol=1e-10)


def newton_logistic_optimum(finite_sum, classes, steps=30):
    """The L2 multinomial logistic regression optimum by Newton's method (float64)."""
    d = finite_sum.features.shape[1]

    def objective(theta):
        weight, bias = theta[: classes * d].reshape(classes, d), theta[classes * d :]
        z = finite_sum.features @ weight.T + bias
        return F.cross_entropy(z, finite_sum.targets) + 0.5 * finite_sum.l2 * theta.pow(2).sum()

    theta = torch.zeros(classes * (d + 1), dtype=DOUBLE)
    for _ in range(steps):
        gradient = torch.func.grad(objective)(theta)
        hessian = torch.func.hessian(objective)(theta)
        theta = theta - torch.linalg.solve(hessian, gradient)
    assert torch.func.grad(objective)(theta).abs().max() < 1e-12
    return theta


def test_converges_to_the_l2_logistic_regression_optimum():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(30, 4, generator=gen, dtype=DOUBLE)
    targets = (features[:, 0] + features[:, 1] > 0).long() + (features[:, 2] > 1).long()
    finite_sum = LinearFiniteSum(features, targets, 0.1, cross_entropy_rows, curvature=0.5)
    optimum = newton_logistic_optimum(finite_sum, classes=3)
    model = torch.nn.Linear(4, 3).to(DOUBLE)
    # Above 1/(3L) = 0.03 and below where this problem stops converging (about 0.2).
    task, optimizer = saga.prepare(linear_task(finite_sum, model), {"lr": 0.1})
    train(task, optimizer, epochs=75)
    torch.testing.assert_close(parameters_of(model), optimum, rtol=0, atol=1e-9)
    assert finite_sum.objective([model.weight, model.bias]).item() == pytest.approx(
        finite_sum.objective([optimum[:12].reshape(3, 4), optimum[12:]]).item(),
        abs=1e-14,
    )


# ---- state ----------------------------------------------------------------------------------


def test_resume_equals_never_stopping():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(10, 3, generator=gen, dtype=DOUBLE)
    finite_sum = LinearFiniteSum(
        features, torch.randint(0, 2, (10,), generator=gen), 0.01, cross_entropy_rows, 0.5
    )
    rows = torch.randint(0, 10, (25,), generator=gen).tolist()

    def fresh_model():
        torch.manual_seed(4)
        return torch.nn.Linear(3, 2).to(DOUBLE)

    straight = fresh_model()
    task, optimizer = saga.prepare(linear_task(finite_sum, straight), {"lr": 0.1})
    for j in rows:
        one_step(task, optimizer, saga.RowBatch(torch.tensor([j])))

    first_model = fresh_model()
    task, optimizer = saga.prepare(linear_task(finite_sum, first_model), {"lr": 0.1})
    for j in rows[:13]:  # past one resync of the running mean (every 10 steps)
        one_step(task, optimizer, saga.RowBatch(torch.tensor([j])))
    buffer = io.BytesIO()
    torch.save({"model": first_model.state_dict(), "opt": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    second_model = fresh_model()
    second_model.load_state_dict(saved["model"])
    task, optimizer = saga.prepare(linear_task(finite_sum, second_model), {"lr": 0.1})
    optimizer.load_state_dict(saved["opt"])
    for j in rows[13:]:
        one_step(task, optimizer, saga.RowBatch(torch.tensor([j])))
    assert torch.equal(parameters_of(straight), parameters_of(second_model))


# ---- errors ---------------------------------------------------------------------------------


def test_invalid_and_unbound():
    probe = [torch.nn.Parameter(torch.zeros(2, 3))]
    for lr in (0.0, -1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="Invalid lr"):
            optimizer_labels.create("saga", probe, {"lr": lr})
    with pytest.raises(ValueError, match="no memory"):
        optimizer_labels.create("saga", probe, {"lr": 0.1, "topC": 5})
    with pytest.raises(TypeError):
        optimizer_labels.create("saga", probe, {"lr": 0.1, "momentum": 0.9})
    unbound = optimizer_labels.create("saga", probe, {"lr": 0.1})  # what a dry run builds
    with pytest.raises(RuntimeError, match="no finite sum"):
        unbound.step()
    finite_sum = LinearFiniteSum(
        torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 0.0, cross_entropy_rows, 0.5
    )
    bound = saga.SAGA(probe, lr=0.1, finite_sum=finite_sum)
    with pytest.raises(RuntimeError, match="observe"):
        bound.step()
    with pytest.raises(ValueError, match="linear layer"):
        saga.SAGA([torch.nn.Parameter(torch.zeros(2, 5))], finite_sum=finite_sum)


# ---- in the harness -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("saga-data")
    write_tiny_mnist(root / "mnist")
    write_svmlight(root, "covtype")
    write_svmlight(root, "rcv1")
    return root


def test_the_finite_sum_problems_are_the_convex_ones(data_root):
    # Every problem on these data sets is built; exactly the listed ones declare a finite sum.
    for spec in problems.list_problems():
        if spec.dataset not in ("mnist", "covtype", "rcv1"):
            continue
        task = spec.build(
            "cpu",
            0,
            str(data_root),
            {"rows": 100, "train_size": 100, "valid_size": 20, "test_size": 30},
        )
        assert (task.finite_sum is not None) == (spec.name in saga.FINITE_SUM_PROBLEMS), spec.name
        if task.finite_sum is not None:
            # The finite sum is the task's own objective (the convex problems' "valid" metric).
            params = list(task.model.parameters())
            assert task.finite_sum.objective(params).item() == pytest.approx(
                task.evaluate(task.model, "valid")["metric"], rel=1e-6
            )
    assert set(saga.FINITE_SUM_PROBLEMS) <= {spec.name for spec in problems.list_problems()}


def test_runs_in_the_harness_on_a_convex_problem(data_root):
    spec = RunSpec(
        problem="covtype-logreg",
        optimizer="saga",
        hyperparameters={"lr": 1e-3},
        seed=0,
        overrides={"rows": 60, "epochs": 3},
    )
    record = runner.run(spec, data_dir=str(data_root))
    assert record["optimizer_name"] == "saga" and not record["diverged"]
    assert record["steps"] == 3 * 48  # batch 1: n = 48 training rows per epoch
    assert record["problem_info"]["batch_size"] == 1
    assert record["problem_info"]["saga_lr"] == 1e-3
    objective = [point["valid_metric"] for point in record["history"]]
    assert objective[-1] < objective[0]
    again = runner.run(spec, data_dir=str(data_root))
    assert runner.without_timings(again) == runner.without_timings(record)


def test_refused_where_per_row_gradients_make_no_sense(data_root):
    spec = RunSpec(
        problem="mnist-mlp",
        optimizer="saga",
        hyperparameters={},
        seed=0,
        overrides={"train_size": 100, "valid_size": 20, "test_size": 30, "epochs": 1},
    )
    with pytest.raises(ValueError, match=r"saga.*finite-sum.*mnist-convex"):
        runner.run(spec, data_dir=str(data_root))


def test_a_sweep_refuses_saga_on_other_problems_before_running(data_root, tmp_path, capsys):
    from critgrad.bench import cli

    out = tmp_path / "run"
    arguments = ["run", "mnist-convex", "mnist-mlp", "--optimizers", "sgd,saga", "--quiet"]
    code = cli.main([*arguments, "--data-dir", str(data_root), "--out", str(out)])
    assert code == 2
    message = capsys.readouterr().err
    assert "saga" in message and "'mnist-mlp' does not offer" in message
    assert not out.exists()  # refused before the first run
