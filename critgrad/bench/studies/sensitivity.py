"""Study ``sensitivity``: the final metric and the memory's admission rate over topC x decay.

For each problem of :data:`PROBLEMS` and each twin of :data:`OPTIMIZERS` (each at its vanilla
optimizer's learning rate on that problem, kappa 1 and the reference's aggregation: ``sum`` for
SGD, ``mean`` for Adam), one harness run per (topC, decay, seed) over :data:`TOPC` x
:data:`DECAY`, and the vanilla optimizer on the same seeds as the reference. The figure has two
heat maps per (problem, twin): the final test metric (mean over seeds), coloured by how much
better or worse than the vanilla optimizer it is, and the admission rate once the memory is full
(admitted / offered while full, over the whole run; pooled over seeds).

Sizes: :data:`SIZES` (the published one is ``default``; ``quick`` is for tests, seconds). The
problems run at the harness's CPU size with the overrides listed there, so that the whole grid
fits in about half an hour on two shared cores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.studies import harness_units as H
from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register

TOPC = (1, 2, 5, 10, 20, 50, 100)
DECAY = (0.05, 0.3, 0.7, 0.9, 0.99)
OPTIMIZERS = ("sgd_c", "adam_c")
# The learning rate of each vanilla optimizer on each problem (its twin gets the same): the
# harness's default for MNIST, the CPU PTB sweep's selection (docs/results-ptb) for the LSTM.
LEARNING_RATES = {
    "mnist-mlp": {"sgd": 0.1, "adam": 1e-3},
    "ptb-lstm": {"sgd": 1.0, "adam": 1e-3},
}
PROBLEMS = ("mnist-mlp", "ptb-lstm")

# size -> problem -> harness overrides, and the grid
SIZES: dict[str, dict[str, Any]] = {
    "default": {
        # MNIST: one epoch of 20,000 training images (313 steps of 64). PTB: one epoch of 14,000
        # tokens in batches of 10 x 35 (40 steps; a step costs about as much as 350 tokens'
        # worth of the 10,000-word softmax). Smaller evaluation splits. What fits, with the
        # other studies, on two cores shared with other work.
        "overrides": {
            "mnist-mlp": {
                "train_size": 20_000,
                "valid_size": 5_000,
                "test_size": 5_000,
                "epochs": 1,
            },
            "ptb-lstm": {
                "train_tokens": 14_000,
                "valid_tokens": 2_000,
                "test_tokens": 2_000,
                "batch_size": 10,
                "epochs": 1,
            },
        },
        "topC": TOPC,
        "decay": DECAY,
        "reference_seeds": 3,  # the vanilla optimizer also runs on this many seeds: the noise
    },
    "quick": {
        "overrides": {
            "mnist-mlp": {
                "train_size": 256,
                "valid_size": 128,
                "test_size": 128,
                "epochs": 1,
                "eval_batch_size": 128,
            },
            "ptb-lstm": {
                "train_tokens": 2_100,
                "valid_tokens": 350,
                "test_tokens": 350,
                "epochs": 1,
                "hidden_size": 16,
                "embedding_dim": 8,
            },
        },
        "topC": (1, 5),
        "decay": (0.3, 0.99),
        "reference_seeds": 1,
    },
}


def size_of(options: Options) -> dict[str, Any]:
    return SIZES["quick" if options.quick else "default"]


def reference_seeds(options: Options) -> list[int]:
    """The vanilla optimizer's seeds: the study's, then the next ones up to the size's count."""
    seeds = list(options.seeds)
    candidate = 0
    while len(seeds) < size_of(options)["reference_seeds"]:
        if candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds


def _twin_settings(label: str, topC: int, decay: float, problem: str) -> dict[str, Any]:
    base = label.removesuffix("_c")
    return {"lr": LEARNING_RATES[problem][base], "topC": topC, "decay": decay, "kappa": 1.0}


def plan(options: Options) -> list[Unit]:
    size = size_of(options)
    units = []
    for problem in PROBLEMS:
        overrides = size["overrides"][problem]
        for twin in OPTIMIZERS:
            base = twin.removesuffix("_c")
            for seed in reference_seeds(options):
                config = H.spec_config(
                    problem, base, {"lr": LEARNING_RATES[problem][base]}, seed, overrides
                )
                units.append(Unit("sensitivity", f"{problem}-{base}-s{seed}", config))
            for topC in size["topC"]:
                for decay in size["decay"]:
                    for seed in options.seeds:
                        config = H.spec_config(
                            problem,
                            twin,
                            _twin_settings(twin, topC, decay, problem),
                            seed,
                            overrides,
                        )
                        name = f"{problem}-{twin}-c{topC}-d{decay:g}-s{seed}"
                        units.append(Unit("sensitivity", name, config))
    return units


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    return H.run_config(config, options.data_dir)


