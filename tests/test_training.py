"""Core training infrastructure: SR pair data, configs, Lookahead/Ranger, the resumable loop, DDP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from restorekit.degradations import bicubic_resize, downscale
from restorekit.images import save_image
from restorekit.testing.data import smooth_batch
from restorekit.training import (ConfigError, DataConfig, DataError, Lookahead, Split, SRPairDataset, TrainConfig,
                                 Trainer, TrainingError, list_images, load_checkpoint, load_config, make_lr, ranger,
                                 split_files, sr_datasets)
from restorekit.training.trainer import list_checkpoints


def write_faces(folder: Path, n: int, size: int = 40) -> list[Path]:
    imgs = smooth_batch(n, size, size + 6, seed=3)  # not square: the dataset centre-crops
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        paths.append(save_image(imgs[i:i + 1], sub / f"img_{i:02d}.png"))
    (folder / "notes.txt").write_text("not an image")
    return paths


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    write_faces(root, 10)
    return root


# -- data ----------------------------------------------------------------------------------------
def test_list_and_holdout_split(faces: Path) -> None:
    files = list_images(faces)
    rel = [p.relative_to(faces).as_posix() for p in files]
    assert len(files) == 10 and rel == sorted(rel)
    train, val = split_files(files, faces, holdout_fraction=0.25)
    assert [p.name for p in val] == [p.name for p in files[-3:]]  # ceil(10·0.25) = 3, the last by name
    assert not set(train) & set(val) and len(train) + len(val) == 10
    assert split_files(files, faces)[1] == []


def test_split_files_text_and_json(faces: Path, tmp_path: Path) -> None:
    files = list_images(faces)
    txt = tmp_path / "val.txt"
    txt.write_text("# validation\na/img_01.png\n\nb/img_04.png\n")
    train, val = split_files(files, faces, split_file=txt)
    assert [p.relative_to(faces).as_posix() for p in val] == ["a/img_01.png", "b/img_04.png"]
    assert len(train) == 8
    js = tmp_path / "split.json"
    js.write_text(json.dumps({"train": ["a/img_03.png", "b/img_00.png"], "val": ["a/img_01.png"]}))
    train, val = split_files(files, faces, split_file=js)
    assert [p.name for p in train] == ["img_03.png", "img_00.png"] and [p.name for p in val] == ["img_01.png"]
    js.write_text(json.dumps({"train": ["a/img_01.png"], "val": ["a/img_01.png"]}))
    with pytest.raises(DataError, match="both train and val"):
        split_files(files, faces, split_file=js)
    txt.write_text("zz/missing.png\n")
    with pytest.raises(DataError, match="not under.*relative to the data folder"):
        split_files(files, faces, split_file=txt)
    # ./name, a doubled slash and an absolute path inside the data folder name the same images.
    txt.write_text(f"./a/img_01.png\nb//img_04.png\n{(faces / 'a' / 'img_03.png').resolve()}\n")
    _, val = split_files(files, faces, split_file=txt)
    assert [p.relative_to(faces).as_posix() for p in val] == ["a/img_01.png", "a/img_03.png", "b/img_04.png"]
    # An image that is a symbolic link to a file elsewhere is inside the folder as written.
    elsewhere = tmp_path / "elsewhere.png"
    save_image(smooth_batch(1, 40, 46, seed=99), elsewhere)  # (a copy of a training image would be left out)
    (faces / "a" / "linked.png").symlink_to(elsewhere)
    txt.write_text(f"{faces.absolute() / 'a' / 'linked.png'}\n")
    _, val = split_files(list_images(faces), faces, split_file=txt)
    assert [p.name for p in val] == ["linked.png"]
    (faces / "a" / "linked.png").unlink()
    # One image listed twice (./a and a) is trained on once.
    js.write_text(json.dumps({"train": ["a/img_03.png", "./a/img_03.png"], "val": ["a/img_01.png"]}))
    train, _ = split_files(files, faces, split_file=js)
    assert [p.name for p in train] == ["img_03.png"]
    # Files that are not splits: one line each, naming the file.
    for content, msg in [(b"{not json", "not valid JSON"), (json.dumps({"val": "a/img_01.png"}).encode(),
                                                           "'val' must be a list of image paths, not str"),
                         (b"\xff\xfe\x00", "not UTF-8 text")]:
        js.write_bytes(content)
        with pytest.raises(DataError, match=f"{js}: {msg}"):
            split_files(files, faces, split_file=js)


def test_a_split_file_excludes_images_from_both_sides(faces: Path, tmp_path: Path) -> None:
    """``!path`` lines (JSON ``exclude``): e.g. re-encoded copies of validation images, which no
    byte comparison finds; a name the folder lacks (a copy of the data with some images left out)
    is passed over, one also listed as validation is a contradiction."""
    files = list_images(faces)
    txt = tmp_path / "val.txt"
    txt.write_text("a/img_01.png\n! b/img_02.png  # a copy\n!a/img_05.png\n!zz/gone.png\n")
    train, val = split_files(files, faces, split_file=txt)
    names = [p.relative_to(faces).as_posix() for p in train]
    assert [p.name for p in val] == ["img_01.png"] and len(names) == 7
    assert "b/img_02.png" not in names and "a/img_05.png" not in names
    js = tmp_path / "split.json"
    js.write_text(json.dumps({"val": ["a/img_01.png"], "exclude": ["b/img_02.png"],
                              "train": ["b/img_02.png", "a/img_03.png"]}))
    train, _ = split_files(files, faces, split_file=js)
    assert [p.name for p in train] == ["img_03.png"]
    txt.write_text("a/img_01.png\n!a/img_01.png\n")
    with pytest.raises(DataError, match=r"val.txt: 1 images are in both exclude and val \(first: a/img_01.png\)"):
        split_files(files, faces, split_file=txt)
    js.write_text(json.dumps({"val": ["a/img_01.png"], "exclude": "b/img_02.png"}))
    with pytest.raises(DataError, match="'exclude' must be a list"):
        split_files(files, faces, split_file=js)


def test_a_split_files_validation_names_are_whole_lines(faces: Path, tmp_path: Path) -> None:
    """A note is cut after an exclusion only: ``photo #2.png`` is a file name ("photo" was looked
    for), ``./!x.png`` names a file starting with "!"; a text split listing no validation image
    (its names all taken for exclusions) is refused rather than validating on nothing."""
    save_image(smooth_batch(1, 40, 46, seed=60), faces / "photo #2.png")
    save_image(smooth_batch(1, 40, 46, seed=61), faces / "!x.png")
    files = list_images(faces)
    txt = tmp_path / "val.txt"
    txt.write_text("photo #2.png\n./!x.png\n")
    train, val = split_files(files, faces, split_file=txt)
    assert sorted(p.name for p in val) == ["!x.png", "photo #2.png"] and len(train) == 10
    txt.write_text("!x.png\n# nothing else\n")
    with pytest.raises(DataError, match=r"val.txt: lists no validation image \(`!path` lines exclude images; a "
                                        r"file name that starts with '!' is written ./!name\)"):
        split_files(files, faces, split_file=txt)


@pytest.mark.parametrize("how", ["holdout", "split_file"])
def test_byte_copies_of_validation_images_are_not_trained_on(faces: Path, tmp_path: Path, how: str) -> None:
    """A data set holding one photo under two names (All-Age-Faces does, 5 times in its last 5%)
    put validation faces into training under the other name."""
    files = list_images(faces)
    copy = faces / "a" / "copy_of_last.png"  # sorts before the validation images of a holdout
    copy.write_bytes(files[-1].read_bytes())
    other = faces / "a" / "same_size_other.png"  # same size, other bytes: kept
    data = bytearray(files[-1].read_bytes())
    data[-13] ^= 0xFF  # (inside the IEND chunk's CRC: the file still has the same size)
    other.write_bytes(bytes(data))
    files = list_images(faces)
    split = tmp_path / "val.txt"
    split.write_text(files[-1].relative_to(faces).as_posix() + "\n")
    with pytest.warns(UserWarning) as said:
        train, val = (split_files(files, faces, holdout_fraction=0.1) if how == "holdout"
                      else split_files(files, faces, split_file=split))
    assert files[-1] in val and copy not in train and other in train and len(train) == len(files) - len(val) - 1
    assert [str(w.message) for w in said] == [
        f"{faces}: 1 training image is a byte-for-byte copy of a validation image, left out of training (first: "
        f"a/copy_of_last.png = {files[-1].relative_to(faces).as_posix()})"]


def test_dataset_determinism_and_factors(faces: Path) -> None:
    files = list_images(faces)
    ds = SRPairDataset(files, 32, hr_size=16, factors=(1, 2, 4, 8), seed=5)
    a, b = ds[3], ds[3]
    assert a["lr_up"].shape == (3, 32, 32) and a["hr"].shape == (3, 16, 16)
    assert torch.equal(a["lr_up"], b["lr_up"]) and torch.equal(a["hr"], b["hr"])
    # Same (seed, epoch, index) from a fresh dataset: same sample.
    again = SRPairDataset(files, 32, hr_size=16, factors=(1, 2, 4, 8), seed=5)[3]
    assert torch.equal(again["lr_up"], a["lr_up"]) and again["factor"] == a["factor"]
    seen = set()
    flips = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            f, flip = ds.sample_params(i)
            seen.add(f)
            flips += flip
    assert seen == {1, 2, 4, 8}
    assert 30 < flips < 90  # of 120 draws, p = 1/2
    # The LR really is the input-size HR downscaled by F (8-bit), bicubic back up.
    ds.set_epoch(0)
    for i in range(len(ds)):
        f, flip = ds.sample_params(i)
        s = ds[i]
        img = ds.load_hr(i)
        img = img.flip(-1) if flip else img
        x = bicubic_resize(img, (32, 32)).clamp(0, 1)
        lr = downscale(x, f).mul(255).round().div(255)
        expect = bicubic_resize(lr, (32, 32)).clamp(0, 1).mul(255).round().div(255)
        assert torch.equal(s["lr_up"], expect[0]), (i, f)
        assert s["factor"] == f
    # Validation samples cycle factors and never flip.
    val = SRPairDataset(files, 32, factors=(1, 4), train=False)
    assert [val.sample_params(i) for i in range(4)] == [(1, False), (4, False), (1, False), (4, False)]
    # F = 1 with quantisation is the 8-bit input-size image itself.
    one = make_lr(ds.load_hr(0), 1, 32)
    torch.testing.assert_close(one, bicubic_resize(ds.load_hr(0), (32, 32)).clamp(0, 1), atol=0.5 / 255, rtol=0)


def test_dataset_cache_gives_same_samples(faces: Path) -> None:
    files = list_images(faces)
    plain = SRPairDataset(files, 32, seed=1)
    cached = SRPairDataset(files, 32, seed=1, cache=True)
    for i in (0, 4):
        cached[i]
        assert torch.equal(cached[i]["lr_up"], plain[i]["lr_up"]) and torch.equal(cached[i]["hr"], plain[i]["hr"])
    assert sorted(cached._cache) == [0, 4] and cached._cache[0].dtype == torch.uint8


def test_sr_datasets_never_train_on_validation(faces: Path) -> None:
    train, val = sr_datasets(faces, 32, DataConfig(holdout_fraction=0.2, factors=[1, 2]))
    assert val is not None and len(val) == 2 and len(train) == 8
    assert not set(train.files) & set(val.files)


# -- config --------------------------------------------------------------------------------------
def test_config_toml_overrides_and_errors(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('steps = 20\noptimizer = "adam"\n[data]\nfactors = [1, 4]\n')
    cfg = load_config(TrainConfig, cfg_file, ["lr=0.5", "data.flip=false", "out=runs/x"], steps=30)
    assert (cfg.steps, cfg.optimizer, cfg.lr, cfg.data.factors, cfg.data.flip, cfg.out) == \
        (30, "adam", 0.5, [1, 4], False, "runs/x")
    with pytest.raises(ConfigError, match="unknown setting 'stepz'.*did you mean 'steps'"):
        load_config(TrainConfig, cfg_file, ["stepz=3"])
    with pytest.raises(ConfigError, match=r"unknown setting 'data.factorz' \(did you mean 'data.factors'\?\)"):
        load_config(TrainConfig, cfg_file, ["data.factorz=[1]"])
    with pytest.raises(ConfigError, match=r"unknown setting 'factorz' \(did you mean 'data.factors'\?\)"):
        load_config(TrainConfig, cfg_file, ["factorz=[1]"])
    with pytest.raises(ConfigError, match=r"unknown setting 'data.lr' \(did you mean 'lr'\?\)"):
        load_config(TrainConfig, cfg_file, ["data.lr=0.1"])
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(TrainConfig, cfg_file, ["optimizer=sgd"])
    with pytest.raises(ConfigError, match="no such config"):
        load_config(TrainConfig, tmp_path / "missing.toml")
    # The dump is plain JSON data and validates back to the same config.
    assert TrainConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg


# -- optimizers ----------------------------------------------------------------------------------
def test_lookahead_matches_hand_computation() -> None:
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(4))
    q = nn.Parameter(p.detach().clone())
    la = Lookahead(torch.optim.SGD([p], lr=0.1), k=3, alpha=0.5)
    sgd = torch.optim.SGD([q], lr=0.1)
    slow = q.detach().clone()
    for t in range(1, 8):
        for x, opt in ((p, la), (q, sgd)):
            opt.zero_grad()
            (x.square().sum() + x.sum()).backward()
            opt.step()
        if t % 3 == 0:
            with torch.no_grad():
                slow += 0.5 * (q - slow)
                q.copy_(slow)
        torch.testing.assert_close(p.detach(), q.detach())
    # k = 1, alpha = 1 is the base optimizer itself.
    a = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.ones(3))
    o1, o2 = Lookahead(torch.optim.Adam([a], lr=0.1), k=1, alpha=1.0), torch.optim.Adam([b], lr=0.1)
    for _ in range(3):
        for x, o in ((a, o1), (b, o2)):
            o.zero_grad()
            (x * torch.arange(3.0)).sum().backward()
            o.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_ranger_defaults_are_psps() -> None:
    """pSp's Ranger: RAdam with betas (0.95, 0.999) and eps 1e-5 inside Lookahead (k 6, alpha 0.5)."""
    from restorekit.training.optim import build_optimizer

    opt = build_optimizer([nn.Parameter(torch.zeros(3))], TrainConfig(optimizer="ranger", lr=1e-4))
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"], group["lr"]) == ((0.95, 0.999), 1e-5, 1e-4)
    assert (opt.k, opt.alpha) == (6, 0.5)


