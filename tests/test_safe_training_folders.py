"""A training run folder (``--out``) in a place others can write to: a subfolder of it (checkpoints/,
val/, the GAN's snapshot/) swapped for a symbolic link to a folder of the user's is refused in one
line naming it, and nothing is written into, or removed from, the folder it points at.

A link the user owns (``run/checkpoints -> /scratch/ckpts``) is the user's setup and followed; the
links these tests plant are this process's own, so each test runs as if it were another user
(``os.geteuid`` patched) unless it asks for ``own_links``; each runs by open folder descriptor
and by name (``DIR_FDS`` off, as on Windows)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from restorekit import safe_open
from restorekit.errors import FileSystemError
from restorekit.images import save_image
from restorekit.testing.data import smooth_batch
from restorekit.training import DataConfig, TrainConfig, Trainer, psnr, sr_datasets
from restorekit.training import trainer as T
from link_owners import as_another_user, own_links  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or not hasattr(os, "geteuid"),
                                reason="symbolic links and user ids (POSIX)")


@pytest.fixture(autouse=True, params=[True, False], ids=["dir_fds", "by_name"])
def dir_fds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Folders walked by open descriptor (POSIX), then by name (``safe_open.DIR_FDS`` off, as on Windows)."""
    if request.param and not safe_open.DIR_FDS:
        pytest.skip("no folder descriptors here")
    monkeypatch.setattr(safe_open, "DIR_FDS", request.param)
    return request.param




class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def tiny_step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    loss = (net(batch["lr_up"]) - batch["hr"]).square().mean()
    return {"loss": loss}


def tiny_val(model: nn.Module, batch: dict) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    pred = model(batch["lr_up"])
    return [batch["lr_up"], pred, batch["hr"]], {"psnr": psnr(pred, batch["hr"])}


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    imgs = smooth_batch(6, 24, 24, seed=5)
    for i in range(6):
        save_image(imgs[i:i + 1], root / f"f{i}.png")
    return root


def trainer(faces: Path, out: Path, steps: int, step_fn=tiny_step, **over) -> Trainer:
    fields = dict(steps=steps, batch_size=2, optimizer="adam", lr=0.01, log_every=1, ckpt_every=1, val_every=2,
                  keep_ckpts=1, device="cpu", num_threads=1, data=DataConfig(factors=[1, 2], holdout_fraction=0.3))
    cfg = TrainConfig(**{**fields, **over})
    train, val = sr_datasets(faces, 16, cfg.data, seed=0)
    torch.manual_seed(0)
    return Trainer(cfg, Tiny(), train, val, out=out, step_fn=step_fn, val_fn=tiny_val, quiet=True)


