r"""Study ``ablation``: does it matter *which* gradients the memory keeps?

Each base optimizer (SGD, Adam) against its twin with the memory under five rules, all with the
same memory size and decay (topC 10, kappa 1, the reference package's ``aggr``: sum for SGD,
mean for Adam), the same learning rate as the base, the same seeds:

* ``critical``: the paper's rule (a gradient enters when its priority, its squared norm, beats
  the smallest held one; priorities decay by ``decay`` at every step);
* ``recent``: every gradient enters, the oldest leaves (a window of the last topC gradients);
* ``smallest``: the opposite of the paper's rule (a gradient enters when its key is smaller than
  the largest held priority, and replaces that one);
* ``random``: every gradient enters and replaces a uniformly drawn entry;
* ``memory-only``: the critical rule with ``include_current=False`` (the reference's
  ``SGD_C_Only``): the gradient is offered first and the direction is kappa x the mean of the
  memory (the current gradient is one of its entries if admitted, never added to it), so there is
  no doubling of the step by ``aggr="sum"``.

Every unit is one run of the benchmark harness (:func:`critgrad.bench.runner.run`) on a
harness problem at a reduced size (``PROBLEMS``); the memory options reach the optimizer through
the harness's hyperparameters (``selection`` and ``include_current`` are in
:data:`critgrad.registry.MEMORY_ARGUMENTS`). Reported: the final test metric, mean and standard
error (sample std / sqrt(n)) over the seeds; its paired difference (same seed: same initial
weights and batch order) against the vanilla optimizer and against the ``critical`` rule at the
same decay; the admission rate (gradients admitted / gradients offered over the whole run, each
parameter tensor offering one per step; the first topC offers always enter) and the mean age
of the held entries at the end. A diverged run is counted as diverged and left out of the means.

At decay 0.7 a held priority falls below any new gradient's within a few steps, so the
critical rule admits nearly every gradient and behaves like ``recent``; at decay 0.99 it keeps
large old gradients, which is where the rules can differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register

NAME = "ablation"
BASES = ("sgd", "adam")
DISPLAY = {"sgd": "SGD", "adam": "Adam"}
TOPC = 10
DECAYS = (0.7, 0.99)
# variant -> the memory options beyond topC/decay that it passes ("vanilla" has no memory).
VARIANTS: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "critical": {"selection": "critical"},
    "recent": {"selection": "recent"},
    "smallest": {"selection": "smallest"},
    "random": {"selection": "random"},
    "memory-only": {"selection": "critical", "include_current": False},
}
MEMORY_VARIANTS = tuple(v for v in VARIANTS if v != "vanilla")

# The published CPU size: harness problems with fewer epochs (and, for the MLP, 20,000 of the
# 50,000 training images) so that the 220 runs fit in about half an hour on two busy cores.
# Learning rates: each base optimizer's selected rate in docs/results.md (the fair protocol).
PROBLEMS: dict[str, dict[str, Any]] = {
    "mnist-mlp": {
        "overrides": {"train_size": 20_000, "epochs": 2},
        "lr": {"sgd": 0.1, "adam": 0.001},
    },
    "mnist-convex": {"overrides": {"epochs": 3}, "lr": {"sgd": 0.01, "adam": 0.001}},
}
# The tiny size of the tests: 30 steps on 1,920 MNIST images (the memory fills after 10, so the
# rules differ), one decay.
QUICK_PROBLEMS: dict[str, dict[str, Any]] = {
    "mnist-mlp": {
        "overrides": {
            "train_size": 1_920,
            "valid_size": 500,
            "test_size": 500,
            "epochs": 1,
            "eval_batch_size": 500,
        },
        "lr": {"sgd": 0.1, "adam": 0.001},
    }
}
QUICK_DECAYS = (0.7,)


def settings(options: Options) -> tuple[dict[str, dict[str, Any]], tuple[float, ...]]:
    """The problems and the decays of the chosen size."""
    return (QUICK_PROBLEMS, QUICK_DECAYS) if options.quick else (PROBLEMS, DECAYS)


def hyperparameters(base: str, lr: float, variant: str, decay: float | None) -> dict[str, Any]:
    """The harness hyperparameters of ``variant`` of ``base`` (a vanilla run: the rate alone)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant == "vanilla":
        return {"lr": lr}
    return {"lr": lr, "topC": TOPC, "decay": decay, **VARIANTS[variant]}


