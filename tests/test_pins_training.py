"""Pins for the training loop that the mutation audit found unguarded: gradient accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from restorekit.images import save_image
from restorekit.testing.data import smooth_batch
from restorekit.training import DataConfig, TrainConfig, Trainer, sr_datasets


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def _step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    l2 = (net(batch["lr_up"]) - batch["hr"]).square().mean()  # deterministic: no noise drawn
    return {"loss": l2, "l2": l2}


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    imgs = smooth_batch(4, 16, 16, seed=3)
    for i in range(4):
        save_image(imgs[i:i + 1], root / f"img_{i:02d}.png")
    return root


def _one_step(faces: Path, out: Path, batch_size: int, grad_accum: int, grad_clip: float) -> tuple[dict, nn.Module]:
    cfg = TrainConfig(steps=1, batch_size=batch_size, grad_accum=grad_accum, lr=1e-2, optimizer="ranger",
                      grad_clip=grad_clip, log_every=1, val_every=1000, ckpt_every=1000, seed=7, device="cpu",
                      data=DataConfig(factors=[2], flip=False))
    train, _ = sr_datasets(faces, 16, cfg.data, seed=cfg.seed)
    torch.manual_seed(0)
    t = Trainer(cfg, _Tiny(), train, None, out=out, step_fn=_step, quiet=True)
    t.fit()
    [rec] = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()
             if json.loads(ln)["kind"] == "train"]
    return rec, t.model


@pytest.mark.parametrize("grad_clip", [1e6, 1e-3])  # clipping inactive, active
def test_pin_accumulated_step_equals_the_step_of_the_whole_batch(faces: Path, tmp_path: Path,
                                                                  grad_clip: float) -> None:
    whole, m1 = _one_step(faces, tmp_path / "whole", 2, 1, grad_clip)
    accum, m2 = _one_step(faces, tmp_path / "accum", 1, 2, grad_clip)
    assert whole["grad_norm"] > 0
    assert accum["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
    assert accum["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)
