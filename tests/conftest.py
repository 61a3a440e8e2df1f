"""Settings of the whole test session that keep the suite independent of the machine's history."""

from __future__ import annotations

import os
import tempfile

import torch


def pytest_configure(config):
    # torch.compile keeps its compiled kernels in one folder per user under the temporary folder,
    # shared by every run on the machine. A kernel compiled under one CPU capability and reused
    # under another (ATEN_CPU_CAPABILITY=avx2 after a run on an AVX-512 machine, measured with
    # torch 2.13) gives wrong numbers, so the tests keep one cache per capability. A folder the
    # user chose is kept.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        capability = torch.backends.cpu.get_cpu_capability().lower()
        user = getattr(os, "getuid", lambda: "user")()
        folder = f"critgrad-tests-inductor-{user}-torch{torch.__version__}-{capability}"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), folder)