def plan(options: Options) -> list[Unit]:
    """Seed by seed, so that a study stopped early holds whole seeds of every problem."""
    problems, decays = settings(options)
    units = []
    for seed in options.seeds:
        for problem, setting in problems.items():
            for base in BASES:
                lr = setting["lr"][base]
                cases = [("vanilla", None)] + [(v, d) for d in decays for v in MEMORY_VARIANTS]
                for variant, decay in cases:
                    label = base if variant == "vanilla" else base + "_c"
                    suffix = "" if decay is None else f"-d{decay:g}"
                    units.append(
                        Unit(
                            study=NAME,
                            name=f"{problem}-{base}-{variant}{suffix}-s{seed}",
                            config={
                                "problem": problem,
                                "overrides": setting["overrides"],
                                "optimizer": label,
                                "hyperparameters": hyperparameters(base, lr, variant, decay),
                                "variant": variant,
                                "decay": decay,
                                "seed": seed,
                            },
                        )
                    )
    return units


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    """One harness run; its final numbers, memory statistics and test curve."""
    from critgrad.bench.record_format import RunSpec
    from critgrad.bench.runner import run

    spec = RunSpec(
        problem=config["problem"],
        optimizer=config["optimizer"],
        hyperparameters=dict(config["hyperparameters"]),
        seed=config["seed"],
        overrides=dict(config["overrides"]),
    )
    record = run(spec, data_dir=options.data_dir)
    memory = record["history"][-1]["memory"]
    return {
        "diverged": record["diverged"],
        "divergence": record["divergence"],
        "metric": record["metric"],
        "higher_is_better": record["higher_is_better"],
        "final": record["final"],
        "steps": record["steps"],
        "memory": None
        if memory is None
        else {k: memory.get(k) for k in ("offered", "admitted", "mean_age", "mean_eviction_age")},
        "curve": [
            {"step": p["step"], "test_metric": p["test_metric"], "train_loss": p["train_loss"]}
            for p in record["history"]
        ],
    }


# ---- summary ----------------------------------------------------------------------------------


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample std, ddof 1, over sqrt(n)); SE 0 for a single value."""
    if not values:
        return None, None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0
    return mean, float(np.std(values, ddof=1) / math.sqrt(len(values)))


def score(result: Mapping[str, Any]) -> float | None:
    """The final test metric of a unit; None when the run diverged."""
    if result["diverged"]:
        return None
    value = result["final"]["test_metric"]
    return None if value is None else float(value)


def paired(
    scores: Mapping[int, float | None], against: Mapping[int, float | None], higher: bool
) -> dict[str, Any]:
    """``scores - against`` over the seeds where both are finite: mean, SE, and in how many seeds
    the first is better (higher when ``higher``, else lower) or worse."""
    seeds = [s for s in scores if scores[s] is not None and against.get(s) is not None]
    differences = [scores[s] - against[s] for s in seeds]
    mean, se = mean_se(differences)
    sign = 1.0 if higher else -1.0
    return {
        "mean": mean,
        "se": se,
        "pairs": len(seeds),
        "better": sum(sign * d > 0 for d in differences),
        "worse": sum(sign * d < 0 for d in differences),
    }


def collect(finished: Sequence[Finished]) -> dict[tuple, dict[int, Mapping[str, Any]]]:
    """(problem, base, variant, decay) -> seed -> result."""
    table: dict[tuple, dict[int, Mapping[str, Any]]] = {}
    for item in finished:
        c = item.unit.config
        base = c["optimizer"].removesuffix("_c")
        table.setdefault((c["problem"], base, c["variant"], c["decay"]), {})[c["seed"]] = (
            item.result
        )
    return table


def _admission(results: Sequence[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """Mean over the runs of admitted / offered, and of the held entries' mean age."""
    rates = [
        r["memory"]["admitted"] / r["memory"]["offered"]
        for r in results
        if r["memory"] and r["memory"]["offered"]
    ]
    ages = [r["memory"]["mean_age"] for r in results if r["memory"] and r["memory"]["mean_age"]]
    return (float(np.mean(rates)) if rates else None, float(np.mean(ages)) if ages else None)


def rows(options: Options, finished: Sequence[Finished]) -> dict[str, dict[str, list[dict]]]:
    """problem -> base -> one row per (variant, decay): vanilla first, then decay by decay."""
    problems, decays = settings(options)
    table = collect(finished)
    out: dict[str, dict[str, list[dict]]] = {}
    for problem in problems:
        out[problem] = {}
        for base in BASES:
            vanilla = table[(problem, base, "vanilla", None)]
            higher = bool(next(iter(vanilla.values()))["higher_is_better"])
            vanilla_scores = {s: score(r) for s, r in vanilla.items()}
            entries = []
            cases = [("vanilla", None)] + [(v, d) for d in decays for v in MEMORY_VARIANTS]
            for variant, decay in cases:
                results = table[(problem, base, variant, decay)]
                scores = {s: score(r) for s, r in results.items()}
                finite = [v for v in scores.values() if v is not None]
                mean, se = mean_se(finite)
                admission, age = _admission(list(results.values()))
                critical = (
                    {s: score(r) for s, r in table[(problem, base, "critical", decay)].items()}
                    if variant not in ("vanilla", "critical")
                    else None
                )
                entries.append(
                    {
                        "variant": variant,
                        "decay": decay,
                        "seeds": len(scores),
                        "diverged": len(scores) - len(finite),
                        "mean": mean,
                        "se": se,
                        "scores": {str(s): v for s, v in sorted(scores.items())},
                        "vs_vanilla": None
                        if variant == "vanilla"
                        else paired(scores, vanilla_scores, higher),
                        "vs_critical": None
                        if critical is None
                        else paired(scores, critical, higher),
                        "admission": admission,
                        "mean_age": age,
                        "higher_is_better": higher,
                        "metric": next(iter(results.values()))["metric"],
                    }
                )
            out[problem][base] = entries
    return out


