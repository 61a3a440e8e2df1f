"""Each study's quick size, run once per test session and shared by the tests that read it."""

from __future__ import annotations

import pytest
import torch

from critgrad.bench.studies import catalog
from critgrad.bench.studies.contract import Options
from critgrad.bench.studies.runner import run_study


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """name -> (folder, outcome) of ``critgrad study NAME --quick`` (seed 0)."""
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLCONFIGDIR", str(tmp_path_factory.getbasetemp() / "mpl"))
        for study in catalog.list_studies():
            out = tmp_path_factory.mktemp(f"study-{study.name}")
            outcome = run_study(
                study,
                Options(quick=True, seeds=(0,)),
                out,
                progress=False,
                log=lambda message: None,
            )
            runs[study.name] = (out, outcome)
    return runs


@pytest.fixture(autouse=True)
def _one_thread():
    """As the study runner does: small operations are fastest on one thread on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
