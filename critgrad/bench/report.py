"""Report: records on disk -> tables in the paper's layout (Markdown and CSV rows).

For every problem: optimizer | vanilla | _C, the reported metric's mean +- std over seeds of each
optimizer's selected configuration, the better of each pair in bold (a memory optimizer of its
own, Adam_CM, has a row of its own beside its twin's pair: "Adam vs Adam_CM"); beside it the protocol, the
budget (configurations per optimizer), the seeds, the machine and the wall time; then
time-to-target, the per-step cost and the memory's admission rate. Selection is recomputed from
the records with the sweep's own rules (:mod:`critgrad.bench.selection`), so a report can be made
at any time, also from a sweep that is still running.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench import optimizer_labels, records, scoring, selection
from critgrad.bench.manifest import read_manifest
from critgrad.bench.optimizer_labels import display_name, pair_name
from critgrad.bench.protocols import Protocol

# metric -> (scale, decimals, unit shown in the heading)
METRIC_FORMATS = {
    "accuracy": (100.0, 2, "%"),
    "perplexity": (1.0, 2, ""),
    "train_loss": (1.0, 4, ""),
    "bleu": (1.0, 2, ""),
}


@dataclasses.dataclass
class OptimizerResult:
    """One optimizer label on one problem: its selected configuration and what it scored."""

    label: str
    config: dict[str, Any] | None
    runs: list[Mapping[str, Any]]  # the selected configuration's runs on the reported seeds
    groups: dict[str, list[Mapping[str, Any]]]  # every configuration's runs
    reported: tuple[float, float, int]  # mean, std, n of the reported metric
    valid: tuple[float, float, int]  # mean, std, n of the final validation metric
    step_ms: tuple[float, float]  # optimizer.step() ms, whole training step ms (medians)
    admitted: float  # admitted / offered gradients at the end (NaN without memory)
    mean_age: float | None
    # In the label's own pair (a vanilla label in several pairs: the first); per pair in
    # ProblemResult.times.
    time_to_target: tuple[int, float] | None = None
    diverged_runs: int = 0  # among ``runs``
    tried_configs: int = 0  # configurations with a run on the selection seeds
    diverged_configs: int = 0  # of those, the ones with a diverged run there

    @property
    def status(self) -> str:
        """One of "ok", "diverged" (a reported run diverged, or every configuration tried did), or
        "missing" (nothing to report yet)."""
        if self.config is None:
            if self.tried_configs and self.diverged_configs == self.tried_configs:
                return "diverged"
            return "missing"
        return "diverged" if self.diverged_runs else "ok"

    def cell(self, metric: str) -> str:
        """The table cell: the summary, or in words why there is none."""
        if self.config is None and self.status == "diverged":
            count = self.tried_configs
            return f"diverged (all {count} configurations)" if count > 1 else "diverged"
        if self.diverged_runs:
            return f"diverged ({self.diverged_runs} of {len(self.runs)} seeds)"
        return format_value(metric, self.reported)


@dataclasses.dataclass
class ProblemResult:
    problem: str
    description: str
    metric: str
    higher_is_better: bool
    results: dict[str, OptimizerResult]
    pairs: list[tuple[str, str | None, str | None]]  # (pair key, vanilla, twin) present
    targets: dict[str, float]  # pair key -> validation target of the pair
    wall_seconds: float  # sum of the problem's run wall times
    seeds: list[int]
    # pair key -> label -> (steps, seconds) to the pair's target, or None if never reached
    times: dict[str, dict[str, tuple[int, float] | None]] = dataclasses.field(default_factory=dict)

    def target_of(self, label: str) -> float:
        """The validation target of ``label``'s own pair (its first, for a vanilla label in
        several); NaN when it has none."""
        for key, vanilla, twin in self.pairs:
            if label in (vanilla, twin) and key in self.targets:
                return self.targets[key]
        return math.nan


@dataclasses.dataclass
class Analysis:
    run_dir: Path
    protocol: Protocol
    manifest: dict[str, Any] | None
    problems: list[ProblemResult]
    broken: list[str]
    machine: dict[str, Any] | None


def infer_protocol(all_records: Sequence[Mapping[str, Any]]) -> Protocol:
    """For a folder without a sweep manifest: every configuration found, selected on validation."""
    configs: dict[str, list[dict[str, Any]]] = {}
    for record in all_records:
        config = dict(record["spec"]["hyperparameters"])
        bucket = configs.setdefault(record["spec"]["optimizer"], [])
        if config not in bucket:
            bucket.append(config)
    seeds = tuple(sorted({r["spec"]["seed"] for r in all_records}))
    return Protocol(
        "unknown",
        configs,
        seeds,
        seeds,
        "valid",
        "final",
        "no sweep manifest: every configuration found in the folder, selection on the "
        "mean final validation metric over all seeds, reported: final test metric",
    )


def _problem_info(name: str) -> str:
    try:
        from critgrad.bench.problems import get_problem

        return get_problem(name).description
    except Exception:
        return ""


def analyse_problem(
    problem: str, problem_records: Sequence[Mapping[str, Any]], protocol: Protocol
) -> ProblemResult:
    """Selection, summaries and time-to-target for one problem (pure given the records)."""
    higher = problem_records[0]["higher_is_better"]
    split, reduce = protocol.reported()
    chosen = selection.selected_configs(problem_records, protocol)
    results: dict[str, OptimizerResult] = {}
    for label, configs in protocol.configs.items():
        groups = selection.group_by_config(problem_records, label, configs)
        config = chosen.get(label)
        runs = (
            [r for r in groups.get(config, []) if r["spec"]["seed"] in protocol.seeds]
            if config
            else []
        )
        ages = [
            r["history"][-1]["memory"]["mean_age"]
            for r in runs
            if r["history"][-1].get("memory")
            and r["history"][-1]["memory"].get("mean_age") is not None
        ]
        tuned = [
            [r for r in group if r["spec"]["seed"] in protocol.tune_seeds]
            for group in groups.values()
        ]
        tuned = [group for group in tuned if group]
        results[label] = OptimizerResult(
            label=label,
            config=json.loads(config) if config else None,
            runs=runs,
            groups=groups,
            reported=scoring.mean_std(scoring.metric_values(runs, split, reduce)),
            valid=scoring.mean_std(scoring.metric_values(runs, "valid", "final")),
            step_ms=scoring.per_step_ms(runs),
            admitted=scoring.admitted_fraction(runs),
            mean_age=sum(ages) / len(ages) if ages else None,
            diverged_runs=scoring.diverged_count(runs),
            tried_configs=len(tuned),
            diverged_configs=sum(1 for group in tuned if scoring.diverged_count(group)),
        )
    pairs = optimizer_labels.pairs(protocol.configs)
    targets: dict[str, float] = {}
    times: dict[str, dict[str, tuple[int, float] | None]] = {}
    for key, vanilla, twin in pairs:
        if vanilla and twin and results[vanilla].status == results[twin].status == "ok":
            target = scoring.pair_target(
                [results[vanilla].valid[0], results[twin].valid[0]], higher
            )
            targets[key] = target
            times[key] = {
                label: scoring.time_to_target(results[label].runs, target, higher)
                for label in (vanilla, twin)
            }
    for label, item in results.items():  # each label's own (first) pair
        for key, vanilla, twin in pairs:
            if key in times and label in (vanilla, twin):
                item.time_to_target = times[key][label]
                break
    return ProblemResult(
        problem=problem,
        description=_problem_info(problem),
        metric=problem_records[0]["metric"],
        higher_is_better=higher,
        results=results,
        pairs=pairs,
        targets=targets,
        wall_seconds=math.fsum(r["wall_seconds"] for r in problem_records),
        seeds=list(protocol.seeds),
        times=times,
    )


def analyse(run_dir: str | os.PathLike) -> Analysis:
    """Read a run directory and analyse every problem in it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    all_records, broken = records.read_records(run_dir)
    manifest = read_manifest(run_dir)
    if not all_records:
        first = f"; the first: {broken[0]}" if broken else ""
        raise ValueError(
            f"no run records in {run_dir}" + (f" ({len(broken)} broken{first})" if broken else "")
        )
    protocol = Protocol.from_dict(manifest["protocol"]) if manifest else infer_protocol(all_records)
    problems = []
    names = (
        manifest["problems"] if manifest else sorted({r["spec"]["problem"] for r in all_records})
    )
    for name in names:
        if manifest:
            mine = selection.matching_records(
                all_records,
                name,
                manifest["size"],
                manifest["overrides"].get(name, {}),
                manifest["evals_per_epoch"],
            )
        else:
            mine = [r for r in all_records if r["spec"]["problem"] == name]
        if mine:
            problems.append(analyse_problem(name, mine, protocol))
    machine = (manifest or {}).get("machine") or all_records[0].get("machine")
    return Analysis(run_dir, protocol, manifest, problems, broken, machine)


