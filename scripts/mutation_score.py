"""Reads ``mutmut results --all True`` on stdin; prints killed/total by file for the mutants whose
names match the patterns given as arguments (all when none), then the survivors' names."""

from __future__ import annotations

import collections
import fnmatch
import sys


def main(patterns: list[str]) -> None:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors = []
    for line in sys.stdin:
        name, _, status = line.strip().rpartition(": ")
        if not name or status == "not checked":  # not run (outside the selection)
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        module = name.split(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]
        counts[module][status] += 1
        if status != "killed":
            survivors.append(f"{name}: {status}")
    for module, by_status in sorted(counts.items()):
        total = sum(by_status.values())
        others = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()) if s != "killed")
        print(
            f"{module}: {by_status['killed']}/{total} killed" + (f" ({others})" if others else "")
        )
    print("\n".join(survivors))


if __name__ == "__main__":
    main(sys.argv[1:])
