r"""Study ``convex``: the optimality gap f(x_t) - f* of SGD and SGD_C on a strongly convex problem.

Problem: the harness's ``mnist-convex`` row (L2-regularised multinomial logistic regression,
lambda 0.01, on its 5,000-row MNIST subset: 4,000 training rows, 784 standardised pixels, 10
classes), read through the problem's public ``finite_sum`` (the training rows, labels and lambda)
and evaluated in float64; the initial weights are the problem's for the seed. The quick size uses
a synthetic data set instead (``SYNTHETIC``). See :mod:`.convex_objective` for f, mu and L.

Units:

* ``fstar``: f* by L-BFGS in float64 to a gradient norm of 1e-10 (1e-9 for the quick size), with
  L (the bound and the local curvature at the minimum) and mu;
* ``full``: gradient descent with the full-batch gradient (the setting of the convergence theorem:
  deterministic, smooth, strongly convex), the first seed's initial point, ``FULL_STEPS`` steps,
  f recorded at every step;
* ``minibatch``: the harness row's setting, batch 25 drawn without replacement in an order seeded
  with the seed, ``EPOCHS`` epochs, f recorded every ``EVAL_EVERY`` steps, one unit per seed.

Optimizers, all at the step alpha = 1/L (L the bound): SGD; SGD at 2 alpha (a control: with
``aggr="sum"`` the direction g + mean(B) is about 2g when the stored gradients agree with g); and
SGD_C with ``aggr`` sum and mean for each (topC, decay) in ``MEMORIES`` (kappa 1).

The linear rate of a full-batch run is exp(slope) of a least-squares line through log(f - f*)
over the last half of its steps (points with f - f* above ``GAP_FLOOR`` only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from critgrad.bench.studies import convex_objective, optimizers
from critgrad.bench.studies.contract import Finished, Options, Study, Summary, Unit, register

DATA = {"source": "mnist-convex"}
SYNTHETIC = {"source": "synthetic", "rows": 300, "features": 20, "classes": 3, "data_seed": 7}
L2_SYNTHETIC = 0.01
MEMORIES = ({"topC": 5, "decay": 0.7}, {"topC": 10, "decay": 0.7}, {"topC": 10, "decay": 0.99})
FULL_STEPS = 1000
EPOCHS = 25
BATCH = 25
EVAL_EVERY = 40
GAP_FLOOR = 1e-13  # below this, f - f* is at the resolution of f* and of float64
TOLERANCE = 1e-10

QUICK_FULL_STEPS = 40
QUICK_EPOCHS = 2
QUICK_EVAL_EVERY = 4
QUICK_TOLERANCE = 1e-9


# ---- data -----------------------------------------------------------------------------------


def _synthetic(spec: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(spec["data_seed"])
    x = torch.randn(spec["rows"], spec["features"], generator=generator, dtype=torch.float64)
    truth = torch.randn(spec["features"], spec["classes"], generator=generator, dtype=torch.float64)
    noise = torch.rand(spec["rows"], spec["classes"], generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(noise.clamp_min(1e-12)))
    return x, (x @ truth + gumbel).argmax(dim=1)


def problem(
    data: Mapping[str, Any], seed: int, data_dir: str | None
) -> tuple[convex_objective.Objective, torch.Tensor, torch.Tensor]:
    """The objective and the seed's initial (weight, bias), float64."""
    if data["source"] == "synthetic":
        x, y = _synthetic(data)
        classes = data["classes"]
        objective = convex_objective.Objective(x, y, classes, L2_SYNTHETIC)
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(x.shape[1])
        weight = (torch.rand(classes, x.shape[1], generator=generator) * 2 - 1) * bound
        bias = (torch.rand(classes, generator=generator) * 2 - 1) * bound
        return objective, weight.double(), bias.double()
    if data["source"] != "mnist-convex":
        raise ValueError(f"data source must be 'mnist-convex' or 'synthetic', got {data!r}")
    from critgrad.bench.problems import get_problem

    task = get_problem("mnist-convex").build("cpu", seed=seed, data_dir=data_dir)
    rows = task.finite_sum
    model = task.model
    objective = convex_objective.Objective(
        rows.features.double(), rows.targets, model.out_features, rows.l2
    )
    return objective, model.weight.detach().double(), model.bias.detach().double()


