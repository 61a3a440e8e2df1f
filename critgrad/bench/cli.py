"""The ``critgrad`` command: parse, dispatch, and turn expected errors into one line and exit 2.

critgrad list [--data-dir DIR]
critgrad run PROBLEM [PROBLEM ...] --optimizers sgd,sgd_c --seeds 0,1,2 [--set lr=0.01]
critgrad sweep CONFIG.toml [--out DIR] [--executor inline|local|submitit] [--workers N]
critgrad report DIR [--out DIR] [--no-plots]
critgrad main [--out results/main] [--workers 2]
critgrad study NAME [--out DIR] [--quick] [--seeds 0,1,2]   (critgrad study --list)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2  # unknown names, bad values, missing data
EXIT_FAILED_RUNS = 1  # the sweep finished but some runs raised
EXIT_TERMINATED = 128 + signal.SIGTERM  # as a shell reports a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler ending a job) received by the main process.

    A KeyboardInterrupt, so that everything that stops cleanly on Ctrl-C does so on SIGTERM too:
    the pool's workers are terminated rather than left training as orphans that keep writing
    records, and the sweep's session is closed as "interrupted".
    """


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_stops_cleanly():
    """SIGTERM raises :class:`Terminated` in the main thread while the command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class UsageError(ValueError):
    """A command-line value that is wrong; the message says which and what is allowed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_value(text: str, item: str | None = None) -> Any:
    """A --set / --override value: integer, float, true/false/none, else the string itself.

    NaN and infinities are refused: a record stores them as null, so ``lr=inf`` would be kept as
    ``lr=null`` and mean something else on the next run. ``item`` (``key=value``) names the value
    in the message."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if not math.isfinite(value):
            raise UsageError(f"{item or text!r}: {text} is not a finite number")
        return value
    return text


def parse_settings(items: Sequence[str], optimizers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``key=value`` (every optimizer) or ``label.key=value`` (one) -> {"all"|label: {...}}."""
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value or optimizer.key=value, got {item!r}")
        label, dot, name = key.rpartition(".")
        if dot and label not in optimizers:
            raise UsageError(
                f"--set {item!r}: {label!r} is not one of --optimizers {','.join(optimizers)}"
            )
        settings.setdefault(label if dot else "all", {})[name] = parse_value(value, item)
    return settings


# ---- commands -----------------------------------------------------------------------------------


def command_list(args) -> int:
    from critgrad.bench import catalog

    for line in catalog.lines(args.data_dir):
        print(line)
    return 0


def _finish(sweep_obj, outcome, with_report: bool, print_tables: bool = True) -> int:
    """The summary line, the report, and the exit status: 1 when a run failed or the report could
    not be written, 0 otherwise (diverged runs are results: they are counted and reported)."""
    from critgrad.bench import report, report_files

    print(outcome.summary(sweep_obj.out), file=sys.stderr)
    code = EXIT_FAILED_RUNS if outcome.failed else 0
    if with_report:
        try:
            analysis, text, path = report_files.write_report(sweep_obj.out)
        except (ValueError, OSError) as error:  # nothing to report (every run failed), or no room
            print(f"no report: {' '.join(str(error).split())}", file=sys.stderr)
            return EXIT_FAILED_RUNS
        if print_tables:
            print(text)
        for line in report.unresolved_lines(analysis):
            print(line, file=sys.stderr)
        print(f"report: {path}", file=sys.stderr)
    return code


def _command_line() -> str:
    return " ".join(["critgrad"] + [shlex.quote(a) for a in sys.argv[1:]])


def command_run(args) -> int:
    from critgrad.bench.sweep import fixed_protocol_sweep, run_sweep

    settings = parse_settings(args.set or [], args.optimizers)
    overrides = {}
    for item in args.override or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--override expects key=value, got {item!r}")
        overrides[key] = parse_value(value, item)
    if args.epochs:
        overrides["epochs"] = args.epochs
    sweep_obj = fixed_protocol_sweep(
        args.problems,
        args.optimizers,
        seeds=args.seeds,
        hyperparameters=settings,
        overrides=overrides,
        size=args.size,
        evals_per_epoch=args.evals_per_epoch,
        out=args.out,
        data_dir=args.data_dir,
        workers=args.workers,
        tensorboard=args.tensorboard,
    )
    outcome = run_sweep(sweep_obj, progress=not args.quiet, command=_command_line())
    return _finish(sweep_obj, outcome, with_report=not args.no_report)


