"""The ``tuned`` study's figure: per problem, the margin of each pair under each protocol.

One panel per problem; along x the protocols from the fairest to the paper's ((a) -> (b) -> (d) ->
(c)); per pair a point at the mean margin over seeds (> 0: the _C twin is better) with its 95 %
Student-t interval, and beside (b) the mean margins of the further draws of its triples as small
open markers. A pair whose reported run diverged is drawn as a cross on the zero line, labelled.
The vertical scale is symmetric-logarithmic when the margins span more than two decades (Adam_C
can lose by tens of points where SGD's margins are tenths), linear otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from critgrad.bench import optimizer_labels
from critgrad.bench.studies import plotting

ORDER = ("fair", "fair-sampled", "paper-valid", "paper")
TICKS = {
    "fair": "(a) fair\nlr only",
    "fair-sampled": "(b) fair\nlr, topC, decay",
    "paper-valid": "(d) 9x grid\nvalid. select.",
    "paper": "(c) paper\ntest select.",
}
COLOURS = {"sgd": "C0", "sgdm": "C2", "rmsprop": "C3", "adam": "C1"}


def _axis_label(metric: str, higher: bool) -> str:
    if metric == "accuracy":
        return "margin: _C − vanilla test accuracy\n(percentage points; > 0: _C better)"
    if higher:
        return f"margin: _C − vanilla {metric}\n(> 0: _C better)"
    return f"margin: vanilla − _C {metric.replace('_', ' ')}\n(> 0: _C better)"


def _values(found: Mapping[str, Any]) -> list[float]:
    out = []
    for pair in found["pairs"].values():
        for name in ORDER:
            margin = pair["protocols"][name]["margin"]
            if margin is not None:
                out += [margin["mean"]] + [v for v in (margin["low"], margin["high"]) if v]
        out += [v for v in pair["sample_draws"]["margins"] if v is not None]
    return [abs(v) for v in out if v]


def margins_figure(data: Mapping[str, Any], path: Path) -> Path:
    plt = plotting.pyplot()
    problems = list(data["results"])
    columns = max(1, len(problems))
    figure, axes = plt.subplots(
        1, columns, figsize=(4.6 * columns, 4.4), squeeze=False, layout="constrained"
    )
    for axis, problem in zip(axes[0], problems):
        found = data["results"][problem]
        pairs = list(found["pairs"])
        width = 0.5 / max(1, len(pairs))
        for index, base in enumerate(pairs):
            pair = found["pairs"][base]
            colour = COLOURS.get(base, f"C{index}")
            offset = (index - (len(pairs) - 1) / 2) * width
            twin = optimizer_labels.display_name(optimizer_labels.memory_label(base))
            label = f"{optimizer_labels.display_name(base)} vs {twin}"
            for x, name in enumerate(ORDER):
                entry = pair["protocols"][name]
                margin = entry["margin"]
                if margin is None:
                    axis.plot(x + offset, 0.0, "x", color=colour, ms=9, mew=2)
                    statuses = (entry["vanilla"]["status"], entry["twin"]["status"])
                    axis.annotate(
                        "diverged" if "diverged" in statuses else "missing",
                        (x + offset, 0.0),
                        textcoords="offset points",
                        xytext=(0, 8),
                        ha="center",
                        fontsize=7,
                        color=colour,
                    )
                    continue
                low = margin["low"] if margin["low"] is not None else margin["mean"]
                high = margin["high"] if margin["high"] is not None else margin["mean"]
                axis.errorbar(
                    x + offset,
                    margin["mean"],
                    yerr=[[margin["mean"] - low], [high - margin["mean"]]],
                    fmt="o",
                    color=colour,
                    ms=6,
                    capsize=3,
                    label=label if name == "fair" else None,
                )
            draws = [v for v in pair["sample_draws"]["margins"] if v is not None]
            if draws:
                axis.plot(
                    [1 + offset + width * 0.45] * len(draws),
                    draws,
                    "o",
                    mfc="none",
                    color=colour,
                    ms=4,
                    alpha=0.7,
                    label=f"{label}: (b), each draw of its triples",
                )
        axis.axhline(0.0, color="0.4", lw=0.8)
        spread = _values(found)
        logarithmic = bool(spread) and max(spread) / min(spread) > 100
        if logarithmic:
            axis.set_yscale("symlog", linthresh=max(min(spread), max(spread) / 1000))
        axis.set_xticks(range(len(ORDER)), [TICKS[name] for name in ORDER], fontsize=8)
        axis.set_xlim(-0.6, len(ORDER) - 0.4)
        axis.set_ylabel(_axis_label(found["metric"], found["higher_is_better"]), fontsize=9)
        scale = ", symmetric log scale" if logarithmic else ""
        axis.set_title(f"{problem}{scale}", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    # One legend for all panels (the pairs are the same everywhere), below them: inside a panel
    # it hides points.
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, names, loc="outside lower center", ncol=2, fontsize=8)
    seeds = data["seeds"]
    figure.suptitle(
        "Does the memory win when tuned? Each _C twin against its optimizer under four protocols\n"
        + (
            f"mean margin and 95 % interval over {len(seeds)} seeds"
            if len(seeds) > 1
            else "one seed"
        ),
        fontsize=10,
    )
    return plotting.save(figure, path)
