r"""What the runner records about the memory of a ``_c`` run, at low cost: the probe.

Read through the optimizer's public surface only (``opt.memory[p]``, ``opt.memory_stats()``,
``param_groups``), never written. At each evaluation point (see :mod:`critgrad.bench.runner`) a
history point gets ``"probe"``:

- ``admitted_when_full``: of the finite gradients offered *while the memory was full*, since the
  previous point, the fraction that entered (each entry into a full memory evicts one, so it is
  Δevicted / (Δevicted + Δrejected)); None when no gradient met a full memory. Counts are of
  tensor-gradients, as in ``memory_stats()``.
- ``offered_when_full``: that denominator.
- ``held_ages``: a histogram of the ages (steps since entry) of the entries held now;
- ``evicted_ages``: a histogram of the ages at eviction of the entries replaced since the previous
  point. Both use the bins of :data:`AGE_EDGES`: ``[1, 2), [2, 4), [4, 8), ...``, the last one
  open (ages are >= 1 after a step).

The record gets ``"probe": {"age_edges": [...], "norm_every": k, "norms": {...}}``: every ``k``
steps, just before ``optimizer.step()`` (after clipping: what the optimizer sees), the L2 norms
over all parameters with a memory of

- ``grad``: the current gradient g,
- ``stored_mean``: the mean of the stored gradients m (per tensor: the sum over its filled slots
  divided by their count; zero where a tensor's memory is empty),
- ``direction``: the aggregate d the optimizer will use, from the group's ``aggr`` and ``kappa``:
  :math:`g + \kappa m` (sum), :math:`\tfrac12 (g + \kappa m)` (mid),
  :math:`(g + \kappa \sum B)/(n + 1)` (mean); d = g while the memory is empty;
- ``cosine``: the cosine between g and m (None while the memory is empty),

with ``step`` the step number (1-based) each sample was taken before.

Nothing here reads the device inside the training loop: per step the probe adds a few small
tensor operations (the statistics counters of each tensor, to bin eviction ages), and every ``k``
steps the norms, kept as tensors until the next evaluation point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from critgrad import memory as M

AGE_BINS = 16
AGE_EDGES = tuple(2**i for i in range(AGE_BINS))  # bin i holds ages in [2^i, 2^(i+1)); last: open
STATS, AGE = "critical_stats", "critical_age"  # entries of each parameter's state (public)
_EVICTED = M.STAT_FIELDS.index("evicted")
_EVICTED_AGE_SUM = M.STAT_FIELDS.index("evicted_age_sum")
FLUSH_EVERY = 64  # steps between two binnings of the eviction ages
NORM_SAMPLES = 256  # the automatic interval keeps about this many norm samples per run


def norm_interval(total_steps: int | None, samples: int = NORM_SAMPLES) -> int:
    """The automatic ``norm_every``: about ``samples`` samples over the run, at least every step."""
    if not total_steps or total_steps <= samples:
        return 1
    return math.ceil(total_steps / samples)


def age_bin(ages: torch.Tensor) -> torch.Tensor:
    """The bin of :data:`AGE_EDGES` of each age >= 1: floor(log2(age)), capped at the last
    (exact in float64 for every age below 2^53)."""
    return ages.double().log2().floor().to(torch.int64).clamp(0, AGE_BINS - 1)


def age_histogram(ages: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Counts (int64, length :data:`AGE_BINS`) of ``ages`` in the bins; ``weights`` (0/1) picks."""
    ages = ages.reshape(-1).to(torch.int64)
    weights = torch.ones_like(ages) if weights is None else weights.reshape(-1).to(torch.int64)
    counts = torch.zeros(AGE_BINS, dtype=torch.int64, device=ages.device)
    return counts.index_add_(0, age_bin(ages.clamp(min=1)), weights)


def has_memory(optimizer: Any) -> bool:
    """Whether ``optimizer`` has the memory's public surface."""
    return callable(getattr(optimizer, "memory_stats", None)) and hasattr(optimizer, "memory")