def test_ranger_minimises_and_state_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(32))  # 1-D: gradient centralization leaves it alone
    target = torch.randn(32)
    opt = ranger([w], lr=0.2)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = (w - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    state = torch.load(tmp_path / "o.pt", weights_only=True)
    w2 = nn.Parameter(w.detach().clone())
    opt2 = ranger([w2], lr=0.2)
    opt2.load_state_dict(state)
    for x, o in ((w, opt), (w2, opt2)):
        for _ in range(7):
            o.zero_grad()
            (x - target).square().mean().backward()
            o.step()
    torch.testing.assert_close(w.detach(), w2.detach(), rtol=0, atol=0)


def test_gradient_centralization_removes_the_mean() -> None:
    w = nn.Parameter(torch.zeros(2, 3))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=100, grad_centralization=True)
    (w * torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])).sum().backward()
    opt.step()
    torch.testing.assert_close(w.detach(), -torch.tensor([[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]]))


# -- the loop ------------------------------------------------------------------------------------
class TinySR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def tiny_step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    # Uses the global RNG so that resuming must restore it to be exact.
    x = batch["lr_up"] + 0.01 * torch.randn_like(batch["lr_up"])
    pred = net(x)
    l2 = (pred - batch["hr"]).square().mean()
    l1 = (pred - batch["hr"]).abs().mean()
    return {"loss": l2 + 0.1 * l1, "l2": l2, "l1": l1}


