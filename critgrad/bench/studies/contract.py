"""What a study is, and the registry of studies by name.

A study module defines one function named after the study that returns a :class:`Study`, and
registers it explicitly::

    @register
    def surfaces() -> Study:
        return Study(name="surfaces", description=..., default_seeds=(0, 1, 2, 3, 4),
                     plan=..., run_unit=..., summarize=..., figures=...)

``plan(options)`` lists the units for the chosen size (``options.quick``) and seeds; each
:class:`Unit` is a JSON-able configuration and a readable name, and its id is the name followed
by a hash of the study's name and the configuration, so the same unit always has the same id and
a changed configuration never reuses an old result. ``run_unit(config, options)`` runs one unit
and returns a JSON-able result; it must depend on the configuration alone (``options`` only says
where data lives), because a finished unit is never run again. ``summarize(options, finished)``
turns the finished units into a :class:`Summary`; ``figures(options, finished, summary, folder)``
draws PNG files and returns their paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

UNIT_FORMAT = 1  # the layout of DIR/units/<id>.json; a change makes old files unreadable


@dataclasses.dataclass(frozen=True)
class Options:
    """How a study is run: its size, its seeds, and where data sets live."""

    quick: bool = False  # a tiny size for tests: seconds
    seeds: tuple[int, ...] = (0,)
    data_dir: str | None = None  # a folder of user-provided data sets (never part of a unit id)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be integers >= 0, got {list(self.seeds)}")


def canonical_json(value: Any) -> str:
    """The one JSON spelling of ``value`` (sorted keys, no spaces) that ids are hashed from."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One independent piece of work: a readable name and a JSON-able configuration."""

    study: str
    name: str  # readable, lowercase, safe in a file name, e.g. "beale-sgd_c-noisy-s3"
    config: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"unit name {self.name!r} must be lowercase letters, digits, '.', '_' or '-'"
            )
        try:
            canonical_json(dict(self.config))
        except (TypeError, ValueError) as error:
            raise ValueError(f"unit {self.name!r}: config must be plain JSON ({error})") from None

    @property
    def id(self) -> str:
        """``<name>-<10 hex digits>``: the same study and configuration always give the same id."""
        digest = hashlib.sha256(
            canonical_json({"study": self.study, "config": dict(self.config)}).encode()
        )
        return f"{self.name}-{digest.hexdigest()[:10]}"


@dataclasses.dataclass(frozen=True)
class Finished:
    """A unit and what running it returned."""

    unit: Unit
    result: Mapping[str, Any]
    seconds: float  # wall time of run_unit


@dataclasses.dataclass(frozen=True)
class Summary:
    """A study's results: a Markdown table (with its notes) and a JSON-able dict."""

    table: str
    data: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Study:
    """A named study; see the module docstring for what each function does."""

    name: str
    description: str
    default_seeds: tuple[int, ...]
    plan: Callable[[Options], list[Unit]]
    run_unit: Callable[[Mapping[str, Any], Options], dict[str, Any]]
    summarize: Callable[[Options, Sequence[Finished]], Summary]
    figures: Callable[[Options, Sequence[Finished], Summary, Path], list[Path]]

    def units(self, options: Options) -> list[Unit]:
        """The plan, checked: units of this study with distinct ids."""
        units = self.plan(options)
        ids = [unit.id for unit in units]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"study {self.name!r} plans the same unit twice: {duplicates}")
        strangers = [unit.id for unit in units if unit.study != self.name]
        if strangers:
            raise ValueError(f"study {self.name!r} plans units of another study: {strangers}")
        return units


class UnknownStudy(ValueError):
    """A study name that no module registered."""


_REGISTRY: dict[str, Study] = {}


def register(factory: Callable[[], Study]) -> Callable[[], Study]:
    """Register the study that ``factory`` returns; its name must be the factory's name.

    Used as a decorator on ``def NAME() -> Study`` (``-`` in the study's name is ``_`` in the
    function's). A second study with the same name is an error.
    """
    study = factory()
    if not isinstance(study, Study):
        raise TypeError(f"{factory.__name__}() must return a Study, got {type(study).__name__}")
    if study.name.replace("-", "_") != factory.__name__:
        raise ValueError(
            f"study {study.name!r} is defined by a function named {factory.__name__!r}; "
            "name the function after the study"
        )
    if study.name in _REGISTRY and _REGISTRY[study.name] != study:
        raise ValueError(f"study {study.name!r} is registered twice")
    _REGISTRY[study.name] = study
    return factory


def registered() -> dict[str, Study]:
    """The studies registered so far, by name (import :mod:`.catalog` to have them all)."""
    return dict(_REGISTRY)
