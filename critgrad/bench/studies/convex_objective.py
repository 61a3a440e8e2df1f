r"""The strongly convex objective of the ``convex`` study, its constants and its minimum.

L2-regularised multinomial logistic regression over n rows :math:`x_i \in \mathbb{R}^d` with
labels :math:`y_i \in \{1..K\}` and parameters :math:`\theta = (W, b)`:

.. math::
    f(\theta) = \frac{1}{n}\sum_i \mathrm{CE}(W x_i + b,\ y_i)
                + \frac{\lambda}{2}\left(\lVert W\rVert^2 + \lVert b\rVert^2\right).

Constants (``tilde x = (x, 1)``, :math:`\tilde X` the n x (d + 1) matrix of rows):

* **mu = lambda exactly.** The cross-entropy part is convex and its Hessian
  :math:`\frac1n\sum_i (\mathrm{diag}(p_i) - p_i p_i^\top) \otimes \tilde x_i \tilde x_i^\top` is
  zero along :math:`(v, v, \dots, v)` (the same vector added to every class's row: softmax does
  not change), so the smallest eigenvalue of the Hessian is lambda at every point.
* **L <= lambda + lambda_max(X~^T X~ / n) / 2**, because
  :math:`\lVert \mathrm{diag}(p) - p p^\top \rVert_2 \le 1/2` (:func:`smoothness_bound`).
  :func:`largest_hessian_eigenvalue` measures the local curvature at a point (power iteration on
  Hessian-vector products), which is smaller.

:func:`minimise` finds f* in float64 with L-BFGS (strong-Wolfe line search), then, once the line
search can no longer see f decrease (float64 resolves f only to about 1e-16 x f), with unit steps
of L-BFGS, which need gradients only, until the gradient norm is below the tolerance. Strong
convexity certifies :math:`f(\hat\theta) - f^* \le \lVert\nabla f(\hat\theta)\rVert^2 / (2\mu)`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.nn import functional as F


@dataclasses.dataclass(frozen=True)
class Objective:
    """f over float64 rows ``features`` (n, d) and class indices ``labels`` (n,)."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: int
    l2: float

    def __post_init__(self) -> None:
        if self.features.dtype != torch.float64:
            raise ValueError(f"features must be float64, got {self.features.dtype}")
        if not self.l2 > 0:
            raise ValueError(f"Invalid l2: {self.l2!r} (must be > 0: the study needs mu > 0)")

    def value(self, weight: torch.Tensor, bias: torch.Tensor, rows=slice(None)) -> torch.Tensor:
        """f on the chosen rows (all by default: the objective itself)."""
        logits = self.features[rows] @ weight.T + bias
        penalty = 0.5 * self.l2 * (weight.pow(2).sum() + bias.pow(2).sum())
        return F.cross_entropy(logits, self.labels[rows]) + penalty

    def gradient_norm(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        w, b = weight.detach().requires_grad_(True), bias.detach().requires_grad_(True)
        grads = torch.autograd.grad(self.value(w, b), (w, b))
        return float(torch.cat([g.flatten() for g in grads]).norm())


def smoothness_bound(features: torch.Tensor, l2: float) -> float:
    """L <= lambda + lambda_max(X~^T X~ / n) / 2, X~ the rows with a column of ones."""
    rows = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    gram = rows.T @ rows / len(rows)
    return l2 + 0.5 * float(torch.linalg.eigvalsh(gram)[-1])


def largest_hessian_eigenvalue(
    objective: Objective, weight: torch.Tensor, bias: torch.Tensor, iterations: int = 100
) -> float:
    """The Hessian's largest eigenvalue at (weight, bias), by power iteration (a lower bound on L
    that is close after enough iterations)."""
    w, b = weight.detach().requires_grad_(True), bias.detach().requires_grad_(True)
    gw, gb = torch.autograd.grad(objective.value(w, b), (w, b), create_graph=True)
    generator = torch.Generator().manual_seed(0)
    vw = torch.randn(w.shape, generator=generator, dtype=w.dtype)
    vb = torch.randn(b.shape, generator=generator, dtype=b.dtype)
    estimate = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(vw.pow(2).sum() + vb.pow(2).sum())
        vw, vb = vw / norm, vb / norm
        hw, hb = torch.autograd.grad((gw * vw).sum() + (gb * vb).sum(), (w, b), retain_graph=True)
        estimate = float((hw * vw).sum() + (hb * vb).sum())
        vw, vb = hw.detach(), hb.detach()
    return estimate


@dataclasses.dataclass(frozen=True)
class Minimum:
    weight: torch.Tensor
    bias: torch.Tensor
    value: float
    gradient_norm: float
    iterations: int


def minimise(objective: Objective, tolerance: float = 1e-10, max_iterations: int = 20_000):
    """f* by L-BFGS in float64 (see the module docstring); raises if ``tolerance`` is not met."""
    d = objective.features.shape[1]
    weight = torch.zeros(objective.classes, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(objective.classes, dtype=torch.float64, requires_grad=True)
    iterations, norm = 0, math.inf
    for line_search in ("strong_wolfe", None):
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=50,
            history_size=50,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            line_search_fn=line_search,
        )

        def closure(optimizer=optimizer):
            optimizer.zero_grad()
            loss = objective.value(weight, bias)
            loss.backward()
            return loss

        previous = float("inf")
        while iterations < max_iterations:
            optimizer.step(closure)
            iterations += 50
            norm = objective.gradient_norm(weight, bias)
            if norm <= tolerance:
                break
            if line_search and norm >= previous:  # the line search has stalled
                break
            previous = norm
        if norm <= tolerance:
            break
    if not norm <= tolerance:
        raise RuntimeError(
            f"L-BFGS reached a gradient norm of {norm:.3g} after {iterations} iterations, "
            f"not the {tolerance:g} asked for"
        )
    with torch.no_grad():
        value = float(objective.value(weight, bias))
    return Minimum(weight.detach(), bias.detach(), value, norm, iterations)