class MemoryProbe:
    """Watches one optimizer with a memory; see the module docstring for what it records."""

    def __init__(self, optimizer: Any, norm_every: int) -> None:
        if not isinstance(norm_every, int) or isinstance(norm_every, bool) or norm_every < 1:
            raise ValueError(f"norm_every must be an integer >= 1, got {norm_every!r}")
        self.optimizer = optimizer
        self.norm_every = norm_every
        self.step = 0
        self._order: dict[torch.Tensor, int] = {}  # parameters with a memory, as first seen
        self._counters: torch.Tensor | None = None  # their statistics at the last flush
        self._snapshots: list[torch.Tensor] = []  # their statistics after each step since
        self._evicted = torch.zeros(AGE_BINS, dtype=torch.int64)
        self._totals = {"evicted": 0, "rejected": 0}
        self._samples: list[torch.Tensor] = []
        self._sample_steps: list[int] = []

    # ------------------------------------------------------------- in the training loop

    def before_step(self) -> None:
        """Call just before ``optimizer.step()``: samples the norms every ``norm_every`` steps."""
        self.step += 1
        if self.step % self.norm_every == 0:
            sample = self._norms()
            if sample is not None:
                self._samples.append(sample)
                self._sample_steps.append(self.step)

    def after_step(self) -> None:
        """Call just after ``optimizer.step()``: keeps a copy of every memory's counters (one
        small stacked tensor); the ages of the step's evictions are binned from those copies every
        :data:`FLUSH_EVERY` steps and at evaluation points, all steps at once."""
        memories = self._memories()
        if not memories:
            return
        now = torch.stack([state[STATS] for _, state in memories])
        if self._snapshots and len(self._snapshots[-1]) != len(now):
            self._flush()  # memories created since: bin what came before with the old rows
        self._snapshots.append(now)
        if len(self._snapshots) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        """Bin the evictions between the kept copies of the counters (vectorised)."""
        if not self._snapshots:
            return
        now = torch.stack(self._snapshots)  # (steps, memories, fields)
        previous = self._counters
        rows = now.shape[1]
        if previous is None:
            previous = torch.zeros_like(now[0])
        elif len(previous) < rows:  # memories created since the last flush start from zero
            previous = torch.cat([previous, torch.zeros_like(now[0, len(previous) :])])
        change = torch.diff(now, dim=0, prepend=previous[None])
        self._counters, self._snapshots = now[-1], []
        # At most one eviction per tensor and step: its age is the change of the age sum.
        ages = change[..., _EVICTED_AGE_SUM].reshape(-1).clamp(min=1)
        self._evicted = self._evicted.to(now.device).index_add_(
            0, age_bin(ages), change[..., _EVICTED].reshape(-1)
        )

    def _memories(self) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(parameter, its state) for each parameter holding a memory, in the order in which the
        probe first saw them (memories are added, never removed)."""
        state = self.optimizer.state
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p not in self._order and STATS in state.get(p, ()):
                    self._order[p] = len(self._order)
        return [(p, state[p]) for p in self._order]

    # ------------------------------------------------------------- at evaluation points

    def point(self) -> dict[str, Any]:
        """The history point's ``"probe"`` (reads the device; resets the interval's counts)."""
        self._flush()
        totals = {"evicted": 0, "rejected": 0}
        for group in self.optimizer.memory_stats():
            totals["evicted"] += int(group.get("evicted") or 0)
            totals["rejected"] += int(group.get("rejected") or 0)
        evicted = totals["evicted"] - self._totals["evicted"]
        offered = evicted + totals["rejected"] - self._totals["rejected"]
        self._totals = totals
        ages = [state[AGE] for _, state in self._memories()]
        held = torch.zeros(AGE_BINS, dtype=torch.int64)
        if ages:
            flat = torch.cat([a.reshape(-1).cpu() for a in ages])
            held = age_histogram(flat, flat >= 0)
        evicted_ages = self._evicted.cpu().tolist()
        self._evicted = torch.zeros_like(self._evicted)
        return {
            "admitted_when_full": evicted / offered if offered else None,
            "offered_when_full": offered,
            "held_ages": held.tolist(),
            "evicted_ages": evicted_ages,
        }

    def summary(self) -> dict[str, Any]:
        """The record's ``"probe"``: the bins and the norm samples (reads the device)."""
        fields = ("grad", "stored_mean", "direction", "cosine")
        if self._samples:
            table = torch.stack(self._samples).cpu().double().tolist()
            columns = {name: [row[i] for row in table] for i, name in enumerate(fields)}
            columns["cosine"] = [None if math.isnan(v) else v for v in columns["cosine"]]
        else:
            columns = {name: [] for name in fields}
        return {
            "age_edges": list(AGE_EDGES),
            "norm_every": self.norm_every,
            "norms": {"step": list(self._sample_steps), **columns},
        }

    # ------------------------------------------------------------- the norms

    @torch.no_grad()
    def _norms(self) -> torch.Tensor | None:
        """(|g|, |m|, |d|, cos(g, m)) over the parameters with a gradient and a memory option,
        as a tensor on the parameters' device (read at the next evaluation point).

        Computed from three dot products per tensor (g.g, g.S, S.S with S the stored sum), in
        the gradient's precision (float32 at least): no full-size temporary but S itself."""
        view = self.optimizer.memory
        totals = []  # per tensor: g.g, m.m, d.d, g.m (float64 scalars)
        for group in self.optimizer.param_groups:
            kappa, aggr = group.get("kappa", 0.0), group.get("aggr", "mean")
            if not kappa:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.detach().flatten()
                if g.dtype in (torch.float16, torch.bfloat16):
                    g = g.float()
                held = _entry(view, p)
                gg = torch.dot(g, g).double()
                if held is None:
                    totals.append(torch.stack([gg, 0 * gg, gg, 0 * gg]))
                    continue
                total = held["critical_sum"].flatten().to(g.dtype)
                n = (held["critical_age"] >= 0).sum().double()
                gs, ss = torch.dot(g, total).double(), torch.dot(total, total).double()
                totals.append(aggregate_products(gg, gs, ss, n, kappa, aggr))
        if not totals:
            return None
        gg, mm, dd, gm = torch.stack(totals).sum(0).unbind()
        g_norm, m_norm = gg.sqrt(), mm.sqrt()
        # NaN while every memory is empty: there is no stored direction to compare with.
        cosine = gm / torch.where(m_norm > 0, g_norm * m_norm, math.nan)
        return torch.stack([g_norm, m_norm, dd.clamp(min=0).sqrt(), cosine])


