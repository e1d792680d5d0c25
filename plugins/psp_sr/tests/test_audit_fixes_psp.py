"""Audit fixes in psp_sr and pix2pixhd: truncation centres of every shape rosinality broadcasts,
the notes of psp_sr (the shipped model's measurements; sizes paired with --scale), settings that do
not fit the networks refused before a run folder is made, and the last validation kept across a
resume at the final step. Tiny models, CPU, offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from restorekit.cli import build_cli
from restorekit.testing.data import smooth_batch
from restorekit_psp_sr.method import DEFAULT_MODEL_FILE, WEIGHTS_DIR, PSPSR, PSPSROptions
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
from restorekit_psp_sr.train import PSPTrainConfig, PSPTrainer

from tiny_models import save_tiny, tiny_psp, tiny_train_config, write_faces  # noqa: E402

SHIPPED = (WEIGHTS_DIR / DEFAULT_MODEL_FILE).is_file()


def tiny_generator() -> StyleGAN2Generator:
    torch.manual_seed(0)
    return StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=8, impl="ref").eval()


def official(centre: torch.Tensor, style: torch.Tensor, t: float) -> torch.Tensor:
    """rosinality's (and pSp's) truncation, with torch's broadcasting."""
    return centre + t * (style - centre)


# -- 1. truncation centres --------------------------------------------------------------------
@torch.no_grad()
def test_a_centre_per_sample_or_per_layer_truncates_each_towards_its_own() -> None:
    g = tiny_generator()
    n, layers, d = 3, g.n_styles, g.style_dim
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    w = g.style(z)
    per_sample = torch.randn(n, d, generator=torch.Generator().manual_seed(2))
    _, lat = g([z], truncation=0.5, truncation_latent=per_sample, randomize_noise=False, return_latents=True)
    want = official(per_sample, w, 0.5)  # what rosinality's code computes for z input
    torch.testing.assert_close(lat, want[:, None].expand(-1, layers, -1))
    # Truncation 0 lands every sample on its own centre (before: all on row 0).
    _, lat0 = g([z], truncation=0.0, truncation_latent=per_sample, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(lat0[:, 0], per_sample)
    assert (lat0[1, 0] - lat0[0, 0]).abs().max() > 0.1
    # A centre per layer on W+ input, as rosinality broadcasts it; and per sample and layer.
    wp = torch.randn(n, layers, d, generator=torch.Generator().manual_seed(3))
    for centre in (torch.randn(1, layers, d), torch.randn(n, layers, d)):
        _, lat = g([wp], input_is_latent=True, truncation=0.5, truncation_latent=centre, randomize_noise=False,
                   return_latents=True)
        torch.testing.assert_close(lat, official(centre, wp, 0.5).expand(n, -1, -1))
    # A centre per layer on N×D styles makes them W+: layer l goes towards centre l.
    centre = torch.randn(1, layers, d, generator=torch.Generator().manual_seed(4))
    _, lat = g([w], input_is_latent=True, truncation=0.25, truncation_latent=centre, randomize_noise=False,
               return_latents=True)
    torch.testing.assert_close(lat, official(centre, w[:, None], 0.25))
    assert (lat[:, 0] - lat[:, 1]).abs().max() > 0.1
    # An N×D centre on W+ serves every layer of its sample.
    _, lat = g([wp], input_is_latent=True, truncation=0.5, truncation_latent=per_sample, randomize_noise=False,
               return_latents=True)
    torch.testing.assert_close(lat, official(per_sample[:, None], wp, 0.5))
    # D and 1×D stay one centre for all; style mixing truncates both inputs.
    one = torch.randn(d)
    a, la = g([z], truncation=0.5, truncation_latent=one, randomize_noise=False, return_latents=True)
    b, lb = g([z], truncation=0.5, truncation_latent=one[None], randomize_noise=False, return_latents=True)
    assert torch.equal(a, b) and torch.equal(la, lb)
    torch.testing.assert_close(la[:, 0], official(one, w, 0.5))
    z2 = torch.randn(n, d, generator=torch.Generator().manual_seed(5))
    _, lm = g([z, z2], inject_index=2, truncation=0.5, truncation_latent=per_sample, randomize_noise=False,
              return_latents=True)
    torch.testing.assert_close(lm[:, 0], official(per_sample, w, 0.5))
    torch.testing.assert_close(lm[:, -1], official(per_sample, g.style(z2), 0.5))


@torch.no_grad()
def test_a_centre_of_another_shape_is_refused_naming_it() -> None:
    g = tiny_generator()
    z = torch.randn(3, 16)
    layers = g.n_styles
    for shape in [(2, 16), (17,), (1, layers + 1, 16), (2, layers, 16), (layers, 16), (1, 1, 1, 16)]:
        says = f"must be 16, 1×16, 3×16, 1×{layers}×16 or 3×{layers}×16 (batch 3, {layers} layers), got {shape}"
        with pytest.raises(ValueError, match=re.escape(f"truncation_latent {says}")):
            g([z], truncation=0.5, truncation_latent=torch.zeros(shape))


@torch.no_grad()
def test_truncation_above_one_is_no_truncation_as_in_rosinality() -> None:
    g = tiny_generator()
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))
    plain, lp = g([z], randomize_noise=False, return_latents=True)
    for centre in (None, g.mean_latent()[None]):
        out, lo = g([z], truncation=1.5, truncation_latent=centre, randomize_noise=False, return_latents=True)
        assert torch.equal(out, plain) and torch.equal(lo, lp)  # before: extrapolated away from the centre


