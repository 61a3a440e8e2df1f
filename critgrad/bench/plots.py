"""Plots of a report (matplotlib, Agg back end, PNG files).

* learning curves: validation metric and training loss against epochs (from the first evaluation
  after step 0), mean over seeds with a +- one standard deviation band, vanilla and _C of a pair
  on the same axes;
* learning-rate sensitivity: each optimizer's selection score (mean over the tuning seeds, best
  over its other hyperparameters) against the learning rate, when more than one was tried;
* topC x decay heat map per _C optimizer (best over the learning rate), when the runs have at
  least two values of each.

Diverged runs are never drawn as numbers: learning curves leave them out (the legend counts them),
a pair with nothing left to draw says so in its panel, the learning-rate plot marks a diverged
configuration with a cross on the lower edge, the heat map writes "div." in its cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench import optimizer_labels, scoring
from critgrad.bench.optimizer_labels import display_name
from critgrad.bench.protocols import Protocol


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve_band(runs: Sequence[Mapping[str, Any]], key: str):
    """Epochs, mean and std over runs at the evaluation points all runs reached."""
    length = min(len(r["history"]) for r in runs)
    epochs = np.array([runs[0]["history"][i]["epoch"] for i in range(length)])
    values = np.array(
        [
            [
                np.nan if r["history"][i][key] is None else r["history"][i][key]
                for i in range(length)
            ]
            for r in runs
        ],
        dtype=float,
    )
    std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(length)
    return epochs, values.mean(axis=0), std


def _has_positive(values: np.ndarray) -> bool:
    return bool(np.any(np.isfinite(values) & (values > 0)))


def _line_style(label: str) -> str:
    """Solid for a vanilla label, dashed for a _c twin, dotted for a memory optimizer of its own,
    so that the three can share a colour."""
    if not optimizer_labels.is_memory(label):
        return "-"
    return ":" if optimizer_labels.pair_key(label) == label else "--"


def learning_curves(result, path: Path) -> Path | None:
    labels_of = {
        base: [
            label
            for label in (vanilla, twin)
            if label and (result.results[label].runs or result.results[label].status == "diverged")
        ]
        for base, vanilla, twin in result.pairs
    }
    pairs = [(base, labels) for base, labels in labels_of.items() if labels]
    if not pairs:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(
        2, len(pairs), figsize=(3.6 * len(pairs), 6.0), squeeze=False, sharex=True
    )
    for column, (base, labels) in enumerate(pairs):
        notes, log_scale = [], False
        for label in labels:
            item = result.results[label]
            runs = [r for r in item.runs if not scoring.diverged(r)]
            if not runs:
                notes.append(f"{display_name(label)}: {item.cell(result.metric)}")
                continue
            style = _line_style(label)
            legend = f"{display_name(label)} (n={len(runs)}"
            legend += f", {item.diverged_runs} diverged)" if item.diverged_runs else ")"
            for row, key in enumerate(("valid_metric", "train_loss")):
                epochs, mean, std = _curve_band(runs, key)
                # Step 0 has no training loss, and its chance-level validation score would
                # squash the differences that matter into a thin line at the top.
                epochs, mean, std = epochs[1:], mean[1:], std[1:]
                axis = axes[row][column]
                axis.plot(epochs, mean, style, label=legend)
                axis.fill_between(epochs, mean - std, mean + std, alpha=0.2)
                log_scale = log_scale or (row == 1 and _has_positive(mean))
        axes[0][column].set_title(optimizer_labels.pair_name(base))
        if notes:
            axes[0][column].text(
                0.5,
                0.5,
                "\n".join(notes),
                transform=axes[0][column].transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="C3",
            )
        if axes[0][column].get_legend_handles_labels()[0]:
            axes[0][column].legend(fontsize=8)
        if log_scale:  # a log axis with nothing positive on it is an error in matplotlib
            axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("epoch")
    axes[0][0].set_ylabel(f"validation {result.metric}")
    axes[1][0].set_ylabel("training loss")
    figure.suptitle(f"{result.problem}: mean ± std over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _scores_by(result, label: str, protocol: Protocol, keys: Sequence[str]):
    """Best selection score for each value of ``keys`` over the label's configurations."""
    best: dict[tuple, float] = {}
    for config, runs in result.results[label].groups.items():
        runs = [r for r in runs if r["spec"]["seed"] in protocol.tune_seeds]
        if not runs:
            continue
        hyper = json.loads(config)
        if any(k not in hyper for k in keys):
            continue
        score = float(
            np.mean(
                [
                    scoring.run_score(r, protocol.selection_split, protocol.selection_reduce)
                    for r in runs
                ]
            )
        )
        point = tuple(hyper[k] for k in keys)
        if point not in best or scoring.better(score, best[point], result.higher_is_better):
            best[point] = score
    return best


