"""``critgrad study``: the command that runs a study (added to the ``critgrad`` parser).

critgrad study --list
critgrad study NAME [--out DIR] [--quick] [--seeds 0,1,2] [--data-dir DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 0, got {text!r}"
        ) from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return seeds


def add_study_command(commands) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to ``critgrad``'s subparsers."""
    parser = commands.add_parser("study", help="an analysis study (critgrad study --list)")
    parser.add_argument("name", nargs="?", metavar="NAME", help="the study to run")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument(
        "--out", help="study folder (default runs/study-NAME, runs/study-NAME-quick with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="the tiny size (seconds)")
    parser.add_argument(
        "--seeds",
        type=_seeds,
        help="comma-separated seeds (default: the study's own; with --quick, its first)",
    )
    parser.add_argument("--data-dir", help="folder holding user-provided data sets")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=command_study)
    return parser


def command_study(args) -> int:
    from critgrad.bench.studies.catalog import get_study, list_studies
    from critgrad.bench.studies.contract import Options
    from critgrad.bench.studies.runner import run_study

    if args.list:
        studies = list_studies()
        width = max(len(s.name) for s in studies)
        for study in studies:
            print(f"{study.name:<{width}}  {study.description}")
        return 0
    if not args.name:
        names = ", ".join(s.name for s in list_studies())
        raise ValueError(f"name a study (one of {names}) or pass --list")
    study = get_study(args.name)
    seeds = args.seeds or (study.default_seeds[:1] if args.quick else study.default_seeds)
    options = Options(quick=args.quick, seeds=tuple(seeds), data_dir=args.data_dir)
    out = Path(args.out or Path("runs") / f"study-{study.name}{'-quick' if args.quick else ''}")
    command = " ".join(["critgrad"] + [shlex.quote(a) for a in sys.argv[1:]])
    outcome = run_study(study, options, out, progress=not args.quiet, command=command)
    print(outcome.summary.table)
    print(
        f"{study.name}: {outcome.ran} unit(s) run, {outcome.skipped} already finished; "
        f"summary, table and figures in {out}",
        file=sys.stderr,
    )
    return 0
