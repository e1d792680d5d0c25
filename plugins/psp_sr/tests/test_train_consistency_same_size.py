"""psp_sr training with ``consistency_steps``: rows whose LR has the output's own size (×1).

Back-projection leaves ×1 outputs as they are (its only consistent image would be the degraded
input itself); training follows it by default, and checkpoints from before the setting existed
continue with the formula they trained with (their LR target, no gradient)."""

from __future__ import annotations

import torch

from restorekit.consistency import back_project
from restorekit_psp_sr.train import PSPTrainConfig, project_by_factor


def _batch() -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 16, 16, generator=g).mul(1.2).sub(0.1).requires_grad_(True)
    same = torch.rand(2, 3, 16, 16, generator=g)  # rows 0 and 2: ×1
    small = torch.rand(2, 3, 4, 4, generator=g)   # rows 1 and 3: ×4
    return images, {1: (torch.tensor([0, 2]), same), 4: (torch.tensor([1, 3]), small)}


def test_same_size_rows_keep_the_output_and_train_by_default() -> None:
    images, lr = _batch()
    out = project_by_factor(images, lr, steps=3)
    assert torch.equal(out[[0, 2]], images[[0, 2]])
    assert torch.equal(out[[1, 3]], back_project(images[[1, 3]], lr[4][1], steps=3, clamp=False))
    out[[0, 2]].sum().backward()
    assert images.grad is not None and torch.equal(images.grad[[0, 2]], torch.ones_like(images[[0, 2]]))


def test_input_reproduces_the_formula_runs_trained_with_before_the_setting() -> None:
    """What back_project computed at equal sizes before it left ×1 alone: ``x + (lr − x)`` per step
    (the bicubic resize to the same size being the identity), i.e. the LR target, no gradient."""
    images, lr = _batch()
    out = project_by_factor(images, lr, steps=3, same_size="input")
    x = images[[0, 2]]
    for _ in range(3):
        x = x + (lr[1][1] - x)
    assert torch.equal(out[[0, 2]], x)
    assert torch.allclose(out[[0, 2]], lr[1][1], atol=1e-6)
    assert torch.equal(out[[1, 3]], back_project(images[[1, 3]], lr[4][1], steps=3, clamp=False))
    out[[0, 2]].sum().backward()
    assert images.grad is not None and float(images.grad[[0, 2]].abs().max()) == 0.0


def test_a_checkpoint_from_before_the_setting_continues_with_the_earlier_formula() -> None:
    assert PSPTrainConfig().consistency_same_size == "output"
    assert PSPTrainConfig.SETTINGS_BEFORE["consistency_same_size"] == "input"