def tiny_val(model: nn.Module, batch: dict) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    from restorekit.training import psnr

    pred = model(batch["lr_up"])
    return [batch["lr_up"], pred, batch["hr"]], {"psnr": psnr(pred, batch["hr"])}


def make_trainer(faces: Path, out: Path, steps: int, **over) -> Trainer:
    fields = dict(steps=steps, batch_size=2, grad_accum=2, lr=3e-3, optimizer="ranger", log_every=1, val_every=4,
                  ckpt_every=3, seed=7, device="cpu", data=DataConfig(factors=[1, 2, 4], holdout_fraction=0.3))
    fields.update(over)
    cfg = TrainConfig(**fields)
    train, val = sr_datasets(faces, 16, cfg.data, seed=cfg.seed)
    torch.manual_seed(0)
    return Trainer(cfg, TinySR(), train, val, out=out, step_fn=tiny_step, val_fn=tiny_val, quiet=True)


def test_a_loss_that_is_not_finite_stops_the_run_in_one_line_without_a_torch_warning(faces: Path, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """The message formatted the losses with float() on tensors that need grad: a UserWarning each."""
    import warnings

    trainer = make_trainer(faces, tmp_path / "nan", 4)
    monkeypatch.setattr(trainer, "_step_fn", lambda net, batch: {**tiny_step(net, batch),
                                                                "loss": tiny_step(net, batch)["loss"] * float("nan")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TrainingError, match=r"^step 1: the loss is not finite \(loss=nan, l2=\d"):
            trainer.fit()


class Normed(nn.Module):
    """Batch-norm and dropout: modules whose training mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("val_fn", ["none", "raises"])
def test_validation_leaves_the_model_in_training_mode_whatever_its_step_returns(faces: Path, tmp_path: Path,
                                                                               val_fn: str) -> None:
    """A trainer without a validation step (documented as optional) trained in eval mode after the
    first validation: batch-norm on running statistics, no dropout."""
    modes: list[bool] = []

    def step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        modes.append(net.training)
        return {"loss": (net(batch["lr_up"]) - batch["hr"]).square().mean()}

    def failing(model: nn.Module, batch: dict) -> None:
        raise RuntimeError("validation failed")

    cfg = TrainConfig(steps=4, batch_size=2, optimizer="adam", lr=1e-3, log_every=1, val_every=2, ckpt_every=100,
                      device="cpu", data=DataConfig(factors=[1, 2], holdout_fraction=0.25))
    train, val = sr_datasets(faces, 16, cfg.data, seed=0)
    trainer = Trainer(cfg, Normed(), train, val, out=tmp_path / "run", step_fn=step,
                      val_fn=failing if val_fn == "raises" else None, quiet=True)
    if val_fn == "raises":
        trainer.model.train()
        with pytest.raises(RuntimeError, match="validation failed"):
            trainer.validate()
        assert trainer.model.training and all(m.training for m in trainer.model.modules())
        return
    trainer.fit()
    assert modes == [True, True, True, True]


def test_a_resume_on_a_folder_that_gained_images_is_refused_before_training_on_validation(
        faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The holdout is the last fraction of the sorted list, recomputed on resume: images added in
    the meantime moved the run's validation images into training without a word."""
    make_trainer(faces, tmp_path / "run", 6).fit(until=3)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "run")[-1][1])
    assert ckpt["split"]["val"] == ["b/img_04.png", "b/img_06.png", "b/img_08.png"]
    assert ckpt["split"]["train_count"] == 7
    for seed in (50, 51):  # 12 images: the last 4 validate, b/img_04 trains
        save_image(smooth_batch(1, 40, 46, seed=seed), faces / "c" / f"img_{seed}.png")
    with pytest.raises(DataError, match=r"^--resume: 1 image that validated this run up to step 3 would now be "
                                        r"trained on \(first: b/img_04.png\)"):
        make_trainer(faces, tmp_path / "run", 6).fit(resume=True)
    # Taken away again: an exact continuation, said nothing of.
    shutil.rmtree(faces / "c")
    capsys.readouterr()
    assert make_trainer(faces, tmp_path / "run", 6).fit(resume=True)["step"] == 6
    assert "resuming with" not in capsys.readouterr().err
    # A checkpoint of a version that recorded no split resumes as before.
    assert Split.of([], [], faces).check_resume(None, 3) is None


