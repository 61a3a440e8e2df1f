"""Figures of the ``surfaces`` study.

* ``surfaces-<surface>.png``: one column per optimizer pair; row 1 the full-gradient trajectories
  and row 2 the noisy-gradient trajectories of the first seed, both on contour lines of
  f - f* at log-spaced levels; row 3 f - f* per step on a log scale (full gradient: thick lines;
  noisy: median over seeds, band from the smallest to the largest seed).
* ``surfaces-lr-scan.png``: f - f* after the last step against the learning rate (full gradient),
  one panel per surface and pair; diverged runs drawn as crosses on the top edge.

Vanilla optimizers are solid lines, their twins with the memory dashed, a pair shares a colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.studies import optimizers, plotting
from critgrad.bench.studies.surface_formulas import Surface

FLOOR = 1e-14  # f - f* below this is rounding (f* up to 840): drawn at this value


def _contours(axis, surface: Surface, resolution: int) -> None:
    from matplotlib.colors import LogNorm

    x0, x1, y0, y1 = surface.window
    xs, ys = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    gap = np.maximum(surface.gap(xs, ys), 0.0) + 1e-3
    levels = np.logspace(np.log10(gap.min()), np.log10(gap.max()), 24)
    axis.contour(xs, ys, gap, levels=levels, norm=LogNorm(), cmap="Greys", linewidths=0.5)
    for mx, my in surface.minima:
        best = abs(surface.gap(mx, my)) < 1e-9
        axis.plot(mx, my, "*", color="gold" if best else "0.6", ms=9, mec="k", mew=0.5)
    axis.plot(*surface.start, "o", color="k", ms=4)
    axis.set_xlim(x0, x1)
    axis.set_ylim(y0, y1)
    axis.set_xlabel("x")
    axis.set_ylabel("y")


def _path(axis, result: Mapping[str, Any], label: str) -> None:
    path = np.array([[np.nan if v is None else v for v in p] for p in result["path"]], float)
    name = optimizers.display(label)
    if result["diverged"]:
        name += f" (diverged, step {result['diverged_step']})"
    axis.plot(
        path[:, 0],
        path[:, 1],
        plotting.line_style(label),
        color=plotting.colour(label),
        lw=1.2,
        label=name,
    )
    axis.plot(path[-1, 0], path[-1, 1], "x" if result["diverged"] else "s", color="k", ms=4)


def _gaps(result: Mapping[str, Any], steps: int) -> np.ndarray:
    gap = np.full(steps + 1, np.nan)
    values = np.array([np.nan if g is None else g for g in result["gap"]], float)
    # Diverging runs reach 1e300 and more, which log-axis margins cannot take: cut at 1e100.
    gap[: len(values)] = np.clip(values, FLOOR, 1e100)
    return gap


def surface_figure(
    surface: Surface,
    pairs: Sequence[str],
    learning_rates: Mapping[str, float],
    full: Mapping[tuple[str, str, float], Mapping[str, Any]],
    noisy: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
    sigma: float,
    folder: Path,
    control: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    resolution: int = 240,
) -> Path:
    """``control``: the vanilla optimizer at twice the learning rate, by (surface, label), drawn
    as a grey dotted line; ``resolution``: grid points per side of the contour plots."""
    control = control or {}
    plt = plotting.pyplot()
    figure, axes = plt.subplots(
        3,
        len(pairs),
        figsize=(max(3.7 * len(pairs), 11.0), 10.0),
        squeeze=False,
        layout="constrained",
    )
    for column, base in enumerate(pairs):
        lr = learning_rates[base]
        labels = (base, base + optimizers.MEMORY_SUFFIX)
        top, middle, bottom = axes[0][column], axes[1][column], axes[2][column]
        _contours(top, surface, resolution)
        _contours(middle, surface, resolution)
        first_gaps = []
        for label in labels:
            _path(top, full[(surface.name, label, lr)], label)
            runs = noisy.get((surface.name, label), [])
            if runs:
                _path(middle, runs[0], label)
            steps = len(full[(surface.name, label, lr)]["path"]) - 1
            steps = max([steps] + [len(r["path"]) - 1 for r in runs])
            x = np.arange(steps + 1)
            first_gaps.append(_gaps(full[(surface.name, label, lr)], steps)[0])
            style, colour = plotting.line_style(label), plotting.colour(label)
            bottom.plot(
                x,
                _gaps(full[(surface.name, label, lr)], steps),
                style,
                color=colour,
                lw=1.8,
                label=f"{optimizers.display(label)}, full",
            )
            if runs:
                stack = np.array([_gaps(r, steps) for r in runs])
                with np.errstate(all="ignore"):
                    median = np.nanmedian(stack, axis=0)
                    low, high = np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
                bottom.plot(
                    x,
                    median,
                    style,
                    color=colour,
                    lw=0.8,
                    alpha=0.8,
                    label=f"{optimizers.display(label)}, noisy (median of {len(runs)})",
                )
                bottom.fill_between(x, low, high, color=colour, alpha=0.12, lw=0)
        doubled = control.get((surface.name, base))
        if doubled is not None:
            path = np.array([[np.nan if v is None else v for v in p] for p in doubled["path"]])
            name = f"{optimizers.DISPLAY[base]}, 2 × lr (control)"
            top.plot(path[:, 0], path[:, 1], ":", color="0.35", lw=1.2, label=name)
            steps = len(doubled["path"]) - 1
            bottom.plot(
                np.arange(steps + 1), _gaps(doubled, steps), ":", color="0.35", lw=1.2, label=name
            )
        title = f"{optimizers.DISPLAY[base]} vs {optimizers.display(labels[1])}, lr {lr:g}"
        top.set_title(f"{title}\nfull gradient", fontsize=9)
        middle.set_title(f"noisy gradient (σ = {sigma:g}), first seed", fontsize=9)
        top.legend(fontsize=7, loc="best")
        bottom.set_yscale("log")
        # A diverging run would stretch the axis over hundreds of decades: cut above the start.
        bottom.set_ylim(FLOOR / 3, 30 * max(first_gaps))
        bottom.set_xlabel("step")
        bottom.set_ylabel("f(x_t) − f*")
        bottom.set_title("loss per step", fontsize=9)
        bottom.legend(fontsize=6.5, loc="best")
    figure.suptitle(
        f"{surface.title} from {surface.start}: trajectories and loss per step\n"
        "contours of f − f* at log-spaced levels; ★ minima (gold: global), ● start, ■ end, "
        "× diverged",
        fontsize=11,
    )
    return plotting.save(figure, folder / f"surfaces-{surface.name}.png")


def lr_scan_figure(
    surfaces: Mapping[str, Surface],
    pairs: Sequence[str],
    learning_rates: Mapping[str, Mapping[str, float]],
    full: Mapping[tuple[str, str, float], Mapping[str, Any]],
    folder: Path,
) -> Path:
    plt = plotting.pyplot()
    figure, axes = plt.subplots(
        len(surfaces),
        len(pairs),
        figsize=(max(3.2 * len(pairs), 8.0), 2.6 * len(surfaces) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for row, (name, surface) in enumerate(surfaces.items()):
        for column, base in enumerate(pairs):
            axis = axes[row][column]
            finite_gaps = []
            for label in (base, base + optimizers.MEMORY_SUFFIX):
                lrs = sorted(lr for s, o, lr in full if s == name and o == label)
                gaps = [full[(name, label, lr)] for lr in lrs]
                values = [np.nan if r["diverged"] else max(r["end"]["gap"], FLOOR) for r in gaps]
                finite_gaps += [v for v in values if np.isfinite(v)]
                axis.plot(
                    lrs,
                    values,
                    plotting.line_style(label) + "o",
                    color=plotting.colour(label),
                    ms=3,
                    label=optimizers.display(label),
                )
                diverged = [lr for lr, r in zip(lrs, gaps) if r["diverged"]]
                for marker in axis.plot(
                    diverged,
                    [1.0] * len(diverged),
                    "x",
                    color=plotting.colour(label),
                    transform=axis.get_xaxis_transform(),
                    clip_on=False,
                    ms=7 if label == base else 5,
                ):
                    marker.set_in_layout(False)  # on the edge: not part of the data's extent
            axis.axvline(learning_rates[name][base], color="0.6", ls=":", lw=1)
            axis.set_xscale("log")
            if finite_gaps:
                axis.set_yscale("log")
                axis.set_ylim(FLOOR / 3, max(30 * max(finite_gaps), 1.0))
            axis.set_title(f"{surface.title}: {optimizers.DISPLAY[base]}", fontsize=9)
            if row == len(surfaces) - 1:
                axis.set_xlabel("learning rate")
            if column == 0:
                axis.set_ylabel("final f − f*")
            if row == 0:
                axis.legend(fontsize=7)
    figure.suptitle(
        "Full-gradient learning-rate scan: f − f* after the last step\n"
        "× on the top edge: diverged; dotted line: the pair's learning rate",
        fontsize=10,
    )
    return plotting.save(figure, folder / "surfaces-lr-scan.png")
