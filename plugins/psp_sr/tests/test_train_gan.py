"""Adversarial StyleGAN2 training: DiffAugment, the discriminator, R1, EMA, the loop and its resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit_psp_sr.diffaugment import brightness, contrast, cutout, diff_augment, parse_policy, saturation, translation
from restorekit_psp_sr.discriminator import StyleGAN2Discriminator, minibatch_stddev
from restorekit_psp_sr.train_gan import (GANConfig, GANTrainer, draw_batch, ema_beta, load_face_tensor, mixed_styles,
                                         r1_penalty, update_ema)

TINY = {"resolution": 32, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 8, 32: 8},
        "batch_size": 4, "num_threads": 1, "device": "cpu", "log_every": 2, "ckpt_every": 3,
        "snapshot_minutes": 60.0, "n_sample_grid": 4, "load_workers": 2, "r1_every": 2}


def write_images(root: Path, n: int = 10, size: tuple[int, int] = (40, 48)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((size[0], size[1], 3)) * 255).astype("uint8")
        Image.fromarray(img).save(root / f"{i:02d}.png")
    return root


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    return write_images(tmp_path / "faces")


def tiny_config(faces: Path, out: Path, **kw: object) -> GANConfig:
    data = {"root": str(faces), "holdout_fraction": 0.2}
    return GANConfig.model_validate({**TINY, "out": str(out), "data": data, **kw})


# -- DiffAugment -----------------------------------------------------------------------------------
def test_translation_shifts_whole_images_with_grey_borders() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    y = translation(x)
    for i in range(6):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.full_like(x[i], 0.5)
                ys = slice(max(dy, 0), 16 + min(dy, 0))
                xs = slice(max(dx, 0), 16 + min(dx, 0))
                src_y = slice(max(-dy, 0), 16 + min(-dy, 0))
                src_x = slice(max(-dx, 0), 16 + min(-dx, 0))
                ref[:, ys, xs] = x[i][:, src_y, src_x]
                found |= torch.equal(ref, y[i])
        assert found, f"image {i} is not a shifted copy"
    assert not torch.equal(x, y)  # some image moved (6 draws of 25 shifts)


def test_cutout_greys_one_half_side_square_and_keeps_the_rest() -> None:
    torch.manual_seed(1)
    x = torch.rand(8, 3, 16, 16)
    y = cutout(x)
    for i in range(8):
        grey = (y[i] != x[i]).any(0)
        assert torch.all(y[i][:, grey] == 0.5)
        rows, cols = grey.any(1).nonzero().flatten(), grey.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8  # a square of side 8, clipped at the border
        assert grey.sum() == len(rows) * len(cols)  # a rectangle, nothing else changed


def test_colour_transforms_follow_their_formulas() -> None:
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(2)
    r = torch.rand(4, 1, 1, 1)
    torch.manual_seed(2)
    assert torch.allclose(brightness(x), x + (r - 0.5) * 0.5)
    torch.manual_seed(2)
    m = x.mean(1, keepdim=True)
    assert torch.allclose(saturation(x), (x - m) * r * 2 + m)
    torch.manual_seed(2)
    m = x.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(contrast(x), (x - m) * (r + 0.5) + m)


def test_diff_augment_is_differentiable_and_policy_checked() -> None:
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    diff_augment(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x.detach(), ""), x.detach())
    assert parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown DiffAugment policy 'colour'"):
        parse_policy("colour")


# -- discriminator -----------------------------------------------------------------------------------
def test_discriminator_names_shapes_and_equalized_init() -> None:
    d = StyleGAN2Discriminator(32, channels={4: 16, 8: 16, 16: 8, 32: 8}, impl="ref")
    keys = set(d.state_dict())
    for k in ("convs.0.0.weight", "convs.0.1.bias", "convs.1.conv1.0.weight", "convs.1.conv2.1.weight",
              "convs.1.skip.1.weight", "convs.3.conv2.2.bias", "final_conv.0.weight", "final_linear.0.weight",
              "final_linear.1.bias"):
        assert k in keys, k
    assert d.state_dict()["convs.1.conv2.1.weight"].shape == (8, 8, 3, 3)  # 32 → 16 px: 8 → 8 channels
    assert d.state_dict()["final_conv.0.weight"].shape == (16, 17, 3, 3)  # + the stddev map
    out = d(torch.rand(5, 3, 32, 32))
    assert out.shape == (5,)
    with pytest.raises(ValueError, match="expects 32×32"):
        d(torch.rand(2, 3, 16, 16))


def test_minibatch_stddev_groups() -> None:
    x = torch.randn(6, 4, 2, 2)
    y = minibatch_stddev(x, 4)  # group 3 (largest divisor of 6 that is ≤ 4)
    assert y.shape == (6, 5, 2, 2)
    groups = x.reshape(3, 2, 4, 2, 2)
    expect = (groups.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # one value per group member slot
    for i in range(6):
        assert torch.allclose(y[i, 4], expect[i % 2].expand(2, 2))
    same = minibatch_stddev(torch.ones(4, 2, 3, 3))
    assert torch.allclose(same[:, 2], torch.full((4, 3, 3), 1e-4))


def test_r1_penalty_second_order_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(8, channels={4: 3, 8: 2}, impl="ref").double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    name = "convs.1.conv2.1.weight"  # a conv inside a residual block: R1's gradient flows through it twice

    def r1_of(weight: torch.Tensor) -> torch.Tensor:
        xi = x.clone().requires_grad_(True)
        logits = torch.func.functional_call(d, {name: weight}, (xi,))
        (g,) = torch.autograd.grad(logits.sum(), xi, create_graph=True)
        return g.square().sum((1, 2, 3)).mean()

    w = d.state_dict()[name].clone().requires_grad_(True)
    assert r1_of(w) > 0
    assert torch.autograd.gradcheck(r1_of, (w,), eps=1e-6, atol=1e-5)


def test_r1_penalty_is_in_stylegan2_units() -> None:
    """γ as StyleGAN2 means it: the gradient with respect to the [-1, 1] image D takes (a quarter
    of the [0,1] pixels' squared norm; the penalty was once 4× too strong)."""
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(8, channels={4: 3, 8: 2}, impl="ref").double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    r1, logits = r1_penalty(d, x)
    y = (x * 2 - 1).requires_grad_(True)  # the image as StyleGAN2's D sees it
    (g,) = torch.autograd.grad(d((y + 1) / 2).sum(), y)
    torch.testing.assert_close(r1, g.square().sum((1, 2, 3)).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(logits, d(x))
    # A D linear in its [-1, 1] input: R1 is the squared norm of its weights.
    w = torch.randn(3 * 8 * 8, dtype=torch.float64)
    r1_lin, _ = r1_penalty(lambda im: (im * 2 - 1).flatten(1) @ w, x)
    torch.testing.assert_close(r1_lin, w.square().sum())


# -- pieces of the loop ---------------------------------------------------------------------------
def test_ema_half_life_and_update() -> None:
    cfg = GANConfig(batch_size=32, ema_kimg=10, ema_rampup=None)
    assert math.isclose(ema_beta(cfg, 10**6) ** (10_000 / 32), 0.5, rel_tol=1e-9)  # half-life 10 kimg
    ramp = GANConfig(batch_size=32, ema_kimg=10, ema_rampup=0.05)
    assert math.isclose(ema_beta(ramp, 3200), 0.5 ** (32 / 160))  # 5% of the 3,200 images seen
    assert ema_beta(GANConfig(ema_kimg=0), 10) == 0.0
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    old = a.weight.detach().clone()
    update_ema(a, b, 0.75)
    assert torch.allclose(a.weight, 0.75 * old + 0.25 * b.weight)


def test_style_mixing_gives_two_blocks_of_layers() -> None:
    from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

    g = StyleGAN2Generator(32, 16, 2, channel_max=8, impl="ref")
    torch.manual_seed(0)
    w = mixed_styles(g, 3, 0.0, torch.device("cpu"))
    assert w.shape == (3, g.n_styles, 16) and torch.equal(w, w[:, :1].expand_as(w))
    for seed in range(5):
        torch.manual_seed(seed)
        w = mixed_styles(g, 2, 1.0, torch.device("cpu"))
        changes = [(w[:, i] != w[:, i - 1]).any().item() for i in range(1, g.n_styles)]
        assert sum(changes) == 1  # one cut, the same for the whole batch


def test_draw_batch_depends_on_step_and_rank_only(faces: Path) -> None:
    data = load_face_tensor(sorted(faces.glob("*.png")), 32, workers=2)
    assert data.dtype == torch.uint8 and data.shape == (10, 3, 32, 32)
    kw = {"seed": 3, "n": 4, "xflip": True, "device": torch.device("cpu")}
    a = draw_batch(data, step=5, rank=0, **kw)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, draw_batch(data, step=5, rank=0, **kw))
    assert not torch.equal(a, draw_batch(data, step=6, rank=0, **kw))
    assert not torch.equal(a, draw_batch(data, step=5, rank=1, **kw))
    assert a.min() >= 0 and a.max() <= 1


def test_each_epoch_visits_every_image_once_shared_out_between_the_ranks() -> None:
    """As StyleGAN2-ADA's sampler: a new shuffle every epoch, the global batch the next stretch
    of it, each rank its own part (drawing with replacement repeated images within a batch and
    across ranks, and left a third of the data unseen per epoch's worth of steps)."""
    from restorekit_psp_sr.train_gan import batch_indices, epoch_order

    size, n, world = 10, 3, 2  # a global batch of 6: the second batch crosses into epoch 1
    batches = [[batch_indices(size, seed=4, step=s, rank=r, n=n, world=world) for r in range(world)]
               for s in range(5)]
    flat = torch.cat([idx for step in batches for idx in step])
    assert torch.equal(flat[:size], epoch_order(4, 0, size)) and torch.equal(flat[size:2 * size], epoch_order(4, 1, size))
    assert not torch.equal(epoch_order(4, 0, size), epoch_order(4, 1, size))  # reshuffled every epoch
    for s in (0, 2, 4):  # within a step the ranks' images differ (no epoch boundary inside these)
        a, b = batches[s]
        assert not set(a.tolist()) & set(b.tolist())
    # One process with the whole batch sees what the ranks see together, in the same order.
    whole = torch.cat([batch_indices(size, seed=4, step=s, rank=0, n=n * world, world=1) for s in range(5)])
    assert torch.equal(whole, flat)


# -- the loop -----------------------------------------------------------------------------------------
def test_training_moves_both_players_and_writes_snapshots(faces: Path, tmp_path: Path) -> None:
    from restorekit_psp_sr.train import load_generator

    mirror = tmp_path / "mirror"
    t = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=4, snapshot_dir=str(mirror)), quiet=True)
    assert len(t.train_files) == 8 and len(t.val_files) == 2  # the holdout is never trained on
    g0 = {k: v.clone() for k, v in t.G.state_dict().items()}
    d0 = {k: v.clone() for k, v in t.D.state_dict().items()}
    res = t.fit()
    assert res["finished"] and res["step"] == 4 and res["kimg"] == 0.016
    assert any(not torch.equal(g0[k], v) for k, v in t.G.state_dict().items())
    assert any(not torch.equal(d0[k], v) for k, v in t.D.state_dict().items())
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and "r1" in log[0] and log[0]["images_per_s"] > 0
    for folder in (tmp_path / "run" / "snapshot", mirror):
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["generator.safetensors", "metrics.jsonl", "resume_d.safetensors", "resume_g.safetensors",
                         "samples.png"]
        with Image.open(folder / "samples.png") as im:
            assert im.size == (2 * 32, 4 * 32)  # 2 columns; truncation 1 and 0.7 rows of 2 images
    snap = load_generator(str(mirror / "generator.safetensors"))  # fp16 file, float32 model
    full = load_generator(str(tmp_path / "run" / "generator.safetensors"))
    for k, v in full.state_dict().items():
        assert torch.allclose(snap.state_dict()[k], v, atol=2e-3, rtol=2e-3), k
        assert torch.allclose(v, t.G_ema.state_dict()[k].float())
    assert snap.latent_avg.shape == (16,)
    from safetensors import safe_open

    with safe_open(str(mirror / "generator.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
        training = json.loads(f.metadata()["config"])["training"]
    assert training["trainer"] == "stylegan2" and training["steps"] == 4


def test_resume_reproduces_an_uninterrupted_run(faces: Path, tmp_path: Path) -> None:
    whole = GANTrainer.build(tiny_config(faces, tmp_path / "a", steps=6), quiet=True)
    whole.fit()
    part = GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=6), quiet=True)
    assert part.fit(until=3)["step"] == 3
    again = GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=6), quiet=True)
    res = again.fit(resume=True)
    assert res["finished"] and again.nimg == whole.nimg == 24
    for name in ("G", "D", "G_ema"):
        a, b = getattr(whole, name).state_dict(), getattr(again, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"


def test_a_resume_that_would_train_on_the_runs_validation_faces_is_refused(faces: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A holdout fraction is the last images by name: faces added to the folder mid-run moved the
    run's validation faces into training, silently."""
    from restorekit.training import DataError

    assert GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=6), quiet=True).fit(until=2)["step"] == 2
    ckpt = torch.load(sorted((tmp_path / "b" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert ckpt["split"]["val"] == ["08.png", "09.png"] and ckpt["split"]["train_count"] == 8
    more = write_images(tmp_path / "more", n=12)
    for name in ("10.png", "11.png"):
        (faces / name).write_bytes((more / name).read_bytes())
    with pytest.raises(DataError, match=r"^--resume: 1 image that validated this run up to step 2 would now be "
                                        r"trained on \(first: 08.png\)"):
        GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=6), quiet=True).fit(resume=True)
    # With the validation faces held out by a split file, the added faces only change the training set.
    split = tmp_path / "val.txt"
    split.write_text("08.png\n09.png\n")
    capsys.readouterr()
    cfg = tiny_config(faces, tmp_path / "b", steps=3, data={"root": str(faces), "split_file": str(split)})
    assert GANTrainer.build(cfg, quiet=True).fit(resume=True)["step"] == 3
    err = capsys.readouterr().err
    assert ("warning: resuming with other training images: 8 in the checkpoint, 10 now, so this is not an exact "
            "continuation") in err, err


def test_init_from_a_snapshot_folder(faces: Path, tmp_path: Path) -> None:
    first = GANTrainer.build(tiny_config(faces, tmp_path / "a", steps=2), quiet=True)
    first.fit()
    second = GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=3, init_from=str(tmp_path / "a" / "snapshot")),
                              quiet=True)
    second.init_weights(tmp_path / "a" / "snapshot")
    for k, v in first.D.state_dict().items():
        assert torch.allclose(second.D.state_dict()[k], v, atol=2e-3, rtol=2e-3), k
    assert (second.nimg, second.step) == (8, 2)  # the counts go on: batches and draws do not replay
    res = GANTrainer.build(tiny_config(faces, tmp_path / "e", steps=4, init_from=str(tmp_path / "a" / "snapshot")),
                           quiet=True).fit()
    assert res["finished"] and res["step"] == 4 and res["kimg"] == 0.016  # 2 more steps of 4 images
    other = tiny_config(faces, tmp_path / "c", steps=3, channels={4: 8, 8: 8, 16: 8, 32: 8},
                        init_from=str(tmp_path / "a" / "snapshot"))
    from restorekit.training.trainer import TrainingError

    with pytest.raises(TrainingError, match="do not fit this config"):
        GANTrainer.build(other, quiet=True).fit()
    # Without the EMA file (a GPU call may leave it out of its carry) the EMA starts as G.
    import shutil

    lean = tmp_path / "lean"
    lean.mkdir()
    for name in ("resume_g.safetensors", "resume_d.safetensors"):
        shutil.copy(tmp_path / "a" / "snapshot" / name, lean / name)
    third = GANTrainer.build(tiny_config(faces, tmp_path / "d", steps=3), quiet=True)
    third.init_weights(lean)
    assert all(torch.equal(third.G_ema.state_dict()[k], v) for k, v in third.G.state_dict().items())
    assert all(torch.equal(third.G.state_dict()[k], v) for k, v in second.G.state_dict().items())
    (lean / "resume_d.safetensors").unlink()
    with pytest.raises(TrainingError, match="no resume_d.safetensors"):
        third.init_weights(lean)