# ---- formatting ---------------------------------------------------------------------------------


def format_value(metric: str, summary: tuple[float, float, int]) -> str:
    """ "mean ± std" in the metric's unit; "n=1" instead of a std for a single seed."""
    mean, std, n = summary
    scale, decimals, _ = METRIC_FORMATS.get(metric, (1.0, 4, ""))
    if n == 0:
        return "-"
    if not math.isfinite(mean):
        return "diverged"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if n > 1 else " (n=1)")


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _metric_heading(result: ProblemResult, protocol: Protocol) -> str:
    split, reduce = protocol.reported()
    unit = METRIC_FORMATS.get(result.metric, (1, 4, ""))[2]
    which = "final" if reduce == "final" else "best over epochs"
    arrow = "higher is better" if result.higher_is_better else "lower is better"
    return f"{split} {result.metric}{f' ({unit})' if unit else ''}, {which}; {arrow}"


_NOTHING = (math.nan, math.nan, 0)


def pair_rows(result: ProblemResult) -> list[dict[str, Any]]:
    """The paper-layout rows: one per vanilla label, with which side is better (a side that
    diverged loses to one that did not; two diverged sides mark nothing)."""
    rows = []
    for base, vanilla, twin in result.pairs:
        sides = {}
        for side, label in (("vanilla", vanilla), ("memory", twin)):
            item = result.results[label] if label else None
            sides[side] = item.reported if item else _NOTHING
            sides[f"{side}_status"] = item.status if item else "missing"
            sides[f"{side}_text"] = item.cell(result.metric) if item else "-"
        left, right = sides["vanilla"], sides["memory"]
        status = (sides["vanilla_status"], sides["memory_status"])
        winner = None
        if status == ("ok", "ok") and left[2] and right[2]:
            if scoring.better(left[0], right[0], result.higher_is_better):
                winner = "vanilla"
            elif scoring.better(right[0], left[0], result.higher_is_better):
                winner = "_C"
        elif status == ("ok", "diverged"):
            winner = "vanilla"
        elif status == ("diverged", "ok"):
            winner = "_C"
        rows.append({"base": base, **sides, "better": winner})
    return rows


