"""What ``critgrad list`` shows: the problems with their data status, and the optimizer labels."""

from __future__ import annotations

from collections.abc import Iterator

from critgrad.bench import optimizer_labels, saga
from critgrad.bench.contract import CorruptData, DataUnavailable
from critgrad.bench.datasets import verify
from critgrad.bench.problems import list_problems


def lines(data_dir: str | None) -> Iterator[str]:
    """The listing, line by line as each data set is checked (each once: reading one whole can take
    a while)."""
    problems = list_problems()
    width = max((len(p.name) for p in problems), default=8)
    yield f"problems (data status for --data-dir {data_dir or '(none)'}; sizes):"
    missing, corrupt, status_of = [], [], {}
    for problem in problems:
        if problem.dataset not in status_of:
            try:
                status_of[problem.dataset] = f"ok      {verify(problem.dataset, data_dir)}"
            except DataUnavailable as error:
                status_of[problem.dataset] = f"missing {problem.dataset}"
                missing.append(str(error))
            except CorruptData as error:
                status_of[problem.dataset] = f"corrupt {problem.dataset}"
                corrupt.append(" ".join(str(error).split()))
            except KeyError:
                status_of[problem.dataset] = f"?       {problem.dataset} (no locator)"
        yield f"  {problem.name:<{width}}  {'/'.join(problem.sizes)}  {problem.description}"
        yield f"  {'':<{width}}  data: {status_of[problem.dataset]}"
    for message in dict.fromkeys(missing):
        yield f"  missing data: {message}"
    for message in dict.fromkeys(corrupt):  # a folder may serve two data sets
        yield f"  corrupt data: {message}"
    labels = optimizer_labels.LABELS.values()
    aliases = ", ".join(f"{e.label} = {e.name} {dict(e.implied)}" for e in labels if e.implied)
    yield f"optimizers: {', '.join(optimizer_labels.known_labels())}"
    yield f"  aliases: {aliases}"
    own = ", ".join(
        f"{e.label} (twin {e.vanilla})"
        for e in labels
        if e.memory and e.vanilla and not e.label.endswith(optimizer_labels.MEMORY_SUFFIX)
    )
    if own:
        yield f"  memory optimizers of their own, compared with their vanilla twin: {own}"
    problems_with_sums = ", ".join(saga.FINITE_SUM_PROBLEMS)
    yield f"  saga (batch 1, per-row gradients) runs only on {problems_with_sums}"
