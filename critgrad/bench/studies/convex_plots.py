"""The figure of the ``convex`` study (``convex-gap.png``): f - f* per step on a log scale with full
batches and with minibatches (median over seeds, band from the smallest to the largest seed), and
the fitted full-batch contraction per step (1 - rate) in units of alpha * mu (gradient descent at
step alpha <= 1/L is guaranteed at least 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.studies import plotting
from critgrad.bench.studies.contract import Summary

FLOOR = 1e-15

_MEMORY_STYLES = ("-", "--", ":")
_AGGREGATION_COLOURS = {
    "sum": ("#1f5fa8", "#4f8fd0", "#8fbde8"),
    "mean": ("#c0561a", "#e8863e", "#f2b27a"),
}


def _style(variant: Mapping[str, Any], memories: list) -> tuple[str, str, float]:
    memory = variant["memory"]
    if memory is None:
        return ("k" if variant["step_times_L"] == 1.0 else "0.55"), "-", 2.0
    index = memories.index({"topC": memory["topC"], "decay": memory["decay"]})
    return _AGGREGATION_COLOURS[memory["aggr"]][index], _MEMORY_STYLES[index], 1.4


def _gaps(result: Mapping[str, Any], f_star: float) -> np.ndarray:
    values = np.array([np.nan if v is None else v - f_star for v in result["f"]], float)
    return np.maximum(values, FLOOR)


def gap_figure(
    variants: Sequence[Mapping[str, Any]],
    fstar: Mapping[str, Any],
    full: Mapping[str, Mapping[str, Any]],
    minibatch: Mapping[str, Sequence[Mapping[str, Any]]],
    summary: Summary,
    folder: Path,
) -> Path:
    plt = plotting.pyplot()
    memories = []
    for variant in variants:
        if variant["memory"] is not None:
            key = {"topC": variant["memory"]["topC"], "decay": variant["memory"]["decay"]}
            if key not in memories:
                memories.append(key)
    figure, (left, middle, right) = plt.subplots(
        1,
        3,
        figsize=(17.0, 5.4),
        gridspec_kw={"width_ratios": [1.15, 1.15, 0.9]},
        layout="constrained",
    )
    f_star = fstar["f_star"]
    for variant in variants:
        colour, style, width = _style(variant, memories)
        name = variant["name"]
        run = full[name]
        label = name + (f" (diverged, step {run['diverged_step']})" if run["diverged"] else "")
        left.plot(run["steps"], _gaps(run, f_star), style, color=colour, lw=width, label=label)
        runs = minibatch.get(name, [])
        if runs:
            length = min(len(r["f"]) for r in runs)
            stack = np.array([_gaps(r, f_star)[:length] for r in runs])
            steps = runs[0]["steps"][:length]
            with np.errstate(all="ignore"):
                middle.plot(
                    steps, np.nanmedian(stack, 0), style, color=colour, lw=width, label=name
                )
                middle.fill_between(
                    steps, np.nanmin(stack, 0), np.nanmax(stack, 0), color=colour, alpha=0.12
                )
    setting = summary.data["setting"]
    for axis, title in (
        (left, "full batch (gradient descent)"),
        (middle, f"minibatch: median over {len(next(iter(minibatch.values()), []))} seed(s)"),
    ):
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel("f(x_t) − f*")
        axis.set_title(title, fontsize=10)
    left.legend(fontsize=7, loc="lower left")
    names = [v["name"] for v in variants]
    ratios = {e["variant"]: e["contraction_over_alpha_mu"] for e in summary.data["variants"]}
    heights = [np.nan if ratios[n] is None else ratios[n] for n in names]
    colours = [_style(v, memories)[0] for v in variants]
    right.barh(range(len(names)), heights, color=colours)
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.invert_yaxis()
    right.axvline(1.0, color="0.4", ls=":", lw=1)
    right.set_xlabel("(1 − fitted rate) / (αμ)\ndotted: 1, gradient descent's guarantee")
    right.set_title("full batch: contraction per step, last half", fontsize=10)
    figure.suptitle(
        f"Strongly convex problem ({setting['rows']} rows, {setting['features']} features, "
        f"{setting['classes']} classes): μ = {setting['mu']:g}, L ≤ {setting['L_bound']:.3g}, "
        f"κ = {setting['kappa']:.3g}, α = 1/L = {setting['alpha']:.3g}",
        fontsize=11,
    )
    return plotting.save(figure, folder / "convex-gap.png")