def divergence_lines(result: ProblemResult) -> list[str]:
    """One phrase per optimizer label with diverged runs, for the notes under the table."""
    phrases = []
    for label, item in result.results.items():
        parts = []
        if item.diverged_configs:
            parts.append(
                f"{item.diverged_configs} of {item.tried_configs} configurations on the "
                "selection seeds" + (" (none left to select)" if item.config is None else "")
            )
        if item.diverged_runs:
            parts.append(
                f"{item.diverged_runs} of {len(item.runs)} reported runs of the selected one"
            )
        if parts:
            phrases.append(f"{display_name(label)}: {', '.join(parts)}")
    return phrases


def problem_markdown(
    result: ProblemResult, analysis: Analysis, plot_paths: Sequence[str] = ()
) -> str:
    protocol = analysis.protocol
    lines = [
        f"## {result.problem}" + (f": {result.description}" if result.description else ""),
        "",
        f"Metric: {_metric_heading(result, protocol)}. Better of each pair in bold.",
        "",
        "| optimizer | vanilla | _C |",
        "|---|---|---|",
    ]
    for row in pair_rows(result):
        cells = []
        for side, key in (("vanilla", "vanilla"), ("_C", "memory")):
            text = row[f"{key}_text"]
            cells.append(f"**{text}**" if row["better"] == side else text)
        lines.append(f"| {pair_name(row['base'])} | {cells[0]} | {cells[1]} |")
    budget = ", ".join(f"{display_name(k)} {v}" for k, v in protocol.budget().items())
    machine = analysis.machine or {}
    threads = sorted(
        {
            r["machine"].get("torch_threads")
            for item in result.results.values()
            for r in item.runs
            if r.get("machine")
        }
        - {None}
    )
    executor = (analysis.manifest or {}).get("executor") or {}
    total = (analysis.manifest or {}).get("wall_seconds")
    lines.append("")
    for key, _, twin in result.pairs:
        if twin == key and optimizer_labels.base_label(key) != key:  # not a _c twin
            lines.append(
                f"- {pair_name(key)}: the _C column holds {display_name(key)}, a memory "
                f"optimizer of its own, compared with its vanilla twin "
                f"{display_name(optimizer_labels.base_label(key))}."
            )
    lines += [
        f"- Protocol: {protocol.notes}.",
        f"- Budget (configurations per optimizer): {budget}.",
        f"- Seeds: {', '.join(map(str, result.seeds))}.",
        f"- Machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores, "
        f"torch {machine.get('torch', '?')}; {'/'.join(map(str, threads)) or '?'} torch "
        f"thread(s) per run"
        + (
            f", {executor['workers']} parallel worker(s) ({executor.get('kind')})"
            if executor.get("workers")
            else ""
        )
        + ".",
        f"- Wall time: {_seconds(result.wall_seconds)} summed over this problem's runs"
        + (f"; {_seconds(total)} elapsed for the whole sweep" if total else "")
        + ".",
    ]
    selected = [
        f"{display_name(label)} {r.config}"
        for label, r in result.results.items()
        if r.config is not None
    ]
    if selected and protocol.name != "fixed":
        lines.append(f"- Selected: {'; '.join(selected)}.")
    diverged = divergence_lines(result)
    if diverged:
        lines.append(
            f"- Diverged (never selected, never averaged into a number): {'; '.join(diverged)}."
        )
    lines += ["", _time_to_target_table(result), "", _cost_table(result)]
    for path in plot_paths:
        lines += ["", f"![{Path(path).stem}]({path})"]
    return "\n".join(lines)