def victim_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of the user's, holding a checkpoint and files shaped like a run's stale temp files."""
    victim = tmp_path / "victim"
    victim.mkdir()
    files = {"step_00000001.pt": b"the user's own checkpoint", ".step_00000009.pt.abcd1234.tmp": b"kept",
             ".notes.png.abcd1234.part": b"kept too"}
    for name, data in files.items():
        (victim / name).write_bytes(data)
        os.utime(victim / name, (0, 0))  # old: what a sweep of stale temp files would take
    return victim, files


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def one_line_naming(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text and text.startswith(f"{path} is a symbolic link"), text


@pytest.mark.parametrize("sub", ["checkpoints", "val"])
def test_a_run_refuses_a_linked_subfolder_before_writing(faces: Path, tmp_path: Path, sub: str) -> None:
    victim, before = victim_folder(tmp_path)
    (victim / "step_00000001.pt").unlink()  # (else the old code stopped at "already holds checkpoints")
    del before["step_00000001.pt"]
    run = tmp_path / "run"
    run.mkdir()
    (run / sub).symlink_to(victim)
    with pytest.raises(FileSystemError) as info:
        trainer(faces, run, 4).fit()
    one_line_naming(info.value, run / sub)
    assert contents(victim) == before
    assert not (run / "log.jsonl").exists()  # refused before the run began


def test_resume_refuses_a_checkpoints_folder_swapped_for_a_link_to_another_runs(faces: Path, tmp_path: Path) -> None:
    """The old code resumed from the other run's checkpoint, wrote its own there and pruned the other's."""
    other = tmp_path / "other"
    trainer(faces, other, 2, keep_ckpts=2).fit()
    before = contents(other / "checkpoints")
    assert sorted(before) == ["step_00000001.pt", "step_00000002.pt"]
    run = tmp_path / "run"
    trainer(faces, run, 1).fit()
    os.rename(run / "checkpoints", tmp_path / "moved")
    (run / "checkpoints").symlink_to(other / "checkpoints")
    with pytest.raises(FileSystemError) as info:
        trainer(faces, run, 4).fit(resume=True)
    one_line_naming(info.value, run / "checkpoints")
    assert contents(other / "checkpoints") == before
    with pytest.raises(FileSystemError):  # listing (what --resume reads) is refused too
        T.list_checkpoints(run)


def test_a_checkpoints_folder_swapped_mid_run_is_not_written_into(faces: Path, tmp_path: Path) -> None:
    victim, before = victim_folder(tmp_path)
    run = tmp_path / "run"

    def swapping_step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        if (run / "checkpoints" / "step_00000001.pt").is_file():  # after the first checkpoint: the swap
            os.rename(run / "checkpoints", tmp_path / "moved")
            (run / "checkpoints").symlink_to(victim)
        return tiny_step(net, batch)

    with pytest.raises(FileSystemError) as info:
        trainer(faces, run, 3, step_fn=swapping_step, val_every=10).fit()
    one_line_naming(info.value, run / "checkpoints")
    assert contents(victim) == before
    assert sorted(os.listdir(tmp_path / "moved")) == ["step_00000001.pt"]


def test_checkpoint_helpers_refuse_a_linked_folder(tmp_path: Path) -> None:
    victim, before = victim_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(victim)
    target = T.checkpoint_path(run, 4)
    with pytest.raises(FileSystemError) as info:
        T.atomic_save({"x": 1}, target, root=run)
    one_line_naming(info.value, run / "checkpoints")
    with pytest.raises(FileSystemError) as info:
        T.prune_checkpoints(run, 1)
    one_line_naming(info.value, run / "checkpoints")
    assert contents(victim) == before
    # A real folder: written there (made when missing), and pruning keeps the newest, drops temp files.
    os.unlink(run / "checkpoints")
    for step in (1, 2, 3):
        T.atomic_save({"step": step}, T.checkpoint_path(run, step), root=run)
    (run / "checkpoints" / ".step_00000004.pt.abcd1234.tmp").write_bytes(b"cut short")
    T.prune_checkpoints(run, 2, protect=T.checkpoint_path(run, 3))
    assert [s for s, _ in T.list_checkpoints(run)] == [2, 3]
    assert sorted(os.listdir(run / "checkpoints")) == ["step_00000002.pt", "step_00000003.pt"]
    assert torch.load(T.checkpoint_path(run, 3), weights_only=True) == {"step": 3}


def test_a_log_below_the_run_folder_is_not_appended_or_trimmed_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "metrics.jsonl").write_text('{"step": 1}\n{"step": 9}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "snapshot").symlink_to(victim)
    with T.LogFiles() as logs, pytest.raises(FileSystemError) as info:
        logs.append(run / "snapshot" / "metrics.jsonl", {"step": 2}, root=run)
    one_line_naming(info.value, run / "snapshot")
    with pytest.raises(FileSystemError) as info:
        T.trim_log(run / "snapshot" / "metrics.jsonl", 1, root=run)
    one_line_naming(info.value, run / "snapshot")
    assert (victim / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 9}\n'


def test_the_lock_sweep_leaves_a_subfolder_swapped_for_a_link_alone(tmp_path: Path, monkeypatch) -> None:
    """The subfolders are listed, then swept: one swapped for a link in between is not swept."""
    import restorekit.images as images

    victim, before = victim_folder(tmp_path)
    run = tmp_path / "run"
    (run / "val").mkdir(parents=True)
    listed = images.subfolders

    def listed_then_swapped(folder: Path) -> list[Path]:
        found = listed(folder)
        os.rename(run / "val", tmp_path / "moved")
        (run / "val").symlink_to(victim)
        return found

    monkeypatch.setattr(images, "subfolders", listed_then_swapped)
    with T.run_folder_lock(run):
        pass
    assert contents(victim) == before


def test_the_loss_plot_replaces_a_planted_link_instead_of_writing_through_it(tmp_path: Path, monkeypatch) -> None:
    """matplotlib's savefig opens a file name it is given, following a link planted there."""
    from restorekit.training.plot import plot_losses

    class Figure:
        def tight_layout(self) -> None:
            pass

        def savefig(self, target, format=None) -> None:
            if hasattr(target, "write"):
                target.write(b"\x89PNG fake")
            else:
                with open(target, "wb") as f:
                    f.write(b"\x89PNG fake")

    pyplot = types.SimpleNamespace(subplots=lambda **kw: (Figure(), types.SimpleNamespace(
        plot=lambda *a, **k: None, set_yscale=lambda *a: None, set_xlabel=lambda *a: None,
        set_ylabel=lambda *a: None, legend=lambda: None, grid=lambda **k: None)), close=lambda fig: None)
    mpl = types.ModuleType("matplotlib")
    mpl.use = lambda backend: None  # type: ignore[attr-defined]
    mpl.pyplot = pyplot  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "matplotlib", mpl)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"kind": "train", "step": 1, "loss": 0.5}\n{"kind": "train", "step": 2, "loss": 0.4}\n')
    secret = tmp_path / "secret"
    secret.write_bytes(b"the user's file")
    (run / "loss.png").symlink_to(secret)
    assert plot_losses(run / "log.jsonl", run / "loss.png") == run / "loss.png"
    assert secret.read_bytes() == b"the user's file"
    assert not (run / "loss.png").is_symlink() and (run / "loss.png").read_bytes() == b"\x89PNG fake"


