import os

import pytest
import torch

# Tests share the machine's two cores with other work; one intra-op thread keeps them predictable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own empty directory so run outputs (runs/...) never leak between tests."""
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def shared_cache(tmp_path_factory):
    """A model cache shared by the tests of one session (demo models are trained at most once)."""
    return str(tmp_path_factory.getbasetemp() / "model-cache")