def unresolved_lines(analysis: Analysis) -> list[str]:
    """One line per optimizer label that has no number because every configuration diverged."""
    return [
        f"{result.problem}: every configuration of {display_name(label)} diverged "
        f"({item.tried_configs} tried); the table says so"
        for result in analysis.problems
        for label, item in result.results.items()
        if item.config is None and item.status == "diverged"
    ]


def _time_to_target_table(result: ProblemResult) -> str:
    if not result.targets:
        return "Time to target: no pair has results on both sides to compare."
    scale, decimals, unit = METRIC_FORMATS.get(result.metric, (1.0, 4, ""))
    lines = [
        "Time to target (target: the worse of the pair's mean final validation "
        f"{result.metric}; first evaluation point where the seed-averaged validation curve "
        "reaches it; training seconds, evaluation excluded):",
        "",
        f"| optimizer | target{f' ({unit})' if unit else ''} | vanilla steps | vanilla s | "
        "_C steps | _C s |",
        "|---|---|---|---|---|---|",
    ]
    for base, vanilla, twin in result.pairs:
        if base not in result.targets:
            continue
        cells = []
        for label in (vanilla, twin):
            reached = result.times[base][label]
            cells += [str(reached[0]), f"{reached[1]:.1f}"] if reached else ["-", "-"]
        target = result.targets[base]
        lines.append(
            f"| {pair_name(base)} | {target * scale:.{decimals}f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _cost_table(result: ProblemResult) -> str:
    lines = [
        "Per-step cost (medians over the reported runs; ratios are what carries between "
        "machines) and the memory's admission rate once offered:",
        "",
        "| optimizer | step() ms vanilla | step() ms _C | ratio | train step ms vanilla | "
        "train step ms _C | _C admitted | _C mean age |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for base, vanilla, twin in result.pairs:
        left = result.results[vanilla].step_ms if vanilla else (math.nan, math.nan)
        right = result.results[twin] if twin else None
        right_ms = right.step_ms if right else (math.nan, math.nan)
        ratio = right_ms[0] / left[0] if left[0] and math.isfinite(left[0]) else math.nan
        admitted = (
            f"{100 * right.admitted:.1f} %" if right and math.isfinite(right.admitted) else "-"
        )
        age = f"{right.mean_age:.1f}" if right and right.mean_age is not None else "-"
        lines.append(
            f"| {pair_name(base)} | {_ms(left[0])} | {_ms(right_ms[0])} | "
            f"{'-' if not math.isfinite(ratio) else f'{ratio:.2f}x'} | {_ms(left[1])} | "
            f"{_ms(right_ms[1])} | {admitted} | {age} |"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def markdown(analysis: Analysis, plots: Mapping[str, Sequence[str]] | None = None) -> str:
    """The whole report as Markdown."""
    lines = [
        f"# Results: {analysis.run_dir.name}",
        "",
        "Each optimizer against its memory-augmented (_C) twin. Numbers are mean ± sample "
        "standard deviation over seeds of each optimizer's selected configuration.",
        "",
    ]
    if analysis.manifest and analysis.manifest.get("command"):
        lines += [f"Reproduce: `{analysis.manifest['command']}`", ""]
    if analysis.broken:
        lines += [
            f"{len(analysis.broken)} broken record(s) were skipped: " + "; ".join(analysis.broken),
            "",
        ]
    for result in analysis.problems:
        lines += [problem_markdown(result, analysis, (plots or {}).get(result.problem, ())), ""]
    return "\n".join(lines).rstrip() + "\n"


# ---- CSV ----------------------------------------------------------------------------------------


def table_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """The paper-layout table as CSV rows (numbers in the metric's raw unit)."""
    rows = []
    for result in analysis.problems:
        for row in pair_rows(result):
            rows.append(
                {
                    "problem": result.problem,
                    "optimizer": pair_name(row["base"]),
                    "metric": result.metric,
                    "vanilla_mean": row["vanilla"][0],
                    "vanilla_std": row["vanilla"][1],
                    "vanilla_n": row["vanilla"][2],
                    "c_mean": row["memory"][0],
                    "c_std": row["memory"][1],
                    "c_n": row["memory"][2],
                    "better": row["better"] or "",
                    "vanilla_status": row["vanilla_status"],
                    "c_status": row["memory_status"],
                }
            )
    return rows


def result_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per problem and optimizer label, with everything the report shows."""
    rows = []
    for result in analysis.problems:
        for label, item in result.results.items():
            reached = item.time_to_target
            rows.append(
                {
                    "problem": result.problem,
                    "optimizer": label,
                    "config": json.dumps(item.config),
                    "metric": result.metric,
                    "mean": item.reported[0],
                    "std": item.reported[1],
                    "n": item.reported[2],
                    "valid_mean": item.valid[0],
                    "valid_std": item.valid[1],
                    "target": result.target_of(label),
                    "steps_to_target": reached[0] if reached else "",
                    "seconds_to_target": reached[1] if reached else "",
                    "step_ms": item.step_ms[0],
                    "train_step_ms": item.step_ms[1],
                    "admitted_fraction": item.admitted,
                    "configurations": len(item.groups),
                    "status": item.status,
                    "diverged_runs": item.diverged_runs,
                    "diverged_configurations": item.diverged_configs,
                }
            )
    return rows
