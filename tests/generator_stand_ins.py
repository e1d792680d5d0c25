"""A stand-in for ``generate``'s generator, for tests of what ``generate`` does around one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class OneColourGenerator(nn.Module):
    """Draws an 8×8 image of one colour from ``z`` (its first three latent values), in no time."""

    z_dim, n_styles = 4, 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(4))
            self.lin.bias.zero_()

    def mean_latent(self) -> torch.Tensor:
        return torch.zeros(1, 4)

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z)

    def synthesize(self, w: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.sigmoid(w[:, 0, :3]).reshape(-1, 3, 1, 1).expand(-1, 3, 8, 8)


def use_stand_in(monkeypatch: Any, make: Callable[[], nn.Module]) -> None:
    """Make ``generate`` build ``make()``. The CLI is built first: a command module imported while
    the stand-in is patched in (``realism`` imports ``build_generator`` by name) would keep it for
    every later test of the session."""
    import restorekit.commands.generate as generate
    from restorekit.cli import build_cli

    build_cli()
    monkeypatch.setattr(generate, "build_generator", lambda *a, **k: make())