def test_a_learning_rate_beyond_float32_is_a_settings_error(faces: Path, tmp_path: Path) -> None:
    """It passed validation and failed at the first step: "unexpected RuntimeError: value cannot be
    converted to type float without overflow"."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"lr 1e\+39 is beyond float32's range \(3\.403e\+38\)"):
        TrainConfig(lr=1e39)
    assert TrainConfig(lr=3e38).lr == 3e38  # (absurd, yet an optimizer step takes it)
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    res = CliRunner().invoke(build_cli(), ["train", "stylegan2", "--data", str(faces), "--out", str(tmp_path / "r"),
                                           "--set", "lr_d=1e39"])
    assert res.exit_code == 2 and "lr_d 1e+39 is beyond float32's range" in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_fit_logs_checkpoints_and_resumes_exactly(faces: Path, tmp_path: Path) -> None:
    full = make_trainer(faces, tmp_path / "full", 8)
    summary = full.fit()
    assert summary["finished"] and summary["step"] == 8
    # 7 training images, batch 2 × accum 2: steps cross epoch boundaries mid-step.
    log = [json.loads(ln) for ln in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == list(range(1, 9))
    assert set(train_lines[0]) >= {"step", "loss", "l2", "l1", "lr", "time"}
    val_lines = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in val_lines] == [4, 8] and all(r["psnr"] > 5 for r in val_lines)
    assert (tmp_path / "full" / "val" / "step_00000008.png").is_file()
    assert (tmp_path / "full" / "loss.png").stat().st_size > 1000
    assert [s for s, _ in list_checkpoints(tmp_path / "full")] == [6, 8]  # keep_ckpts = 2
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000008.pt")
    assert ckpt["step"] == 8 and ckpt["config"]["seed"] == 7 and isinstance(ckpt["config"], dict)
    assert torch.load(tmp_path / "full" / "checkpoints" / "step_00000008.pt", weights_only=True)["step"] == 8

    part = make_trainer(faces, tmp_path / "part", 5)
    assert part.fit()["step"] == 5
    with pytest.raises(TrainingError, match="--resume"):
        make_trainer(faces, tmp_path / "part", 8).fit()
    resumed = make_trainer(faces, tmp_path / "part", 8)
    assert resumed.fit(resume=True)["step"] == 8
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    full_log = [r for r in log if r["kind"] == "train"]
    part_log = [json.loads(ln) for ln in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    part_train = [r for r in part_log if r["kind"] == "train"]
    assert [r["step"] for r in part_train] == list(range(1, 9))
    assert [r["loss"] for r in part_train] == [r["loss"] for r in full_log]
    # Nothing to resume from: a clear error.
    with pytest.raises(TrainingError, match="no checkpoint"):
        make_trainer(faces, tmp_path / "empty", 2).fit(resume=True)


def test_settings_changed_on_resume_apply_and_a_new_process_count_is_named(faces: Path, tmp_path: Path,
                                                                            capfd: pytest.CaptureFixture) -> None:
    """The optimizer's moments come from the checkpoint, its hyperparameters from this run's
    config: a learning rate or betas changed on --resume apply (load_state_dict alone had brought
    the checkpoint's back while the warning said they changed)."""
    first = make_trainer(faces, tmp_path / "r", 2, optimizer="adam", ckpt_every=2)
    first.fit()
    again = make_trainer(faces, tmp_path / "r", 4, optimizer="adam", ckpt_every=2, lr=1e-6, betas=(0.5, 0.9))
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "r")[-1][1])
    ckpt["world_size"] = 2  # as if written by a two-process run
    torch.save(ckpt, list_checkpoints(tmp_path / "r")[-1][1])
    again.fit(resume=True)
    group = again.optimizer.param_groups[0]
    assert group["lr"] == 1e-6 and tuple(group["betas"]) == (0.5, 0.9)
    log = [json.loads(ln) for ln in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log if r["kind"] == "train"] == [3e-3, 3e-3, 1e-6, 1e-6]
    state = again.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 4 for s in state.values())  # the moments went on
    err = capfd.readouterr().err
    assert "lr: 0.003 → 1e-06" in err and "written by 2 processes, this run has 1" in err