def lr_sensitivity(result, protocol: Protocol, path: Path) -> Path | None:
    series = {label: _scores_by(result, label, protocol, ("lr",)) for label in result.results}
    series = {label: points for label, points in series.items() if len(points) > 1}
    if not series:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.0))
    bases = list(dict.fromkeys(optimizer_labels.base_label(label) for label in series))
    crosses = []
    for label, points in series.items():
        lrs = sorted(p[0] for p in points)
        values = [points[(lr,)] for lr in lrs]
        values = [v if math.isfinite(v) else np.nan for v in values]
        color = f"C{bases.index(optimizer_labels.base_label(label)) % 10}"
        # A vanilla label and its memory labels share a colour: solid vanilla, dashed _C,
        # dotted a memory optimizer of its own (Adam_CM beside Adam and Adam_C).
        axis.plot(
            lrs,
            values,
            _line_style(label) + "o",
            color=color,
            label=display_name(label),
        )
        crosses += [(lr, color) for lr, v in zip(lrs, values) if np.isnan(v)]
    if crosses:  # diverged (or unscored) configurations: a cross on the lower edge
        transform = axis.get_xaxis_transform()
        for lr, color in crosses:
            axis.plot([lr], [0.02], "x", color=color, markersize=9, transform=transform)
        axis.plot([], [], "xk", label="diverged")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(
        f"{protocol.selection_split} {result.metric} "
        f"({protocol.selection_reduce}), mean over tuning seeds"
    )
    axis.set_title(f"{result.problem}: learning-rate sensitivity")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def memory_heatmap(result, label: str, protocol: Protocol, path: Path) -> Path | None:
    points = _scores_by(result, label, protocol, ("topC", "decay"))
    topcs = sorted({p[0] for p in points})
    decays = sorted({p[1] for p in points})
    if len(topcs) < 2 or len(decays) < 2:
        return None
    grid = np.full((len(topcs), len(decays)), np.nan)
    for (top, decay), value in points.items():
        grid[topcs.index(top), decays.index(decay)] = value if math.isfinite(value) else np.nan
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.8, 4.0))
    image = axis.imshow(
        grid,
        origin="lower",
        cmap="viridis" if result.higher_is_better else "viridis_r",
        aspect="auto",
    )
    axis.set_xticks(range(len(decays)), [str(d) for d in decays])
    axis.set_yticks(range(len(topcs)), [str(t) for t in topcs])
    axis.set_xlabel("decay")
    axis.set_ylabel("topC")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            axis.text(j, i, f"{value:.3g}", ha="center", va="center", color="w", fontsize=8)
        elif (topcs[i], decays[j]) in points:
            axis.text(j, i, "div.", ha="center", va="center", color="C3", fontsize=8)
    figure.colorbar(image, ax=axis, label=f"{protocol.selection_split} {result.metric}")
    axis.set_title(f"{result.problem}: {display_name(label)}, best over lr")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_problem(result, protocol: Protocol, folder: Path) -> list[Path]:
    """Every plot that the problem's records support; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        learning_curves(result, folder / f"{result.problem}-curves.png"),
        lr_sensitivity(result, protocol, folder / f"{result.problem}-lr.png"),
    ]
    for label in result.results:
        if optimizer_labels.is_memory(label):
            written.append(
                memory_heatmap(
                    result, label, protocol, folder / f"{result.problem}-{label}-topc-decay.png"
                )
            )
    return [path for path in written if path is not None]
