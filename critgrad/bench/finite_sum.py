r"""A problem's training objective as a finite sum over its rows, for methods that work per sample.

Variance-reduced methods such as SAGA need what a minibatch loss hides: the gradient of one
training row's loss, for any row, at any time. A problem whose model is a ``torch.nn.Linear`` layer
``z = W x + b`` declares its objective as

.. math::
    F(W, b) = \frac{1}{n} \sum_{i=1}^{n} \ell(W x_i + b,\ y_i)
              + \frac{\lambda}{2}\left(\lVert W \rVert^2 + \lVert b \rVert^2\right)

by putting a :class:`LinearFiniteSum` in its task's ``finite_sum``. For such a model the gradient
of row i's loss is determined by the derivative of the loss in the model's output,
:math:`r_i = \partial \ell / \partial z \in \mathbb{R}^K`:

.. math::
    \nabla_W \ell_i = r_i\, x_i^\top, \qquad \nabla_b \ell_i = r_i,

so a table of per-sample gradients is a table of the n vectors :math:`r_i` (n x K numbers instead
of n x (d + 1) x K). The L2 term is not part of any row: methods handle it exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class LinearFiniteSum:
    """The objective of a linear model over ``n`` training rows (see the module docstring)."""

    features: Tensor  # (n, d) the training rows x_i
    targets: Tensor  # (n,) class labels, or (n, K) regression targets: what ``loss`` expects
    l2: float  # lambda of the L2 term over every parameter (weights and bias)
    loss: Callable[[Tensor, Tensor], Tensor]  # per-row losses l(z_i, y_i) of outputs (b, K): (b,)
    # A bound on the second derivative of l in z (the largest eigenvalue of its Hessian in z):
    # 1/2 for softmax cross-entropy, 1 for half the squared error. Gives the rows' smoothness.
    curvature: float

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"features must be (n, d), got shape {tuple(self.features.shape)}")
        if len(self.targets) != len(self.features):
            raise ValueError(
                f"{len(self.targets)} targets for {len(self.features)} rows of features"
            )
        if not self.l2 >= 0:
            raise ValueError(f"Invalid l2: {self.l2!r} (must be >= 0)")
        if not self.curvature > 0:
            raise ValueError(f"Invalid curvature: {self.curvature!r} (must be > 0)")

    @property
    def size(self) -> int:
        """n, the number of rows."""
        return len(self.features)

    def split_parameters(self, params: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """(W, b) from a linear layer's parameters [weight] or [weight, bias], checked."""
        params = list(params)
        if not 1 <= len(params) <= 2 or params[0].ndim != 2:
            raise ValueError(
                "a linear finite sum needs the parameters of one torch.nn.Linear layer "
                f"([weight] or [weight, bias]); got shapes {[tuple(p.shape) for p in params]}"
            )
        weight = params[0]
        bias = params[1] if len(params) == 2 else None
        if weight.shape[1] != self.features.shape[1] or (
            bias is not None and tuple(bias.shape) != (weight.shape[0],)
        ):
            raise ValueError(
                f"parameters of shapes {[tuple(p.shape) for p in params]} do not make a linear "
                f"layer on {self.features.shape[1]} features"
            )
        return weight, bias

    def outputs(self, weight: Tensor, bias: Tensor | None, index: Tensor | slice) -> Tensor:
        """z_i = W x_i + b for the rows ``index``: (b, K)."""
        z = self.features[index] @ weight.T
        return z if bias is None else z + bias

    def output_gradients(
        self, weight: Tensor, bias: Tensor | None, index: Tensor | slice
    ) -> Tensor:
        """r_i = dl(z_i, y_i)/dz_i for the rows ``index`` at (W, b): (b, K)."""
        with torch.enable_grad():
            z = self.outputs(weight.detach(), None if bias is None else bias.detach(), index)
            z.requires_grad_(True)
            (r,) = torch.autograd.grad(self.loss(z, self.targets[index]).sum(), z)
        return r

    def penalty(self, params: Sequence[Tensor]) -> Tensor:
        """(lambda / 2) times the squared norm of every parameter."""
        return 0.5 * self.l2 * sum(p.pow(2).sum() for p in params)

    def objective(self, params: Sequence[Tensor]) -> Tensor:
        """F: the mean row loss over all rows plus the L2 term."""
        weight, bias = self.split_parameters(params)
        losses = self.loss(self.outputs(weight, bias, slice(None)), self.targets)
        return losses.mean() + self.penalty(params)

    def smoothness(self, has_bias: bool = True) -> float:
        """L = max_i L_i, each row's loss being L_i-smooth in (W, b): curvature x |(x_i, 1)|^2."""
        squared_norms = self.features.double().pow(2).sum(dim=1) + (1.0 if has_bias else 0.0)
        return self.curvature * float(squared_norms.max())


def cross_entropy_rows(z: Tensor, y: Tensor) -> Tensor:
    """Softmax cross-entropy per row (its curvature bound in z is 1/2)."""
    return torch.nn.functional.cross_entropy(z, y, reduction="none")


def half_squared_error_rows(z: Tensor, y: Tensor) -> Tensor:
    """(1/2) |z_i - y_i|^2 per row (curvature 1): ridge regression's loss."""
    return 0.5 * (z - y.reshape(z.shape)).pow(2).sum(dim=1)
