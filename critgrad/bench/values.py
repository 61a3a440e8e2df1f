"""Checks of configuration values: plain JSON-able values, numbers in ranges, lists, tables.

Everything a sweep file, a ``--set``/``--override`` or a Python caller gives the harness ends in a
record's JSON and in the hash that names it, so it is checked once, at load time, by these helpers:

* :func:`plain` turns numpy scalars into the Python numbers they stand for (``np.int64(5)`` is 5,
  ``np.float32(0.7)`` is 0.7 as written, not 0.699999988) and refuses what JSON cannot hold
  faithfully: NaN and infinities (JSON has no such numbers; they would be stored as null), and
  objects that are not numbers, strings, booleans, None, lists or tables.
* the other checkers take a name (the key as the user wrote it), a value and what is allowed, and
  raise :class:`ConfigError` with one line: ``lrs = 0.1: expected a non-empty list of numbers >
  0``.

Booleans are never numbers here (``True`` is an ``int`` in Python, but ``epochs = true`` is a
mistake, not 1 epoch).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key, the value and what is
    allowed, on one line."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(name: str, value: Any, allowed: str) -> ConfigError:
    """The error for ``name = value`` where ``allowed`` says what would do."""
    return ConfigError(f"{name} = {_shown(value)}: expected {allowed}")


def is_integer(value: Any) -> bool:
    return (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and not _is_bool(value)
    )


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not _is_bool(value)


def _is_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_"  # numpy.bool_, without importing numpy


def plain(value: Any, name: str = "value") -> Any:
    """``value`` with numpy scalars as Python numbers, checked to be JSON-faithful (see the module
    docstring). Tuples stay tuples (``betas``), mappings become dicts with string keys."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if _is_bool(value):
        return bool(value)
    if is_integer(value):
        return int(value)
    if is_number(value):
        if type(value).__module__ == "numpy" and getattr(value, "dtype", None) is not None:
            # The shortest decimal that the value's own precision reads back: np.float32(0.7) is
            # 0.7, not 0.699999988079071.
            number = float(str(value)) if math.isfinite(float(value)) else float(value)
        else:
            number = float(value)
        if not math.isfinite(number):
            raise fail(name, value, "a finite number (JSON has no NaN or infinity)")
        return number
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise fail(name, value, "a table with string keys")
            result[key] = plain(item, f"{name}.{key}")
        return result
    if isinstance(value, (list, tuple)):
        items = [plain(item, f"{name}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise fail(
        name,
        value,
        f"a number, string, boolean, null, list or table, not a {type(value).__name__}",
    )


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    if not is_integer(value) or (minimum is not None and value < minimum):
        raise fail(name, value, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return int(value)


def number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> float:
    """A finite number, optionally ``> above``, ``>= at_least`` and ``<= at_most``."""
    words = " and ".join(
        text
        for text, bound in (
            (f"> {above}", above),
            (f">= {at_least}", at_least),
            (f"<= {at_most}", at_most),
        )
        if bound is not None
    )
    allowed = "a finite number" + (f" {words}" if words else "")
    if not is_number(value) or not math.isfinite(value):
        raise fail(name, value, allowed)
    if (
        (above is not None and not value > above)
        or (at_least is not None and not value >= at_least)
        or (at_most is not None and not value <= at_most)
    ):
        raise fail(name, value, allowed)
    return plain(value, name)


def string(name: str, value: Any, choices: Sequence[str] | None = None) -> str:
    if not isinstance(value, str) or (choices is not None and value not in choices):
        raise fail(name, value, f"one of {list(choices)}" if choices is not None else "a string")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool) and not _is_bool(value):
        raise fail(name, value, "true or false")
    return bool(value)


def path(name: str, value: Any, optional: bool = False) -> str | None:
    """A folder or file name: a non-empty string (None too when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise fail(
            name, value, "a folder name (a non-empty string)" + (" or null" if optional else "")
        )
    return value


def table(name: str, value: Any) -> dict[str, Any]:
    """A mapping (TOML table, YAML mapping, dict); None or missing is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(name, value, "a table (key = value pairs)")
    return dict(value)


def listing(name: str, value: Any, allowed: str, non_empty: bool = True) -> list[Any]:
    """A list (or tuple, or 1-D numpy array); ``allowed`` describes its items for the message."""
    if getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or (non_empty and not value):
        raise fail(name, value, f"a {'non-empty ' if non_empty else ''}list of {allowed}")
    return list(value)


def integers(name: str, value: Any, minimum: int | None = None, unique: bool = True) -> list[int]:
    words = "integers" + (f" >= {minimum}" if minimum is not None else "")
    items = listing(name, value, words)
    if not all(is_integer(v) and (minimum is None or v >= minimum) for v in items):
        raise fail(name, value, f"a non-empty list of {words}")
    items = [int(v) for v in items]
    if unique and len(set(items)) != len(items):
        raise ConfigError(f"{name} has duplicates: {items}")
    return items


def numbers_list(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> list[float]:
    words = " and ".join(
        text
        for text, bound in (
            (f"> {above}", above),
            (f">= {at_least}", at_least),
            (f"<= {at_most}", at_most),
        )
        if bound is not None
    )
    allowed = "finite numbers" + (f" {words}" if words else "")
    items = listing(name, value, allowed)
    try:
        return [number(name, v, above=above, at_least=at_least, at_most=at_most) for v in items]
    except ConfigError:
        raise fail(name, value, f"a non-empty list of {allowed}") from None


def strings(name: str, value: Any) -> list[str]:
    items = listing(name, value, "names")
    if not all(isinstance(v, str) and v for v in items):
        raise fail(name, value, "a non-empty list of names (strings)")
    return items
