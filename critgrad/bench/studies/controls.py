r"""Study ``controls``: what SGD_C's advantage is made of, against the controls it implies.

SGD_C with ``aggr="sum"``, kappa 1, topC 10, decay 0.7 steps along :math:`g + \mathrm{mean}(B)`.
When every gradient is admitted (the sensitivity study measures it) B is the last 10 gradients,
and the direction is the current gradient plus a box filter of the 10 before it: a total weight
of 2 on gradients whose mean lag is :math:`\tfrac12 \cdot 0 + \tfrac12 \cdot 5.5 = 2.75` steps.
The controls, all plain torch SGD at the learning rate :math:`\eta` of the pair:

- ``sgd`` at :math:`\eta \cdot 2^k`, k in :data:`LR_POWERS`: a learning-rate grid with x2 spacing,
  so that :math:`\eta (1 + \kappa) = 2 \eta` is in it;
- ``ema``: momentum :math:`\beta` with dampening :math:`\beta` (an exponential moving average of
  the gradients, weight 1, mean lag :math:`\beta / (1 - \beta)`) at :math:`2\eta`, with
  :math:`\beta = 2.75 / 3.75`: the same total weight and the same mean lag as the memory's window;
- ``heavy-ball``: momentum 0.5, no dampening, at :math:`\eta` (total weight 2, mean lag 1);
- SGD_C with ``mid`` (half the sum: weight 1, undoing the doubling) and ``mean`` at :math:`\eta`.

The question: does SGD_C (sum) beat the best of the learning-rate grid and the momentum controls
by more than the seeds' spread? Sizes as in :mod:`.sensitivity`, with 4 evaluations per epoch;
PTB runs use the first seed only (:data:`PROBLEM_SEEDS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.studies import harness_units as H
from critgrad.bench.studies import sensitivity
from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register

PROBLEMS = sensitivity.PROBLEMS
LR = {problem: rates["sgd"] for problem, rates in sensitivity.LEARNING_RATES.items()}
LR_POWERS = (-2, -1, 0, 1, 2, 3)
QUICK_LR_POWERS = (0, 1)
MEMORY = {"topC": 10, "decay": 0.7, "kappa": 1.0}
WINDOW_LAG = 0.5 * 0.0 + 0.5 * (MEMORY["topC"] + 1) / 2  # mean lag of g + mean(last topC)
EMA_BETA = WINDOW_LAG / (1 + WINDOW_LAG)  # beta / (1 - beta) = WINDOW_LAG
PROBLEM_SEEDS = {"ptb-lstm": 1}
EVALS_PER_EPOCH = 4


def seeds_of(problem: str, options: Options) -> tuple[int, ...]:
    return options.seeds[: PROBLEM_SEEDS.get(problem, len(options.seeds))]


def arms(problem: str, options: Options) -> list[tuple[str, str, dict[str, Any]]]:
    """(arm name, label, hyperparameters) of every configuration run on ``problem``."""
    lr = LR[problem]
    powers = QUICK_LR_POWERS if options.quick else LR_POWERS
    found = [(f"sgd lr x{2.0**k:g}", "sgd", {"lr": lr * 2.0**k}) for k in powers]
    found += [
        (
            "ema (matched window)",
            "sgd",
            {"lr": 2 * lr, "momentum": round(EMA_BETA, 6), "dampening": round(EMA_BETA, 6)},
        ),
        ("heavy-ball 0.5", "sgd", {"lr": lr, "momentum": 0.5}),
    ]
    found += [
        (f"sgd_c {aggr}", "sgd_c", {"lr": lr, **MEMORY, "aggr": aggr})
        for aggr in ("sum", "mid", "mean")
    ]
    return found


def plan(options: Options) -> list[Unit]:
    units = []
    for problem in PROBLEMS:
        overrides = sensitivity.size_of(options)["overrides"][problem]
        for index, (arm, label, settings) in enumerate(arms(problem, options)):
            for seed in seeds_of(problem, options):
                config = H.spec_config(
                    problem, label, settings, seed, overrides, evals_per_epoch=EVALS_PER_EPOCH
                )
                config_name = arm.replace(" ", "-").replace("(", "").replace(")", "")
                units.append(
                    Unit("controls", f"{problem}-{index:02d}-{config_name}-s{seed}", config)
                )
    return units


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    return H.run_config(config, options.data_dir)


def _arm_of(problem: str, config: Mapping[str, Any], options: Options) -> str:
    for arm, label, settings in arms(problem, options):
        if label == config["optimizer"] and settings == config["hyperparameters"]:
            return arm
    raise ValueError(f"no arm of {problem} runs {config['optimizer']} {config['hyperparameters']}")


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for item in finished:
        c = item.unit.config
        grouped.setdefault((c["problem"], _arm_of(c["problem"], c, options)), []).append(
            {**item.result, "seed": c["seed"]}
        )
    data: dict[str, Any] = {
        "lr": LR,
        "memory": MEMORY,
        "ema_beta": EMA_BETA,
        "seeds": {p: list(seeds_of(p, options)) for p in PROBLEMS},
        "problems": {},
    }
    lines = []
    verdicts = []
    for problem in PROBLEMS:
        first = grouped[(problem, arms(problem, options)[0][0])][0]
        higher = first["higher_is_better"]
        rows = []
        for arm, label, settings in arms(problem, options):
            results = grouped[(problem, arm)]
            score = H.mean_over_seeds(results)
            probe = [r["probe"] for r in results if r.get("probe")]
            norms = [p["norms"] for p in probe]
            rows.append(
                {
                    "arm": arm,
                    "label": label,
                    "hyperparameters": settings,
                    **score,
                    "per_seed": [H.score(r) for r in results],
                    "admitted_when_full": _mean([p["admitted_when_full"] for p in probe]),
                    "direction_over_grad": _mean([n["median_direction_over_grad"] for n in norms]),
                    "cosine": _mean([n["mean_cosine"] for n in norms]),
                    "curve": _mean_curve(results),
                }
            )
        data["problems"][problem] = {
            "metric": first["metric"],
            "higher_is_better": higher,
            "rows": rows,
        }
        for row in rows:
            lines.append(
                f"| {problem} | {row['arm']} | {_lr_text(row)} | {_fmt(row)} | "
                f"{_percent(row['admitted_when_full'])} | {_num(row['direction_over_grad'])} | "
                f"{_num(row['cosine'])} |"
            )
        verdicts.append(_verdict(problem, first["metric"], higher, rows))
    data["verdicts"] = verdicts
    table = "\n".join(
        [
            "| problem | configuration | lr | final test metric | admitted once full | "
            "median |d|/|g| | mean cos(g, mean B) |",
            "|---|---|---|---|---|---|---|",
            *lines,
            "",
            *[f"- {v['text']}" for v in verdicts],
            "",
            "Mean ± std over seeds ("
            + ", ".join(f"{p}: {s}" for p, s in data["seeds"].items())
            + f"). SGD_C: topC {MEMORY['topC']}, decay {MEMORY['decay']}, kappa "
            f"{MEMORY['kappa']:g}. ema: momentum = dampening = {EMA_BETA:.4f} at twice the lr.",
        ]
    )
    return Summary(table=table, data=data)


def _verdict(problem: str, metric: str, higher: bool, rows: Sequence[Mapping[str, Any]]):
    """SGD_C (sum) against the best control, with the larger of the two seed spreads."""
    twin = next(r for r in rows if r["arm"] == "sgd_c sum")
    controls = [r for r in rows if r["label"] == "sgd" and r["mean"] is not None]
    pick = max if higher else min
    best = pick(controls, key=lambda r: r["mean"]) if controls else None
    if twin["mean"] is None or best is None:
        return {"problem": problem, "text": f"{problem}: no comparison (diverged runs)"}
    gap = (twin["mean"] - best["mean"]) * (1 if higher else -1)
    if twin["seeds"] < 2 or best["seeds"] < 2:  # one seed: no spread to compare with
        spread = None
        word = "better than" if gap > 0 else "worse than" if gap < 0 else "equal to"
        noise = "one seed, no spread measured"
    else:
        spread = max(twin["std"], best["std"])
        if gap > spread:
            word = "better than"
        elif gap < -spread:
            word = "worse than"
        else:
            word = "within the seeds' spread of"
        noise = f"seed spread {spread:.2g}"
    text = (
        f"{problem}: SGD_C (sum) {twin['mean']:.4g} is {word} the best control, "
        f"{best['arm']} ({best['mean']:.4g}); difference {gap:+.3g} {metric} "
        f"(+ = SGD_C better), {noise}"
    )
    return {
        "problem": problem,
        "best_control": best["arm"],
        "gap": gap,
        "spread": spread,
        "word": word,
        "text": text,
    }


def _mean_curve(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The validation curve averaged over the seeds that did not diverge."""
    finite = [r["curve"] for r in results if not r["diverged"]]
    if not finite:
        return []
    return [
        {
            "step": points[0]["step"],
            "valid_metric": float(np.mean([p["valid_metric"] for p in points])),
        }
        for points in zip(*finite)
    ]


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _lr_text(row: Mapping[str, Any]) -> str:
    h = row["hyperparameters"]
    extra = ""
    if "momentum" in h:
        extra = f", momentum {h['momentum']:g}" + (
            f", dampening {h['dampening']:g}" if h.get("dampening") else ""
        )
    return f"{h['lr']:g}{extra}"