def aggregate_products(gg, gs, ss, n, kappa: float, aggr: str) -> torch.Tensor:
    """(g.g, m.m, d.d, g.m) of one tensor from g.g, g.S, S.S and the count n of stored
    gradients (m = S/n, zero when n = 0), d by ``aggr`` (the module docstring): with
    q = |g + kappa m|^2 = g.g + 2 kappa g.m + kappa^2 m.m, d.d is q (sum), q/4 (mid), and
    (g.g + 2 kappa g.S + kappa^2 S.S)/(n + 1)^2 (mean); d = g while n = 0."""
    count = n.clamp(min=1)
    gm, mm = gs / count, ss / count**2
    if aggr == "sum":
        dd = gg + 2 * kappa * gm + kappa**2 * mm
    elif aggr == "mid":
        dd = (gg + 2 * kappa * gm + kappa**2 * mm) / 4
    elif aggr == "mean":
        dd = (gg + 2 * kappa * gs + kappa**2 * ss) / (n + 1) ** 2
    else:
        raise ValueError(f"aggr must be 'sum', 'mid' or 'mean', got {aggr!r}")
    return torch.stack([gg, mm, torch.where(n > 0, dd, gg), gm])


def _entry(view: Mapping[torch.Tensor, Any], p: torch.Tensor) -> dict[str, Any] | None:
    try:
        return view[p]
    except KeyError:
        return None
