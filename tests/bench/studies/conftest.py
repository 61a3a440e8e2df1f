"""Each study's quick size, run once per test session and shared by the tests that read it."""

from __future__ import annotations

import pytest
import torch

from critgrad.bench.studies import catalog
from critgrad.bench.studies.contract import Options
from critgrad.bench.studies.runner import run_study


class _QuickRuns(dict):
    """name -> (folder, outcome) of ``critgrad study NAME --quick`` (seed 0), each run when a test
    first asks for it, so that its time counts against that test's timeout rather than all eight
    studies against the first test's."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self._factory = tmp_path_factory

    def __missing__(self, name):
        study = catalog.get_study(name)
        out = self._factory.mktemp(f"study-{name}")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MPLCONFIGDIR", str(self._factory.getbasetemp() / "mpl"))
            outcome = run_study(
                study, Options(quick=True, seeds=(0,)), out, progress=False, log=lambda m: None
            )
        self[name] = (out, outcome)
        return self[name]


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """name -> (folder, outcome) of ``critgrad study NAME --quick`` (seed 0), run on first use."""
    return _QuickRuns(tmp_path_factory)


@pytest.fixture(autouse=True)
def _one_thread():
    """As the study runner does: small operations are fastest on one thread on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
