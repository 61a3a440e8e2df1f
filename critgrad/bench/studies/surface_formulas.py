r"""Four two-dimensional test functions, their gradients by hand, their minima and starting points.

Every function works elementwise on floats, numpy arrays and torch tensors (only ``+ - * /`` and
integer powers), so the same formula draws the contour plots and drives the optimizers.

* Beale: :math:`(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2`;
  global minimum f(3, 0.5) = 0.
* Goldstein-Price:
  :math:`[1 + (x + y + 1)^2 (19 - 14x + 3x^2 - 14y + 6xy + 3y^2)]
  [30 + (2x - 3y)^2 (18 - 32x + 12x^2 + 48y - 36xy + 27y^2)]`;
  global minimum f(0, -1) = 3, local minima f(-0.6, -0.4) = 30, f(1.8, 0.2) = 84,
  f(1.2, 0.8) = 840.
* Six-hump camel (the standard formula):
  :math:`(4 - 2.1x^2 + x^4/3) x^2 + xy + (-4 + 4y^2) y^2`; global minima
  f(±0.0898, ∓0.7126) = -1.0316, local minima at (±1.7036, ∓0.7961) and (±1.6071, ±0.5687).
* Rosenbrock: :math:`(1 - x)^2 + 100 (y - x^2)^2`; global minimum f(1, 1) = 0.

The minima below are exact where the formula gives them exactly (Beale, Goldstein-Price,
Rosenbrock) and Newton's method to machine precision for the camel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Number = Any  # float, numpy array or torch tensor


def beale(x: Number, y: Number) -> Number:
    a = 1.5 - x + x * y
    b = 2.25 - x + x * y**2
    c = 2.625 - x + x * y**3
    return a**2 + b**2 + c**2


def beale_gradient(x: Number, y: Number) -> tuple[Number, Number]:
    a = 1.5 - x + x * y
    b = 2.25 - x + x * y**2
    c = 2.625 - x + x * y**3
    dx = 2 * a * (y - 1) + 2 * b * (y**2 - 1) + 2 * c * (y**3 - 1)
    dy = 2 * a * x + 4 * b * x * y + 6 * c * x * y**2
    return dx, dy


def goldstein_price(x: Number, y: Number) -> Number:
    u = x + y + 1
    p = 19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2
    v = 2 * x - 3 * y
    q = 18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2
    return (1 + u**2 * p) * (30 + v**2 * q)


def goldstein_price_gradient(x: Number, y: Number) -> tuple[Number, Number]:
    u = x + y + 1
    p = 19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2
    p_x = p_y = -14 + 6 * x + 6 * y  # p is symmetric in its first derivatives
    v = 2 * x - 3 * y
    q = 18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2
    q_x = -32 + 24 * x - 36 * y
    q_y = 48 - 36 * x + 54 * y
    a = 1 + u**2 * p
    b = 30 + v**2 * q
    a_x = 2 * u * p + u**2 * p_x
    a_y = 2 * u * p + u**2 * p_y
    b_x = 4 * v * q + v**2 * q_x
    b_y = -6 * v * q + v**2 * q_y
    return a_x * b + a * b_x, a_y * b + a * b_y


def six_hump_camel(x: Number, y: Number) -> Number:
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


def six_hump_camel_gradient(x: Number, y: Number) -> tuple[Number, Number]:
    return 8 * x - 8.4 * x**3 + 2 * x**5 + y, x - 8 * y + 16 * y**3


def rosenbrock(x: Number, y: Number) -> Number:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_gradient(x: Number, y: Number) -> tuple[Number, Number]:
    return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


@dataclasses.dataclass(frozen=True)
class Surface:
    """A test function with its gradient, start, minima and a window to draw it in."""

    name: str
    title: str
    function: Callable[[Number, Number], Number]
    gradient: Callable[[Number, Number], tuple[Number, Number]]
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]  # the global minimum (or minima) first
    minimum_value: float  # f at the global minimum
    window: tuple[float, float, float, float]  # x from, x to, y from, y to

    def gap(self, x: Number, y: Number) -> Number:
        """f(x, y) - f(global minimum)."""
        return self.function(x, y) - self.minimum_value


_CAMEL_GLOBAL = (0.08984201310031807, -0.7126564030207396)
_CAMEL_SECOND = (1.703606714969981, -0.7960835686726251)
_CAMEL_THIRD = (1.6071047529201974, 0.5686514548841313)

SURFACES: dict[str, Surface] = {
    "beale": Surface(
        "beale",
        "Beale",
        beale,
        beale_gradient,
        start=(0.75, 1.0),
        minima=((3.0, 0.5),),
        minimum_value=0.0,
        window=(-1.0, 4.5, -1.5, 2.0),
    ),
    "goldstein-price": Surface(
        "goldstein-price",
        "Goldstein-Price",
        goldstein_price,
        goldstein_price_gradient,
        start=(-1.0, 0.0),
        minima=((0.0, -1.0), (-0.6, -0.4), (1.8, 0.2), (1.2, 0.8)),
        minimum_value=3.0,
        window=(-2.0, 2.0, -2.0, 2.0),
    ),
    "camel": Surface(
        "camel",
        "six-hump camel",
        six_hump_camel,
        six_hump_camel_gradient,
        start=(3.0, 2.5),
        minima=(
            _CAMEL_GLOBAL,
            (-_CAMEL_GLOBAL[0], -_CAMEL_GLOBAL[1]),
            _CAMEL_SECOND,
            (-_CAMEL_SECOND[0], -_CAMEL_SECOND[1]),
            _CAMEL_THIRD,
            (-_CAMEL_THIRD[0], -_CAMEL_THIRD[1]),
        ),
        minimum_value=-1.0316284534898774,
        window=(-3.2, 3.2, -2.7, 2.7),
    ),
    "rosenbrock": Surface(
        "rosenbrock",
        "Rosenbrock",
        rosenbrock,
        rosenbrock_gradient,
        start=(-1.5, 2.0),
        minima=((1.0, 1.0),),
        minimum_value=0.0,
        window=(-2.0, 2.0, -1.0, 3.0),
    ),
}
