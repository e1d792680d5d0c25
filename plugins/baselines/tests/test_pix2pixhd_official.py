"""pix2pixHD trained as its official code does: the linear learning-rate decay of both players,
N(0, 0.02) conv init, the VGG fed the raw [-1, 1] image; and checkpoints from before these
settings existed resuming as they trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from restorekit.testing.data import smooth_batch
from restorekit.training import TrainingError
from restorekit.training.trainer import list_checkpoints, load_checkpoint
from restorekit_baselines.pix2pixhd import VGG_LAYERS, VGG_WEIGHTS, VGGLoss, vgg16_features
from restorekit_baselines.train_pix2pixhd import (Pix2PixHDModel, Pix2PixHDTrainConfig, Pix2PixHDTrainer,
                                                  build_trainer)
from tiny_pix2pixhd import tiny_config


def _config(tmp: Path, **kw: object) -> Pix2PixHDTrainConfig:
    """The shared tiny config, 4 steps of 2 images, every step logged."""
    return tiny_config(tmp, **{"batch_size": 2, "steps": 4, "log_every": 1, **kw})


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for i, img in enumerate(smooth_batch(6, 24, 24, seed=5)):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
    return folder


# -- learning-rate schedule ---------------------------------------------------------------
def test_linear_schedule_is_constant_then_falls_to_zero_for_g_and_d(faces: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, steps=6, lr_decay_start=2, lr_d=4e-3, lr_schedule="linear", lambda_vgg=0.0)
    trainer = build_trainer(cfg, faces, quiet=True)
    lr = 2e-3
    assert trainer.lr_at(0) == lr and trainer.lr_at(1) == lr and trainer.lr_at(2) == lr  # decay start
    assert trainer.lr_at(4) == pytest.approx(lr / 2, rel=1e-12)  # midway through the decay
    assert trainer.lr_at(5) == pytest.approx(lr / 4, rel=1e-12)  # the last step
    assert trainer.lr_at(6) == 0.0  # reaches 0 at `steps`
    # pix2pixHD's update_learning_rate, one epoch per step: niter = 2 constant, niter_decay = 4 decaying,
    # lr lowered by lr/niter_decay at the end of each epoch past niter.
    official, current = [], lr
    for epoch in range(1, 7):
        official.append(current)
        if epoch > 2:
            current -= lr / 4
    assert [trainer.lr_at(i) for i in range(6)] == pytest.approx(official, rel=1e-9)
    # What the optimizers use: G's the schedule, D's the schedule scaled by lr_d / lr.
    g_seen: list[float] = []
    d_seen: list[float] = []
    step = trainer.train_step

    def spy(net, batch):  # type: ignore[no-untyped-def]
        out = step(net, batch)
        g_seen.append(trainer.optimizer.param_groups[0]["lr"])
        d_seen.append(trainer.d_optimizer.param_groups[0]["lr"])
        return out

    trainer.train_step = spy  # type: ignore[method-assign]
    trainer.fit()
    assert g_seen == pytest.approx(official, rel=1e-9)
    assert d_seen == pytest.approx([2 * v for v in official], rel=1e-9)


# -- initialisation -----------------------------------------------------------------------
def test_official_init_draws_every_conv_from_n_0_002_and_pytorch_keeps_the_default(tmp_path: Path) -> None:
    kw = dict(ngf=16, ndf=32)
    assert _config(tmp_path).init == "official"
    torch.manual_seed(0)
    official = Pix2PixHDModel(_config(tmp_path, **kw))
    torch.manual_seed(0)
    default = Pix2PixHDModel(_config(tmp_path, init="pytorch", **kw))
    convs = [(n, m) for n, m in official.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for _, m in convs)
    for name, m in convs:
        if m.weight.numel() >= 4000:  # large enough for a tight estimate
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(m.weight.mean().item()) < 0.002, name
    pooled = torch.cat([m.weight.flatten() for _, m in convs])
    assert pooled.std().item() == pytest.approx(0.02, rel=0.01)
    # PyTorch's default on D's first conv (6·4·4 inputs): uniform ±1/√96, std ≈ 0.059.
    first_d = default.D.discriminators[0].blocks[0][0]
    assert first_d.weight.std().item() == pytest.approx(1 / (96 * 3) ** 0.5, rel=0.1)
    assert official.D.discriminators[0].blocks[0][0].weight.std().item() < 0.03
    # Biases keep their default draw; only the weights are redrawn.
    d_modules = dict(default.named_modules())
    for name, m in convs:
        assert torch.equal(m.bias, d_modules[name].bias), name


# -- VGG input ----------------------------------------------------------------------------
def _tiny_vgg_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05
            for k, v in vgg16_features().state_dict().items()}


def test_official_vgg_input_is_the_raw_minus_one_to_one_image(faces: Path, tmp_path: Path) -> None:
    sd = _tiny_vgg_state()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 16, 16, generator=g)
    y = (x + 0.2 * torch.randn(1, 3, 16, 16, generator=g)).clamp(0, 1)
    official, imagenet = VGGLoss(sd, vgg_input="official"), VGGLoss(sd, vgg_input="imagenet")

    def by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        ha, hb = a, b
        for i, layer in enumerate(official.features):  # the weights loaded from sd
            w = sd.get(f"features.{i}.weight")
            if w is not None:
                ha = F.conv2d(ha, w, sd[f"features.{i}.bias"], padding=1)
                hb = F.conv2d(hb, w, sd[f"features.{i}.bias"], padding=1)
            elif isinstance(layer, torch.nn.ReLU):
                ha, hb = ha.clamp_min(0), hb.clamp_min(0)
            else:
                ha, hb = F.max_pool2d(ha, 2), F.max_pool2d(hb, 2)
            if i in VGG_LAYERS:
                total = total + VGG_WEIGHTS[VGG_LAYERS.index(i)] * (ha - hb).abs().mean()
        return total

    got = official(y, x)
    assert got.item() == pytest.approx(by_hand(y * 2 - 1, x * 2 - 1).item(), rel=1e-5)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    other = imagenet(y, x)
    assert other.item() == pytest.approx(by_hand((y - mean) / std, (x - mean) / std).item(), rel=1e-5)
    assert abs(other.item() - got.item()) > 0.05 * got.item()
    # The trainer builds the VGG the config asks for (official by default) and refuses one that reads otherwise.
    assert _config(tmp_path).vgg_input == "official"
    assert build_trainer(_config(tmp_path), faces, quiet=True).vgg.vgg_input == "official"  # type: ignore[union-attr]
    cfg = _config(tmp_path, vgg_input="imagenet", data={"factors": [2], "root": str(faces)})
    with pytest.raises(TrainingError, match="vgg_input='official'.*'imagenet'"):
        Pix2PixHDTrainer(cfg, [], None, quiet=True, vgg=official)


# -- checkpoints from before the settings -------------------------------------------------
def _train_losses(out: Path) -> list[float]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_a_checkpoint_from_before_init_and_vgg_input_resumes_as_it_trained(
        faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.commands.train import resolve_training_config

    old = dict(init="pytorch", vgg_input="imagenet", ckpt_every=1)
    build_trainer(_config(tmp_path / "full", steps=2, **old), faces, quiet=True).fit()
    build_trainer(_config(tmp_path / "part", steps=1, **old), faces, quiet=True).fit()
    run = tmp_path / "part" / "run"
    path = list_checkpoints(run)[-1][1]
    ckpt = load_checkpoint(path)
    del ckpt["config"]["init"], ckpt["config"]["vgg_input"]  # as saved before the settings existed
    torch.save(ckpt, path)

    class Loader:
        name, Config = Pix2PixHDTrainer.name, Pix2PixHDTrainConfig

    resolved = resolve_training_config(lambda: Loader, data=faces, config=None, out=run, steps=2, sets=(),
                                       resume=True, device=None)
    assert resolved.config.init == "pytorch" and resolved.config.vgg_input == "imagenet"
    build_trainer(resolved.config, faces, quiet=True).fit(resume=path)
    assert _train_losses(run) == _train_losses(tmp_path / "full" / "run")
    assert "not an exact continuation" not in capsys.readouterr().err
