"""Contracts that the annotations state and the code once broke at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny, tiny_train_config

from restorekit.training import DataConfig, TrainingError
from restorekit_psp_sr.train import PSPTrainer
from restorekit_psp_sr.train_ae import AEConfig, AETrainer


def test_psp_trainer_build_without_data_root_is_one_clear_error(tmp_path: Path) -> None:
    # The Python API path (the CLI checks --data itself): a None root once reached Path() as a TypeError.
    cfg = tiny_train_config(tmp_path / "run", init=str(save_tiny(tmp_path / "init.safetensors")),
                            encoder_backbone="ir_se_light", head_channels=16, impl="ref")
    assert cfg.data.root is None
    with pytest.raises(TrainingError, match=r"^psp_sr: no training data \(pass --data DIR or set data.root\)$"):
        PSPTrainer.build(cfg, quiet=True)


def test_autoencoder_trainer_build_without_data_root_is_one_clear_error(tmp_path: Path) -> None:
    cfg = AEConfig(steps=1, batch_size=2, device="cpu", out=str(tmp_path / "ae"), resolution=32, style_dim=16,
                   n_mlp=2, channel_max=16, impl="ref", head_channels=16, data=DataConfig(factors=[1]))
    with pytest.raises(TrainingError, match=r"^stylegan2_ae: no training data \(pass --data DIR or set data.root\)$"):
        AETrainer.build(cfg, quiet=True)


def test_autoencoder_trainer_build_with_data_root_reads_it(tmp_path: Path) -> None:
    from tiny_models import write_faces

    root = write_faces(tmp_path / "faces", n=4)
    cfg = AEConfig(steps=1, batch_size=2, device="cpu", out=str(tmp_path / "ae"), resolution=32, style_dim=16,
                   n_mlp=2, channel_max=16, impl="ref", head_channels=16, lpips_lambda=0.0,
                   data=DataConfig(root=str(root), factors=[1], holdout_fraction=0.25))
    with torch.random.fork_rng(devices=[]):
        trainer = AETrainer.build(cfg, quiet=True)
    assert len(trainer.train_data) == 3 and trainer.val_data is not None and len(trainer.val_data) == 1


def test_folding_a_batch_norm_without_running_statistics_is_refused_by_name() -> None:
    from torch import nn

    from restorekit_psp_sr.fold import bn_affine, fold_bn_after

    with pytest.raises(ValueError, match="keeps no running statistics"):
        bn_affine(nn.BatchNorm2d(4, track_running_stats=False))
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 9.0]))
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    w, b = fold_bn_after(conv.weight, conv.bias, bn)
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_optimize_encoder_refuses_a_module_that_is_no_psp_encoder() -> None:
    from torch import nn

    from restorekit_psp_sr.fast_encoder import optimize_encoder

    class Pretender(nn.Module):  # has the attribute, not the layout
        def __init__(self) -> None:
            super().__init__()
            self.inference_path = None
            self.lin = nn.Linear(2, 2)

    with pytest.raises(TypeError, match=r"^Pretender has no inference path"):
        optimize_encoder(Pretender())
