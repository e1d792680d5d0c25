"""A pix2pixHD training config small enough for a test: 16-px images, 8-channel networks, a
random VGG (``allow_random_vgg``), the CPU, factor 2, no quantisation."""

from __future__ import annotations

from pathlib import Path

from restorekit_baselines.train_pix2pixhd import Pix2PixHDTrainConfig


def tiny_config(tmp: Path, **kw: object) -> Pix2PixHDTrainConfig:
    """The tiny config with its run folder ``tmp/run``; ``kw`` overrides any setting."""
    base: dict = dict(size=16, ngf=8, n_downsampling=2, n_blocks=1, ndf=8, n_layers_d=2, num_d=2, batch_size=4,
                      steps=16, lr=2e-3, allow_random_vgg=True, device="cpu", log_every=4, val_every=1000,
                      ckpt_every=1000, seed=0, out=str(tmp / "run"),
                      data={"factors": [2], "holdout_fraction": 0.2, "quantize": False})
    base.update(kw)
    return Pix2PixHDTrainConfig.model_validate(base)
