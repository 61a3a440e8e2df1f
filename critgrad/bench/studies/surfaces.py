"""Study ``surfaces``: each optimizer against its twin on four two-dimensional test functions.

Units: one trajectory each, of one optimizer (SGD, SGD with momentum 0.9, RMSprop, Adam, and
each with the memory: topC 5, decay 0.7, kappa 1, the reference's aggregation) on one surface
(Beale, Goldstein-Price, six-hump camel, Rosenbrock; see :mod:`.surface_formulas`) from the
surface's fixed start, in float64, for a fixed number of steps:

* **full gradient**: the exact gradient (written by hand, tested against autograd), at every
  learning rate of a grid (``LR_GRID``): the learning-rate scan;
* **noisy gradient**: the exact gradient plus ``sigma`` x N(0, I) drawn from a generator seeded
  with the seed (the vanilla optimizer and its twin see the same draws), at the pair's learning
  rate ``LEARNING_RATES`` only, one unit per seed.

``LEARNING_RATES`` holds, per surface and pair, the largest value of the grid at which the
*vanilla* optimizer with full gradients ends within ``SETTLED`` of a minimum (global or local)
without diverging (a run diverges when a coordinate leaves [-1e6, 1e6] or is not finite), or where
no value does, the largest at which it does not diverge. The twin runs at the same learning rate. The summary recomputes that rule from the scan and says
where it would now pick another value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from critgrad.bench.studies import optimizers
from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register
from critgrad.bench.studies.surface_formulas import SURFACES, Surface

MEMORY = {"topC": 5, "decay": 0.7}  # the paper's toy-surface setting
PAIRS = ("sgd", "sgdm", "rmsprop", "adam")
LR_GRID = (0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4)
STEPS = {"beale": 1000, "goldstein-price": 1000, "camel": 1000, "rosenbrock": 4000}
NOISE = {"beale": 1.0, "goldstein-price": 10.0, "camel": 1.0, "rosenbrock": 1.0}  # sigma
SETTLED = 0.05  # distance to a minimum that counts as having reached it
DIVERGED = 1e6  # a coordinate beyond this (or not finite) ends the run as diverged

# The largest grid value at which the vanilla optimizer converges (see the module docstring), or
# where none does within the steps (SGD on Rosenbrock), the largest that does not diverge.
LEARNING_RATES: dict[str, dict[str, float]] = {
    "beale": {"sgd": 0.03, "sgdm": 0.01, "rmsprop": 0.03, "adam": 0.1},
    "goldstein-price": {"sgd": 3e-4, "sgdm": 1e-4, "rmsprop": 0.1, "adam": 0.1},
    "camel": {"sgd": 0.01, "sgdm": 0.003, "rmsprop": 0.03, "adam": 0.1},
    "rosenbrock": {"sgd": 1e-3, "sgdm": 1e-3, "rmsprop": 0.01, "adam": 0.1},
}

QUICK_STEPS = 25
QUICK_PAIRS = ("sgd", "adam")
QUICK_SURFACES = ("beale", "camel")
CONTROL_PAIRS = ("sgd", "sgdm")  # pairs that also run the vanilla optimizer at twice the lr


def _significant(value: float) -> float | None:
    """Six significant digits keep the unit files small; non-finite values become None."""
    return float(f"{value:.6g}") if math.isfinite(value) else None


def trajectory(
    surface: Surface,
    label: str,
    lr: float,
    steps: int,
    sigma: float = 0.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Run one optimizer on ``surface`` from its start; positions and gaps at steps 0..steps."""
    point = torch.tensor(surface.start, dtype=torch.float64, requires_grad=True)
    memory = MEMORY if optimizers.split_label(label)[1] else None
    optimizer = optimizers.build(label, [point], lr, memory)
    if sigma:
        generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        noise = sigma * torch.randn(steps, 2, generator=generator, dtype=torch.float64)
    path = [list(surface.start)]
    diverged_at = None
    for step in range(steps):
        with torch.no_grad():
            gradient = torch.stack(surface.gradient(point[0], point[1]))
            point.grad = gradient + noise[step] if sigma else gradient
        optimizer.step()
        x, y = point.tolist()
        path.append([x, y])
        if not (math.isfinite(x) and math.isfinite(y)) or max(abs(x), abs(y)) > DIVERGED:
            diverged_at = step + 1
            break
    gaps = [surface.gap(x, y) for x, y in path]
    return {
        "path": [[_significant(x), _significant(y)] for x, y in path],
        "gap": [_significant(g) for g in gaps],
        "diverged": diverged_at is not None,
        "diverged_step": diverged_at,
        "end": None if diverged_at else ending(surface, path),
    }