# ---- units ----------------------------------------------------------------------------------


def minimum(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    objective, _, _ = problem(config["data"], 0, options.data_dir)
    found = convex_objective.minimise(objective, config["tolerance"])
    bound = convex_objective.smoothness_bound(objective.features, objective.l2)
    local = convex_objective.largest_hessian_eigenvalue(objective, found.weight, found.bias)
    return {
        "f_star": found.value,
        "gradient_norm": found.gradient_norm,
        "certified_gap": found.gradient_norm**2 / (2 * objective.l2),
        "iterations": found.iterations,
        "L_bound": bound,
        "L_local": local,
        "mu": objective.l2,
        "rows": len(objective.features),
        "features": objective.features.shape[1],
        "classes": objective.classes,
    }


def descent(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    objective, weight, bias = problem(config["data"], config["seed"], options.data_dir)
    bound = convex_objective.smoothness_bound(objective.features, objective.l2)
    lr = config["step_times_L"] / bound
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    label = config["optimizer"]
    optimizer = optimizers.build(label, [weight, bias], lr, config["memory"])
    values, steps = [], []
    diverged_at = None

    def record(step: int, value: float) -> None:
        nonlocal diverged_at
        steps.append(step)
        values.append(value)
        if not math.isfinite(value) and diverged_at is None:
            diverged_at = step

    if config["mode"] == "full":
        for step in range(config["steps"] + 1):
            optimizer.zero_grad()
            loss = objective.value(weight, bias)
            record(step, float(loss.detach()))
            if step == config["steps"] or diverged_at is not None:
                break
            loss.backward()
            optimizer.step()
    else:
        generator = torch.Generator().manual_seed(config["seed"])
        n = len(objective.features)
        step = 0
        with torch.no_grad():
            record(0, float(objective.value(weight, bias)))
        for _ in range(config["epochs"]):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, config["batch"]):
                optimizer.zero_grad()
                objective.value(weight, bias, order[start : start + config["batch"]]).backward()
                optimizer.step()
                step += 1
                if step % config["eval_every"] == 0:
                    with torch.no_grad():
                        record(step, float(objective.value(weight, bias)))
            if diverged_at is not None:
                break
        if steps[-1] != step and diverged_at is None:
            with torch.no_grad():
                record(step, float(objective.value(weight, bias)))
    result: dict[str, Any] = {
        "lr": lr,
        "L_bound": bound,
        "steps": steps,
        "f": values,
        "diverged": diverged_at is not None,
        "diverged_step": diverged_at,
    }
    if hasattr(optimizer, "memory_stats"):
        stats = optimizer.memory_stats()[0]
        result["memory"] = {k: stats[k] for k in ("offered", "admitted", "mean_age", "max_age")}
    return result


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    return minimum(config, options) if config["kind"] == "fstar" else descent(config, options)


def _settings(options: Options) -> dict[str, Any]:
    if options.quick:
        return {
            "data": SYNTHETIC,
            "full_steps": QUICK_FULL_STEPS,
            "epochs": QUICK_EPOCHS,
            "eval_every": QUICK_EVAL_EVERY,
            "tolerance": QUICK_TOLERANCE,
        }
    return {
        "data": DATA,
        "full_steps": FULL_STEPS,
        "epochs": EPOCHS,
        "eval_every": EVAL_EVERY,
        "tolerance": TOLERANCE,
    }


def variants() -> list[dict[str, Any]]:
    """The optimizers compared: name, label, step in units of 1/L, memory."""
    rows = [
        {"name": "SGD", "optimizer": "sgd", "step_times_L": 1.0, "memory": None},
        {"name": "SGD, 2x step", "optimizer": "sgd", "step_times_L": 2.0, "memory": None},
    ]
    for aggr in ("sum", "mean"):
        for memory in MEMORIES:
            rows.append(
                {
                    "name": f"SGD_C {aggr}, topC {memory['topC']}, decay {memory['decay']}",
                    "optimizer": "sgd_c",
                    "step_times_L": 1.0,
                    "memory": {**memory, "aggr": aggr},
                }
            )
    return rows


def _variant_slug(variant: Mapping[str, Any]) -> str:
    memory = variant["memory"]
    if memory is None:
        return f"sgd-x{variant['step_times_L']:g}"
    return f"sgd_c-{memory['aggr']}-c{memory['topC']}-d{memory['decay']:g}"


def plan(options: Options) -> list[Unit]:
    settings = _settings(options)
    data = settings["data"]
    units = [
        Unit(
            "convex",
            "fstar",
            {"kind": "fstar", "data": data, "tolerance": settings["tolerance"]},
        )
    ]
    for variant in variants():
        common = {
            "kind": "descent",
            "data": data,
            "optimizer": variant["optimizer"],
            "step_times_L": variant["step_times_L"],
            "memory": variant["memory"],
        }
        seed = options.seeds[0]
        units.append(
            Unit(
                "convex",
                f"full-{_variant_slug(variant)}-s{seed}",
                {**common, "mode": "full", "seed": seed, "steps": settings["full_steps"]},
            )
        )
        for seed in options.seeds:
            units.append(
                Unit(
                    "convex",
                    f"minibatch-{_variant_slug(variant)}-s{seed}",
                    {
                        **common,
                        "mode": "minibatch",
                        "seed": seed,
                        "epochs": settings["epochs"],
                        "batch": BATCH,
                        "eval_every": settings["eval_every"],
                    },
                )
            )
    return units


# ---- summary --------------------------------------------------------------------------------


def fit_rate(steps: Sequence[int], gaps: Sequence[float], floor: float = GAP_FLOOR):
    """exp(slope) of log(gap) against step over the last half of the steps (gaps above
    ``floor``); None with fewer than 3 such points."""
    steps, gaps = np.asarray(steps, float), np.asarray(gaps, float)
    keep = (steps >= steps[-1] / 2) & np.isfinite(gaps) & (gaps > floor)
    if keep.sum() < 3:
        return None
    slope = np.polyfit(steps[keep], np.log(gaps[keep]), 1)[0]
    return float(math.exp(slope))


def _variant_of(config: Mapping[str, Any]) -> str:
    for variant in variants():
        if (
            variant["optimizer"] == config["optimizer"]
            and variant["step_times_L"] == config["step_times_L"]
            and variant["memory"] == config["memory"]
        ):
            return variant["name"]
    raise ValueError(f"no variant matches {config}")


def collect(finished: Sequence[Finished]):
    """The f* unit's result, and per variant its full-batch run and its minibatch runs."""
    fstar = next(f.result for f in finished if f.unit.config["kind"] == "fstar")
    full: dict[str, Mapping[str, Any]] = {}
    minibatch: dict[str, list[Mapping[str, Any]]] = {}
    for item in finished:
        config = item.unit.config
        if config["kind"] != "descent":
            continue
        name = _variant_of(config)
        if config["mode"] == "full":
            full[name] = item.result
        else:
            minibatch.setdefault(name, []).append(item.result)
    return fstar, full, minibatch


def gaps_of(result: Mapping[str, Any], f_star: float) -> np.ndarray:
    return np.array([np.nan if v is None else v - f_star for v in result["f"]], float)


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    fstar, full, minibatch = collect(finished)
    f_star, mu, bound = fstar["f_star"], fstar["mu"], fstar["L_bound"]
    alpha = 1.0 / bound
    rows, data = [], []
    for variant in variants():
        name = variant["name"]
        run = full[name]
        gaps = gaps_of(run, f_star)
        rate = None if run["diverged"] else fit_rate(run["steps"], gaps)
        contraction = None if rate is None else 1.0 - rate
        finals = [gaps_of(r, f_star)[-1] for r in minibatch.get(name, []) if not r["diverged"]]
        admitted = run.get("memory")
        admission = (
            admitted["admitted"] / admitted["offered"] if admitted and admitted["offered"] else None
        )
        entry = {
            "variant": name,
            "step": run["lr"],
            "full_final_gap": None if run["diverged"] else float(gaps[-1]),
            "full_diverged_step": run["diverged_step"],
            "rate": rate,
            "contraction_over_alpha_mu": None
            if contraction is None
            else contraction / (alpha * mu),
            "full_admission_rate": admission,
            "minibatch_final_gap_mean": float(np.mean(finals)) if finals else None,
            "minibatch_final_gap_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
            "minibatch_diverged": sum(r["diverged"] for r in minibatch.get(name, [])),
        }
        data.append(entry)
        rows.append(_row(entry))
    setting = {
        "rows": fstar["rows"],
        "features": fstar["features"],
        "classes": fstar["classes"],
        "mu": mu,
        "L_bound": bound,
        "L_local_at_minimum": fstar["L_local"],
        "kappa": bound / mu,
        "alpha": alpha,
        "gd_rate_bound": 1.0 - alpha * mu,
        "f_star": f_star,
        "f_star_gradient_norm": fstar["gradient_norm"],
        "f_star_certified_gap": fstar["certified_gap"],
        "lbfgs_iterations": fstar["iterations"],
    }
    first = next(iter(minibatch.values()), [{}])[0]
    table = "\n".join(
        [
            "| optimizer | step | full batch: fitted rate ρ | (1 − ρ) / (αμ) | "
            "full batch: f − f* at the end | admitted (full batch) | "
            "minibatch: f − f* at the end, mean ± std over seeds |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Setting: {setting['rows']} rows, {setting['features']} features, "
            f"{setting['classes']} classes; μ = λ = {mu:g} (exact); L ≤ {bound:.4g} (bound "
            f"½ λmax(X̃ᵀX̃/n) + λ; the Hessian's largest eigenvalue at the minimum is "
            f"{fstar['L_local']:.4g}); κ = L/μ = {bound / mu:.4g}; α = 1/L = {alpha:.4g}; "
            f"gradient descent's bound f_t − f* ≤ (1 − αμ)^t (f_0 − f*) gives "
            f"1 − αμ = {1 - alpha * mu:.6f}.",
            f"f* = {f_star:.15g} by L-BFGS in float64 ({fstar['iterations']} iterations, "
            f"gradient norm {fstar['gradient_norm']:.2g}, so f̂ − f* ≤ "
            f"{fstar['certified_gap']:.2g}). Full batch: {full[variants()[0]['name']]['steps'][-1]} "
            f"steps from seed {options.seeds[0]}'s initial point, rate fitted over the last half. "
            f"Minibatch: batch {BATCH}, {first.get('steps', [0])[-1]} steps, seeds "
            f"{list(options.seeds)}.",
        ]
    )
    return Summary(table=table, data={"setting": setting, "variants": data})


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(entry: Mapping[str, Any]) -> str:
    if entry["full_diverged_step"] is not None:
        full = f"diverged (step {entry['full_diverged_step']})"
    else:
        full = _number(entry["full_final_gap"], ".3g")
    admitted = entry["full_admission_rate"]
    minibatch = _number(entry["minibatch_final_gap_mean"], ".3g")
    if entry["minibatch_final_gap_std"] is not None:
        minibatch += f" ± {entry['minibatch_final_gap_std']:.2g}"
    if entry["minibatch_diverged"]:
        minibatch += f" ({entry['minibatch_diverged']} diverged)"
    return (
        f"| {entry['variant']} | {entry['step']:.4g} | {_number(entry['rate'], '.6f')} | "
        f"{_number(entry['contraction_over_alpha_mu'], '.2f')} | {full} | "
        f"{'-' if admitted is None else f'{admitted:.0%}'} | {minibatch} |"
    )


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import convex_plots

    fstar, full, minibatch = collect(finished)
    return [convex_plots.gap_figure(variants(), fstar, full, minibatch, summary, folder)]


@register
def convex() -> Study:
    return Study(
        name="convex",
        description="optimality gap f(x_t) - f* of SGD and SGD_C (sum / mean, several topC and "
        "decay) on the strongly convex mnist-convex problem, full batch and minibatch, with "
        "fitted linear rates beside L and mu",
        default_seeds=(0, 1, 2),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
