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


def log_if_wide(axis, values, ratio: float = 10.0) -> None:
    """A log y scale with plain-number labels when the finite positive ``values`` span more than
    ``ratio`` (a decade by default); else the linear scale stays."""
    finite = [v for v in values if v is not None and v > 0]
    if finite and max(finite) / min(finite) > ratio:
        from matplotlib.ticker import FormatStrFormatter

        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(FormatStrFormatter("%g"))


def save(figure, path: Path) -> Path:
    """Write ``figure`` as a PNG with a 256-colour palette: a few times smaller than full colour,
    and line plots do not use more colours than that."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png")
    pyplot().close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        paletted = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    temporary = path.with_name(f".{path.name}.tmp")
    paletted.save(temporary, format="PNG", optimize=True)
    temporary.replace(path)
    return path
