"""What a benchmark problem is: the contract between problems, the runner and the report.

A *problem* is a named recipe (data, model, loss, metric, batch size, epochs) with two sizes: ``cpu``
(the default, minutes on a laptop CPU) and ``full`` (the paper's setting). ``ProblemSpec.build``
turns a recipe into a ready-to-train :class:`Task` for one seed.

Every setting a problem takes is declared with what it accepts (a :class:`Setting`: integer or
number, its range, whether None is allowed and what it means), in the problem's own module.
``ProblemSpec.settings`` checks a size's settings with the user's overrides against those
declarations before anything is loaded or trained: an unknown name, a value of the wrong type or out
of range is one :class:`~critgrad.bench.values.ConfigError` naming the problem, the key, the value
and what is allowed. Settings a problem does not declare fall back to :data:`COMMON_SETTINGS` by
name, then to the type of their default value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from critgrad.bench import values

Batch = Any
"""Whatever the task's loaders yield; only the task's own ``loss`` and ``evaluate`` look inside."""


class DataUnavailable(RuntimeError):
    """A data set is not on this machine. The message names the files expected and where."""


class CorruptData(ValueError):
    """A data file is there but is not what it should be (empty, truncated, not the format, wrong
    shapes or labels, a checksum that differs from the official release's). The message names the
    file and what is wrong, on one line."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one problem setting accepts.

    ``kind``: "integer", "number", "string", "boolean" or "any" (a plain value of any kind).
    ``minimum`` / ``maximum`` bound numbers (``open_minimum`` / ``open_maximum`` exclude the bound).
    ``none``: None is allowed, and these words say what it means ("no clipping", "all of them").
    ``rule``: an extra test of the value and the words that describe it ("6n+2 for some n >= 1").
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    open_maximum: bool = False
    none: str | None = None
    choices: tuple[Any, ...] | None = None
    rule: tuple[Callable[[Any], bool], str] | None = None

    def allowed(self) -> str:
        """The accepted values in words."""
        nouns = {
            "integer": "an integer",
            "number": "a finite number",
            "string": "a string",
            "boolean": "true or false",
            "any": "a number, string, boolean, list or table",
        }
        words = nouns[self.kind]
        if self.choices is not None:
            words = f"one of {list(self.choices)}"
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.open_minimum else '>='} {self.minimum}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.open_maximum else '<='} {self.maximum}")
        if bounds:
            words += " " + " and ".join(bounds)
        if self.rule is not None:
            words += f", {self.rule[1]}"
        if self.none is not None:
            words += f", or none ({self.none})"
        return words

    def check(self, name: str, value: Any) -> Any:
        """``value`` as a plain Python value; ConfigError when it is not allowed."""
        if value is None:
            if self.none is None:
                raise values.fail(name, value, self.allowed())
            return None
        try:
            value = values.plain(value, name)
        except values.ConfigError:  # NaN, infinity, an object: say what the setting accepts
            raise values.fail(name, value, self.allowed()) from None
        ok = {
            "integer": values.is_integer,
            "number": lambda v: values.is_number(v) and math.isfinite(v),
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "any": lambda v: True,
        }[self.kind](value)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.open_minimum else value >= self.minimum
        if ok and self.maximum is not None:
            ok = value < self.maximum if self.open_maximum else value <= self.maximum
        if ok and self.rule is not None:
            ok = bool(self.rule[0](value))
        if not ok:
            raise values.fail(name, value, self.allowed())
        return value


def integer(minimum: int | None = 1, none: str | None = None, **more: Any) -> Setting:
    """An integer setting, ``>= minimum`` (1 unless told)."""
    return Setting("integer", minimum=minimum, none=none, **more)


def number(minimum: float | None = None, none: str | None = None, **more: Any) -> Setting:
    """A finite number setting, ``>= minimum`` (``> minimum`` with ``open_minimum=True``)."""
    return Setting("number", minimum=minimum, none=none, **more)


# Settings many problems share, by name; a problem's own declaration wins.
COMMON_SETTINGS: dict[str, Setting] = {
    "epochs": integer(1),
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "train_size": integer(1),
    "valid_size": integer(1),
    "test_size": integer(1),
    "grad_clip": number(0, open_minimum=True, none="no clipping"),
}