# -- 2, 3. psp_sr's notes ---------------------------------------------------------------------
def test_the_detail_note_names_the_shipped_model_only_for_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = PSPSR(PSPSROptions(weights=str(save_tiny(tmp_path / "tiny.safetensors")), impl="ref"))
    other.restore(smooth_batch(1, 16, 16, seed=3), 2)  # 16 px on a 32-px generator: detail the prior drops
    err = capsys.readouterr().err
    assert "psp_sr: 16-px inputs show more than the prior keeps: psp_sr re-draws the face; --opt " \
           "consistency_steps=3 projects the output onto the input" in err
    assert "shipped model" not in err and not other._is_shipped_model()
    if not SHIPPED:
        pytest.skip(f"{DEFAULT_MODEL_FILE} is not in this checkout")
    torch.set_num_threads(1)
    shipped = PSPSR(PSPSROptions(impl="ref"))
    shipped.restore(smooth_batch(1, 32, 32, seed=3), 4)
    err = capsys.readouterr().err
    assert "psp_sr: 32-px inputs show more than the prior keeps: psp_sr re-draws the face (at ×2 and ×4 the " \
           "shipped model is further from the person than bicubic); --opt consistency_steps=3" in err


def test_the_size_note_pairs_each_size_with_the_scale_that_takes_it(tmp_path: Path) -> None:
    tiny = PSPSR(PSPSROptions(weights=str(save_tiny(tmp_path / "tiny.safetensors")), impl="ref"))
    tiny.load()  # 32-px generator, 32-px encoder input, factors 1, 2, 4
    assert tiny.notes[1] == ("psp_sr: tiny (32-px generator, 32-px encoder input, trained on it downsampled "
                             "×1,2,4): expects aligned square faces of 32 px at --scale 1, 16 px at --scale 2, "
                             "8 px at --scale 4")
    if not SHIPPED:
        pytest.skip(f"{DEFAULT_MODEL_FILE} is not in this checkout")
    m = PSPSR()
    m.load()
    assert m.notes[1].endswith("trained on it downsampled ×1,2,4,8,16): expects aligned square faces of 64 px at "
                               "--scale 2, 32 px at --scale 4, 16 px at --scale 8, 8 px at --scale 16, 4 px at "
                               "--scale 32")
    # Each pair is what psp_sr takes: --scale K prefers the size named with it (×4: 32 px, not 16).
    for scale, size in ((2, 64), (4, 32), (8, 16), (16, 8), (32, 4)):
        assert m.preferred_input_size(scale) == size
    out = m.restore(smooth_batch(1, 4, 4, seed=1), 32)
    assert out.shape == (1, 3, 128, 128)


