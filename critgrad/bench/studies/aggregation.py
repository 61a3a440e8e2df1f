r"""Study ``aggregation``: how the memory's stored gradients are combined with the current one.

With g the gradient and B the n stored gradients, the direction is :math:`g + \kappa\,
\mathrm{mean}(B)` (``sum``), :math:`\tfrac12 (g + \kappa\,\mathrm{mean}(B))` (``mid``) or
:math:`(g + \kappa \sum B)/(n + 1)` (``mean``). When the stored gradients agree with g, ``sum`` is
about :math:`(1 + \kappa) g`, ``mid`` about :math:`\tfrac{1 + \kappa}{2} g` and ``mean`` about
:math:`\tfrac{1 + n\kappa}{n + 1} g`: each is also a change of the step size. The study runs SGD_C
and Adam_C with each aggregation and kappa in :data:`KAPPA` (topC 10, decay 0.7: the reference's
memory) at the vanilla optimizer's learning rate, with the vanilla optimizer as reference, and
reads from the memory's probe the median ratio :math:`|d|/|g|` of each run: the step-size change
that the aggregation actually made.

Sizes as in :mod:`.sensitivity` (the same overrides); PTB runs use the first seed only
(:data:`PROBLEM_SEEDS`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.studies import harness_units as H
from critgrad.bench.studies import sensitivity
from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register

AGGREGATIONS = ("sum", "mid", "mean")
KAPPA = (0.25, 0.5, 1.0, 2.0)
MEMORY = {"topC": 10, "decay": 0.7}
OPTIMIZERS = sensitivity.OPTIMIZERS
PROBLEMS = sensitivity.PROBLEMS
LEARNING_RATES = sensitivity.LEARNING_RATES
PROBLEM_SEEDS = {"ptb-lstm": 1}  # how many of the study's seeds a problem runs (default: all)
QUICK_KAPPA = (0.5, 2.0)
QUICK_OPTIMIZERS = ("sgd_c",)


def twins(options: Options) -> tuple[str, ...]:
    return QUICK_OPTIMIZERS if options.quick else OPTIMIZERS


def _overrides(options: Options) -> dict[str, dict[str, Any]]:
    return sensitivity.size_of(options)["overrides"]


def seeds_of(problem: str, options: Options) -> tuple[int, ...]:
    return options.seeds[: PROBLEM_SEEDS.get(problem, len(options.seeds))]


def kappas(options: Options) -> tuple[float, ...]:
    return QUICK_KAPPA if options.quick else KAPPA


def plan(options: Options) -> list[Unit]:
    units = []
    for problem in PROBLEMS:
        overrides = _overrides(options)[problem]
        for twin in twins(options):
            base = twin.removesuffix("_c")
            lr = LEARNING_RATES[problem][base]
            for seed in seeds_of(problem, options):
                config = H.spec_config(problem, base, {"lr": lr}, seed, overrides)
                units.append(Unit("aggregation", f"{problem}-{base}-s{seed}", config))
                for aggr in AGGREGATIONS:
                    for kappa in kappas(options):
                        settings = {"lr": lr, **MEMORY, "kappa": kappa, "aggr": aggr}
                        config = H.spec_config(problem, twin, settings, seed, overrides)
                        name = f"{problem}-{twin}-{aggr}-k{kappa:g}-s{seed}"
                        units.append(Unit("aggregation", name, config))
    return units


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    return H.run_config(config, options.data_dir)


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for item in finished:
        c, h = item.unit.config, item.unit.config["hyperparameters"]
        key = (c["problem"], c["optimizer"], h.get("aggr"), h.get("kappa"))
        groups.setdefault(key, []).append(item.result)
    data: dict[str, Any] = {
        "kappa": list(kappas(options)),
        "memory": MEMORY,
        "learning_rates": LEARNING_RATES,
        "overrides": _overrides(options),
        "seeds": {p: list(seeds_of(p, options)) for p in PROBLEMS},
        "problems": {},
    }
    lines = []
    for problem in PROBLEMS:
        first = next(rs[0] for k, rs in groups.items() if k[0] == problem)
        higher = first["higher_is_better"]
        entry: dict[str, Any] = {"metric": first["metric"], "higher_is_better": higher}
        for twin in twins(options):
            base = twin.removesuffix("_c")
            vanilla = H.mean_over_seeds(groups[(problem, base, None, None)])
            rows = []
            for aggr in AGGREGATIONS:
                for kappa in kappas(options):
                    results = groups[(problem, twin, aggr, kappa)]
                    score = H.mean_over_seeds(results)
                    ratios = [
                        r["probe"]["norms"]["median_direction_over_grad"]
                        for r in results
                        if r.get("probe") and not r["diverged"]
                    ]
                    ratios = [v for v in ratios if v is not None]
                    rows.append(
                        {
                            "aggr": aggr,
                            "kappa": kappa,
                            **score,
                            "better_than_vanilla_percent": _none_nan(
                                H.better_than(score["mean"], vanilla["mean"], higher)
                            ),
                            "direction_over_grad": statistics.median(ratios) if ratios else None,
                        }
                    )
            entry[twin] = {"vanilla": vanilla, "rows": rows}
            for row in rows:
                lines.append(
                    f"| {problem} | {H.display(twin)} | {row['aggr']} | {row['kappa']:g} | "
                    f"{_fmt(row)} | {_signed(row['better_than_vanilla_percent'])} | "
                    f"{_ratio(row['direction_over_grad'])} | {_fmt(vanilla)} |"
                )
        data["problems"][problem] = entry
    seeds = ", ".join(f"{p}: {list(seeds_of(p, options))}" for p in PROBLEMS)
    table = "\n".join(
        [
            "| problem | twin | aggr | kappa | final test metric | vs vanilla | median |d|/|g| "
            "| vanilla |",
            "|---|---|---|---|---|---|---|---|",
            *lines,
            "",
            f"Mean ± std over seeds ({seeds}); 'vs vanilla' is how much better (+) or worse (−) "
            "than the vanilla optimizer's mean, in % of it; |d|/|g| is the median over the run's "
            f"norm samples of the aggregate's norm over the gradient's. Memory topC "
            f"{MEMORY['topC']}, decay {MEMORY['decay']}; learning rates as in the sensitivity "
            "study.",
        ]
    )
    return Summary(table=table, data=data)


def _none_nan(value: float) -> float | None:
    return None if value != value else value


def _fmt(score: Mapping[str, Any]) -> str:
    if score["mean"] is None:
        return "diverged"
    text = f"{score['mean']:.4g} ± {score['std']:.2g}"
    return text + (f" ({score['diverged']} diverged)" if score["diverged"] else "")


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f} %"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import plotting

    plt = plotting.pyplot()
    data = summary.data
    columns = [(p, t) for p in PROBLEMS for t in twins(options)]
    figure, axes = plt.subplots(
        2, len(columns), figsize=(4.2 * len(columns), 7.0), squeeze=False, layout="constrained"
    )
    styles = {"sum": ("C0", "o"), "mid": ("C1", "s"), "mean": ("C2", "^")}
    for column, (problem, twin) in enumerate(columns):
        entry = data["problems"][problem]
        block = entry[twin]
        top, bottom = axes[0][column], axes[1][column]
        for aggr in AGGREGATIONS:
            rows = [r for r in block["rows"] if r["aggr"] == aggr]
            ks = np.array([r["kappa"] for r in rows])
            mean = np.array([np.nan if r["mean"] is None else r["mean"] for r in rows])
            std = np.array([np.nan if r["std"] is None else r["std"] for r in rows])
            colour, marker = styles[aggr]
            top.plot(ks, mean, marker=marker, color=colour, label=f"{H.display(twin)} {aggr}")
            top.fill_between(ks, mean - std, mean + std, color=colour, alpha=0.15)
            ratio = np.array(
                [
                    np.nan if r["direction_over_grad"] is None else r["direction_over_grad"]
                    for r in rows
                ]
            )
            bottom.plot(ks, ratio, marker=marker, color=colour, label=aggr)
        vanilla = block["vanilla"]
        base = twin.removesuffix("_c")
        if vanilla["mean"] is not None:
            top.axhline(vanilla["mean"], color="0.3", lw=1, label=f"{H.display(base)}")
            top.axhspan(
                vanilla["mean"] - vanilla["std"],
                vanilla["mean"] + vanilla["std"],
                color="0.5",
                alpha=0.15,
            )
        ks = np.array(data["kappa"])
        bottom.plot(ks, 1 + ks, ":", color="C0", lw=1, label="1 + kappa (sum, aligned)")
        bottom.plot(ks, (1 + ks) / 2, ":", color="C1", lw=1, label="(1 + kappa)/2 (mid, aligned)")
        bottom.axhline(1.0, color="0.5", lw=0.8)
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_xticks(ks, [f"{k:g}" for k in ks])
            axis.set_xlabel("kappa (weight of the memory)")
        direction = "higher is better" if entry["higher_is_better"] else "lower is better"
        top.set_title(
            f"{problem}: {H.display(twin)}, lr {LEARNING_RATES[problem][base]:g}", fontsize=10
        )
        top.set_ylabel(f"final test {entry['metric']} ({direction})")
        bottom.set_ylabel("median |aggregate| / |gradient|")
        bottom.set_title("length of the aggregate d against the gradient g", fontsize=10)
        plotting.log_if_wide(top, [r["mean"] for r in block["rows"]] + [vanilla["mean"]], ratio=3.0)
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    size = "quick" if options.quick else "default"
    seeds = "; ".join(f"{p} {len(s)} seed(s)" for p, s in data["seeds"].items())
    figure.suptitle(
        f"Aggregation x kappa (topC {MEMORY['topC']}, decay {MEMORY['decay']}; {size} size; "
        f"mean ± std over seeds: {seeds})",
        fontsize=11,
    )
    return [plotting.save(figure, folder / "aggregation.png")]


@register
def aggregation() -> Study:
    return Study(
        name="aggregation",
        description="sum / mid / mean aggregation x kappa 0.25-2 for SGD_C and Adam_C on "
        "mnist-mlp and ptb-lstm, with the step-size change each made",
        default_seeds=(0, 1, 2),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