def test_time_limit_stops_with_a_checkpoint(faces: Path, tmp_path: Path) -> None:
    t = make_trainer(faces, tmp_path / "t", 50, ckpt_every=100, val_every=100)
    s = t.fit(time_limit=0.0)
    assert s["stopped_early"] and not s["finished"] and s["step"] == 1
    assert [st for st, _ in list_checkpoints(tmp_path / "t")] == [1]


def test_until_splits_a_cosine_run_exactly(faces: Path, tmp_path: Path) -> None:
    """Stopping at a step with --until keeps the schedule of --steps: the split run is the full one."""
    over = dict(lr_schedule="cosine", lr_decay_start=2, lr_final_ratio=0.1, ckpt_every=100, val_every=100)
    full = make_trainer(faces, tmp_path / "full", 8, **over)
    full.fit()
    part = make_trainer(faces, tmp_path / "part", 8, **over)
    s = part.fit(until=5)
    assert s["step"] == 5 and s["stopped_early"] and not s["finished"] and s["exported"] is None
    assert [st for st, _ in list_checkpoints(tmp_path / "part")] == [5]
    resumed = make_trainer(faces, tmp_path / "part", 8, **over)
    with pytest.raises(TrainingError, match="already at step 5"):
        resumed.fit(resume=True, until=5)
    resumed = make_trainer(faces, tmp_path / "part", 8, **over)
    assert resumed.fit(resume=True)["finished"]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "part" / "log.jsonl").read_text().splitlines()
           if json.loads(ln)["kind"] == "train"]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] < lrs[4] < lrs[1]


