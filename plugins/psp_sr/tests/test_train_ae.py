"""StyleGAN2 as an autoencoder's decoder: it learns, exports, and hands over to pSp training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from restorekit.images import save_image
from restorekit.losses import L1Loss, LPIPSLoss
from restorekit.networks.lpips_net import build_lpips
from restorekit.testing.data import smooth_batch
from restorekit.training import DataConfig, sr_datasets
from restorekit_psp_sr.method import load_psp_safetensors
from restorekit_psp_sr.train import PSPTrainConfig, build_psp, load_generator
from restorekit_psp_sr.train_ae import AEConfig, AETrainer, build_autoencoder, moment_loss


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    imgs = smooth_batch(6, 40, 40, seed=31)
    for i in range(6):
        save_image(imgs[i:i + 1], root / f"f{i}.png")
    return root


def test_moment_loss() -> None:
    codes = torch.randn(4, 3, 5)
    w = codes.reshape(-1, 5).clone().requires_grad_(True)
    assert moment_loss(w, codes).item() == pytest.approx(0.0, abs=1e-10)
    shifted = (w + 1.0)
    assert moment_loss(shifted, codes).item() == pytest.approx(5.0, rel=1e-5)  # mean off by 1 in 5 dims
    codes.requires_grad_(True)
    moment_loss(w * 2, codes).backward()
    assert codes.grad is None and w.grad is not None and w.grad.abs().sum() > 0


def test_autoencoder_trains_and_hands_over_to_psp(faces: Path, tmp_path: Path) -> None:
    cfg = AEConfig(steps=12, batch_size=2, lr=3e-3, log_every=1, val_every=12, ckpt_every=12, seed=0, device="cpu",
                   out=str(tmp_path / "ae"), resolution=32, style_dim=16, n_mlp=2, channel_max=16, impl="ref",
                   head_channels=16, license="CC0-1.0", data=DataConfig(factors=[1], holdout_fraction=0.2))
    torch.manual_seed(0)
    model = build_autoencoder(cfg)
    assert model.encoder.input_size == 32 and all(p.requires_grad for p in model.decoder.parameters())
    train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=0)
    losses = {"l1": L1Loss(1.0), "lpips": LPIPSLoss(0.8, net=build_lpips("alex", allow_random=True))}
    trainer = AETrainer(cfg, model, train, val, losses=losses, quiet=True)
    fixed = default_collate([train[i] for i in range(4)])

    def l1() -> float:
        model.eval()
        with torch.no_grad():
            return float((model(fixed["lr_up"])[0] - fixed["hr"]).abs().mean())

    g_before = model.decoder.convs[0].conv.weight.detach().clone()
    before = l1()
    summary = trainer.fit()
    after = l1()
    assert after < 0.8 * before, (before, after)
    assert not torch.equal(model.decoder.convs[0].conv.weight, g_before)  # the generator trains too
    assert summary["losses"]["map"] >= 0 and int(model.codes_seen) == 12

    out = tmp_path / "ae"
    g = load_generator(str(out / "generator.safetensors"), impl="ref")
    torch.testing.assert_close(g.mean_latent(), model.codes_mean.mean(0))
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(g.synthesize(g.broadcast(g.map(z))),
                           model.decoder.synthesize(model.decoder.broadcast(model.decoder.map(z))))
    ae, meta = load_psp_safetensors(out / "autoencoder.safetensors", impl="ref")
    assert meta["training"]["factors"] == [1] and not ae.start_from_latent_avg

    # Stage 2 starts from the autoencoder: with latent_avg folded into the heads' biases the
    # pSp model (residual codes + latent_avg) reproduces the autoencoder exactly.
    pcfg = PSPTrainConfig(generator=str(out / "generator.safetensors"), init=str(out / "autoencoder.safetensors"),
                          encoder_backbone="ir_se_light", encoder_input_size=32, head_channels=16, impl="ref",
                          start_from_latent_avg=True, out=str(tmp_path / "psp"))
    psp = build_psp(pcfg).eval()
    assert psp.start_from_latent_avg
    x = fixed["lr_up"]
    with torch.no_grad():
        want, w_ae = model(x)[:2]
        got, w_psp = psp(x)
    torch.testing.assert_close(w_psp, w_ae, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_resume_reproduces_an_uninterrupted_run(faces: Path, tmp_path: Path) -> None:
    """Split at step 2 and resumed, the run logs the same losses and ends with the same
    weights and code average as one run of 4 steps (the mapping's z come from the global RNG)."""
    import json

    def trainer(out: Path) -> AETrainer:
        cfg = AEConfig(steps=4, batch_size=2, lr=3e-3, log_every=1, val_every=100, ckpt_every=2, seed=0,
                       device="cpu", out=str(out), resolution=32, style_dim=16, n_mlp=2, channel_max=16,
                       impl="ref", head_channels=16, data=DataConfig(factors=[1, 2], holdout_fraction=0.2))
        torch.manual_seed(0)
        model = build_autoencoder(cfg)
        train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=0)
        return AETrainer(cfg, model, train, val, losses={"l1": L1Loss(1.0)}, quiet=True)

    whole = trainer(tmp_path / "a")
    whole.fit()
    assert trainer(tmp_path / "b").fit(until=2)["step"] == 2
    again = trainer(tmp_path / "b")
    assert again.fit(resume=True)["finished"]

    def losses(out: Path) -> list[float]:
        return [json.loads(ln)["loss"] for ln in (out / "log.jsonl").read_text().splitlines()
                if json.loads(ln)["kind"] == "train"]

    assert len(losses(tmp_path / "a")) == 4 and losses(tmp_path / "b") == losses(tmp_path / "a")
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert int(again.model.codes_seen) == 4


@pytest.mark.parametrize("map_lambda", [0.0, 0.1])
def test_every_trainable_parameter_gets_a_gradient_as_ddp_requires(faces: Path, map_lambda: float,
                                                                   tmp_path: Path) -> None:
    """DDP (find_unused_parameters off) waits for a gradient of every parameter that requires one:
    with map_lambda 0 nothing reaches the mapping network, so it is frozen (it failed under
    torchrun with 'Expected to have finished reduction in the prior iteration')."""
    cfg = AEConfig(steps=1, batch_size=2, device="cpu", resolution=32, style_dim=16, n_mlp=2, channel_max=16,
                   impl="ref", head_channels=16, map_lambda=map_lambda, out=str(tmp_path),
                   data=DataConfig(factors=[1, 2], holdout_fraction=0.2))
    model = build_autoencoder(cfg)
    train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=0)
    trainer = AETrainer(cfg, model, train, val, losses={"l1": L1Loss(1.0)}, quiet=True)
    trainer.train_step(model, default_collate([train[0], train[1]]))["loss"].backward()
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), [k for k, p in trainable if p.grad is None]
    mapping = list(model.decoder.style.parameters())
    assert all(p.requires_grad == (map_lambda > 0) for p in mapping)
