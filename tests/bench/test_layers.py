"""The harness's modules import only downward, layer by layer (every import, also inside functions).

A module may import modules of its own layer and of the layers below it, never above: the report
does not know the sweep that made its records, the plots do not know the report's files, the
optimizer core does not know the harness. A new module is placed in :data:`LAYERS` (the test says
so when one is missing); a new study goes under ``critgrad/bench/studies/``, already placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from benchtools import REPO

PACKAGE = REPO / "critgrad"
HARNESS = PACKAGE / "bench"

# Bottom to top. Names are the first component below critgrad.bench (a package counts as one).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("core", frozenset()),  # critgrad.* outside critgrad.bench: the optimizers
    # What a problem, a task, a run and its record are; plain-value checks.
    ("contract", frozenset({"", "values", "contract", "record_format", "finite_sum"})),
    # The harness's optimizer table, and the optimizer it adds (SAGA).
    ("optimizers", frozenset({"optimizer_labels", "saga"})),
    ("data", frozenset({"datasets"})),
    ("problems", frozenset({"problems", "dialogue_metrics", "catalog"})),
    ("runner", frozenset({"runner", "sinks", "data_parallel"})),
    ("records", frozenset({"records", "claims"})),
    # What to run, how a configuration is selected and scored, the plan on disk.
    ("selection", frozenset({"protocols", "scoring", "selection", "manifest"})),
    ("report", frozenset({"report"})),
    ("plots", frozenset({"plots", "report_files"})),
    ("sweeps", frozenset({"executors", "preflight", "sweep", "sweep_file", "main_job"})),
    ("studies", frozenset({"studies"})),
    ("cli", frozenset({"cli"})),
)
RANK = {layer: rank for rank, (layer, _) in enumerate(LAYERS)}
LAYER_OF = {name: layer for layer, names in LAYERS for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(name: str, source: str, is_package: bool = False) -> set[str]:
    """The critgrad modules that ``source`` (module ``name``) imports, wherever the import is."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # `from package import module` imports the module
                dotted = f"{base}.{alias.name}"
                found.add(dotted if _is_module(dotted) else base)
    return {module for module in found if module.split(".")[0] == "critgrad"}


def layer(module: str) -> str | None:
    """The layer of a critgrad module; None for a harness module that no layer holds."""
    if module != "critgrad.bench" and not module.startswith("critgrad.bench."):
        return "core"
    return LAYER_OF.get(module.removeprefix("critgrad.bench").removeprefix(".").split(".")[0])


def violations(name: str, source: str, is_package: bool = False) -> list[str]:
    """Each import of ``source`` that goes up a layer, in words."""
    own = layer(name)
    return [
        f"{name} ({own}) imports {target} ({layer(target)})"
        for target in sorted(imported_modules(name, source, is_package))
        if layer(target) is not None and RANK[layer(target)] > RANK[own]
    ]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_harness_module_has_a_layer():
    unplaced = [
        module_name(path) for path in HARNESS.rglob("*.py") if layer(module_name(path)) is None
    ]
    assert not unplaced, f"place these modules in LAYERS of {Path(__file__).name}: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_imports_go_only_downward(path):
    name = module_name(path)
    assert not violations(name, path.read_text(), path.name == "__init__.py")


@pytest.mark.parametrize(
    "name, source, expected",
    [
        (  # the report may not ask the sweep, even lazily
            "critgrad.bench.report",
            "def f():\n    from critgrad.bench import sweep\n",
            ["critgrad.bench.report (report) imports critgrad.bench.sweep (sweeps)"],
        ),
        (
            "critgrad.bench.runner",
            "from critgrad.bench.records import write_record\n",
            ["critgrad.bench.runner (runner) imports critgrad.bench.records (records)"],
        ),
        (
            "critgrad.registry",
            "import critgrad.bench.optimizer_labels\n",
            ["critgrad.registry (core) imports critgrad.bench.optimizer_labels (optimizers)"],
        ),
        (
            "critgrad.bench.problems.mnist",
            "from .. import runner\nfrom . import register\n",
            ["critgrad.bench.problems.mnist (problems) imports critgrad.bench.runner (runner)"],
        ),
        ("critgrad.bench.plots", "from critgrad.bench import report, scoring\n", []),
        ("critgrad.bench.cli", "from critgrad.bench.sweep import run_sweep\n", []),
    ],
)
def test_the_check_sees_an_upward_import(name, source, expected):
    assert violations(name, source) == expected