def _from_default(default: Any) -> Setting:
    """The declaration of an undeclared setting: the kind of its default value."""
    if isinstance(default, bool):
        return Setting("boolean")
    if isinstance(default, int):
        return Setting("integer")
    if isinstance(default, float):
        return Setting("number")
    if isinstance(default, str):
        return Setting("string")
    return Setting("any", none="as the problem's default")


@dataclasses.dataclass
class Task:
    """One problem, built for one seed: everything the runner needs to train and score."""

    model: nn.Module
    # A callable returning a fresh iterable over the training batches for one epoch; the runner
    # passes a torch.Generator so that the shuffle order is a function of the seed.
    train_batches: Callable[[torch.Generator], Iterable[Batch]]
    # Mean loss of the model on one batch (the runner calls backward on it).
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    # Scores the model on a split ("valid" or "test"): returns {"loss": float, "metric": float}.
    evaluate: Callable[[nn.Module, str], Mapping[str, float]]
    metric: str  # e.g. "accuracy", "perplexity", "train_loss"
    higher_is_better: bool
    epochs: int
    grad_clip: float | None = None  # max L2 norm of all gradients, None for no clipping
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # sizes, for the record
    # The objective as a sum over training rows, for per-row methods (SAGA): a
    # critgrad.bench.finite_sum.LinearFiniteSum, or None where the problem has none.
    finite_sum: Any = None


@dataclasses.dataclass(frozen=True)
class ProblemSpec:
    """A named problem. ``sizes`` maps "cpu"/"full" to settings passed to ``builder``."""

    name: str
    description: str
    dataset: str  # the data set's name as :func:`critgrad.bench.data` knows it
    metric: str
    higher_is_better: bool
    sizes: Mapping[str, Mapping[str, Any]]
    builder: Callable[..., Task]  # builder(settings: dict, seed: int, data_dir: str | None) -> Task
    # What each setting accepts (see Setting); undeclared ones: COMMON_SETTINGS, then the default's
    # kind.
    schema: Mapping[str, Setting] = dataclasses.field(default_factory=dict)

    def declaration(self, key: str, default: Any = None) -> Setting:
        """What setting ``key`` accepts."""
        if key in self.schema:
            return self.schema[key]
        if key in COMMON_SETTINGS:
            declared = COMMON_SETTINGS[key]
            if default is None and declared.none is None:  # a size where None means "all"
                return dataclasses.replace(declared, none="as the problem's default")
            return declared
        return _from_default(default)

    def settings(
        self, size: str = "cpu", overrides: Mapping[str, Any] | None = None, *, strict: bool = True
    ) -> dict:
        """The settings of ``size`` with ``overrides``, each checked against its declaration
        (ConfigError names the problem, the key, the value and what is allowed). An override that
        is not a setting of the problem is an error, or with ``strict=False`` passed on unchecked
        (one sweep's overrides may serve several problems)."""
        if size not in self.sizes:
            raise values.ConfigError(f"size must be one of {sorted(self.sizes)}, got {size!r}")
        defaults = self.sizes[size]
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(defaults))
        if unknown and strict:  # a typo would otherwise be ignored silently
            raise values.ConfigError(
                f"unknown setting(s) {unknown} for problem {self.name}; its settings: "
                f"{', '.join(sorted(defaults))}"
            )
        checked = {}
        for key, default in defaults.items():
            value = overrides.get(key, default)
            try:
                checked[key] = self.declaration(key, default).check(key, value)
            except values.ConfigError as error:
                raise values.ConfigError(f"problem {self.name}: {error}") from None
        return {**{key: overrides[key] for key in unknown}, **checked}

    def build(
        self,
        size: str = "cpu",
        seed: int = 0,
        data_dir: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Task:
        # Not strict: a sweep's preflight refuses unknown settings; direct callers may pass extra
        # keys that the builder ignores, as they always could.
        return self.builder(self.settings(size, overrides, strict=False), seed, data_dir)