def _group(finished: Sequence[Finished]) -> dict[tuple, list[Mapping[str, Any]]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for item in finished:
        c = item.unit.config
        h = c["hyperparameters"]
        key = (c["problem"], c["optimizer"], h.get("topC"), h.get("decay"))
        groups.setdefault(key, []).append({**item.result, "seed": c["seed"]})
    return groups


def _admission(results: Sequence[Mapping[str, Any]]) -> float | None:
    """Admitted / offered while full, pooled over the seeds."""
    offered = sum(r["probe"]["offered_when_full"] for r in results if r.get("probe"))
    if not offered:
        return None
    admitted = sum(
        r["probe"]["admitted_when_full"] * r["probe"]["offered_when_full"]
        for r in results
        if r.get("probe") and r["probe"]["admitted_when_full"] is not None
    )
    return admitted / offered


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    size = size_of(options)
    groups = _group(finished)
    data: dict[str, Any] = {
        "size": "quick" if options.quick else "default",
        "overrides": size["overrides"],
        "topC": list(size["topC"]),
        "decay": list(size["decay"]),
        "learning_rates": LEARNING_RATES,
        "problems": {},
    }
    lines = []
    for problem in PROBLEMS:
        first = next(r for k, rs in groups.items() if k[0] == problem for r in rs)
        higher = first["higher_is_better"]
        entry: dict[str, Any] = {"metric": first["metric"], "higher_is_better": higher}
        for twin in OPTIMIZERS:
            base = twin.removesuffix("_c")
            references = groups[(problem, base, None, None)]
            vanilla = H.mean_over_seeds([r for r in references if r["seed"] in options.seeds])
            noise = H.mean_over_seeds(references)
            cells = []
            for topC in size["topC"]:
                for decay in size["decay"]:
                    results = groups[(problem, twin, topC, decay)]
                    score = H.mean_over_seeds(results)
                    cells.append(
                        {
                            "topC": topC,
                            "decay": decay,
                            **score,
                            "better_than_vanilla_percent": _nan_none(
                                H.better_than(score["mean"], vanilla["mean"], higher)
                            ),
                            "admitted_when_full": _admission(results),
                            "mean_age": _mean(
                                [r.get("memory", {}).get("mean_age") for r in results]
                            ),
                        }
                    )
            finite = [c for c in cells if c["mean"] is not None]
            best = (max if higher else min)(finite, key=lambda c: c["mean"]) if finite else None
            wins = sum(
                c["better_than_vanilla_percent"] is not None
                and c["better_than_vanilla_percent"] > 0
                for c in cells
            )
            entry[twin] = {
                "vanilla": vanilla,
                "vanilla_all_seeds": noise,
                "cells": cells,
                "best": best,
                "wins": wins,
            }
            reference = (
                next(c for c in cells if c["topC"] == 10 and c["decay"] == 0.7)
                if (10 in size["topC"] and 0.7 in size["decay"])
                else None
            )
            lines.append(
                _row(problem, entry["metric"], twin, vanilla, noise, best, wins, cells, reference)
            )
        data["problems"][problem] = entry
    table = "\n".join(
        [
            "| problem | twin | vanilla | _C at topC 10, decay 0.7 | best _C cell | cells better "
            "than vanilla | admitted once full: min-max over cells |",
            "|---|---|---|---|---|---|---|",
            *lines,
            "",
            f"Final test metric, mean ± std over seeds {list(options.seeds)}; kappa 1, aggregation "
            "sum for SGD_C, mean for Adam_C. Learning rates: "
            + "; ".join(
                f"{p}: " + ", ".join(f"{H.display(b)} {lr:g}" for b, lr in rates.items())
                for p, rates in LEARNING_RATES.items()
            )
            + ".",
        ]
    )
    return Summary(table=table, data=data)


def _row(problem, metric, twin, vanilla, noise, best, wins, cells, reference) -> str:
    ref = _fmt(reference) if reference else "not in the grid"
    best_text = (
        f"{_fmt(best)} (topC {best['topC']}, decay {best['decay']:g})" if best else "all diverged"
    )
    admissions = [c["admitted_when_full"] for c in cells if c["admitted_when_full"] is not None]
    span = (
        f"{100 * min(admissions):.0f}-{100 * max(admissions):.0f} %" if admissions else "never full"
    )
    return (
        f"| {problem} ({metric}) | {H.display(twin)} | {_fmt(vanilla)} (over "
        f"{noise['seeds']} seeds: {_fmt(noise)}) | {ref} | {best_text} "
        f"| {wins} of {len(cells)} | {span} |"
    )


def _fmt(score: Mapping[str, Any]) -> str:
    if score["mean"] is None:
        return "diverged"
    text = f"{score['mean']:.4g} ± {score['std']:.2g}"
    if score["diverged"]:
        text += f" ({score['diverged']} of {score['seeds']} diverged)"
    return text


def _short(value: float) -> str:
    """A cell's number: 4 significant digits below 1000, whole numbers above."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def _nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import plotting

    plt = plotting.pyplot()
    data = summary.data
    topcs, decays = data["topC"], data["decay"]
    rows = [(p, t) for p in PROBLEMS for t in OPTIMIZERS]
    figure, axes = plt.subplots(
        len(rows), 2, figsize=(11, 3.3 * len(rows)), squeeze=False, layout="constrained"
    )
    for row, (problem, twin) in enumerate(rows):
        entry = data["problems"][problem]
        block = entry[twin]
        shape = (len(topcs), len(decays))
        better = np.full(shape, np.nan)
        means = np.full(shape, np.nan)
        admitted = np.full(shape, np.nan)
        for cell in block["cells"]:
            i, j = topcs.index(cell["topC"]), decays.index(cell["decay"])
            if cell["mean"] is not None:
                means[i, j] = cell["mean"]
                better[i, j] = cell["better_than_vanilla_percent"]
            if cell["admitted_when_full"] is not None:
                admitted[i, j] = 100 * cell["admitted_when_full"]
        # The colour scale spans the largest difference, and at least twice the vanilla
        # optimizer's seed-to-seed spread (so that noise does not look like an effect).
        noise = block["vanilla_all_seeds"]
        spread = 100 * noise["std"] / abs(noise["mean"]) if noise["mean"] and noise["std"] else 0.0
        largest = np.nanmax(np.abs(better)) if np.isfinite(better).any() else 0.0
        limit = max(largest, 2 * spread, 0.1)
        left, right = axes[row]
        image = left.imshow(better, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        colorbar = figure.colorbar(image, ax=left)
        colorbar.set_label("better than vanilla (% of its metric)")
        for (i, j), value in np.ndenumerate(means):
            strong = np.isfinite(better[i, j]) and abs(better[i, j]) > 0.6 * limit
            left.text(
                j,
                i,
                "div." if np.isnan(value) else _short(value),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if strong else "black",
            )
        vanilla = block["vanilla"]
        vanilla_text = "diverged" if vanilla["mean"] is None else _short(vanilla["mean"])
        base = twin.removesuffix("_c")
        left.set_title(
            f"{problem}: {H.display(twin)} final test {entry['metric']}\n"
            f"(cell text; {H.display(base)} = {vanilla_text}, lr {LEARNING_RATES[problem][base]:g}"
            + (
                f"; its std over {noise['seeds']} seeds {spread:.2g} %)"
                if noise["seeds"] > 1
                else ")"
            ),
            fontsize=9,
        )
        image = right.imshow(admitted, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        colorbar = figure.colorbar(image, ax=right)
        colorbar.set_label("admitted once full (%)")
        for (i, j), value in np.ndenumerate(admitted):
            text = "not full" if np.isnan(value) else f"{value:.0f}"
            right.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if not np.isnan(value) and value < 60 else "black",
            )
        right.set_title(
            f"{problem}: {H.display(twin)}, share of the gradients offered to a full\n"
            "memory that entered it (whole run, pooled over seeds)",
            fontsize=9,
        )
        for axis in (left, right):
            axis.set_xticks(range(len(decays)), [f"{d:g}" for d in decays])
            axis.set_yticks(range(len(topcs)), [str(c) for c in topcs])
            axis.set_xlabel("decay")
            axis.set_ylabel("topC")
    size = "quick" if options.quick else "default"
    figure.suptitle(
        f"Sensitivity to topC and decay (kappa 1; {size} size, mean over "
        f"{len(options.seeds)} seed(s))",
        fontsize=11,
    )
    return [plotting.save(figure, folder / "sensitivity.png")]


@register
def sensitivity() -> Study:
    return Study(
        name="sensitivity",
        description="topC x decay heat maps of the final metric and of the admission rate once "
        "the memory is full, SGD_C and Adam_C on mnist-mlp and ptb-lstm",
        default_seeds=(0,),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
