r"""SAGA (Defazio, Bach, Lacoste-Julien, "SAGA: A Fast Incremental Gradient Method With Support
for Non-Strongly Convex Composite Objectives", NeurIPS 2014): the harness's ``saga`` optimizer.

For :math:`F(x) = \frac1n \sum_i f_i(x) + h(x)` with :math:`h(x) = \frac{\lambda}{2}\lVert x\rVert^2`
(the problem's :class:`~critgrad.bench.finite_sum.LinearFiniteSum`), SAGA keeps a table of the
rows' gradients :math:`\nabla f_i(\phi_i)`, each taken where row i was last drawn. At step k, with
row j drawn uniformly at random (batch 1, with replacement, as in the paper) and step size
:math:`\gamma`:

.. math::
    w &= x^k - \gamma \Big[\nabla f_j(x^k) - \nabla f_j(\phi_j) + \frac1n \sum_{i=1}^n
        \nabla f_i(\phi_i)\Big] \\
    x^{k+1} &= \mathrm{prox}_{\gamma h}(w) = \frac{w}{1 + \gamma\lambda}

then row j's entry becomes :math:`\nabla f_j(x^k)`. The average is over the table *before* the
update. The L2 term never enters the table: it is applied exactly by its proximal operator, the
paper's composite step. The table starts, as in the paper, with every row's gradient at the
starting point :math:`x^0` (one pass over the rows at the first step).

For a linear model the table holds each row's output gradient :math:`r_i` (n x K numbers; see
:mod:`critgrad.bench.finite_sum`), and the table's average gradient is kept as a running sum,
recomputed from the table every n steps so that its rounding error stays bounded.

Default step size: :math:`\gamma = 1 / (3L)`, L the largest smoothness constant of the rows, the
step of the paper's theorems for the (strongly) convex case.

In the harness, :func:`prepare` turns a problem's task into SAGA's: its batches are single row
indices drawn uniformly with replacement (n per epoch), its loss is row j's objective (the value
the runner records, whose backward pass hands SAGA the row's output gradient), and the optimizer
knows which row the runner's current batch holds. Problems without a finite sum are refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from critgrad.bench.finite_sum import LinearFiniteSum

FINITE_SUM_PROBLEMS = ("covtype-logreg", "mnist-convex", "rcv1-logreg")
"""The problems whose tasks declare a finite sum (checked by a test against the registry)."""


def check_lr(lr: Any) -> None:
    if lr is None:
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Invalid lr: {lr!r} (must be a finite number > 0, or None for 1/(3L))")


def default_step_size(finite_sum: LinearFiniteSum, has_bias: bool = True) -> float:
    """1 / (3 L), L the rows' largest smoothness constant."""
    return 1.0 / (3.0 * finite_sum.smoothness(has_bias))