def test_a_run_in_a_log_says_its_step_and_losses_now_and_then(faces: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capfd: pytest.CaptureFixture) -> None:
    """In a log there is no progress bar (it wrote its last state cut at 80 columns): a long CI job
    showed nothing between its start and its summary. A line now and then says the step and losses."""
    import restorekit.training.trainer as tr

    t = make_trainer(faces, tmp_path / "a", 6, val_every=100, ckpt_every=100, log_every=2)
    t.quiet = False
    t.fit()
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ": step " in ln]
    assert len(lines) == 1 and lines[0].startswith("trainer: step 2/6  loss ") and "images/s" in lines[0], lines
    monkeypatch.setattr(tr, "LOG_NOTE_EVERY_S", 0.0)  # at every logged step
    t = make_trainer(faces, tmp_path / "b", 6, val_every=100, ckpt_every=100, log_every=2)
    t.quiet = False
    t.fit()
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ": step " in ln]
    assert [ln.split()[2] for ln in lines] == ["2/6", "4/6", "6/6"], lines
    make_trainer(faces, tmp_path / "c", 4, val_every=100, ckpt_every=100, log_every=2).fit()  # quiet: none
    assert ": step " not in capfd.readouterr().err


def test_loss_falls(faces: Path, tmp_path: Path) -> None:
    t = make_trainer(faces, tmp_path / "f", 40, optimizer="adam", lr=1e-2, val_every=100, ckpt_every=100,
                     log_every=5)
    t.fit()
    log = [json.loads(ln) for ln in (tmp_path / "f" / "log.jsonl").read_text().splitlines()]
    losses = [r["l2"] for r in log if r["kind"] == "train"]
    assert losses[-1] < 0.7 * losses[0]


class TinyTrainer(Trainer):
    name = "tiny_sr"

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> "TinyTrainer":
        train, val = sr_datasets(config.data.root, 16, config.data, seed=config.seed)
        torch.manual_seed(0)
        return cls(config, TinySR(), train, val, step_fn=tiny_step, val_fn=tiny_val, quiet=quiet)