def ending(surface: Surface, path: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Where a finished trajectory ended: the nearest minimum, if within SETTLED, and when it
    settled there (the first step after which it never left that neighbourhood)."""
    x, y = path[-1]
    distances = [math.dist((x, y), m) for m in surface.minima]
    nearest = int(np.argmin(distances))
    gradient = surface.gradient(x, y)
    result: dict[str, Any] = {
        "x": x,
        "y": y,
        "gap": surface.gap(x, y),
        "gradient_norm": math.hypot(*gradient),
        "minimum": None,
        "kind": "none",
        "settled_step": None,
    }
    if distances[nearest] <= SETTLED:
        target = surface.minima[nearest]
        far = [i for i, p in enumerate(path) if math.dist(p, target) > SETTLED]
        value = surface.gap(*target)
        result.update(
            minimum=list(target),
            kind="global" if abs(value) < 1e-9 else "local",
            settled_step=(far[-1] + 1) if far else 0,
        )
    return result


# ---- plan and run ---------------------------------------------------------------------------


def _unit(surface: str, label: str, lr: float, steps: int, sigma: float, seed: int | None):
    mode = f"noisy-s{seed}" if sigma else "full"
    return Unit(
        study="surfaces",
        name=f"{surface}-{label}-lr{lr:g}-{mode}",
        config={
            "surface": surface,
            "optimizer": label,
            "lr": lr,
            "steps": steps,
            "noise": sigma,
            "seed": seed,
            "memory": MEMORY if optimizers.split_label(label)[1] else None,
        },
    )


def _settings(options: Options):
    """Pairs, steps per surface (its keys: the surfaces run) and the scan's learning rates."""
    if options.quick:
        grid = {s: sorted({LEARNING_RATES[s][p] for p in QUICK_PAIRS}) for s in QUICK_SURFACES}
        return QUICK_PAIRS, dict.fromkeys(QUICK_SURFACES, QUICK_STEPS), grid
    return PAIRS, STEPS, dict.fromkeys(SURFACES, LR_GRID)


def plan(options: Options) -> list[Unit]:
    pairs, steps, grid = _settings(options)
    units = []
    for surface in steps:
        for base in pairs:
            for label in (base, base + optimizers.MEMORY_SUFFIX):
                lrs = sorted(set(grid[surface]) | {LEARNING_RATES[surface][base]}, reverse=True)
                units += [_unit(surface, label, lr, steps[surface], 0.0, None) for lr in lrs]
                lr = LEARNING_RATES[surface][base]
                units += [
                    _unit(surface, label, lr, steps[surface], NOISE[surface], seed)
                    for seed in options.seeds
                ]
            if base in CONTROL_PAIRS:
                units.append(_control_unit(surface, base, steps[surface]))
    return units


def _control_unit(surface: str, base: str, steps: int) -> Unit:
    """The vanilla optimizer at twice the pair's learning rate, full gradient: with ``aggr="sum"``
    the twin's direction g + mean(B) is about 2g while the stored gradients agree with g."""
    unit = _unit(surface, base, 2 * LEARNING_RATES[surface][base], steps, 0.0, None)
    return Unit(
        unit.study, unit.name + "-control", {**unit.config, "control": "twice the pair's lr"}
    )


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    return trajectory(
        SURFACES[config["surface"]],
        config["optimizer"],
        config["lr"],
        config["steps"],
        config["noise"],
        config["seed"],
    )


# ---- summary --------------------------------------------------------------------------------


def _outcome(result: Mapping[str, Any]) -> str:
    if result["diverged"]:
        return f"diverged (step {result['diverged_step']})"
    end = result["end"]
    if end["kind"] == "none":
        return f"not settled, f-f* {end['gap']:.2g}"
    where = f"({end['minimum'][0]:.2f}, {end['minimum'][1]:.2f})"
    return f"{end['kind']} {where} at step {end['settled_step']}"


def _converged(result: Mapping[str, Any]) -> bool:
    return not result["diverged"] and result["end"]["kind"] != "none"


def _index(finished: Sequence[Finished]):
    """Full-gradient runs by (surface, label, lr), noisy runs and controls by (surface, label)."""
    full: dict[tuple[str, str, float], Mapping[str, Any]] = {}
    noisy: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    control: dict[tuple[str, str], Mapping[str, Any]] = {}
    for item in finished:
        c = item.unit.config
        if c.get("control"):
            control[(c["surface"], c["optimizer"])] = item.result
        elif c["noise"]:
            noisy.setdefault((c["surface"], c["optimizer"]), []).append(item.result)
        else:
            full[(c["surface"], c["optimizer"], c["lr"])] = item.result
    return full, noisy, control


def _largest_converging(full, surface: str, label: str) -> float | None:
    lrs = sorted((lr for s, o, lr in full if s == surface and o == label), reverse=True)
    return next((lr for lr in lrs if _converged(full[(surface, label, lr)])), None)


def _rule(full, surface: str, label: str) -> float | None:
    """The learning-rate rule: the largest converging one, else the largest not diverging."""
    lrs = sorted((lr for s, o, lr in full if s == surface and o == label), reverse=True)
    stable = [lr for lr in lrs if not full[(surface, label, lr)]["diverged"]]
    return _largest_converging(full, surface, label) or next(iter(stable), None)


def _noisy_counts(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds = ["diverged" if r["diverged"] else r["end"]["kind"] for r in results]
    finals = [r["end"]["gap"] for r in results if not r["diverged"]]
    return {
        "seeds": len(results),
        "global": kinds.count("global"),
        "local": kinds.count("local"),
        "none": kinds.count("none"),
        "diverged": kinds.count("diverged"),
        "median_final_gap": float(np.median(finals)) if finals else None,
    }


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    pairs, steps, _ = _settings(options)
    full, noisy, control = _index(finished)
    rows, data = [], []
    for surface in steps:
        for base in pairs:
            twin = base + optimizers.MEMORY_SUFFIX
            lr = LEARNING_RATES[surface][base]
            entry: dict[str, Any] = {
                "surface": surface,
                "pair": base,
                "lr": lr,
                "rule_lr": _rule(full, surface, base),
            }
            for label, key in ((base, "vanilla"), (twin, "twin")):
                result = full[(surface, label, lr)]
                entry[key] = {
                    "full": _outcome(result),
                    "full_final_gap": None if result["diverged"] else result["end"]["gap"],
                    "largest_converging_lr": _largest_converging(full, surface, label),
                    "noisy": _noisy_counts(noisy.get((surface, label), [])),
                }
            doubled = control.get((surface, base))
            entry["vanilla_twice_lr"] = None if doubled is None else _outcome(doubled)
            data.append(entry)
            v, t = entry["vanilla"], entry["twin"]
            rows.append(
                f"| {SURFACES[surface].title} | {optimizers.DISPLAY[base]} | {lr:g} | "
                f"{v['full']} | {t['full']} | {entry['vanilla_twice_lr'] or 'n/a'} | "
                f"{_noisy_cell(v['noisy'])} | "
                f"{_noisy_cell(t['noisy'])} | {_lr_cell(v['largest_converging_lr'])} / "
                f"{_lr_cell(t['largest_converging_lr'])} |"
            )
    rule_changes = [
        f"{e['surface']}/{e['pair']}: the scan gives {_lr_cell(e['rule_lr'])}"
        for e in data
        if e["rule_lr"] != e["lr"]
    ]
    table = "\n".join(
        [
            "| surface | pair | lr | full gradient: vanilla | full gradient: _C | "
            "full gradient: vanilla at 2 lr (control) | "
            "noisy: vanilla (global/local/none/div, median f-f*) | noisy: _C | "
            "largest converging lr in the scan: vanilla / _C |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Steps: {', '.join(f'{s} {n}' for s, n in steps.items())}; noise sigma: "
            f"{', '.join(f'{s} {NOISE[s]:g}' for s in steps)}; seeds {list(options.seeds)}; "
            f"memory topC {MEMORY['topC']}, decay {MEMORY['decay']}, kappa 1. 'settled' = within "
            f"{SETTLED} of the minimum from that step on.",
            "The control (SGD and SGDm only) is the vanilla optimizer at twice the pair's learning "
            "rate: SGD_C's direction g + mean(B) is about 2g while its memory agrees with g.",
            "Learning rates that the rule (the vanilla's largest converging lr in the scan, else "
            "its largest not diverging) would pick differently: "
            + ("; ".join(rule_changes) if rule_changes else "none."),
        ]
    )
    return Summary(table=table, data={"pairs": data, "steps": steps, "noise": NOISE})


def _noisy_cell(counts: Mapping[str, Any]) -> str:
    if not counts["seeds"]:
        return "-"
    gap = counts["median_final_gap"]
    median = "-" if gap is None else f"{gap:.2g}"
    return f"{counts['global']}/{counts['local']}/{counts['none']}/{counts['diverged']}, {median}"


def _lr_cell(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:g}"


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import surfaces_plots

    pairs, steps, _ = _settings(options)
    full, noisy, control = _index(finished)
    paths = [
        surfaces_plots.surface_figure(
            SURFACES[name],
            pairs,
            LEARNING_RATES[name],
            full,
            noisy,
            NOISE[name],
            folder,
            control=control,
            resolution=60 if options.quick else 240,
        )
        for name in steps
    ]
    shown = {name: SURFACES[name] for name in steps}
    paths.append(surfaces_plots.lr_scan_figure(shown, pairs, LEARNING_RATES, full, folder))
    return paths


@register
def surfaces() -> Study:
    return Study(
        name="surfaces",
        description="SGD, SGDm, RMSprop, Adam against their _C twins on Beale, Goldstein-Price, "
        "six-hump camel and Rosenbrock: full and noisy gradients, trajectories and losses",
        default_seeds=(0, 1, 2, 3, 4),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
