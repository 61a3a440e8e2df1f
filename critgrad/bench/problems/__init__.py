"""The registry of benchmark problems, by name (``critgrad list`` shows them).

Each problem is a function named after it that builds its :class:`~critgrad.bench.contract.Task`
(``def mnist_mlp(settings, seed, data_dir) -> Task``), registered right below it in its family's
module with ``register(ProblemSpec(name="mnist-mlp", builder=mnist_mlp, ...))``. A new problem is
those two things in a family module; a new family is a module here whose name is added to
``_MODULES``. The modules are imported in order on first use of the registry; one that does not
exist is skipped, so the registry works while problem families are added, but an error inside an
existing module surfaces.
"""

from __future__ import annotations

import importlib

from critgrad.bench.contract import ProblemSpec

_MODULES = ("mnist", "vision", "language", "snli", "convex", "multiwoz")  # problem families

_REGISTRY: dict[str, ProblemSpec] = {}
_loaded = False


class UnknownProblem(KeyError):
    """A problem name that no module registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register(spec: ProblemSpec) -> ProblemSpec:
    """Add ``spec`` to the registry; a second problem with the same name is an error."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"problem {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


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


def list_problems() -> list[ProblemSpec]:
    """Every registered problem, sorted by name."""
    _load_modules()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_problem(name: str) -> ProblemSpec:
    """The problem called ``name``; :class:`UnknownProblem` lists the known names otherwise."""
    _load_modules()
    if name not in _REGISTRY:
        raise UnknownProblem(f"unknown problem {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