def test_train_command_config_overrides_and_resume(faces: Path, tmp_path: Path) -> None:
    import click
    from click.testing import CliRunner

    from restorekit.commands.train import add_trainer, resolve_training_config

    @click.group()
    def cli() -> None:
        pass

    add_trainer(cli, "tiny_sr", "A tiny SR trainer.", lambda: TinyTrainer)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('steps = 3\nbatch_size = 2\noptimizer = "adam"\nlog_every = 1\ndevice = "cpu"\n'
                   '[data]\nfactors = [1, 2]\nholdout_fraction = 0.2\n')
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out", str(out),
                                 "--set", "lr=0.02", "--set", "data.flip=false", "--json", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["step"] == 3 and res["finished"] and res["rank"] == 0
    saved = load_checkpoint(list_checkpoints(out)[-1][1])["config"]
    assert saved["lr"] == 0.02 and saved["data"]["flip"] is False and saved["data"]["root"] == str(faces)
    # A later session: the run folder alone is enough (config and data root come from the checkpoint).
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--out", str(out), "--resume", "--steps", "5", "--json", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["step"] == 5
    # The settings and the states of a resumed run come from one file, named once.
    run = resolve_training_config(lambda: TinyTrainer, data=None, config=None, out=out, steps=None, sets=(),
                                  resume=True, device=None)
    assert run.checkpoint == list_checkpoints(out)[-1][1] and run.config.steps == 5 and run.trainer is TinyTrainer
    fresh = resolve_training_config(lambda: TinyTrainer, data=faces, config=cfg, out=tmp_path / "other", steps=None,
                                    sets=(), resume=False, device=None)
    assert fresh.checkpoint is None and fresh.config.steps == 3
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--out", str(out), "--resume", "--steps", "9", "--until", "7",
                                 "--json", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["step"] == 7 and res["steps"] == 9 and not res["finished"]
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--out", str(out), "--resume", "--steps", "9", "--until", "7"])
    assert r.exit_code == 2 and "already at step 7" in r.output
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--out", str(out), "--resume", "--steps", "3"])
    assert r.exit_code == 2 and "--steps 3: the run is already at step 7" in r.output
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--out", str(tmp_path / "new"), "--config", str(cfg)])
    assert r.exit_code == 2 and "--data" in r.output
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--out", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 2 and "no checkpoint" in r.output


# -- DDP -----------------------------------------------------------------------------------------
DDP_SCRIPT = """
import sys
import weakref
from pathlib import Path
import torch
from torch import nn
from restorekit.training import DataConfig, TrainConfig, Trainer, sr_datasets
from restorekit.training.distributed import cleanup, init_distributed

class TinySR(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    def forward(self, x):
        return x + self.body(x)

calls = 0
term_rank1 = False

def step(net, batch):
    global calls
    calls += 1
    if term_rank1 and info.rank == 1 and calls == 2:  # a TERM that reaches rank 1 alone
        import os, signal
        os.kill(os.getpid(), signal.SIGTERM)
    l2 = (net(batch["lr_up"]) - batch["hr"]).square().mean()
    return {"loss": l2, "l2": l2}

# Two runs in one launch (one process group): a plain one into OUT, then one whose rank 1 alone
# is sent a TERM at its second step into TERM_OUT.
faces, plain_out, term_out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
info = init_distributed("cpu")
cfg = TrainConfig(steps=4, batch_size=2, lr=1e-2, optimizer="adam", log_every=2, val_every=100, ckpt_every=2,
                  seed=3, device="cpu", num_threads=1, data=DataConfig(factors=[1, 2]))
train, _ = sr_datasets(faces, 16, cfg.data, seed=cfg.seed)
wrappers, trainers = [], []  # the trainers stay alive: only cleanup may free a wrapper
for out, term_rank1 in ((plain_out, False), (term_out, True)):
    calls = 0
    torch.manual_seed(info.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    trainer = Trainer(cfg, TinySR(), train, out=out, step_fn=step, quiet=True, dist_info=info)
    out.mkdir(parents=True, exist_ok=True)
    # One file per rank: the ranks share stdout, where their lines can interleave.
    (out / f"rank{info.rank}.txt").write_text(f"world {info.world_size} rank {info.rank} "
                                              f"ddp {type(trainer.net).__name__}")
    result = trainer.fit()
    (out / f"result{info.rank}.txt").write_text(f"step {result['step']} signal {result['signal']}")
    torch.save(trainer.model.state_dict(), out / f"rank{info.rank}.pt")
    wrappers.append(weakref.ref(trainer.net))
    trainer.close()
    assert type(trainer.net).__name__ == "TinySR"
    trainers.append(trainer)
cleanup(info)
assert all(ddp() is None for ddp in wrappers), (
    "a DDP wrapper outlived cleanup: the process group would be torn down at exit")
# Nothing else holds the group either: destroying it stopped gloo's threads, which would
# otherwise still run at interpreter shutdown (torch.distributed.nn.functional's defaults).
from restorekit.testing.distributed import native_threads
assert not native_threads("gloo"), f"gloo threads outlived the process group: {native_threads('gloo')}"
"""


