"""Shared fixtures of the harness tests: private config folders and a tiny MNIST on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchtools import REPO, TINY_OVERRIDES, write_tiny_mnist


@pytest.fixture(autouse=True)
def _private_folders(tmp_path_factory, monkeypatch):
    """matplotlib, W&B and TensorBoard write under $HOME unless told otherwise."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("MPLCONFIGDIR", str(base / "mpl"))
    monkeypatch.setenv("WANDB_DIR", str(base / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("CRITGRAD_DATA_DIR", raising=False)
    # Spawned workers and submitit jobs must import this checkout.
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture
def tiny_overrides() -> dict:
    return dict(TINY_OVERRIDES)