def test_time_limit_stops_with_a_checkpoint(faces: Path, tmp_path: Path) -> None:
    t = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=1000), quiet=True)
    res = t.fit(time_limit=0.0)
    assert res["stopped_early"] and not res["finished"] and res["step"] == 1
    assert res["checkpoint"].endswith("step_00000001.pt")
    assert (tmp_path / "run" / "generator.safetensors").is_file()  # a run cut short still exports
    # Resumed to end at the step it stopped at ("--resume --steps 1"): finished, and that export is the model.
    end = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=1), quiet=True).fit(resume=True)
    assert end["finished"] and end["exported"] == str(tmp_path / "run" / "generator.safetensors")


def test_bf16_autocast_step_runs_and_keeps_r1_in_float32(faces: Path, tmp_path: Path) -> None:
    """The CUDA path's mixed precision, exercised by ``amp_cpu`` (the CPU recipe's bf16): no dtype
    clash in G, D, DiffAugment or the losses, R1 computed outside autocast, fp32 master weights."""
    t = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=2, r1_every=1, amp_cpu=True), quiet=True)
    assert t.use_amp
    t.load_data()
    seen: list[torch.dtype] = []
    t.D.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    logs = t.train_step()
    assert torch.bfloat16 in seen and torch.float32 in seen  # autocast passes, and R1's fp32 pass
    assert all(torch.isfinite(v) for v in logs.values()) and logs["r1"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in t.G.parameters())


