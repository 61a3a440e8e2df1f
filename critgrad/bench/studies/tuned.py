r"""Study ``tuned``: would the memory win if it were tuned as the paper tuned it?

The same problems and optimizer pairs (each vanilla optimizer against its ``_c`` twin) under four
protocols, all built by :mod:`critgrad.bench.protocols` and scored by the harness's own selection
(:func:`critgrad.bench.report.analyse_problem`, which calls :mod:`~critgrad.bench.selection` and
:mod:`~critgrad.bench.scoring`):

``fair``
    (a) equal budget, the learning rate only: every optimizer tries the grid's learning rates; the
    twin at the reference's recommended memory (topC 10, decay 0.7, kappa 1). Selection on the
    mean final validation metric of the first seed; reported: final test metric over all seeds.
``fair-sampled``
    (b) equal budget over (lr, topC, decay): the twin gets as many (lr, topC, decay) triples as
    the vanilla optimizer gets learning rates, drawn without replacement from the grid
    (``memory_search = "sampled"``, sample seed 0). Selection and report as (a).
``paper-valid``
    (d) the paper's grid (9 times the twin's budget: lr x topC {5, 10, 20} x decay
    {0.7, 0.9, 0.99}) with (a)'s honest selection: it separates the budget from the selection.
``paper``
    (c) the paper's protocol: the same grid, every configuration on every seed, selection *and*
    reported number on the best *test* metric over the evaluation points.

Every configuration of every protocol is a configuration of the paper's grid, and the paper's
protocol runs every configuration on every seed, so one set of runs (the grid x the seeds) serves
all four: a unit is one run of the harness's runner (its result is the run's record), and the
protocols differ only in what they select from the same records. Hence the paper's protocol runs
here on the study's seeds (0-4 by default), not on the paper's 100-104. Because all runs are there,
(b) is also scored for ``sample_draws`` further draws of its triples (sample seeds 0, 1, ...):
what equal-budget random search gives on average, not one lucky or unlucky draw.

Per problem, pair and protocol the summary gives both selected configurations, their reported
numbers, the winner (the harness's rule: the better mean; a side with a diverged reported run
loses to a finite one and shows as diverged, never as a number), and the *margin*: the per-seed
difference twin - vanilla (vanilla - twin where lower is better, so that a positive margin always
means the twin is better; accuracy in percentage points) with its mean, sample standard deviation
and a 95 % Student-t interval over the seeds. Then, per pair, how the mean margin m moves
away from (a): the paper's gain m_c - m_a, of which the 9 times larger budget gives m_d - m_a and
test-set selection (with the best epoch) m_c - m_d; the equal-budget memory search's m_b - m_a;
and under which protocols the winner differs from (a)'s.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import optimizer_labels, protocols, report, scoring
from critgrad.bench.protocols import Protocol
from critgrad.bench.record_format import RunSpec, check_record
from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register


@dataclasses.dataclass(frozen=True)
class Size:
    """What the study runs: problems with their settings, pairs, the grid, evaluation points."""

    problems: Mapping[str, Mapping[str, Any]]  # problem -> overrides of its cpu size
    pairs: tuple[str, ...]  # vanilla labels; each is compared with its _c twin
    lrs: tuple[float, ...]
    topCs: tuple[int, ...]
    decays: tuple[float, ...]
    evals_per_epoch: int
    sample_draws: int  # draws of (b)'s triples scored beside the protocol's own (sample seed 0)
    words: str  # the size in a sentence, for the notes under the table


# The published size: three MNIST problems shortened so that the 900 runs take about 45 minutes on
# two shared cores (a _c twin's step costs 5 to 15 ms there under load); the project's fair
# learning-rate grid (docs/results.md) in place of the paper's five rates, so the paper's grid is
# 27 twin configurations against 3 (still 9 times).
CPU = Size(
    problems={
        "mnist-convex": {"epochs": 2},
        "mnist-mlp": {"train_size": 10_000, "epochs": 1},
        "mnist-logreg": {"train_size": 10_000, "epochs": 1},
    },
    pairs=("sgd", "adam"),
    lrs=(0.1, 0.01, 0.001),
    topCs=protocols.PAPER_TOPCS,
    decays=protocols.PAPER_DECAYS,
    evals_per_epoch=2,
    sample_draws=20,
    words="mnist-convex 2 epochs (320 steps of batch 25); mnist-mlp and mnist-logreg 1 epoch on "
    "the first 10,000 training images (157 steps of batch 64), validation and test 10,000 images "
    "each; two evaluations per epoch",
)
# Seconds: one tiny problem, a 2 x 2 memory grid (4 times the budget) that still holds the
# recommended memory.
QUICK = Size(
    problems={"mnist-convex": {"rows": 300, "epochs": 1}},
    pairs=("sgd", "adam"),
    lrs=(0.1, 0.01),
    topCs=(5, 10),
    decays=(0.7, 0.9),
    evals_per_epoch=2,
    sample_draws=4,
    words="mnist-convex on 300 rows, 1 epoch (10 steps of batch 25); two evaluations per epoch",
)
PROTOCOL_NAMES = ("fair", "fair-sampled", "paper-valid", "paper")
LETTERS = {"fair": "a", "fair-sampled": "b", "paper-valid": "d", "paper": "c"}
SHORT = {
    "fair": "(a) fair, lr only",
    "fair-sampled": "(b) fair, (lr, topC, decay)",
    "paper-valid": "(d) paper's grid, validation",
    "paper": "(c) paper's protocol",
}


def size_of(options: Options) -> Size:
    return QUICK if options.quick else CPU


def labels(size: Size) -> list[str]:
    """Each vanilla label followed by its twin."""
    return [label for base in size.pairs for label in (base, optimizer_labels.memory_label(base))]


def sampled(size: Size, seeds: Sequence[int], sample_seed: int) -> Protocol:
    """(b): the fair protocol with ``memory_search="sampled"``, drawn with ``sample_seed``."""
    return protocols.fair(
        labels(size),
        lrs=size.lrs,
        seeds=seeds,
        tune_seeds=seeds[:1],
        memory_search="sampled",
        topCs=size.topCs,
        decays=size.decays,
        sample_seed=sample_seed,
    )


def study_protocols(size: Size, seeds: Sequence[int]) -> dict[str, Protocol]:
    """The four protocols by name, in :data:`PROTOCOL_NAMES` order (see the module docstring)."""
    seeds = tuple(seeds)
    optimizers = labels(size)
    paper = protocols.paper(
        optimizers, seeds=seeds, lrs=size.lrs, decays=size.decays, topCs=size.topCs
    )
    honest = dataclasses.replace(
        paper,
        name="paper-valid",
        tune_seeds=seeds[:1],
        selection_split="valid",
        selection_reduce="final",
        notes=f"paper's grid, fair selection: {paper.budget()[optimizers[0]]} configurations per "
        f"vanilla optimizer, {paper.budget()[optimizers[1]]} per _c twin; selection on the mean "
        f"final validation metric over seeds {list(seeds[:1])}; reported: final test metric "
        f"of the selected configuration, mean +- std over {protocols.seed_note(seeds)}",
    )
    return {
        "fair": protocols.fair(optimizers, lrs=size.lrs, seeds=seeds, tune_seeds=seeds[:1]),
        "fair-sampled": sampled(size, seeds, 0),
        "paper-valid": honest,
        "paper": paper,
    }


def _unit_name(spec: RunSpec) -> str:
    config = spec.hyperparameters
    name = f"{spec.problem}-{spec.optimizer}-lr{config['lr']:g}"
    if optimizer_labels.is_memory(spec.optimizer):
        name += f"-c{config['topC']}-d{config['decay']:g}"
    return f"{name}-s{spec.seed}"


def plan(options: Options) -> list[Unit]:
    """One unit per run of the paper's grid on every seed; the other protocols' runs are among
    them (checked here, so that a changed protocol cannot silently select from missing runs)."""
    from critgrad.bench.problems import get_problem

    size = size_of(options)
    every = study_protocols(size, options.seeds)
    grid = every["paper"]
    draws = [sampled(size, options.seeds, k) for k in range(size.sample_draws)]
    for protocol in [*every.values(), *draws]:
        for label, configs in protocol.configs.items():
            known = {scoring.config_id(c) for c in grid.configs[label]}
            stray = [c for c in configs if scoring.config_id(c) not in known]
            if stray:
                raise ValueError(
                    f"protocol {protocol.name}: {label} configurations {stray} are not in the "
                    "paper's grid that the study runs"
                )
    units = []
    for problem, overrides in size.problems.items():
        get_problem(problem).settings("cpu", overrides)  # a bad setting fails before any run
        for spec in grid.tuning_specs(problem, "cpu", overrides, size.evals_per_epoch):
            units.append(Unit(study="tuned", name=_unit_name(spec), config=spec.to_dict()))
    return units


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    """One run of the harness's runner; its record is the unit's result."""
    from critgrad.bench import runner

    return runner.run(RunSpec.from_dict(config), data_dir=options.data_dir)


# ---- the arithmetic -----------------------------------------------------------------------------


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile (scipy, a dependency of scikit-learn in the bench extra)."""
    from scipy import stats

    return float(stats.t.ppf(probability, dof))


