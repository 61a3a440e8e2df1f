"""Shared look of the studies' figures: matplotlib's Agg back end, one colour per optimizer pair,
solid lines for the vanilla optimizer and dashed for its twin with the memory."""

from __future__ import annotations

from pathlib import Path

from critgrad.bench.studies import optimizers

DPI = 100


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colour(label: str) -> str:
    """The pair's colour (vanilla and twin share it)."""
    base, _ = optimizers.split_label(label)
    return f"C{list(optimizers.BASES).index(base)}"


def line_style(label: str) -> str:
    return "--" if optimizers.split_label(label)[1] else "-"


def save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    pyplot().close(figure)
    return path