class SAGA(Optimizer):
    """SAGA on a linear model's parameters (see the module docstring for the update).

    Args:
        params: the parameters of one ``torch.nn.Linear`` layer: [weight] or [weight, bias].
        lr (float, optional): step size gamma > 0; None for 1/(3L) (default: None).
        finite_sum (LinearFiniteSum): the objective the rows' gradients come from. Without it
            the optimizer can be built (to check its arguments) but not stepped.

    Each step is on one row j: compute the model's outputs for the row as a leaf tensor ``z``
    (``requires_grad``), hand them over with :meth:`observe`, call ``backward`` on the row's loss
    (which fills ``z.grad`` with the row's output gradient r_j), then :meth:`step`. The table lives
    in the weight's state: ``output_gradients`` (n, K), ``mean_gradient`` (the table's average
    gradient of each parameter; the bias keeps its own) and ``step``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        *,
        finite_sum: LinearFiniteSum | None = None,
    ) -> None:
        check_lr(lr)
        super().__init__(params, {"lr": lr})
        if len(self.param_groups) != 1:
            raise ValueError("SAGA takes one parameter group (the linear layer's parameters)")
        self.finite_sum = finite_sum
        self._row: int | None = None
        self._outputs: Tensor | None = None
        if finite_sum is not None:
            _, bias = finite_sum.split_parameters(self.param_groups[0]["params"])
            if lr is None:
                self.param_groups[0]["lr"] = default_step_size(finite_sum, bias is not None)

    def observe(self, row: int, outputs: Tensor) -> None:
        """The row of the next :meth:`step` and its outputs z_j, a (1, K) leaf tensor whose
        ``grad`` the backward pass of the row's loss fills with r_j."""
        if self.finite_sum is None:
            raise RuntimeError(_UNBOUND)
        if not 0 <= row < self.finite_sum.size:
            raise IndexError(f"row {row} outside 0..{self.finite_sum.size - 1}")
        if not (outputs.is_leaf and outputs.requires_grad and outputs.shape[0] == 1):
            raise ValueError("outputs must be one row's outputs, a leaf tensor requiring grad")
        self._row, self._outputs = row, outputs

    def _table(self, weight: Tensor, bias: Tensor | None) -> dict[str, Tensor]:
        """The weight's state, created at the first step from every row's gradient at x^0."""
        state = self.state[weight]
        if "output_gradients" not in state:
            table = self.finite_sum.output_gradients(weight, bias, slice(None))
            state["output_gradients"] = table
            state["step"] = torch.zeros((), dtype=torch.float64)
            self._resync(weight, bias, table)
        return state

    def _resync(self, weight: Tensor, bias: Tensor | None, table: Tensor) -> None:
        """Average gradient of each parameter recomputed from the table."""
        n = self.finite_sum.size
        self.state[weight]["mean_gradient"] = table.T @ self.finite_sum.features / n
        if bias is not None:
            self.state[bias]["mean_gradient"] = table.mean(dim=0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """One SAGA step on the row given to :meth:`observe` (the closure, if any, runs first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.finite_sum is None:
            raise RuntimeError(_UNBOUND)
        if self._outputs is None or self._outputs.grad is None:
            raise RuntimeError(
                "SAGA.step() needs the row of this step: observe(row, outputs), then backward "
                "on the row's loss, then step()"
            )
        group = self.param_groups[0]
        check_lr(group["lr"])
        weight, bias = self.finite_sum.split_parameters(group["params"])
        state = self._table(weight, bias)
        j, r_new = self._row, self._outputs.grad[0]
        self._row, self._outputs = None, None
        table = state["output_gradients"]
        delta = r_new - table[j]
        x_j = self.finite_sum.features[j]
        gamma, n = group["lr"], self.finite_sum.size
        shrink = 1.0 / (1.0 + gamma * self.finite_sum.l2)
        # delta is (K,), x_j (d,): the row's change of gradient is outer(delta, x_j) for W.
        for param, change in ((weight, torch.outer(delta, x_j)), (bias, delta)):
            if param is None:
                continue
            mean = self.state[param]["mean_gradient"]
            param.sub_(change + mean, alpha=gamma).mul_(shrink)
            mean.add_(change, alpha=1.0 / n)
        table[j] = r_new
        state["step"] += 1
        if int(state["step"]) % n == 0:  # the step count lives on the host: no device wait
            self._resync(weight, bias, table)
        return loss


_REFUSED = (
    "optimizer 'saga' needs the per-row gradients of a finite-sum objective, which {problem} "
    "does not offer; SAGA runs on the strongly convex problems: " + ", ".join(FINITE_SUM_PROBLEMS)
)
_UNBOUND = (
    "this SAGA optimizer has no finite sum: SAGA needs the per-row gradients of the problem's "
    "objective; build it with critgrad.bench.saga.prepare(task, hyperparameters)"
)


@dataclasses.dataclass(frozen=True)
class RowBatch:
    """One training row, by index (what SAGA's task yields)."""

    index: Tensor  # shape (1,), int64


def check_problem(problem: str) -> None:
    """ValueError unless ``problem`` is one whose task declares a finite sum."""
    if problem not in FINITE_SUM_PROBLEMS:
        raise ValueError(_REFUSED.format(problem=repr(problem)))


def create(parameters: Iterable[Any] | nn.Module, hyperparameters: Mapping[str, Any]) -> SAGA:
    """An unbound SAGA (it checks its arguments; it cannot step): what a dry run builds."""
    if isinstance(parameters, nn.Module):
        parameters = list(parameters.parameters())
    return SAGA(parameters, **dict(hyperparameters))


def prepare(task: Any, hyperparameters: Mapping[str, Any]) -> tuple[Any, SAGA]:
    """SAGA's version of ``task`` and the optimizer bound to its finite sum.

    Refused (ValueError) when the task declares no finite sum, or clips gradients (SAGA's step
    does not go through ``p.grad``).
    """
    finite_sum = getattr(task, "finite_sum", None)
    if finite_sum is None:
        raise ValueError(_REFUSED.format(problem="this problem"))
    if task.grad_clip is not None:
        raise ValueError("optimizer 'saga' cannot honour gradient clipping; the problem clips")
    params = [p for p in task.model.parameters() if p.requires_grad]
    optimizer = SAGA(params, finite_sum=finite_sum, **dict(hyperparameters))
    n = finite_sum.size

    def train_batches(generator: torch.Generator) -> Iterator[RowBatch]:
        rows = torch.randint(n, (n,), generator=generator)  # uniform, with replacement
        for k in range(n):
            yield RowBatch(rows[k : k + 1])

    def loss(model: nn.Module, batch: RowBatch) -> Tensor:
        # The row's objective f_j + h (the value the runner averages). Its backward pass runs
        # only through the loss in the outputs: it gives SAGA the row's output gradient r_j and
        # leaves p.grad alone (SAGA's step does not use it; the L2 term is its prox).
        with torch.no_grad():
            z = model(finite_sum.features[batch.index])
            penalty = finite_sum.penalty(params)
        z.requires_grad_(True)
        optimizer.observe(int(batch.index[0]), z)
        return finite_sum.loss(z, finite_sum.targets[batch.index]).mean() + penalty

    info = {
        **dict(task.info),
        "batch_size": 1,
        "steps_per_epoch": n,
        "saga_lr": optimizer.param_groups[0]["lr"],
    }
    saga_task = dataclasses.replace(task, train_batches=train_batches, loss=loss, info=info)
    return saga_task, optimizer
