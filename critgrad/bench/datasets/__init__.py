"""Data sets of the benchmark: where each is found on this machine, by name.

Each loader module registers a *locator* for the data sets it reads: ``locator(data_dir)`` returns
a short description of where the files are, or raises
:class:`~critgrad.bench.contract.DataUnavailable` naming the files expected and the folders
searched. A loader may also register a *verifier*: ``verify(data_dir)`` reads what is cheap to read
(whole files for the image sets, the first lines of multi-gigabyte text files) and raises
:class:`~critgrad.bench.contract.CorruptData` naming the bad file. ``critgrad list`` shows each
problem's data status with :func:`verify` ("ok", "missing", "corrupt"), and a sweep's preflight
verifies the data of its problems once, before the first run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# Loader modules of this package, imported in this order on first use. A module that is not there
# (yet) is skipped; an error inside one that is there surfaces.
_MODULES = ("mnist", "cifar", "text", "snli", "svmlight", "multiwoz")

Locator = Callable[..., str]
_LOCATORS: dict[str, Locator] = {}
_VERIFIERS: dict[str, Callable[..., object]] = {}
_loaded = False


def register_locator(
    name: str, locator: Locator, verify: Callable[..., object] | None = None
) -> None:
    """Make ``locate(name, data_dir)`` call ``locator(data_dir)``, and ``verify(name, data_dir)``
    call ``verify(data_dir)`` when given."""
    _LOCATORS[name] = locator
    if verify is not None:
        _VERIFIERS[name] = verify


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    for module in _MODULES:
        qualified = f"{__name__}.{module}"
        try:
            importlib.import_module(qualified)
        except ModuleNotFoundError as error:
            if error.name != qualified:  # a dependency missing inside an existing module
                raise
    _loaded = True


def known_datasets() -> list[str]:
    """Names of the data sets some loader can locate."""
    _load_modules()
    return sorted(_LOCATORS)


def locate(name: str, data_dir: str | None = None) -> str:
    """Where data set ``name`` is; DataUnavailable when it is missing, KeyError if unknown."""
    _load_modules()
    if name not in _LOCATORS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(_LOCATORS))}")
    return _LOCATORS[name](data_dir)


def verify(name: str, data_dir: str | None = None) -> str:
    """Where data set ``name`` is, after checking its files (where a verifier is registered):
    DataUnavailable when missing, CorruptData naming a bad file, KeyError if unknown."""
    where = locate(name, data_dir)
    if name in _VERIFIERS:
        _VERIFIERS[name](data_dir)
    return where
