"""Figures of the ``ablation`` study: one per problem, a panel per (base optimizer, decay).

Each panel shows every variant's final test metric: one small dot per seed, the mean with its
standard error as a bar, the vanilla optimizer's mean as a dashed line across the panel, and
under each variant's name its admission rate (gradients admitted / offered).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from critgrad.bench.studies import ablation, plotting
from critgrad.bench.studies.contract import Options, Summary

LOG_SPAN = 5.0  # a log scale when the largest value of a row is over 5 times its smallest
COLOURS = {
    "vanilla": "0.3",
    "critical": "C3",
    "recent": "C0",
    "smallest": "C2",
    "random": "C1",
    "memory-only": "C4",
}


def _panel(axis, entries: list[Mapping[str, Any]], vanilla: Mapping[str, Any], metric: str):
    factor, _, _ = ablation.scale(metric)
    shown = [vanilla, *entries]
    for x, entry in enumerate(shown):
        colour = COLOURS[entry["variant"]]
        values = [v * factor for v in entry["scores"].values() if v is not None]
        axis.plot([x] * len(values), values, ".", color=colour, alpha=0.45, ms=5)
        if entry["mean"] is not None:
            axis.errorbar(
                x,
                entry["mean"] * factor,
                yerr=entry["se"] * factor,
                fmt="o",
                color=colour,
                ms=7,
                capsize=4,
                lw=1.5,
            )
        if entry["diverged"]:
            axis.annotate(
                f"{entry['diverged']} diverged",
                (x, 0.02),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=7,
                color="red",
            )
    if vanilla["mean"] is not None:
        axis.axhline(vanilla["mean"] * factor, color="0.3", ls="--", lw=0.8)
    labels = [
        entry["variant"]
        + ("" if entry["admission"] is None else f"\n{100 * entry['admission']:.0f} %")
        for entry in shown
    ]
    axis.set_xticks(range(len(shown)), labels, fontsize=7)
    axis.set_xlim(-0.5, len(shown) - 0.5)
    axis.grid(axis="y", alpha=0.3)


def draw(options: Options, summary: Summary, folder: Path) -> list[Path]:
    plt = plotting.pyplot()
    decays = summary.data["decays"]
    paths = []
    for problem, by_base in summary.data["rows"].items():
        figure, axes = plt.subplots(
            len(by_base),
            len(decays),
            figsize=(max(4.2 * len(decays) + 0.6, 7.0), 3.4 * len(by_base) + 0.6),
            squeeze=False,
            layout="constrained",
        )
        for row, (base, entries) in enumerate(by_base.items()):
            metric = entries[0]["metric"]
            _, _, unit = ablation.scale(metric)
            direction = "higher" if entries[0]["higher_is_better"] else "lower"
            lr = summary.data["problems"][problem]["lr"][base]
            for column, decay in enumerate(decays):
                axis = axes[row][column]
                chosen = [e for e in entries if e["decay"] == decay]
                _panel(axis, chosen, entries[0], metric)
                axis.set_title(
                    f"{ablation.DISPLAY[base]} (lr {lr:g}) vs {ablation.DISPLAY[base]}_C, "
                    f"topC {summary.data['topC']}, decay {decay:g}",
                    fontsize=9,
                )
                if column == 0:
                    axis.set_ylabel(
                        f"final {ablation.metric_name(metric)}{unit.replace(' %', ' (%)')}\n"
                        f"({direction} is better)",
                        fontsize=9,
                    )
            # One scale per row, so that the decays can be compared by eye.
            low = min(axes[row][c].get_ylim()[0] for c in range(len(decays)))
            high = max(axes[row][c].get_ylim()[1] for c in range(len(decays)))
            # A log scale where a failed variant sits a decade above the others (a positive
            # objective), so that the others stay apart.
            values = [
                v * ablation.scale(metric)[0]
                for e in entries
                for v in e["scores"].values()
                if v is not None
            ]
            logarithmic = min(values, default=0) > 0 and max(values) > LOG_SPAN * min(values)
            for c in range(len(decays)):
                if logarithmic:
                    axes[row][c].set_yscale("log")
                    axes[row][c].set_ylim(0.8 * min(values), 1.25 * max(values))
                else:
                    axes[row][c].set_ylim(low, high)
        overrides = ", ".join(
            f"{k} {v}" for k, v in summary.data["problems"][problem]["overrides"].items()
        )
        figure.suptitle(
            textwrap.fill(f"Selection rule of the memory, {problem} ({overrides})", 100) + "\n"
            f"mean ± SE over {len(options.seeds)} seed(s); dots: seeds; dashed: vanilla's mean; "
            "% under a name: gradients admitted",
            fontsize=9,
        )
        paths.append(plotting.save(figure, folder / f"ablation-{problem}.png"))
    return paths