def _fmt(row: Mapping[str, Any]) -> str:
    if row["mean"] is None:
        return "diverged"
    text = f"{row['mean']:.4g} ± {row['std']:.2g}"
    return text + (f" ({row['diverged']} diverged)" if row["diverged"] else "")


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f} %"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _zoom(axis, values, lrs, grid_means, window: float = 0.1) -> None:
    """Show the ``window`` below the best score; a grid point below it is written at the bottom
    edge with its value (a collapsed learning rate would otherwise flatten the rest)."""
    finite = [v for v in values if v is not None]
    if not finite or min(finite) >= max(finite) - window:
        return
    low, high = max(finite) - window, max(finite) + window / 5
    axis.set_ylim(low, high)
    for lr, value in zip(lrs, grid_means):
        if np.isfinite(value) and value < low:
            axis.annotate(
                f"{value:.2f} (off the axis)",
                (lr, low),
                xytext=(0, 8),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                arrowprops={"arrowstyle": "->", "color": "0.3"},
            )


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import plotting

    plt = plotting.pyplot()
    data = summary.data
    figure, axes = plt.subplots(
        2, len(PROBLEMS), figsize=(6.0 * len(PROBLEMS), 8.0), squeeze=False, layout="constrained"
    )
    markers = {
        "ema (matched window)": ("C4", "D"),
        "heavy-ball 0.5": ("C5", "v"),
        "sgd_c sum": ("C3", "o"),
        "sgd_c mid": ("C1", "s"),
        "sgd_c mean": ("C2", "^"),
    }
    for column, problem in enumerate(PROBLEMS):
        entry = data["problems"][problem]
        rows = entry["rows"]
        top, bottom = axes[0][column], axes[1][column]
        grid = [r for r in rows if r["arm"].startswith("sgd lr")]
        lrs = np.array([r["hyperparameters"]["lr"] for r in grid])
        mean = np.array([np.nan if r["mean"] is None else r["mean"] for r in grid])
        std = np.array([np.nan if r["std"] is None else r["std"] for r in grid])
        top.plot(lrs, mean, "-", color="0.2", marker=".", label="SGD, lr grid (x2 spacing)")
        top.fill_between(lrs, mean - std, mean + std, color="0.5", alpha=0.2)
        for r in grid:
            if r["mean"] is None:
                top.plot(r["hyperparameters"]["lr"], np.nanmin(mean), "x", color="k", ms=8)
        for r in rows:
            if r["arm"] not in markers or r["mean"] is None:
                continue
            colour, marker = markers[r["arm"]]
            # Arms at the same learning rate are drawn side by side, in the legend's order.
            nudge = 2.0 ** (0.08 * (list(markers).index(r["arm"]) - 2))
            top.errorbar(
                r["hyperparameters"]["lr"] * nudge,
                r["mean"],
                yerr=r["std"] or 0.0,
                fmt=marker,
                color=colour,
                ms=7,
                capsize=3,
                label=f"{r['arm']} (at its lr)",
                alpha=0.85,
            )
        top.set_xscale("log", base=2)
        top.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        top.minorticks_off()
        top.set_xlabel("learning rate (log2 scale)")
        direction = "higher is better" if entry["higher_is_better"] else "lower is better"
        top.set_ylabel(f"final test {entry['metric']} ({direction})")
        if entry["higher_is_better"]:
            _zoom(top, [r["mean"] for r in rows], lrs, mean)
        else:
            plotting.log_if_wide(top, [r["mean"] for r in rows], ratio=3.0)
        top.set_title(f"{problem}: SGD_C against its controls (x: diverged)", fontsize=10)
        top.legend(fontsize=7)
        shown = ["sgd lr x1", "sgd lr x2", "ema (matched window)", "sgd_c sum", "sgd_c mid"]
        for r in rows:
            if r["arm"] not in shown or not r["curve"]:
                continue
            colour = markers.get(r["arm"], ("0.2" if r["arm"] == "sgd lr x1" else "0.6", ""))[0]
            steps = [p["step"] for p in r["curve"]]
            values = [p["valid_metric"] for p in r["curve"]]
            style = "--" if r["arm"] == "sgd lr x2" else "-"
            bottom.plot(
                steps[1:],
                values[1:],
                style,
                color=colour,
                marker=".",
                label=f"{r['arm']}, lr {r['hyperparameters']['lr']:g}",
            )
        bottom.set_xlabel("step")
        bottom.set_ylabel(f"validation {entry['metric']} (mean over seeds)")
        plotting.log_if_wide(
            bottom,
            [p["valid_metric"] for r in rows if r["arm"] in shown for p in r["curve"][1:]],
            ratio=3.0,
        )
        bottom.set_title(f"{problem}: validation curves", fontsize=10)
        bottom.legend(fontsize=7)
    size = "quick" if options.quick else "default"
    seeds = "; ".join(f"{p} {len(s)} seed(s)" for p, s in data["seeds"].items())
    figure.suptitle(
        f"Controls for SGD_C ({size} size; mean ± std over seeds: {seeds})", fontsize=11
    )
    return [plotting.save(figure, folder / "controls.png")]


@register
def controls() -> Study:
    return Study(
        name="controls",
        description="SGD_C against SGD on a x2 learning-rate grid, momentum matched to the "
        "memory's window, and the mid/mean aggregations, on mnist-mlp and ptb-lstm",
        default_seeds=(0, 1, 2),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