# -- the GAN trainer's snapshot folder ---------------------------------------------------------------
GAN = {"resolution": 32, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 8, 32: 8}, "batch_size": 4,
       "num_threads": 1, "device": "cpu", "log_every": 1, "ckpt_every": 1, "snapshot_minutes": 60.0,
       "n_sample_grid": 4, "load_workers": 1, "r1_every": 2}


def gan(faces: Path, out: Path, **kw: object):
    train_gan = pytest.importorskip("restorekit_psp_sr.train_gan")
    cfg = train_gan.GANConfig.model_validate({**GAN, "out": str(out), "data": {"root": str(faces),
                                                                             "holdout_fraction": 0.2}, **kw})
    return train_gan.GANTrainer.build(cfg, quiet=True)


@pytest.mark.parametrize("sub", ["snapshot", "checkpoints"])
def test_the_gan_trainer_refuses_a_linked_subfolder_before_writing(faces: Path, tmp_path: Path, sub: str) -> None:
    victim, before = victim_folder(tmp_path)
    (victim / "step_00000001.pt").unlink()
    del before["step_00000001.pt"]
    run = tmp_path / "run"
    run.mkdir()
    (run / sub).symlink_to(victim)
    with pytest.raises(FileSystemError) as info:
        gan(faces, run, steps=1).fit()
    one_line_naming(info.value, run / sub)
    assert contents(victim) == before


def test_a_gan_snapshot_folder_swapped_mid_run_is_not_written_into(faces: Path, tmp_path: Path) -> None:
    victim, before = victim_folder(tmp_path)
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    t = gan(faces, run, steps=1, snapshot_dir=str(mirror))
    assert t.fit()["finished"]
    names = sorted(os.listdir(run / "snapshot"))
    assert names == ["generator.safetensors", "metrics.jsonl", "resume_d.safetensors", "resume_g.safetensors",
                     "samples.png"]
    assert contents(mirror) == contents(run / "snapshot")  # the mirror gets the same bytes
    t.logs.close()
    os.rename(run / "snapshot", tmp_path / "moved")
    (run / "snapshot").symlink_to(victim)
    with pytest.raises(FileSystemError) as info:
        t.snapshot()
    one_line_naming(info.value, run / "snapshot")
    assert contents(victim) == before


# -- the user's own links: followed -----------------------------------------------------------------
def test_a_run_writes_resumes_and_prunes_through_the_users_own_links(faces: Path, tmp_path: Path,
                                                                     own_links: None) -> None:
    """``run/checkpoints -> /scratch/ckpts`` made by the user (it had been refused outright)."""
    scratch, run = tmp_path / "scratch", tmp_path / "run"
    (scratch / "ckpts").mkdir(parents=True)
    (scratch / "val").mkdir()
    run.mkdir()
    (run / "checkpoints").symlink_to(scratch / "ckpts")
    (run / "val").symlink_to("../scratch/val")  # relative: from the link's folder
    T.check_run_folders(run, ("checkpoints", "val"))
    trainer(faces, run, 2, keep_ckpts=1).fit()
    assert sorted(os.listdir(scratch / "ckpts")) == ["step_00000002.pt"]
    assert os.listdir(scratch / "val")
    result = trainer(faces, run, 3, keep_ckpts=1).fit(resume=True)  # (a new run is refused: checkpoints there)
    assert result["step"] == 3 and result["finished"]
    assert sorted(os.listdir(scratch / "ckpts")) == ["step_00000003.pt"]  # written and pruned there
    assert (run / "checkpoints").is_symlink() and (run / "val").is_symlink()
    assert [s for s, _ in T.list_checkpoints(run)] == [3]


def test_the_same_links_another_user_owns_are_refused(faces: Path, tmp_path: Path, own_links: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scratch, run = tmp_path / "scratch", tmp_path / "run"
    scratch.mkdir()
    run.mkdir()
    (run / "checkpoints").symlink_to(scratch)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    with pytest.raises(FileSystemError) as info:
        T.check_run_folders(run, ("val", "checkpoints"))
    one_line_naming(info.value, run / "checkpoints")
    with pytest.raises(FileSystemError):
        trainer(faces, run, 1).fit()
    assert os.listdir(scratch) == []
