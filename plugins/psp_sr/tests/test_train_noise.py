"""psp_sr training's decoder noise (``train_noise``): fresh draws every step as pSp trains, from
the run's checkpointed random stream (so resuming stays exact), or the generator's fixed maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from restorekit.losses import L2Loss, WNormLoss
from restorekit.training import sr_datasets
from restorekit.training.trainer import list_checkpoints, load_checkpoint
from restorekit_psp_sr.encoder import GradualStyleEncoder
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.stylegan2 import NoiseInjection, StyleGAN2Generator
from restorekit_psp_sr.train import PSPTrainer

from tiny_models import tiny_train_config, write_faces  # noqa: E402


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_faces(tmp_path_factory.mktemp("faces"))


def noisy_psp() -> PSP:
    """A tiny pSp whose generator adds its noise at strength 0.5 (a fresh generator's is 0)."""
    torch.manual_seed(0)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(0.5)
    torch.manual_seed(1)
    enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16)
    return PSP(enc, g, g.mean_latent(256))


def make(faces: Path, out: Path, **over: object) -> PSPTrainer:
    cfg = tiny_train_config(out, **over)
    train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=cfg.seed)
    losses = {"l2": L2Loss(1.0, value_range="symmetric"), "w_norm": WNormLoss(0.005)}
    return PSPTrainer(cfg, noisy_psp(), train, val, losses=losses, quiet=True)


def train_losses(out: Path) -> list[float]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_random_noise_differs_per_step_and_const_is_the_fixed_maps(faces: Path, tmp_path: Path) -> None:
    assert tiny_train_config(tmp_path).train_noise == "random"  # pSp's randomize_noise
    trainer = make(faces, tmp_path / "r")
    batch = default_collate([trainer.train_data[i] for i in range(2)])
    trainer.model.eval()
    with torch.no_grad():
        a, b = (float(trainer.train_step(trainer.model, batch)["l2"]) for _ in range(2))
        # Same codes, another noise draw: another image, so another loss.
        assert a != b
        trainer.config.train_noise = "const"
        c, d = (float(trainer.train_step(trainer.model, batch)["l2"]) for _ in range(2))
        y, w = trainer.model(batch["lr_up"], noise_mode="const")
        fixed = float(trainer.compute_losses(y, batch["hr"], w)["l2"])
    assert c == d == pytest.approx(fixed, rel=1e-6)


def test_a_random_noise_run_resumes_exactly(faces: Path, tmp_path: Path) -> None:
    kw: dict = dict(ckpt_every=1, val_every=100)
    full = make(faces, tmp_path / "full", steps=2, **kw)
    full.fit()
    assert make(faces, tmp_path / "part", steps=1, **kw).fit()["step"] == 1
    resumed = make(faces, tmp_path / "part", steps=2, **kw)
    assert resumed.fit(resume=True)["step"] == 2
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
    for (k, x), y in zip(full.model.encoder.state_dict().items(), resumed.model.encoder.state_dict().values()):
        assert torch.equal(x, y), k
    # The const run is another run (the draws change the losses), itself reproducible.
    make(faces, tmp_path / "const", steps=2, train_noise="const", **kw).fit()
    assert train_losses(tmp_path / "const") != train_losses(tmp_path / "full")


def test_a_checkpoint_from_before_the_setting_resumes_with_const(faces: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint saved before ``train_noise`` existed trained with the fixed maps: ``--resume``
    (the checkpoint's settings below the command's) continues with const, exactly; a resume with
    random is told it is no exact continuation, as any changed setting is."""
    from restorekit.commands.train import resolve_training_config
    from restorekit_psp_sr.train import PSPTrainConfig

    kw: dict = dict(ckpt_every=1, val_every=100)
    make(faces, tmp_path / "full", steps=2, train_noise="const", **kw).fit()
    make(faces, tmp_path / "part", steps=1, train_noise="const", **kw).fit()
    path = list_checkpoints(tmp_path / "part")[-1][1]  # step 1
    ckpt = load_checkpoint(path)
    del ckpt["config"]["train_noise"]  # as saved before the setting existed
    torch.save(ckpt, path)

    class Loader:
        name, Config = PSPTrainer.name, PSPTrainConfig

    resolved = resolve_training_config(lambda: Loader, data=faces, config=None, out=tmp_path / "part", steps=2,
                                       sets=(), resume=True, device=None)
    assert resolved.config.train_noise == "const"
    resumed = make(faces, tmp_path / "part", steps=2, train_noise=resolved.config.train_noise, **kw)
    resumed.fit(resume=path)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
    assert load_checkpoint(list_checkpoints(tmp_path / "part")[-1][1])["config"]["train_noise"] == "const"
    assert "not an exact continuation" not in capsys.readouterr().err
    # The new default on such a checkpoint: applied, and the change said.
    again = make(faces, tmp_path / "part", steps=2, train_noise="random", **kw)
    again.fit(resume=path)
    err = capsys.readouterr().err
    assert "not an exact continuation" in err and 'train_noise: "const" → "random"' in err, err


def test_restyle_reads_the_average_image_with_the_fixed_noise_whatever_the_passes_draw() -> None:
    """ReStyle's first pass reads G(w_avg) made with the fixed noise maps (its avg_image), also when
    training decodes the passes with random noise: the same first step for the same input."""
    plain = noisy_psp()
    g = plain.decoder
    torch.manual_seed(1)
    enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16, input_nc=6)
    model = PSP(enc, g, plain.latent_avg, restyle_iterations=2).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        firsts = [model.refine(x, 1, noise_mode="random")[0][0] for _ in range(2)]
        fixed = model.refine(x, 1, noise_mode="const")[0][0]
    assert torch.equal(firsts[0], firsts[1]) and torch.equal(firsts[0], fixed)