def test_cpu_training_stays_float32_unless_amp_cpu_is_set(faces: Path, tmp_path: Path) -> None:
    """``amp`` alone means CUDA autocast: a CPU run without ``amp_cpu`` computes in fp32."""
    t = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=2, r1_every=1, amp=True), quiet=True)
    assert not t.use_amp
    t.load_data()
    seen: list[torch.dtype] = []
    t.D.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    t.train_step()
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("d_arch", ["stylegan2", "projected"])
def test_training_pieces_keep_every_tensor_on_the_players_device(d_arch: str) -> None:
    """The GPU run's device placement, checked without a GPU: with G and D on the ``meta`` device
    (channels-last D, as on CUDA), a constant left on the CPU in G, D, DiffAugment, the batch
    drawing, style mixing, R1 or the EMA update raises ("not on the expected device")."""
    from torch.nn import functional as F

    from restorekit_psp_sr.train_gan import GANModels, update_ema

    meta = torch.device("meta")
    cfg = GANConfig(out="unused", resolution=32, style_dim=16, channels={4: 16, 8: 16, 16: 16, 32: 8}, d_arch=d_arch,
                    allow_random_backbone=True, d_head_width=8, batch_size=4)
    models = GANModels(cfg).to(meta)
    models.D.to(memory_format=torch.channels_last)
    data = torch.empty(10, 3, 32, 32, dtype=torch.uint8, device=meta)
    real = draw_batch(data, seed=0, step=0, rank=0, n=4, xflip=True, device=meta)
    fake = models.G.synthesize(mixed_styles(models.G, 4, 0.9, meta), noise_mode="random")

    def d(x: torch.Tensor) -> torch.Tensor:
        return models.D(diff_augment(x, cfg.augment).contiguous(memory_format=torch.channels_last))

    (F.softplus(d(fake.float())).mean() + F.softplus(-d(real)).mean()).backward()
    x = real.detach().requires_grad_(True)
    out = d(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    (grad.square().sum(dim=(1, 2, 3)).mean() + out.mean() * 0).backward()
    update_ema(models.G_ema, models.G, 0.99)
    assert out.device == meta and all(p.device == meta for p in models.parameters())
    assert next(p.grad for p in models.G.parameters() if p.grad is not None).device == meta


def test_config_rejects_what_the_trainer_cannot_do(faces: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="grad_accum"):
        tiny_config(faces, tmp_path, grad_accum=2)
    with pytest.raises(ValidationError, match="DiffAugment"):
        tiny_config(faces, tmp_path, augment="color,zoom")


@pytest.mark.parametrize("setting, said", [
    ("lr_schedule=linear", "lr_schedule (the learning rates are constant, as StyleGAN2's)"),
    ("weight_decay=0.5", "weight_decay (Adam without weight decay, as StyleGAN2's)"),
    ("grad_clip=1e-6", "grad_clip (no gradient clipping, as StyleGAN2's)"),
    ("amp_dtype=fp16", "amp_dtype (autocast is bf16 (amp = false turns it off))"),
    ("data.flip=false", "data.flip (xflip mirrors training faces)"),
    ("data.factors=[2]", "data.factors (a GAN is trained on whole faces, not on degraded pairs)"),
])
def test_settings_the_gan_trainer_does_not_use_are_refused_not_ignored(faces: Path, tmp_path: Path, setting: str,
                                                                       said: str) -> None:
    """They were accepted and trained bit for bit as the defaults."""
    from restorekit.cli import build_cli

    res = CliRunner().invoke(build_cli(), ["train", "stylegan2", "--data", str(faces), "--out", str(tmp_path / "r"),
                                           "--steps", "2", "--set", setting])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert f"stylegan2 does not use {said}; leave it out" in line and "\n" not in line, line
    assert not (tmp_path / "r").exists()
    assert tiny_config(faces, tmp_path, data={"root": str(faces), "flip": True}).data.flip  # the default passes


def test_a_diverged_run_exits_1_claiming_nothing_kept(faces: Path, tmp_path: Path) -> None:
    """It exited 2, the code of a refused setting (said before any work, no folder made), and said
    "what RUN/checkpoints holds is kept" of a folder it then removed, holding nothing."""
    from restorekit.cli import build_cli

    run = tmp_path / "run"
    args = ["train", "stylegan2", "--data", str(faces), "--out", str(run), "--steps", "6", "-q",
            "--set", "lr=1e30", "--set", "log_every=1", "--set", "channels={4 = 16, 8 = 16, 16 = 8, 32 = 8}"]
    args += [a for k, v in TINY.items() if k not in ("log_every", "channels") for a in ("--set", f"{k}={v}")]
    res = CliRunner().invoke(build_cli(), args)
    assert res.exit_code == 1, res.output
    line = res.output.strip()
    assert "\n" not in line and "not finite" in line and "is kept" not in line, line
    assert not run.exists()  # it diverged before writing anything: no empty folder left
    # --json still sums the run up (stdout was empty): where it stopped, and why
    res = CliRunner().invoke(build_cli(), [*args, "--json"])
    assert res.exit_code == 1, res.output
    summary = json.loads(res.stdout)
    assert summary["diverged"] is True and summary["finished"] is False and "not finite" in summary["error"]
    assert (summary["steps"], summary["out"], summary["checkpoint"], summary["exported"]) == (6, None, None, None)
    assert summary["step"] < 6 and summary["error"] in res.stderr


def test_a_run_saved_with_a_setting_now_refused_resumes(faces: Path, tmp_path: Path) -> None:
    """A checkpoint written before the refusal may hold one (it had no effect): resume refused it,
    telling the user to leave out what only the checkpoint said."""
    from restorekit.cli import build_cli

    args = ["train", "stylegan2", "--data", str(faces), "-q", "--out", str(tmp_path / "run"),
            "--set", "channels={4 = 16, 8 = 16, 16 = 8, 32 = 8}"]
    args += [a for k, v in TINY.items() if k != "channels" for a in ("--set", f"{k}={v}")]
    assert CliRunner().invoke(build_cli(), [*args, "--steps", "2"]).exit_code == 0
    path = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1]
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"]["num_workers"], ckpt["config"]["data"]["flip"] = 2, False
    torch.save(ckpt, path)
    res = CliRunner().invoke(build_cli(), [*args, "--resume", "--steps", "3"])
    assert res.exit_code == 0 and "does not use" not in res.output and "differ" not in res.output, res.output
    res = CliRunner().invoke(build_cli(), [*args, "--resume", "--steps", "4", "--set", "num_workers=2"])
    assert res.exit_code == 2 and "stylegan2 does not use num_workers" in res.output, res.output