# -- 4, 5. settings that do not fit the networks ----------------------------------------------
def _train(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(build_cli(), ["train", *args])
    return r.exit_code, r.output


def test_psp_settings_the_networks_cannot_take_are_refused_before_a_run_folder(tmp_path: Path) -> None:
    from pydantic import ValidationError

    faces = write_faces(tmp_path / "faces")
    for size in (48, 96, 8192):
        with pytest.raises(ValidationError, match="must be a power of two from 32 to 4096"):
            tiny_train_config(tmp_path / "r", encoder_input_size=size)
    assert tiny_train_config(tmp_path / "r", encoder_input_size=64).encoder_input_size == 64
    with pytest.raises(ValidationError, match=r"LPIPS\(alex\) needs images of at least 31 px a side; loss_size is 16"):
        tiny_train_config(tmp_path / "r", loss_size=16)
    # Without LPIPS, or with VGG's (16 px), 16 px is fine.
    assert tiny_train_config(tmp_path / "r", loss_size=16, lpips_lambda=0.0).loss_size == 16
    assert tiny_train_config(tmp_path / "r", loss_size=16, lpips_backbone="vgg").loss_size == 16
    for setting, says in (("encoder_input_size=48", "--set encoder_input_size=48: setting 'encoder_input_size': "
                                                    "Value error, must be a power of two from 32 to 4096"),
                          ("loss_size=16", "lpips_lambda: LPIPS(alex) needs images of at least 31 px a side; "
                                           "loss_size is 16")):
        out = tmp_path / f"run_{setting.split('=')[0]}"
        code, text = _train("psp_sr", "--data", str(faces), "--out", str(out), "--set", setting, "-q")
        assert code == 2 and len(text.strip().splitlines()) == 1 and says in text, text
        assert not out.exists()  # before: exit 1 ("unexpected … report it"), a folder holding .train.lock


def test_pix2pixhd_num_d_is_bounded_by_what_its_discriminator_can_downsample(tmp_path: Path) -> None:
    pytest.importorskip("restorekit_baselines")
    from pydantic import ValidationError

    from restorekit_baselines.pix2pixhd import MultiscaleDiscriminator
    from restorekit_baselines.train_pix2pixhd import Pix2PixHDTrainConfig

    small = dict(size=16, n_downsampling=2)
    with pytest.raises(ValidationError, match=r"num_d 5: at size 16 the coarsest discriminator's instance "
                                              r"norms would see 1×1 maps \(n_layers_d 2\); use num_d ≤ 4 or a "
                                              r"larger size"):
        Pix2PixHDTrainConfig(**small, num_d=5, n_layers_d=2)
    # The bound is the discriminator's: a config is accepted exactly where D runs in training mode.
    for size in (16, 20, 32, 48):
        for n_layers in (1, 2, 3):
            for num_d in range(1, 7):
                try:
                    Pix2PixHDTrainConfig(size=size, n_downsampling=2, n_layers_d=n_layers, num_d=num_d)
                    accepted = True
                except ValidationError:
                    accepted = False
                x = torch.rand(1, 3, size, size)
                try:
                    MultiscaleDiscriminator(3, 4, n_layers, num_d).train()(x, x)
                    runs = True
                except ValueError:
                    runs = False
                assert accepted == runs, (size, n_layers, num_d)
    from restorekit_baselines.train_pix2pixhd import min_normed_side

    assert [min_normed_side(16, 2, k) for k in range(1, 6)] == [5, 3, 2, 2, 1]
    # Without a discriminator (lambda_gan = 0) num_d is never used.
    Pix2PixHDTrainConfig(**small, num_d=6, lambda_gan=0, lambda_feat=0)
    out = tmp_path / "p2p"
    code, text = _train("pix2pixhd", "--data", str(write_faces(tmp_path / "faces")), "--out", str(out),
                        "--set", "size=16", "--set", "n_downsampling=2", "--set", "n_layers_d=2", "--set", "num_d=5",
                        "-q")
    assert code == 2 and "use num_d ≤ 4" in text and len(text.strip().splitlines()) == 1 and not out.exists(), text


# -- 6. the last validation across a resume ---------------------------------------------------
def test_a_resume_at_the_final_step_exports_the_last_validation(tmp_path: Path) -> None:
    from restorekit.losses import L2Loss, WNormLoss
    from restorekit.training import sr_datasets

    faces = write_faces(tmp_path / "faces")

    def trainer(out: Path) -> PSPTrainer:
        cfg: PSPTrainConfig = tiny_train_config(out, steps=3, val_every=2, ckpt_every=3)
        train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=cfg.seed)
        losses = {"l2": L2Loss(1.0, value_range="symmetric"), "w_norm": WNormLoss(0.005)}
        return PSPTrainer(cfg, tiny_psp(), train, val, losses=losses, quiet=True)

    def exported_val(out: Path) -> dict[str, float]:
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["config"])["training"]["val"]

    first = trainer(tmp_path / "run").fit()
    assert first["finished"] and set(first["val"]) == {"psnr", "l2"} and first["val"]["psnr"] > 0
    assert exported_val(tmp_path / "run") == first["val"]
    (tmp_path / "run" / "model.safetensors").unlink()
    again = trainer(tmp_path / "run").fit(resume=True)  # at step 3 of 3: no step, no validation runs
    assert again["finished"] and again["val"] == first["val"]
    assert exported_val(tmp_path / "run") == first["val"]  # before: {}
