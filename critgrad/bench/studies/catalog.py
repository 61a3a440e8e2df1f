"""Every study, by name. Each module imported here registers its study when imported."""

from __future__ import annotations

import critgrad.bench.studies.ablation  # noqa: F401  (registers)
from critgrad.bench.studies import convex, label_noise, surfaces, tuned  # noqa: F401 (register)
from critgrad.bench.studies.contract import Study, UnknownStudy, registered


def list_studies() -> list[Study]:
    """Every study, sorted by name."""
    studies = registered()
    return [studies[name] for name in sorted(studies)]


def get_study(name: str) -> Study:
    """The study called ``name``; :class:`UnknownStudy` lists the known names otherwise."""
    studies = registered()
    if name not in studies:
        raise UnknownStudy(f"unknown study {name!r}; known: {', '.join(sorted(studies))}")
    return studies[name]