@pytest.fixture(scope="module", autouse=True)
def ddp_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The torchrun launch of the DDP test, started with this module's first test (it then runs
    beside the in-process tests): its folder and the launch, or None when that test is not selected."""
    from background_runs import Launch, selected, torchrun

    if not selected(request, "test_ddp_torchrun_two_processes_keep_identical_weights"):
        yield None
        return
    root = tmp_path_factory.mktemp("ddp_train")
    faces = root / "faces"
    write_faces(faces, 10)
    script = root / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    launch = Launch([*torchrun(2), str(script), str(faces), str(root / "ddp"), str(root / "term")],
                    {"OMP_NUM_THREADS": "1"})
    yield root, launch
    launch.stop()


@pytest.mark.slow
def test_ddp_torchrun_two_processes_keep_identical_weights(ddp_run) -> None:
    root, launch = ddp_run
    res = launch.wait()
    assert res.returncode == 0, res.stderr[-8000:]
    out = root / "ddp"
    for rank in (0, 1):
        assert (out / f"rank{rank}.txt").read_text() == f"world 2 rank {rank} ddp DistributedDataParallel"
    assert {(out / f"result{r}.txt").read_text() for r in (0, 1)} == {"step 4 signal None"}
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    assert len(a) > 0 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    torch.manual_seed(0)  # rank 0's initial weights: training moved them
    assert not torch.equal(a["body.0.weight"], TinySR().state_dict()["body.0.weight"])
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]  # rank 0 alone writes the log
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    # A TERM that reaches one rank stops both after the same step, and both report it (rank 0 reports
    # the run: its exit code must say the run was stopped).
    assert {(root / "term" / f"result{r}.txt").read_text() for r in (0, 1)} == {"step 2 signal 15"}


def test_cosine_lr_schedule_depends_only_on_the_step():
    from restorekit.training.config import TrainConfig
    from restorekit.training.trainer import Trainer

    cfg = TrainConfig(steps=100, lr=1e-3, lr_schedule="cosine", lr_decay_start=20, lr_final_ratio=0.1)
    t = Trainer.__new__(Trainer)  # lr_at reads only the config
    t.config = cfg
    assert t.lr_at(0) == t.lr_at(19) == 1e-3
    assert abs(t.lr_at(60) - (1e-4 + 0.9e-3 * 0.5)) < 1e-12  # half-way through the decay
    assert abs(t.lr_at(100) - 1e-4) < 1e-12
    values = [t.lr_at(s) for s in range(20, 101)]
    assert values == sorted(values, reverse=True)


def test_repeat_oversamples_a_subfolder_of_the_training_split(tmp_path):
    import numpy as np
    from PIL import Image

    from restorekit.training.config import DataConfig
    from restorekit.training.data import DataError, sr_datasets

    for sub, n, level in (("big", 6, 0), ("small", 2, 5)):  # (no image a copy of another)
        (tmp_path / sub).mkdir()
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 10 * i + level, np.uint8)).save(tmp_path / sub / f"{i}.png")
    split = tmp_path / "val.txt"
    split.write_text("big/5.png\nsmall/1.png\n")
    cfg = DataConfig(root=str(tmp_path), split_file=str(split), repeat={"small": 3})
    train, val = sr_datasets(tmp_path, 16, cfg)
    names = [p.relative_to(tmp_path).as_posix() for p in train.files]
    assert names.count("small/0.png") == 3 and names.count("big/0.png") == 1
    assert "small/1.png" not in names and len(names) == 5 + 3  # validation images stay out
    assert len(val) == 2
    with pytest.raises(DataError, match="no training image: nowhere"):
        sr_datasets(tmp_path, 16, DataConfig(root=str(tmp_path), split_file=str(split), repeat={"nowhere": 2}))
    with pytest.raises(ValueError, match="≥ 1"):
        DataConfig(repeat={"small": 0})


def test_only_exact_step_names_are_checkpoints(tmp_path):
    """``step_N.pt`` followed by a newline (a name '$' let through) is not a checkpoint of the run."""
    (tmp_path / "checkpoints").mkdir()
    for name in ("step_00000001.pt", "step_00000002.pt\n", "step_00000003.pt.bak", "xstep_00000004.pt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert list_checkpoints(tmp_path) == [(1, tmp_path / "checkpoints" / "step_00000001.pt")]


def test_the_stop_line_of_a_run_with_no_losses_yet_ends_cleanly(faces: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped before its first logged step printed "… stopped (resume with --resume); "."""
    import click
    from click.testing import CliRunner

    import restorekit.commands.train as train_mod
    from restorekit.commands.train import add_trainer

    @click.group()
    def cli() -> None:
        pass

    add_trainer(cli, "tiny_sr", "A tiny SR trainer.", lambda: TinyTrainer)
    monkeypatch.setattr(train_mod, "fit_training", lambda trainer, **kw: {
        "step": 0, "steps": 3, "finished": False, "losses": {}, "exported": None, "rank": 0})
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('steps = 3\nbatch_size = 2\ndevice = "cpu"\n[data]\nfactors = [1, 2]\nholdout_fraction = 0.2\n')
    r = CliRunner().invoke(cli, ["train", "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out",
                                 str(tmp_path / "run")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[-1] == "tiny_sr: step 0/3 stopped (resume with --resume)"