def test_cli_trains_and_generate_reads_the_result(faces: Path, tmp_path: Path) -> None:
    from restorekit.cli import build_cli

    run = tmp_path / "run"
    args = ["train", "stylegan2", "--data", str(faces), "--out", str(run), "--steps", "2", "--json", "-q",
            "--set", "channels={4 = 16, 8 = 16, 16 = 8, 32 = 8}", "--set", "batch_size=2"]
    for k, v in TINY.items():
        if k not in ("channels", "batch_size"):
            args += ["--set", f"{k}={v}"]
    cli = build_cli()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["finished"] and summary["kimg"] == 0.004
    res = CliRunner().invoke(cli, ["generate", "--generator", "stylegan2", "--weights",
                                   str(run / "generator.safetensors"), "--seeds", "0-1", "--output",
                                   str(tmp_path / "gen"), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["written"]) == 2


def test_resume_names_changed_settings_but_not_a_moved_run_or_its_snapshot_folder(faces: Path, tmp_path: Path) -> None:
    """As scripts/gpu/run.sh does after a race: the winner's folder is moved, then resumed with the
    same settings and a snapshot_dir; only a setting that changes what is trained is named."""
    from restorekit.cli import build_cli

    race, run = tmp_path / "race", tmp_path / "run"
    args = ["train", "stylegan2", "--data", str(faces), "--steps", "2", "-q",
            "--set", "channels={4 = 16, 8 = 16, 16 = 8, 32 = 8}"]
    args += [a for k, v in TINY.items() if k != "channels" for a in ("--set", f"{k}={v}")]
    cli = build_cli()
    res = CliRunner().invoke(cli, [*args, "--out", str(race)])
    assert res.exit_code == 0, res.output
    race.rename(run)
    res = CliRunner().invoke(cli, [*args, "--out", str(run), "--resume", "--steps", "3", "--time-limit", "10",
                                   "--set", f"snapshot_dir={tmp_path / 'mirror'}", "--set", "snapshot_minutes=30"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    res = CliRunner().invoke(cli, ["train", "stylegan2", "--out", str(run), "--resume", "--steps", "4", "-q",
                                   "--set", "r1_gamma=0.2"])
    assert res.exit_code == 0, res.output
    [line] = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert "r1_gamma: 0.1 → 0.2" in line and "snapshot" not in line and "out:" not in line
    # A finished run whose model file is gone (an export that failed) exports it again on --resume.
    (run / "generator.safetensors").unlink()
    res = CliRunner().invoke(cli, ["train", "stylegan2", "--out", str(run), "--resume", "--json", "-q",
                                   "--set", "r1_gamma=0.2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["exported"] == str(run / "generator.safetensors")
    assert (run / "generator.safetensors").is_file()


DDP_SCRIPT = r"""
import sys, torch
from pathlib import Path
from restorekit.training.distributed import cleanup, init_distributed
from restorekit_psp_sr.train_gan import GANConfig, GANTrainer

faces, out = sys.argv[1], Path(sys.argv[2])
info = init_distributed("cpu")
cfg = GANConfig.model_validate({"resolution": 32, "style_dim": 16, "n_mlp": 2,
    "channels": {4: 8, 8: 8, 16: 8, 32: 8}, "batch_size": 4, "steps": 3, "num_threads": 1, "device": "cpu",
    "log_every": 3, "ckpt_every": 3, "snapshot_minutes": 60, "n_sample_grid": 2, "load_workers": 1,
    "r1_every": 2, "out": str(out), "data": {"root": faces}})
t = GANTrainer.build(cfg, quiet=True)
assert t.local_batch == 2
t.fit()
torch.save({**{"G." + k: v for k, v in t.G.state_dict().items()}, **{"D." + k: v for k, v in t.D.state_dict().items()}},
           out / f"rank{info.rank}.pt")
cleanup(info)
# Destroying the group stopped gloo's threads: none is left running at interpreter shutdown.
from restorekit.testing.distributed import native_threads
assert not native_threads("gloo"), f"gloo threads outlived the process group: {native_threads('gloo')}"
"""


@pytest.fixture(scope="module", autouse=True)
def ddp_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The torchrun launch of the DDP test, started with this module's first test (it then runs
    beside the in-process tests): its folder and the launch, or None when that test is not selected."""
    from background_runs import Launch, selected, torchrun

    if not selected(request, "test_ddp_two_processes_keep_identical_players"):
        yield None
        return
    root = tmp_path_factory.mktemp("ddp_gan")
    faces = write_images(root / "faces")
    script = root / "ddp_gan.py"
    script.write_text(DDP_SCRIPT)
    out = root / "ddp"
    out.mkdir()
    launch = Launch([*torchrun(2), str(script), str(faces), str(out)], {"OMP_NUM_THREADS": "1"})
    yield out, launch
    launch.stop()


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_players(ddp_run) -> None:
    out, launch = ddp_run
    res = launch.wait()
    assert res.returncode == 0, res.stderr[-8000:]
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    assert len(a) > 0 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3] and log[0]["kimg"] == 0.012  # rank 0 logs the global count


# -- projected discriminator ------------------------------------------------------------------------
def test_frozen_alexnet_taps_equal_torchvision_features() -> None:
    torchvision = pytest.importorskip("torchvision")
    from restorekit_psp_sr.projected_d import FrozenAlexNet

    torch.manual_seed(0)
    ref = torchvision.models.alexnet(weights=None).features.eval()
    ours = FrozenAlexNet({f"features.{k}": v for k, v in ref.state_dict().items()})
    x = torch.rand(2, 3, 64, 64)
    y = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    y = (y - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expect = []
    with torch.no_grad():
        for i, layer in enumerate(ref):
            y = layer(y)
            if i in (1, 4, 7, 11):
                expect.append(y)
        taps = ours(x)
    assert [t.shape[-1] for t in taps] == [55, 27, 13, 13]
    for a, b in zip(taps, expect):
        assert torch.allclose(a, b, atol=1e-5)
    assert not any(p.requires_grad for p in ours.parameters())


def test_projected_discriminator_trains_heads_only(faces: Path, tmp_path: Path) -> None:
    from restorekit.errors import RestorekitError
    from restorekit_psp_sr.projected_d import build_projected_discriminator

    with pytest.raises(RestorekitError, match="refusing a random AlexNet"):
        build_projected_discriminator(32, None)
    t = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=2, d_arch="projected", r1_gamma=0.0,
                                     allow_random_backbone=True, d_head_width=8), quiet=True)
    logits = t.D(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 4 * 6 * 6)  # each scale (55, 27, 13, 13 px) halved down to 6×6 patch logits
    frozen = {k: v.clone() for k, v in t.D.backbone.state_dict().items()}
    proj = {k: v.clone() for k, v in t.D.project.state_dict().items()}
    heads = {k: v.clone() for k, v in t.D.heads.state_dict().items()}
    assert t.fit()["finished"]
    assert all(torch.equal(v, t.D.backbone.state_dict()[k]) for k, v in frozen.items())
    assert all(torch.equal(v, t.D.project.state_dict()[k]) for k, v in proj.items())
    assert any(not torch.equal(v, t.D.heads.state_dict()[k]) for k, v in heads.items())
    assert len(t.d_params) == len(list(t.D.heads.parameters()))


def test_resume_refuses_a_checkpoint_of_other_network_sizes_by_name(faces: Path, tmp_path: Path) -> None:
    from restorekit.training.trainer import TrainingError

    GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=2), quiet=True).fit()
    wider = tiny_config(faces, tmp_path / "run", steps=4, channels={4: 32, 8: 16, 16: 8, 32: 8})
    with pytest.raises(TrainingError, match=r"step_00000002\.pt does not fit this config.*channels\.4: 16 in the "
                                            r"checkpoint, now 32"):
        GANTrainer.build(wider, quiet=True).fit(resume=True)


def test_log_holds_each_step_once_after_resume_and_only_this_runs_steps(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = run / "log.jsonl"
    run.mkdir()
    log.write_text('{"kind": "train", "step": 7, "loss_g": 1.0}\n')  # an earlier run's, its checkpoints deleted
    GANTrainer.build(tiny_config(faces, run, steps=6, log_every=1), quiet=True).fit(until=3)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [1, 2, 3]
    # Killed after logging step 4 but before its checkpoint, mid-way through the line of step 5.
    with log.open("a") as f:
        f.write('{"kind": "train", "step": 4, "loss_g": 1.0}\n{"kind": "train", "st')
    GANTrainer.build(tiny_config(faces, run, steps=6, log_every=1), quiet=True).fit(resume=True)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_snapshot_metrics_hold_each_step_once_after_resume_and_name_their_losses_step(faces: Path,
                                                                                      tmp_path: Path) -> None:
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    cfg = {"steps": 6, "log_every": 2, "snapshot_dir": str(mirror)}
    GANTrainer.build(tiny_config(faces, run, **cfg), quiet=True).fit(until=3)
    for folder in (run / "snapshot", mirror):  # a snapshot after the checkpoint at 3, then a kill
        with (folder / "metrics.jsonl").open("a") as f:
            f.write('{"step": 4, "kimg": 0.016}\n{"step": 5, "ki')
    GANTrainer.build(tiny_config(faces, run, **cfg), quiet=True).fit(resume=True)
    for folder in (run / "snapshot", mirror):
        rows = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [3, 6]
        assert [r["losses_at_step"] for r in rows] == [2, 6] and all("loss_d" in r for r in rows)


def test_unusable_data_folders_are_named_for_what_they_are(tmp_path: Path) -> None:
    from restorekit.errors import RestorekitError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no faces here")
    with pytest.raises(RestorekitError, match="empty: no image files"):
        GANTrainer.build(tiny_config(empty, tmp_path / "a"), quiet=True)
    bad = write_images(tmp_path / "bad", n=3)
    (bad / "01.png").write_bytes(b"not a png")
    with pytest.raises(RestorekitError, match=r"01\.png: not a readable image"):
        load_face_tensor(sorted(bad.iterdir()), 32, workers=1, bad_images="stop")


def test_an_unreadable_training_image_is_left_out_with_a_warning_naming_it(tmp_path: Path, capsys) -> None:
    from restorekit.training import TrainingError

    root = write_images(tmp_path / "faces", n=3)
    files = sorted(root.iterdir())
    whole = load_face_tensor(files, 32, workers=1)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # cut short
    kept = load_face_tensor(files, 32, workers=2)
    assert torch.equal(kept, whole[[0, 2]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "01.png: corrupt or truncated image" in lines[0] and "left out" in lines[0]
    assert load_face_tensor(files, 32, workers=1, warn=False).shape[0] == 2  # other DDP ranks: silently
    assert capsys.readouterr().err == ""
    for f in files:
        f.write_bytes(b"")
    with pytest.raises(TrainingError, match="none of the 3 training images can be read"):
        load_face_tensor(files, 32, workers=1, warn=False)


def test_compiled_training_follows_the_eager_run(faces: Path, tmp_path: Path, monkeypatch) -> None:
    # compile=true runs G's synthesis and D's passes through torch.compile (R1 stays eager: steps 0
    # and 2 take it here); the same seed then gives the same run up to rounding. The graphs are
    # captured as in a real run (dynamo, AOTAutograd's forward and backward), but not turned into
    # C++ kernels: inductor's compile takes minutes on the CI's two cores.
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    eager = GANTrainer.build(tiny_config(faces, tmp_path / "a", steps=3), quiet=True)
    eager.fit()
    compiled = GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=3, compile=True), quiet=True)
    res = compiled.fit()
    assert res["finished"] and compiled.nimg == 12
    assert compiled._d is not compiled.D and compiled._synthesize != compiled.G.synthesize  # compiled indeed
    for name in ("G", "D"):
        a, b = getattr(eager, name).state_dict(), getattr(compiled, name).state_dict()
        moved = [k for k in a if a[k].is_floating_point() and not torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3)]
        assert not moved, f"{name}: {moved[:4]}"
    logs = [json.loads(ln) for ln in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in logs if r["kind"] == "train" for k, v in r.items()
               if k.startswith(("loss", "r1")))


def test_a_new_run_refuses_a_folder_holding_checkpoints(faces: Path, tmp_path: Path) -> None:
    from restorekit.training import TrainingError

    GANTrainer.build(tiny_config(faces, tmp_path / "a", steps=3), quiet=True).fit()
    log = (tmp_path / "a" / "log.jsonl").read_text()
    with pytest.raises(TrainingError, match="already holds checkpoints: pass --resume"):
        GANTrainer.build(tiny_config(faces, tmp_path / "a", steps=4), quiet=True).fit()
    assert (tmp_path / "a" / "log.jsonl").read_text() == log


def test_an_oversized_or_rotated_training_image_is_read_as_read_image_reads_it(tmp_path: Path, capsys) -> None:
    """The fast path for files already at the training size must not skip what read_image does:
    an EXIF orientation is applied, and a decompression bomb is one file left out, not the run."""
    from PIL import Image

    from restorekit.images import read_image

    root = tmp_path / "faces"
    root.mkdir()
    arr = (torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    exif = img.getexif()
    exif[0x0112] = 3  # rotate 180°
    img.save(root / "a_rotated.jpg", exif=exif, quality=100)
    Image.new("1", (14000, 14000)).save(root / "b_huge.png")  # 196 MP: pillow's bomb error
    out = load_face_tensor(sorted(root.iterdir()), 32, workers=2)
    assert out.shape == (1, 3, 32, 32)
    want = read_image(root / "a_rotated.jpg")[0].mul(255).round().to(torch.uint8)
    assert torch.equal(out[0], want)
    err = capsys.readouterr().err
    assert "b_huge.png" in err and "DecompressionBomb" not in err and "Traceback" not in err


def test_channel_tables_must_cover_every_resolution() -> None:
    from pydantic import ValidationError

    ok = {4: 16, 8: 16, 16: 8, 32: 8}
    assert GANConfig(resolution=32, channels=ok, d_channels=ok).channels == ok
    for bad in ({4: 16}, {**ok, 64: 16}, {**ok, 16: 0}):
        for key in ("channels", "d_channels"):
            with pytest.raises(ValidationError, match=f"{key} must give a positive width for each of "
                                                      r"\[4, 8, 16, 32\]"):
                GANConfig(resolution=32, **{key: bad})


def test_resuming_a_checkpoint_whose_optimizer_was_built_otherwise_says_so(faces: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Same settings, but D's Adam in the checkpoint carries the lazy-R1 scaling earlier versions
    applied: this run's lr and betas apply, and one line says that they differ."""
    from restorekit.training.trainer import list_checkpoints

    GANTrainer.build(tiny_config(faces, tmp_path / "r", steps=4), quiet=True).fit(until=3)
    path = list_checkpoints(tmp_path / "r")[-1][1]
    ckpt = torch.load(path, weights_only=True)
    for group in ckpt["optimizer_d"]["param_groups"]:
        group["lr"] *= 2 / 3
        group["betas"] = tuple(b ** (2 / 3) for b in group["betas"])
    torch.save(ckpt, path)
    capsys.readouterr()
    again = GANTrainer.build(tiny_config(faces, tmp_path / "r", steps=4), quiet=True)
    again.fit(resume=True)
    err = capsys.readouterr().err
    assert "D's optimizer's settings differ from the checkpoint's (lr 0.00166667 → 0.0025; betas" in err
    assert "G's optimizer" not in err
    assert again.opt_D.param_groups[0]["lr"] == 0.0025


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="no O_NOFOLLOW on this platform")
def test_log_and_metrics_are_opened_once_so_links_swapped_in_during_the_run_are_not_followed(
        faces: Path, tmp_path: Path) -> None:
    from restorekit.errors import FileSystemError

    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    run = tmp_path / "run"
    t = GANTrainer.build(tiny_config(faces, run, steps=2), quiet=True)
    t._log({"kind": "train", "step": 1})
    t.snapshot()
    for name in ("log.jsonl", "snapshot/metrics.jsonl"):  # another user of the run folder, mid-run
        os.rename(run / name, tmp_path / name.replace("/", "_"))
        (run / name).symlink_to(victim)
    t._log({"kind": "train", "step": 2})
    t.snapshot()
    t.logs.close()
    assert victim.read_text() == "mine\n"
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2
    assert len((tmp_path / "snapshot_metrics.jsonl").read_text().splitlines()) == 2
    # Planted before they are opened: refused in one line naming the file.
    with pytest.raises(FileSystemError, match=f"cannot write {run / 'log.jsonl'}: .*symbolic link"):
        t._log({"kind": "train", "step": 3})
    assert victim.read_text() == "mine\n"


def test_a_run_closes_its_log_files_when_it_ends(faces: Path, tmp_path: Path) -> None:
    t = GANTrainer.build(tiny_config(faces, tmp_path / "run", steps=2, log_every=1), quiet=True)
    t.fit()
    assert t.logs._files == {}
    assert [json.loads(ln)["step"] for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert [json.loads(ln)["step"] for ln in (tmp_path / "run" / "snapshot" / "metrics.jsonl").read_text().splitlines()] == [2]


@pytest.mark.parametrize("value", [0.0, -0.01, float("nan")])
def test_a_mapping_learning_rate_that_cannot_train_is_refused(value: float) -> None:
    """lr_mlp had no bounds: 0 froze the mapping network, a negative one climbed the loss."""
    from pydantic import ValidationError

    from restorekit_psp_sr.train_gan import GANConfig

    with pytest.raises(ValidationError, match="lr_mlp"):
        GANConfig(lr_mlp=value)
    assert GANConfig(lr_mlp=0.02).lr_mlp == 0.02