def metric_name(metric: str) -> str:
    """What the harness's final test metric is: the test accuracy, or (mnist-convex) the
    training objective over all training rows, which that problem reports as its test metric."""
    return "test accuracy" if metric == "accuracy" else f"{metric.replace('_', ' ')} (objective)"


def scale(metric: str) -> tuple[float, str, str]:
    """How a metric is printed: (factor, format, unit): accuracy in percent."""
    return (100.0, ".2f", " %") if metric == "accuracy" else (1.0, ".4f", "")


def _value(entry: Mapping[str, Any]) -> str:
    if entry["mean"] is None:
        return f"diverged ({entry['diverged']} of {entry['seeds']} seeds)"
    factor, spec, _ = scale(entry["metric"])
    text = f"{entry['mean'] * factor:{spec}} ± {entry['se'] * factor:{spec}}"
    if entry["diverged"]:
        text += f" ({entry['diverged']} of {entry['seeds']} diverged)"
    return text


def _difference(entry: Mapping[str, Any], comparison: Mapping[str, Any] | None) -> str:
    if comparison is None:
        return "–"
    if comparison["mean"] is None:
        return "no finite pair"
    factor, spec, _ = scale(entry["metric"])
    return (
        f"{comparison['mean'] * factor:+{spec}} ± {comparison['se'] * factor:{spec}} "
        f"({comparison['better']}/{comparison['pairs']} better)"
    )


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    problems, decays = settings(options)
    data = rows(options, finished)
    lines = []
    for problem, by_base in data.items():
        for base, entries in by_base.items():
            metric = entries[0]["metric"]
            _, _, unit = scale(metric)
            direction = "higher" if entries[0]["higher_is_better"] else "lower"
            lr = problems[problem]["lr"][base]
            lines += [
                f"**{problem}, {DISPLAY[base]} (lr {lr:g})**: final {metric_name(metric)}{unit}, "
                f"{direction} is better",
                "",
                "| variant | decay | mean ± SE | − vanilla (paired) | − critical (paired) "
                "| admitted | mean age |",
                "|---|---|---|---|---|---|---|",
            ]
            for entry in entries:
                name = DISPLAY[base] + ("" if entry["variant"] == "vanilla" else "_C ")
                name += "" if entry["variant"] == "vanilla" else entry["variant"]
                decay = "–" if entry["decay"] is None else f"{entry['decay']:g}"
                lines.append(
                    f"| {name} | {decay} | {_value(entry)} | "
                    f"{_difference(entry, entry['vs_vanilla'])} | "
                    f"{_difference(entry, entry['vs_critical'])} | "
                    f"{_percent(entry['admission'])} | "
                    f"{'–' if entry['mean_age'] is None else format(entry['mean_age'], '.1f')} |"
                )
            lines.append("")
    sizes = "; ".join(
        f"{p}: {', '.join(f'{k}={v}' for k, v in s['overrides'].items())}"
        for p, s in problems.items()
    )
    lines.append(
        f"Mean ± standard error over seeds {list(options.seeds)}; paired differences are taken "
        f"seed by seed (k/n better: in k of n seeds the variant scored better). Memory topC "
        f"{TOPC}, kappa 1, decays {', '.join(f'{d:g}' for d in decays)}; sizes: {sizes}. "
        "Admitted: gradients admitted / offered over the run; mean age: of the held entries "
        "at the end (steps)."
    )
    return Summary(
        table="\n".join(lines),
        data={
            "rows": data,
            "problems": problems,
            "decays": list(decays),
            "topC": TOPC,
            "variants": VARIANTS,
        },
    )


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import ablation_plots

    return ablation_plots.draw(options, summary, folder)


@register
def ablation() -> Study:
    return Study(
        name=NAME,
        description="which gradients the memory keeps: vanilla vs the critical, recent, smallest "
        "and random rules and memory-only, same topC/decay, SGD and Adam on mnist-mlp and "
        "mnist-convex",
        default_seeds=(0, 1, 2, 3, 4),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