def command_sweep(args) -> int:
    from critgrad.bench.sweep import run_sweep
    from critgrad.bench.sweep_file import parse_config, read_config_file

    data = read_config_file(args.config)
    sweep_obj = parse_config(data, out=args.out)
    if args.executor:
        sweep_obj.executor["kind"] = args.executor
    if args.workers:
        sweep_obj.executor["workers"] = args.workers
    if args.data_dir:
        sweep_obj.data_dir = args.data_dir
    _inline_in_data_parallel(sweep_obj)
    outcome = run_sweep(sweep_obj, progress=not args.quiet, command=_command_line())
    return _finish(sweep_obj, outcome, with_report=not args.no_report)


def command_report(args) -> int:
    from critgrad.bench import report_files
    from critgrad.bench.preflight import writable_folder

    if not Path(args.dir).is_dir():
        raise FileNotFoundError(f"run directory {args.dir} not found")
    writable_folder(args.out or args.dir, "report folder")
    analysis, text, path = report_files.write_report(
        args.dir, args.out, with_plots=not args.no_plots
    )
    for message in analysis.broken:
        print(f"broken record skipped: {message}", file=sys.stderr)
    print(text)
    print(f"report: {path}", file=sys.stderr)
    return 0


def command_main(args) -> int:
    import time

    from critgrad.bench import main_job
    from critgrad.bench.sweep import run_sweep

    sweep_obj = main_job.main_sweep(
        out=args.out, workers=args.workers, seeds=args.seeds, data_dir=args.data_dir
    )
    print(
        f"main job: {', '.join(main_job.PROBLEMS)} x {len(main_job.OPTIMIZERS)} optimizers x "
        f"{len(args.seeds)} seeds -> {args.out}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    outcome = run_sweep(sweep_obj, progress=not args.quiet, command=_command_line())
    code = _finish(sweep_obj, outcome, with_report=True)
    print(f"main job wall time: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return code


# ---- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from critgrad.bench import main_job, optimizer_labels

    parser = _Parser(prog="critgrad", description="Critical Gradients benchmark harness.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser("list", help="problems with their data status, optimizers")
    listing.add_argument("--data-dir", help="folder holding user-provided data sets")
    listing.set_defaults(handler=command_list)

    run = commands.add_parser("run", help="one or more problems, several optimizers and seeds")
    run.add_argument("problems", nargs="+", metavar="PROBLEM")
    run.add_argument(
        "--optimizers",
        type=_name_list,
        required=True,
        help="comma-separated labels, e.g. sgd,sgd_c,adam,adam_c",
    )
    run.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated (default 0)")
    run.add_argument(
        "--set",
        action="append",
        metavar="[OPTIMIZER.]KEY=VALUE",
        help="a hyperparameter for all optimizers or one (repeatable); the memory "
        f"ones ({', '.join(optimizer_labels.MEMORY_ARGUMENTS)}) reach only the memory "
        "optimizers that take them (the _c ones, adam_cm)",
    )
    run.add_argument(
        "--size",
        default="cpu",
        help="cpu (default), full, or another size the problem lists (critgrad list)",
    )
    run.add_argument("--epochs", type=_positive_int, help="override the problem's epochs")
    run.add_argument(
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help="override a problem setting, e.g. train_size=5000 (repeatable)",
    )
    run.add_argument("--evals-per-epoch", type=_positive_int, default=1)
    run.add_argument("--out", help="run directory (default runs/PROBLEM[+PROBLEM])")
    run.add_argument(
        "--workers", type=_positive_int, default=1, help="parallel processes (default 1)"
    )
    run.add_argument("--tensorboard", action="store_true", help="also log to OUT/logs")
    run.set_defaults(handler=command_run)

    sweep = commands.add_parser("sweep", help="a grid from a TOML/YAML sweep file")
    sweep.add_argument("config", metavar="CONFIG")
    sweep.add_argument("--out", help="run directory (overrides the file's `out`)")
    sweep.add_argument("--executor", choices=("inline", "local", "submitit"))
    sweep.add_argument("--workers", type=_positive_int)
    sweep.set_defaults(handler=command_sweep)

    report = commands.add_parser("report", help="tables and plots from a run directory")
    report.add_argument("dir", metavar="DIR")
    report.add_argument("--out", help="where to write (default: DIR)")
    report.add_argument("--no-plots", action="store_true")
    report.set_defaults(handler=command_report)

    main = commands.add_parser("main", help="the MNIST comparison (about 5 minutes on 2 cores)")
    main.add_argument("--out", default=main_job.OUT)
    main.add_argument("--workers", type=_positive_int, default=main_job.WORKERS)
    main.add_argument("--seeds", type=_int_list, default=list(main_job.SEEDS))
    main.set_defaults(handler=command_main)

    for sub in (run, sweep, main):
        sub.add_argument("--data-dir", help="folder holding user-provided data sets")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
    for sub in (run, sweep):
        sub.add_argument("--no-report", action="store_true")
    from critgrad.bench.studies.cli import add_study_command

    add_study_command(commands)
    return parser


# Under torchrun: the commands that train runs data-parallel, and those that only read.
DATA_PARALLEL_COMMANDS = ("run", "sweep")
SINGLE_PROCESS_COMMANDS = ("list", "report")


def main(argv: Sequence[str] | None = None) -> int:
    from critgrad.bench import data_parallel

    with _sigterm_stops_cleanly():
        if data_parallel.launched_world_size() > 1:
            return _main_data_parallel(argv)
        return _main(argv)


def _main_data_parallel(argv: Sequence[str] | None) -> int:
    """Under torchrun: rank 0 runs the command, the other processes train each of its runs with
    it (see critgrad.bench.data_parallel); only rank 0 writes or prints anything."""
    from critgrad.bench import data_parallel, runner

    rank = data_parallel.start()
    try:
        if rank != 0:
            data_parallel.follow(runner.run)
            return 0
        try:
            return _main(argv)
        finally:
            data_parallel.announce(None)  # the followers are done too
    finally:
        data_parallel.stop()


def _refuse_in_data_parallel(args) -> None:
    """Under torchrun, the runs of ``run`` and ``sweep`` train in rank 0's process, with the others
    (no pool of workers, no jobs); the other commands are not distributed."""
    from critgrad.bench import data_parallel

    size = data_parallel.world()[1]
    if size == 1 or args.command in SINGLE_PROCESS_COMMANDS:
        return
    if args.command not in DATA_PARALLEL_COMMANDS:
        raise UsageError(
            f"critgrad {args.command} does not run under torchrun ({size} processes); "
            f"under torchrun: {', '.join(DATA_PARALLEL_COMMANDS)}"
        )
    workers = getattr(args, "workers", None)
    if workers not in (None, 1):
        raise UsageError(
            f"--workers {workers}: under torchrun each run trains data-parallel over the "
            f"{size} processes, one run at a time; leave --workers out"
        )
    executor = getattr(args, "executor", None)
    if executor not in (None, "inline", "local"):
        raise UsageError(
            f"--executor {executor}: under torchrun the runs train in the torchrun processes; "
            "use inline"
        )


def _inline_in_data_parallel(sweep_obj) -> None:
    """Under torchrun a sweep's runs train one after another in rank 0's process (with the other
    processes), whatever executor the sweep file names; a file that names submitit is refused."""
    from critgrad.bench import data_parallel

    size = data_parallel.world()[1]
    if size == 1:
        return
    kind = sweep_obj.executor.get("kind", "local")
    if kind == "submitit":
        raise UsageError(
            f"the sweep's executor is submitit: under torchrun ({size} processes) its runs train "
            "in the torchrun processes; set executor kind = inline"
        )
    sweep_obj.executor["kind"] = "inline"


def _main(argv: Sequence[str] | None = None) -> int:
    from critgrad.bench.contract import CorruptData, DataUnavailable
    from critgrad.bench.optimizer_labels import UnknownOptimizer
    from critgrad.bench.problems import UnknownProblem

    try:
        args = build_parser().parse_args(argv)
        _refuse_in_data_parallel(args)
        return args.handler(args)
    except (
        UsageError,
        UnknownProblem,
        UnknownOptimizer,
        DataUnavailable,
        CorruptData,
        ValueError,
        FileNotFoundError,
        RuntimeError,
    ) as error:
        print(f"critgrad: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `critgrad list | head`: the reader has gone, nothing to say
        return EXIT_FAILED_RUNS
    except OSError as error:  # the disk, not the input: full, gone, permissions changed mid-run
        print(f"critgrad: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_FAILED_RUNS
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(
            f"critgrad: {how}; finished runs are kept - the same command resumes",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if isinstance(stop, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