def margin_summary(differences: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std, n and the 95 % Student-t interval of per-seed margins (> 0: twin better);
    ``clear`` when the interval excludes 0 (two or more seeds)."""
    n = len(differences)
    mean = math.fsum(differences) / n
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "low": None, "high": None, "clear": False}
    std = statistics.stdev(differences)
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return {
        "mean": mean,
        "std": std,
        "n": n,
        "low": low,
        "high": high,
        "clear": low > 0 or high < 0,
    }


def _scale(metric: str) -> float:
    return report.METRIC_FORMATS.get(metric, (1.0, 4, ""))[0]


def compare(
    problem_records: Sequence[Mapping[str, Any]], protocol: Protocol, pairs: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per vanilla label: both sides as the report sees them (selected configuration, cell,
    status), the winner by the report's rule, and the per-seed margin (None unless both sides
    have a finite reported number on every seed)."""
    result = report.analyse_problem(
        problem_records[0]["spec"]["problem"], problem_records, protocol
    )
    rows = {row["base"]: row for row in report.pair_rows(result)}
    split, reduce = protocol.reported()
    sign = 1.0 if result.higher_is_better else -1.0
    scale = _scale(result.metric)
    out = {}
    for base in pairs:
        twin = optimizer_labels.memory_label(base)
        sides = {label: result.results[label] for label in (base, twin)}
        entry: dict[str, Any] = {
            "winner": rows[base]["better"],
            "budget": {label: len(protocol.configs[label]) for label in sides},
        }
        for side, label in (("vanilla", base), ("twin", twin)):
            item = sides[label]
            entry[side] = {
                "config": item.config,
                "status": item.status,
                "cell": item.cell(result.metric),
                "mean": item.reported[0] if item.status == "ok" else None,
                "std": item.reported[1] if item.status == "ok" and item.reported[2] > 1 else None,
                "diverged_runs": item.diverged_runs,
                "diverged_configs": item.diverged_configs,
                "tried_configs": item.tried_configs,
                "admitted": item.admitted if math.isfinite(item.admitted) else None,
            }
        entry["margin"] = None
        if all(item.status == "ok" for item in sides.values()):
            by_seed = {
                label: {r["spec"]["seed"]: scoring.run_score(r, split, reduce) for r in item.runs}
                for label, item in sides.items()
            }
            seeds = sorted(set(by_seed[base]) & set(by_seed[twin]))
            if seeds:
                differences = [sign * scale * (by_seed[twin][s] - by_seed[base][s]) for s in seeds]
                entry["margin"] = {**margin_summary(differences), "per_seed": differences}
                entry["twin_better_seeds"] = sum(d > 0 for d in differences)
        out[base] = entry
    return out


def decomposition(margins: Mapping[str, float | None]) -> dict[str, float | None]:
    """How the mean margin moves away from the fair protocol's (a) (see the module docstring): the
    paper's gain c - a, of which the 9x budget gives d - a and test-set selection c - d; and the
    equal-budget memory search's b - a. None where a margin is missing."""
    a, b, d, c = (margins.get(name) for name in PROTOCOL_NAMES)

    def minus(x, y):
        return None if x is None or y is None else x - y

    return {
        "paper_gain": minus(c, a),
        "budget": minus(d, a),
        "test_selection": minus(c, d),
        "equal_budget": minus(b, a),
    }


def _records(finished: Sequence[Finished]) -> dict[str, list[Mapping[str, Any]]]:
    by_problem: dict[str, list[Mapping[str, Any]]] = {}
    for item in finished:
        problem = check_record(item.result)
        if problem is not None:
            raise ValueError(f"unit {item.unit.id}: its result is not a run record ({problem})")
        by_problem.setdefault(item.result["spec"]["problem"], []).append(item.result)
    return by_problem


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    size = size_of(options)
    seeds = tuple(options.seeds)
    every = study_protocols(size, seeds)
    by_problem = _records(finished)
    results: dict[str, Any] = {}
    for problem in size.problems:
        records = by_problem.get(problem, [])
        if not records:
            continue
        compared = {name: compare(records, p, size.pairs) for name, p in every.items()}
        draws = [
            compare(records, sampled(size, seeds, k), size.pairs)[base]
            for k in range(size.sample_draws)
            for base in size.pairs
        ]
        results[problem] = {
            "metric": records[0]["metric"],
            "higher_is_better": records[0]["higher_is_better"],
            "pairs": {},
        }
        for index, base in enumerate(size.pairs):
            by_protocol = {name: compared[name][base] for name in PROTOCOL_NAMES}
            mine = draws[index :: len(size.pairs)]
            means = {
                name: (entry["margin"] or {}).get("mean") for name, entry in by_protocol.items()
            }
            finite = [e["margin"]["mean"] for e in mine if e["margin"] is not None]
            fair_winner = by_protocol["fair"]["winner"]
            results[problem]["pairs"][base] = {
                "protocols": by_protocol,
                "decomposition": decomposition(means),
                "verdict_changes": [
                    name for name in PROTOCOL_NAMES if by_protocol[name]["winner"] != fair_winner
                ],
                "sample_draws": {
                    "draws": len(mine),
                    "twin_wins": sum(e["winner"] == "_C" for e in mine),
                    "vanilla_wins": sum(e["winner"] == "vanilla" for e in mine),
                    "margins": [None if e["margin"] is None else e["margin"]["mean"] for e in mine],
                    "mean_margin": math.fsum(finite) / len(finite) if finite else None,
                    "median_margin": statistics.median(finite) if finite else None,
                    "twin_configs": [e["twin"]["config"] for e in mine],
                },
            }
    data = {
        "size": {
            "problems": {k: dict(v) for k, v in size.problems.items()},
            "pairs": list(size.pairs),
            "lrs": list(size.lrs),
            "topCs": list(size.topCs),
            "decays": list(size.decays),
            "evals_per_epoch": size.evals_per_epoch,
            "sample_draws": size.sample_draws,
            "words": size.words,
        },
        "seeds": list(seeds),
        "protocols": {name: p.to_dict() for name, p in every.items()},
        "results": results,
    }
    return Summary(table=markdown(data), data=data)


# ---- the table ----------------------------------------------------------------------------------


def _config_words(config: Mapping[str, Any] | None) -> str:
    if config is None:
        return "-"
    words = f"lr {config['lr']:g}"
    if "topC" in config:
        words += f", C {config['topC']}, d {config['decay']:g}"
    return words


def _unit(metric: str) -> str:
    return "points" if metric == "accuracy" else ""


def margin_words(margin: Mapping[str, Any] | None, metric: str, decimals: int) -> str:
    if margin is None:
        return "-"
    text = f"{margin['mean']:+.{decimals}f}"
    if margin["std"] is not None:
        text += f" ± {margin['std']:.{decimals}f} [{margin['low']:+.{decimals}f}, "
        text += f"{margin['high']:+.{decimals}f}]"
    return f"**{text}**" if margin["clear"] else text


def _winner_words(entry: Mapping[str, Any]) -> str:
    winner = entry["winner"]
    statuses = {entry["vanilla"]["status"], entry["twin"]["status"]}
    if winner is None:
        if "missing" in statuses:
            return "-"
        return "both diverged" if statuses == {"diverged"} else "tie"
    return winner


def markdown(data: Mapping[str, Any]) -> str:
    lines = [
        "| problem | pair | protocol | budget | vanilla (selected) | _C (selected) | winner | "
        "margin: mean ± std [95 % CI] | _C better in |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    decimals = {"accuracy": 2}
    for problem, found in data["results"].items():
        metric = found["metric"]
        places = decimals.get(metric, 4)
        for base, pair in found["pairs"].items():
            name = optimizer_labels.display_name(base)
            for protocol in PROTOCOL_NAMES:
                entry = pair["protocols"][protocol]
                budget = entry["budget"]
                twin = optimizer_labels.memory_label(base)
                cells = [
                    f"{entry[side]['cell']} at {_config_words(entry[side]['config'])}"
                    for side in ("vanilla", "twin")
                ]
                better = entry.get("twin_better_seeds")
                seeds_better = "-" if better is None else f"{better}/{entry['margin']['n']}"
                lines.append(
                    f"| {problem} | {name} | {SHORT[protocol]} | {budget[base]} / {budget[twin]} "
                    f"| {cells[0]} | {cells[1]} | {_winner_words(entry)} | "
                    f"{margin_words(entry['margin'], metric, places)} | "
                    f"{seeds_better} |"
                )
    lines += [
        "",
        "Margin: per seed, _C - vanilla (vanilla - _C where lower is better), so > 0 means the _C "
        "twin is better; accuracy in percentage points, the convex objective in its own units; "
        "bold where the 95 % Student-t interval over the seeds excludes 0. Winner: the better "
        "mean, by the harness's report rule; a side with a diverged reported run shows as "
        "diverged and loses to a finite one.",
        "",
        "| problem | pair | (a) fair | (b) equal budget | (b) over draws: _C wins, median | "
        "(d) 9x grid, valid | (c) paper | paper's gain c - a | of it: 9x budget d - a | "
        "of it: test selection c - d | winner differs from (a) under |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for problem, found in data["results"].items():
        places = decimals.get(found["metric"], 4)
        for base, pair in found["pairs"].items():
            means = {
                name: (pair["protocols"][name]["margin"] or {}).get("mean")
                for name in PROTOCOL_NAMES
            }
            draws = pair["sample_draws"]
            parts = pair["decomposition"]

            def number(value, places=places):
                return "-" if value is None else f"{value:+.{places}f}"

            changes = ", ".join(f"({LETTERS[n]})" for n in pair["verdict_changes"]) or "none"
            lines.append(
                f"| {problem} | {optimizer_labels.display_name(base)} | {number(means['fair'])} | "
                f"{number(means['fair-sampled'])} | {draws['twin_wins']}/{draws['draws']}, "
                f"{number(draws['median_margin'])} | {number(means['paper-valid'])} | "
                f"{number(means['paper'])} | {number(parts['paper_gain'])} | "
                f"{number(parts['budget'])} | {number(parts['test_selection'])} | {changes} |"
            )
    size = data["size"]
    lines += [
        "",
        "Mean margins over the seeds (> 0: _C better). (b) over draws: the equal-budget protocol "
        f"scored for {size['sample_draws']} draws of the _C twin's triples (sample seeds 0-"
        f"{size['sample_draws'] - 1}; (b) itself is draw 0): in how many the _C twin wins, and the "
        "median of their mean margins.",
        "",
        f"Size: {size['words']}. Pairs: "
        + ", ".join(
            f"{optimizer_labels.display_name(b)} vs "
            f"{optimizer_labels.display_name(optimizer_labels.memory_label(b))}"
            for b in size["pairs"]
        )
        + f". Grid: lr {size['lrs']}, topC {size['topCs']}, decay {size['decays']}, kappa 1; "
        f"seeds {data['seeds']} for every protocol (the paper's protocol too, so that all four "
        "select from the same runs).",
        "",
    ]
    lines += [f"- {SHORT[name]}: {data['protocols'][name]['notes']}." for name in PROTOCOL_NAMES]
    return "\n".join(lines)


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import tuned_plots

    return [tuned_plots.margins_figure(summary.data, folder / "tuned.png")]


@register
def tuned() -> Study:
    return Study(
        name="tuned",
        description="each optimizer against its _c twin under the fair protocol (lr only), an "
        "equal budget over (lr, topC, decay), the paper's 9x grid with validation selection and "
        "the paper's protocol (test-set selection): which verdicts change, and by how much",
        default_seeds=protocols.FAIR_SEEDS,
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )


__all__ = ["CPU", "PROTOCOL_NAMES", "QUICK", "compare", "decomposition", "margin_summary", "tuned"]
