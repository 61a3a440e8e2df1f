r"""Study ``label-noise``: does the memory make logistic regression more robust to flipped labels?

Data (per seed s): scikit-learn's ``make_classification(n_samples=500, n_features=10,
n_informative=7, class_sep=0.5, flip_y=0.0, random_state=s)`` (two classes; its other arguments
at their defaults: 2 redundant features, 2 clusters per class; ``flip_y=0`` so that the only label
noise is the study's), split 80 / 20 into train / test (stratified, ``random_state=s``), features
standardised with the training rows' mean and standard deviation. A fraction
:math:`\phi \in \{0.0, 0.1, \dots, 1.0\}` of the *training* labels is flipped: the first
:math:`\mathrm{round}(\phi n)` rows of one permutation drawn from ``numpy.random.default_rng(s)``,
so the flipped sets are nested as :math:`\phi` grows. Test labels are never flipped.

Model: logistic regression :math:`p(y = 1 \mid x) = \sigma(w^\top x + b)`, parameters
:math:`\theta = (w, b)` in one float64 tensor starting at zero, trained per sample (batch 1) on
the log loss, whose gradient is :math:`(\sigma(\theta^\top \tilde x) - y)\,\tilde x` with
:math:`\tilde x = (x, 1)`, for a fixed number of epochs; the order of the rows in each epoch is
drawn from a torch generator seeded with s (the same for every optimizer and noise level).

Score: micro-averaged F1 on the clean test labels (for one label per row, micro-F1 equals the
accuracy). Optimizers: SGD, SGD with momentum 0.9, RMSprop, Adam and their twins with the memory
(``MEMORY``), each pair at the learning rate in ``LEARNING_RATES``.
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

DATA = {"samples": 500, "features": 10, "informative": 7, "class_sep": 0.5, "test_fraction": 0.2}
NOISE_LEVELS = tuple(round(0.1 * i, 1) for i in range(11))
EPOCHS = 5
MEMORY = {"topC": 10, "decay": 0.7}  # the reference package's defaults
PAIRS = ("sgd", "sgdm", "rmsprop", "adam")
# The vanilla optimizer's best of {0.1, 0.01, 0.001} in a pilot (seeds 0-2, test F1 at noise 0
# and 0.3, 5 epochs); the twin gets the same.
LEARNING_RATES = {"sgd": 0.01, "sgdm": 0.001, "rmsprop": 0.001, "adam": 0.001}

QUICK_DATA = {**DATA, "samples": 100}
QUICK_NOISE_LEVELS = (0.0, 0.5, 1.0)
QUICK_EPOCHS = 1
QUICK_PAIRS = ("sgd", "adam")


def _sklearn():
    try:
        from sklearn.datasets import make_classification
        from sklearn.metrics import f1_score
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise RuntimeError(
            "the label-noise study needs scikit-learn: pip install 'critgrad[bench]'"
        ) from error
    return make_classification, train_test_split, f1_score


def noisy_problem(data: Mapping[str, Any], noise: float, seed: int):
    """Training rows (with ones appended), noisy training labels, test rows, clean test labels."""
    make_classification, train_test_split, _ = _sklearn()
    x, y = make_classification(
        n_samples=data["samples"],
        n_features=data["features"],
        n_informative=data["informative"],
        class_sep=data["class_sep"],
        flip_y=0.0,
        random_state=seed,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=data["test_fraction"], random_state=seed, stratify=y
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0

    def rows(features: np.ndarray) -> torch.Tensor:
        standard = (features - mean) / std
        return torch.from_numpy(np.hstack([standard, np.ones((len(features), 1))]))

    noisy = y_train.copy()
    flipped = np.random.default_rng(seed).permutation(len(noisy))[: round(noise * len(noisy))]
    noisy[flipped] = 1 - noisy[flipped]
    return rows(x_train), torch.from_numpy(noisy).double(), rows(x_test), y_test


def log_loss_gradient(theta: torch.Tensor, row: torch.Tensor, label: torch.Tensor):
    """Gradient of the log loss of one row: (sigmoid(theta . row) - label) * row."""
    return (torch.sigmoid(row @ theta) - label) * row


def train(
    label: str, lr: float, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """Per-sample training of logistic regression from zero; returns theta and the optimizer."""
    theta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    memory = MEMORY if optimizers.split_label(label)[1] else None
    optimizer = optimizers.build(label, [theta], lr, memory)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for i in torch.randperm(len(x), generator=generator).tolist():
            with torch.no_grad():
                theta.grad = log_loss_gradient(theta, x[i], y[i])
            optimizer.step()
    return theta.detach(), optimizer


def _mean_log_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y))


def run_unit(config: Mapping[str, Any], options: Options) -> dict[str, Any]:
    _, _, f1_score = _sklearn()
    x, y, x_test, y_test = noisy_problem(config["data"], config["noise"], config["seed"])
    theta, optimizer = train(
        config["optimizer"], config["lr"], x, y, config["epochs"], config["seed"]
    )
    if not torch.isfinite(theta).all():
        return {"diverged": True, "test_f1": None}
    predictions = (x_test @ theta > 0).long().numpy()
    result = {
        "diverged": False,
        "test_f1": float(f1_score(y_test, predictions, average="micro")),
        "test_loss": _mean_log_loss(theta, x_test, torch.from_numpy(y_test).double()),
        "train_loss_noisy_labels": _mean_log_loss(theta, x, y),
        "theta_norm": float(theta.norm()),
    }
    if hasattr(optimizer, "memory_stats"):
        stats = optimizer.memory_stats()[0]
        result["memory"] = {k: stats[k] for k in ("offered", "admitted", "mean_age")}
    return result


def _settings(options: Options):
    if options.quick:
        return QUICK_DATA, QUICK_NOISE_LEVELS, QUICK_EPOCHS, QUICK_PAIRS
    return DATA, NOISE_LEVELS, EPOCHS, PAIRS


def plan(options: Options) -> list[Unit]:
    data, levels, epochs, pairs = _settings(options)
    units = []
    for base in pairs:
        for label in (base, base + optimizers.MEMORY_SUFFIX):
            for noise in levels:
                for seed in options.seeds:
                    units.append(
                        Unit(
                            study="label-noise",
                            name=f"{label}-noise{noise:.1f}-s{seed}",
                            config={
                                "optimizer": label,
                                "lr": LEARNING_RATES[base],
                                "memory": MEMORY if label != base else None,
                                "noise": noise,
                                "seed": seed,
                                "epochs": epochs,
                                "data": data,
                            },
                        )
                    )
    return units


def _scores(finished: Sequence[Finished]) -> dict[tuple[str, float], dict[int, float | None]]:
    scores: dict[tuple[str, float], dict[int, float | None]] = {}
    for item in finished:
        c = item.unit.config
        scores.setdefault((c["optimizer"], c["noise"]), {})[c["seed"]] = item.result["test_f1"]
    return scores


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    finite = [v for v in values if v is not None]
    if not finite:
        return None, None, 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(values) - len(finite)


def summarize(options: Options, finished: Sequence[Finished]) -> Summary:
    data, levels, epochs, pairs = _settings(options)
    scores = _scores(finished)
    curves: dict[str, list[dict[str, Any]]] = {}
    for base in pairs:
        for label in (base, base + optimizers.MEMORY_SUFFIX):
            curves[label] = []
            for noise in levels:
                mean, std, diverged = _mean_std(list(scores[(label, noise)].values()))
                curves[label].append(
                    {"noise": noise, "mean": mean, "std": std, "diverged": diverged}
                )
    differences = {}
    for base in pairs:
        twin = base + optimizers.MEMORY_SUFFIX
        paired = [
            scores[(twin, n)][s] - scores[(base, n)][s]
            for n in levels
            for s in options.seeds
            if scores[(twin, n)][s] is not None and scores[(base, n)][s] is not None
        ]
        differences[base] = {
            "mean": float(np.mean(paired)),
            "std": float(np.std(paired, ddof=1)) if len(paired) > 1 else 0.0,
            "twin_better": sum(d > 0 for d in paired),
            "vanilla_better": sum(d < 0 for d in paired),
            "ties": sum(d == 0 for d in paired),
            "pairs": len(paired),
        }
        differences[base]["sign_test_p"] = sign_test(
            differences[base]["twin_better"], differences[base]["vanilla_better"]
        )
    header = "| flipped | " + " | ".join(
        f"{optimizers.DISPLAY[b]} | {optimizers.DISPLAY[b]}_C" for b in pairs
    )
    lines = [header + " |", "|---" * (1 + 2 * len(pairs)) + "|"]
    for i, noise in enumerate(levels):
        cells = []
        for base in pairs:
            twin = base + optimizers.MEMORY_SUFFIX
            v, t = curves[base][i], curves[twin][i]
            better = _better(v["mean"], t["mean"])
            cells += [_cell(v, better == "vanilla"), _cell(t, better == "twin")]
        lines.append(f"| {noise:.1f} | " + " | ".join(cells) + " |")
    lines.append(
        "| _C − vanilla, mean over levels and seeds | "
        + " | ".join(
            f"{differences[b]['mean']:+.3f} ± {differences[b]['std']:.3f} | "
            f"_C better in {differences[b]['twin_better']}/{differences[b]['pairs']}, "
            f"worse in {differences[b]['vanilla_better']} (sign test p = "
            f"{differences[b]['sign_test_p']:.2g})"
            for b in pairs
        )
        + " |"
    )
    lines += [
        "",
        f"Test micro-F1, mean ± std over seeds {list(options.seeds)} (better of a pair in bold). "
        f"{data['samples']} samples, {epochs} epochs at batch 1; learning rates "
        + ", ".join(f"{optimizers.DISPLAY[b]} {LEARNING_RATES[b]:g}" for b in pairs)
        + f"; memory topC {MEMORY['topC']}, decay {MEMORY['decay']}.",
    ]
    return Summary(
        table="\n".join(lines),
        data={
            "curves": curves,
            "differences": differences,
            "learning_rates": {b: LEARNING_RATES[b] for b in pairs},
            "epochs": epochs,
            "data": data,
            "memory": MEMORY,
        },
    )


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test: the probability, with wins and losses equally likely, of a split at
    least as uneven as ``wins`` : ``losses`` (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _better(vanilla: float | None, twin: float | None) -> str | None:
    """Which mean is higher as the table prints them (3 decimals); None for a tie."""
    if vanilla is None or twin is None or round(vanilla, 3) == round(twin, 3):
        return None
    return "twin" if twin > vanilla else "vanilla"


def _cell(point: Mapping[str, Any], bold: bool) -> str:
    if point["mean"] is None:
        return "diverged"
    text = f"{point['mean']:.3f} ± {point['std']:.3f}"
    if point["diverged"]:
        text += f" ({point['diverged']} diverged)"
    return f"**{text}**" if bold else text


def figures(
    options: Options, finished: Sequence[Finished], summary: Summary, folder: Path
) -> list[Path]:
    from critgrad.bench.studies import plotting

    _, levels, epochs, pairs = _settings(options)
    scores = _scores(finished)
    plt = plotting.pyplot()
    figure, axes = plt.subplots(
        2,
        len(pairs),
        figsize=(3.6 * len(pairs), 6.4),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for column, base in enumerate(pairs):
        twin = base + optimizers.MEMORY_SUFFIX
        top, bottom = axes[0][column], axes[1][column]
        for label in (base, twin):
            points = summary.data["curves"][label]
            mean = np.array([np.nan if p["mean"] is None else p["mean"] for p in points])
            std = np.array([np.nan if p["std"] is None else p["std"] for p in points])
            top.plot(
                levels,
                mean,
                plotting.line_style(label) + "o",
                ms=3,
                color=plotting.colour(label),
                label=f"{optimizers.display(label)} (lr {LEARNING_RATES[base]:g})",
            )
            top.fill_between(
                levels, mean - std, mean + std, color=plotting.colour(label), alpha=0.15
            )
        difference = np.array(
            [
                [
                    np.nan
                    if scores[(twin, n)][s] is None or scores[(base, n)][s] is None
                    else scores[(twin, n)][s] - scores[(base, n)][s]
                    for s in options.seeds
                ]
                for n in levels
            ]
        )
        with np.errstate(all="ignore"):
            mean = np.nanmean(difference, axis=1)
            std = np.nanstd(difference, axis=1, ddof=1) if len(options.seeds) > 1 else 0 * mean
        bottom.axhline(0.0, color="0.5", lw=0.8)
        bottom.plot(levels, mean, "o-", ms=3, color=plotting.colour(base))
        bottom.fill_between(levels, mean - std, mean + std, color=plotting.colour(base), alpha=0.2)
        top.set_title(f"{optimizers.DISPLAY[base]} vs {optimizers.display(twin)}", fontsize=10)
        top.set_ylim(0.0, 1.0)
        top.legend(fontsize=7, loc="lower left")
        bottom.set_xlabel("fraction of training labels flipped")
        if column == 0:
            top.set_ylabel("test micro-F1")
            bottom.set_ylabel("F1(_C) − F1(vanilla), same seed")
    # One scale for the paired differences, so that the pairs can be compared by eye.
    limit = max(max(abs(v) for v in axis.get_ylim()) for axis in axes[1])
    for axis in axes[1]:
        axis.set_ylim(-limit, limit)
    figure.suptitle(
        f"Label noise: logistic regression, batch 1, {epochs} epochs; mean ± std over "
        f"{len(options.seeds)} seed(s)",
        fontsize=11,
    )
    return [plotting.save(figure, folder / "label-noise.png")]


@register
def label_noise() -> Study:
    return Study(
        name="label-noise",
        description="logistic regression on a synthetic two-class problem with 0-100 % flipped "
        "training labels, per-sample training, test micro-F1 of each optimizer and its _C twin",
        default_seeds=(0, 1, 2, 3, 4),
        plan=plan,
        run_unit=run_unit,
        summarize=summarize,
        figures=figures,
    )
