"""pSp SR training on the shared trainer: a tiny pSp learns, exports, round-trips and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from restorekit.interfaces import FaceEmbedder
from restorekit.losses import L2Loss, LPIPSLoss, WNormLoss
from restorekit.networks.lpips_net import build_lpips
from restorekit.testing.data import smooth_batch
from restorekit.errors import RestorekitError
from restorekit.training import DataConfig, sr_datasets
from restorekit.training.trainer import list_checkpoints, load_checkpoint
from restorekit_psp_sr.encoder import GradualStyleEncoder
from restorekit_psp_sr.identity_loss import IdentityLoss
from restorekit_psp_sr.method import load_psp_safetensors
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.rosinality import save_rosinality
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
from restorekit_psp_sr.train import (PSPTrainConfig, PSPTrainer, build_psp, load_generator,
                                     save_stylegan2_safetensors)

from tiny_models import tiny_train_config, write_faces  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "restorekit_psp_sr" / "configs"


class TinyEmbedder(FaceEmbedder, nn.Module):
    """A random conv embedder: enough to exercise the identity loss path without real weights."""

    name: ClassVar[str] = "tiny_test"

    def __init__(self) -> None:
        nn.Module.__init__(self)
        torch.manual_seed(11)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(32, 16))

    def embed(self, faces: Tensor) -> Tensor:
        return nn.functional.normalize(self.net(faces * 2 - 1), dim=1)


def tiny_generator(seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    return StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()


def tiny_psp(seed: int = 0) -> PSP:
    g = tiny_generator(seed)
    torch.manual_seed(seed + 1)
    enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16)
    return PSP(enc, g, g.mean_latent(256))


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_faces(tmp_path_factory.mktemp("faces"))


def tiny_config(out: Path, **over: object) -> PSPTrainConfig:
    return tiny_train_config(out, **over)


def make_trainer(faces: Path, out: Path, *, light: bool = False, **over: object) -> PSPTrainer:
    cfg = tiny_config(out, **over)
    model = tiny_psp()
    train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=cfg.seed)
    losses = {"l2": L2Loss(1.0, value_range="symmetric"), "w_norm": WNormLoss(0.005)}
    if not light:
        lp = build_lpips("alex", allow_random=True)  # random features: tests only
        losses.update(lpips=LPIPSLoss(0.8, net=lp), id=IdentityLoss(0.1, embedder=TinyEmbedder()))
    return PSPTrainer(cfg, model, train, val, losses=losses, quiet=True)


def test_tiny_psp_trains_exports_and_round_trips(faces: Path, tmp_path: Path) -> None:
    from torch.utils.data import default_collate

    trainer = make_trainer(faces, tmp_path / "run", steps=12)
    dec_before = {k: v.clone() for k, v in trainer.model.decoder.state_dict().items()}
    fixed = default_collate([trainer.train_data[i] for i in range(4)])

    def fixed_losses() -> dict[str, float]:
        trainer.model.eval()
        with torch.no_grad():
            y, w = trainer.model(fixed["lr_up"])
            return {k: float(v) for k, v in trainer.compute_losses(y, fixed["hr"], w).items()}

    before = fixed_losses()
    summary = trainer.fit()
    after = fixed_losses()
    assert after["loss"] < 0.75 * before["loss"] and after["l2"] < 0.75 * before["l2"], (before, after)
    assert summary["finished"] and summary["step"] == 12
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_log = [r for r in log if r["kind"] == "train"]
    assert set(train_log[0]) >= {"loss", "l2", "lpips", "id", "w_norm"}
    assert len(train_log) == 12 and all(r["loss"] > 0 for r in train_log)
    # The generator is frozen: training never touched it.
    for k, v in trainer.model.decoder.state_dict().items():
        assert torch.equal(v, dec_before[k]), k
    assert all(not p.requires_grad for p in trainer.model.decoder.parameters())
    assert (tmp_path / "run" / "val" / "step_00000012.png").is_file()

    # Export → load: identical outputs, config carries sizes, factors and license.
    path = Path(summary["exported"])
    assert path.name == "model.safetensors"
    loaded, cfg = load_psp_safetensors(path, impl="ref")
    assert cfg["training"]["factors"] == [1, 2, 4] and cfg["license"] == "CC0-1.0"
    assert cfg["encoder"]["input_size"] == 32 and cfg["generator"]["resolution"] == 32
    x = smooth_batch(2, 32, 32, seed=5)
    trainer.model.eval()
    with torch.no_grad():
        a, wa = trainer.model(x)
        b, wb = loaded(x)
    assert torch.equal(wa, wb) and torch.equal(a, b)
    # Training checkpoints load weights-only and hold the whole model.
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "run")[-1][1])
    assert ckpt["trainer"] == "psp_sr" and ckpt["config"]["w_norm_lambda"] == 0.005
    assert any(k.startswith("decoder.") for k in ckpt["model"])


def test_consistency_steps_train_on_the_projected_output_and_stay_with_the_model(faces: Path,
                                                                                tmp_path: Path) -> None:
    from torch.utils.data import default_collate

    from restorekit.consistency import back_project
    from restorekit.degradations import bicubic_resize
    from restorekit_psp_sr.method import PSPSR, PSPSROptions

    trainer = make_trainer(faces, tmp_path / "run", light=True, steps=2, consistency_steps=2, val_every=100,
                           ckpt_every=100)
    batch = default_collate([trainer.train_data[i] for i in range(6)])
    assert len(set(batch["factor"].tolist())) > 1
    # The LR remade from the HR target is the input's LR: upscaled and rounded as the dataset does, it is lr_up.
    targets = trainer.lr_targets(batch["hr"], batch["factor"])
    for k, (rows, lr) in targets.items():
        assert lr.shape[-1] == 32 // k
        up = bicubic_resize(lr, (32, 32)).clamp(0, 1).mul(255).round().div(255)
        torch.testing.assert_close(up, batch["lr_up"][rows], rtol=0, atol=1e-6)
    # The losses are taken on each row's output back-projected onto its own LR.
    trainer.model.eval()
    with torch.no_grad():
        got = trainer.train_step(trainer.model, batch)
        y, w = trainer.model(batch["lr_up"])
        projected = y.clone()
        for rows, lr in targets.values():
            projected[rows] = back_project(y[rows], lr, steps=2, clamp=False)
        want = trainer.compute_losses(projected, batch["hr"], w)
        plain = trainer.compute_losses(y, batch["hr"], w)
    assert float(got["l2"]) == pytest.approx(float(want["l2"]), rel=1e-5)
    assert float(want["l2"]) < float(plain["l2"])
    # The gradient reaches the encoder through the projection.
    trainer.model.train()
    trainer.train_step(trainer.model, batch)["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainer.model.encoder.parameters())
    # The exported model carries the setting, and psp_sr infers with it unless told otherwise.
    path = Path(trainer.fit()["exported"])
    _, cfg = load_psp_safetensors(path, impl="ref")
    assert cfg["training"]["consistency_steps"] == 2
    m = PSPSR(PSPSROptions(weights=str(path), impl="ref"))
    m.load()
    assert m.consistency_steps() == 2 and "back-projected onto the input in 2 steps (as the model" in m.notes[-1]
    lr = smooth_batch(1, 8, 8, seed=2)
    off = PSPSR(PSPSROptions(weights=str(path), impl="ref", consistency_steps=0))
    torch.testing.assert_close(m.restore(lr, 4), back_project(off.restore(lr, 4), lr, steps=2), rtol=0, atol=1e-6)


def test_resume_continues_at_the_saved_step(faces: Path, tmp_path: Path) -> None:
    kw: dict = dict(light=True, ckpt_every=2, val_every=100)
    full = make_trainer(faces, tmp_path / "full", steps=4, **kw)
    full.fit()
    part = make_trainer(faces, tmp_path / "part", steps=2, **kw)
    assert part.fit()["step"] == 2
    resumed = make_trainer(faces, tmp_path / "part", steps=4, **kw)
    s = resumed.fit(resume=True)
    assert s["step"] == 4 and s["finished"]
    log = [json.loads(ln) for ln in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]
    full_log = [json.loads(ln) for ln in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if r["kind"] == "train"] == [r["loss"] for r in full_log if r["kind"] == "train"]
    for (k, a), b in zip(full.model.encoder.state_dict().items(), resumed.model.encoder.state_dict().values()):
        assert torch.equal(a, b), k


def test_generator_files_and_build_from_config(faces: Path, tmp_path: Path) -> None:
    g = tiny_generator(3)
    g.set_latent_avg(g.mean_latent(64))
    pt = save_rosinality(g, tmp_path / "g.pt")
    st = save_stylegan2_safetensors(g, tmp_path / "g.safetensors", license="CC0-1.0")
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = g.synthesize(g.broadcast(g.map(z)))
        for path in (pt, st):
            h = load_generator(str(path), impl="ref")
            assert torch.equal(h.synthesize(h.broadcast(h.map(z))), ref)
            torch.testing.assert_close(h.mean_latent(), g.mean_latent())
    cfg = tiny_config(tmp_path / "b", generator=str(st), encoder_backbone="ir_se_light", head_channels=16,
                      lpips_lambda=0.0, id_lambda=0.0, impl="ref")
    model = build_psp(cfg)
    assert model.n_styles == g.n_styles and model.input_size == 32
    torch.testing.assert_close(model.latent_avg[0], g.mean_latent())
    with pytest.raises(RestorekitError, match="needs a pretrained StyleGAN2: set `generator`"):
        build_psp(tiny_config(tmp_path / "c"))
    # The trainer's initial encoder depends on the config's seed alone, not on the process's RNG.
    cfg = tiny_config(tmp_path / "d", generator=str(st), encoder_backbone="ir_se_light", head_channels=16,
                      lpips_lambda=0.0, id_lambda=0.0, impl="ref", data=DataConfig(factors=[1, 2], holdout_fraction=0.25,
                                                                                   root=str(faces)))
    states = []
    for process_seed in (11, 12):
        torch.manual_seed(process_seed)
        states.append(PSPTrainer.build(cfg, quiet=True).model.encoder.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_cli_trains_from_the_tiny_config(faces: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    g = tiny_generator(4)
    gen = save_stylegan2_safetensors(g, tmp_path / "g.safetensors")
    out = tmp_path / "cli"
    args = ["train", "psp_sr", "--data", str(faces), "--config", str(CONFIGS / "tiny_test.toml"), "--out", str(out),
            "--set", f"generator={gen}", "-q", "--json"]
    r = CliRunner().invoke(build_cli(), [*args, "--steps", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["step"] == 2
    # A later session: resume from the run folder alone, with more steps.
    r = CliRunner().invoke(build_cli(), ["train", "psp_sr", "--out", str(out), "--resume", "--steps", "3", "-q",
                                         "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["step"] == 3 and res["finished"] and Path(res["exported"]).is_file()
    r = CliRunner().invoke(build_cli(), ["train", "psp_sr", "--data", str(faces), "--out", str(tmp_path / "x"),
                                         "--set", "stepz=3"])
    assert r.exit_code == 2 and "unknown setting 'stepz'" in r.output


def test_cli_resumes_with_the_config_alone(faces: Path, tmp_path: Path) -> None:
    """The first command again without --data and --set generator=: both come from the checkpoint."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    gen = save_stylegan2_safetensors(tiny_generator(4), tmp_path / "g.safetensors")
    out, cfg = tmp_path / "cli", str(CONFIGS / "tiny_test.toml")
    r = CliRunner().invoke(build_cli(), ["train", "psp_sr", "--data", str(faces), "--config", cfg, "--out", str(out),
                                         "--set", f"generator={gen}", "-q", "--until", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(build_cli(), ["train", "psp_sr", "--config", cfg, "--out", str(out), "--resume", "-q",
                                         "--json"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["step"] == 4 and res["finished"] and Path(res["exported"]).is_file()


def test_a_run_given_relative_paths_resumes_from_another_folder(faces: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--data and the generator file given relative are saved absolute in the checkpoint: the
    run resumes from another working folder with `--out RUN --resume --steps STEP`, as
    scripts/gpu/stage2.sh ends a run; a weights name stays a name."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    work = tmp_path / "work"
    work.mkdir()
    save_stylegan2_safetensors(tiny_generator(4), work / "g.safetensors")
    monkeypatch.chdir(work)
    data = os.path.relpath(faces, work)
    r = CliRunner().invoke(build_cli(), ["train", "psp_sr", "--data", data, "--config", str(CONFIGS / "tiny_test.toml"),
                                         "--out", "run", "--set", "generator=g.safetensors", "-q", "--until", "2"])
    assert r.exit_code == 0, r.output
    saved = load_checkpoint(list_checkpoints(work / "run")[-1][1])["config"]
    assert saved["data"]["root"] == str(faces) and saved["generator"] == str(work / "g.safetensors")
    from restorekit.training.config import absolute_settings

    assert absolute_settings(PSPTrainConfig, {"backbone_weights": "ir-se50"})["backbone_weights"] == "ir-se50"
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(build_cli(), ["train", "psp_sr", "--out", str(work / "run"), "--resume", "--steps", "2",
                                         "-q", "--json"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["step"] == 2 and res["finished"] and Path(res["exported"]).is_file()


def test_a_damaged_generator_file_is_named(tmp_path: Path) -> None:
    g = tiny_generator(3)
    st = save_stylegan2_safetensors(g, tmp_path / "g.safetensors", license="CC0-1.0")
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(RestorekitError, match=f"{st}: not a readable safetensors file"):
        load_generator(str(st), impl="ref")


def test_an_unknown_encoder_backbone_is_a_settings_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown IR backbone 'ir_se_lite'; known: .*ir_se_light"):
        tiny_config(tmp_path / "r", encoder_backbone="ir_se_lite")
