"""pytest fixtures for plugin authors (loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest
import torch

from .data import sample_batch


@pytest.fixture
def rk_batch() -> torch.Tensor:
    """A 2×3×12×10 batch in the image convention (odd sizes on purpose)."""
    return sample_batch()


@pytest.fixture
def rk_home(tmp_path, monkeypatch):
    """An empty ``RESTOREKIT_HOME`` so tests never touch the user's weight cache."""
    home = tmp_path / "restorekit-home"
    home.mkdir()
    monkeypatch.setenv("RESTOREKIT_HOME", str(home))
    return home
