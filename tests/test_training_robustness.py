"""`restorekit train` when things go wrong: bad configs, foreign or damaged run folders, resume
from a checkpoint that does not fit, a log cut mid-line. Tiny nets, a few steps each."""

from __future__ import annotations

import os

import json
import multiprocessing
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import Dataset

from restorekit.images import save_image
from restorekit.testing.data import smooth_batch
from restorekit.training import (ConfigError, DataError, RunStopped, TrainConfig, Trainer, TrainingError, load_config,
                                 sr_datasets)
from restorekit.training.trainer import list_checkpoints


class TinyConfig(TrainConfig):
    width: int = 8


class TinySR(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def tiny_step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    x = batch["lr_up"] + 0.01 * torch.randn_like(batch["lr_up"])  # the global RNG: resume must restore it
    l2 = (net(x) - batch["hr"]).square().mean()
    return {"loss": l2, "l2": l2}


class TinyTrainer(Trainer):
    name = "tiny_sr"
    Config = TinyConfig

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> "TinyTrainer":
        assert isinstance(config, TinyConfig)
        train, _ = sr_datasets(config.data.root, 16, config.data, seed=config.seed)
        torch.manual_seed(0)
        return cls(config, TinySR(config.width), train, step_fn=tiny_step, quiet=quiet)


class OtherConfig(TrainConfig):
    depth: int = 2


class OtherTrainer(Trainer):
    name = "other_sr"
    Config = OtherConfig


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    imgs = smooth_batch(6, 24, 24, seed=5)
    for i in range(6):
        save_image(imgs[i:i + 1], root / f"f{i}.png")
    return root


@pytest.fixture()
def cli() -> click.Group:
    from restorekit.cli import RestorekitGroup
    from restorekit.commands.train import add_trainer

    @click.group(cls=RestorekitGroup)
    def group() -> None:
        pass

    add_trainer(group, "tiny_sr", "A tiny SR trainer.", lambda: TinyTrainer)
    add_trainer(group, "other_sr", "Another tiny trainer.", lambda: OtherTrainer)
    return group


def config_file(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('steps = 4\nbatch_size = 2\noptimizer = "adam"\nlr = 0.01\nlog_every = 1\nckpt_every = 2\n'
                   'device = "cpu"\nnum_threads = 1\n' + extra + '[data]\nfactors = [1, 2]\n')
    return cfg


def invoke(cli: click.Group, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["train", *args])
    return r.exit_code, r.output


# -- config errors --------------------------------------------------------------------------------
def test_a_config_file_that_is_not_utf8_text_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfesteps = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not UTF-8 text"):
        load_config(TrainConfig, bad)


def test_a_bad_set_value_is_blamed_on_the_set_not_on_the_file(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    code, out = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out", str(tmp_path / "r"),
                       "--set", "data.factors=[2")
    assert code == 2
    assert "--set data.factors=[2: setting 'data.factors'" in out and "tiny.toml" not in out
    code, out = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out", str(tmp_path / "r"),
                       "--set", "stepz=3")
    assert code == 2 and "--set stepz=3: unknown setting 'stepz' (did you mean 'steps'?)" in out
    # A mistake in the file still names the file.
    code, out = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path, "val_every = 0\n")),
                       "--out", str(tmp_path / "r"), "--set", "steps=3")
    assert code == 2 and "tiny.toml: setting 'val_every'" in out and "--set" not in out


def test_under_torchrun_a_bad_setting_is_said_once_a_machine(cli: click.Group, faces: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process of a machine resolves the same options and files into the same error: its
    first process (LOCAL_RANK 0) says it, the others end with the same exit code silently."""
    args = ("tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(tmp_path / "r"),
            "--set", "stepz=3")
    for local_rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        code, out = invoke(cli, *args)
        assert code == 2 and ("unknown setting 'stepz'" in out) is said, (local_rank, out)
        assert said or out == ""


def test_under_torchrun_a_bad_data_folder_is_said_once_a_machine(cli: click.Group, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the trainer reads the same folder in every process: the first one says what is wrong."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ("tiny_sr", "--data", str(empty), "--config", str(config_file(tmp_path)), "--out", str(tmp_path / "r"))
    for local_rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        code, out = invoke(cli, *args)
        assert code == 2 and (str(empty) in out) is said, (local_rank, out)
        assert said or out == ""


def test_under_torchrun_an_error_while_fitting_is_said_by_every_process(cli: click.Group, faces: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped while fitting may be one process's own trouble (its share of the data), so each says it."""
    run = tmp_path / "run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(run),
                        "-q", "--steps", "2")
    assert code == 0, text
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, text = invoke(cli, "tiny_sr", "--out", str(run), "--resume", "--steps", "4", "--set", "width=4", "-q")
    assert code == 2 and "does not fit this config" in text, text


# -- resume -----------------------------------------------------------------------------------------
def test_resume_refuses_another_trainers_run_folder_by_name(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(out),
                        "-q")
    assert code == 0, text
    code, text = invoke(cli, "other_sr", "--out", str(out), "--resume", "-q")
    assert code == 2
    assert "written by trainer 'tiny_sr', not 'other_sr'" in text and "unknown setting" not in text


def test_resume_from_a_checkpoint_of_another_network_size_names_the_difference(cli: click.Group, faces: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(out),
                        "-q", "--steps", "2")
    assert code == 0, text
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "4", "--set", "width=4", "-q")
    assert code == 2, text
    assert "step_00000002.pt does not fit this config" in text and "width: 8 in the checkpoint, now 4" in text
    assert "unexpected" not in text
    assert "steps: " not in text  # what resume may change is no cause: not listed
    # The run is untouched and continues with the settings it was made with.
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "4", "-q", "--json")
    assert code == 0 and json.loads(text)["step"] == 4


def test_resume_after_a_kill_mid_log_line_drops_the_broken_line(faces: Path, tmp_path: Path) -> None:
    cfg = TinyConfig(steps=4, batch_size=2, optimizer="adam", lr=0.01, log_every=1, ckpt_every=2, device="cpu",
                     out=str(tmp_path / "run"), data={"root": str(faces), "factors": [1, 2]})
    assert TinyTrainer.build(cfg.model_copy(update={"steps": 2}), quiet=True).fit()["step"] == 2
    log = tmp_path / "run" / "log.jsonl"
    with log.open("a") as f:
        f.write('{"kind": "train", "step": 3, "lo')  # the process died while writing step 3's line
    assert TinyTrainer.build(cfg, quiet=True).fit(resume=True)["step"] == 4
    steps = [json.loads(ln)["step"] for ln in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def train_losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def test_resume_skips_a_truncated_newest_checkpoint_and_pruning_keeps_the_good_one(cli: click.Group, faces: Path,
                                                                                  tmp_path: Path) -> None:
    cfg = str(config_file(tmp_path))
    full, out = tmp_path / "full", tmp_path / "run"
    assert invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(full), "--steps", "6", "-q")[0] == 0
    assert invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "--until", "4", "-q",
                  "--steps", "6")[0] == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    newest = out / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:3000])  # copied back half-way
    # Continue from step 2, keeping a single checkpoint: the one written at step 3 must survive
    # beside the damaged step-4 file, which sorts after it.
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--until", "3", "--set", "keep_ckpts=1")
    assert code == 0, text
    assert "step_00000004.pt: not a loadable training checkpoint" in text and "resuming from" in text \
        and "step_00000002.pt" in text
    assert 3 in [s for s, _ in list_checkpoints(out)]
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "-q", "--json")
    assert code == 0, text
    assert json.loads(text[text.index("{"):])["step"] == 6  # after the same warning
    assert train_losses(out) == train_losses(full)  # the same run as one without interruption
    # Nothing loadable at all: a clear refusal that names the files.
    for _, p in list_checkpoints(out):
        p.write_bytes(b"")
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "8")
    assert code == 2 and "no loadable checkpoint" in text and "step_00000006.pt" in text


def test_resume_says_why_each_newer_checkpoint_was_passed_over(tmp_path: Path, capsys) -> None:
    """A newer checkpoint of another format (another restorekit's) was called "cut short or damaged"."""
    from restorekit.training.trainer import CKPT_FORMAT, checkpoint_path, newest_loadable_checkpoint

    for step, doc in ((2, {"format": CKPT_FORMAT, "step": 2}), (4, {"format": "restorekit.ckpt/0", "step": 4})):
        checkpoint_path(tmp_path, step).parent.mkdir(exist_ok=True)
        torch.save(doc, checkpoint_path(tmp_path, step))
    checkpoint_path(tmp_path, 6).write_bytes(b"PK\x03\x04 cut")
    path, ckpt = newest_loadable_checkpoint(tmp_path)
    assert path.name == "step_00000002.pt" and ckpt["step"] == 2
    err = capsys.readouterr().err
    assert "step_00000006.pt: not a loadable training checkpoint" in err
    assert f"step_00000004.pt: not a restorekit training checkpoint (format {CKPT_FORMAT})" in err
    assert err.count("\n") == 1 and "resuming from" in err and "cut short or damaged" not in err


# -- unreadable training images ---------------------------------------------------------------------
def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_unreadable_image_is_replaced_by_the_next_readable_one(faces: Path) -> None:
    from restorekit.training import SRPairDataset

    files = sorted(faces.iterdir())
    whole = SRPairDataset(files, 16, train=False, factors=[2])
    assert whole[3]["left_out"] == ""
    cut_short(files[3])
    ds = SRPairDataset(files, 16, train=False, factors=[2])
    got = ds[3]
    assert got["index"] == 4 and torch.equal(got["hr"], whole[4]["hr"])
    assert "f3.png: corrupt or truncated image" in got["left_out"] and "left out of validation" in got["left_out"]
    assert "left out of training" in SRPairDataset(files, 16, train=True, factors=[2])._load_readable(3)[2][0]
    again = ds[3]  # the file is known to be bad: passed over at once, without a second word
    assert again["index"] == 4 and again["left_out"] == "" and ds[2]["index"] == 2
    stop = SRPairDataset(files, 16, train=False, factors=[2], bad_images="stop")
    with pytest.raises(DataError, match=r"f3\.png: corrupt or truncated image .*would leave it out"):
        stop[3]
    for f in files:
        f.write_bytes(b"")
    with pytest.raises(DataError, match="none of the 6 validation images can be read"):
        SRPairDataset(files, 16, train=False, factors=[2])[0]
    with pytest.raises(DataError, match="none of the 6 training images can be read"):
        SRPairDataset(files, 16, train=True, factors=[2])[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_goes_on_past_an_unreadable_image_and_says_so_in_one_line(cli: click.Group, faces: Path,
                                                                          tmp_path: Path, workers: int) -> None:
    cut_short(faces / "f3.png")
    cfg = config_file(tmp_path, f"num_workers = {workers}\n")
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out", str(tmp_path / "r"),
                        "-q", "--steps", "6")  # two epochs of 3 batches: every file is drawn
    assert code == 0, text
    assert "Traceback" not in text
    said = [ln for ln in text.splitlines() if "f3.png" in ln]
    assert len(said) == 1, text  # once in the run, whichever loader worker met the file, in each epoch
    assert said[0].startswith("warning: ") and "corrupt or truncated image" in said[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_images_stop_ends_the_run_in_one_line_naming_the_file(cli: click.Group, faces: Path, tmp_path: Path,
                                                                 workers: int) -> None:
    cfg = config_file(tmp_path, f"num_workers = {workers}\n")
    run = str(tmp_path / "r")
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out", run, "-q", "--until", "1")
    assert code == 0, text
    cut_short(faces / "f3.png")
    # The second epoch draws every file. Changing bad_images on resume is no settings warning.
    code, text = invoke(cli, "tiny_sr", "--out", run, "--resume", "-q", "--steps", "6", "--set", "data.bad_images=stop")
    assert code == 2
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text  # not a usage problem, no worker traceback
    assert "f3.png: corrupt or truncated image" in lines[0] and 'data.bad_images = "skip"' in lines[0]
    assert "--resume continues it" in lines[0]
    # its loader workers ended with the run (kept alive by the error's traceback, they were left to
    # the garbage collector: the command hung a minute before exiting)
    assert multiprocessing.active_children() == []


class FailingAt(Dataset):
    """A dataset whose ``fail_at``-th item (counting from 1) raises the error a stopping dataset raises."""

    def __init__(self, inner: Dataset, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        self.calls += 1
        if self.calls == self.fail_at:
            raise DataError("faces/f9.png: corrupt or truncated image (image file is truncated)")
        return self.inner[i]


def test_a_run_stopped_by_its_data_keeps_a_checkpoint_of_the_last_whole_step(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TinyConfig(steps=6, batch_size=2, optimizer="adam", lr=0.01, log_every=1, ckpt_every=100, device="cpu",
                     out=str(out), data={"root": str(faces), "factors": [1, 2]})
    trainer = TinyTrainer.build(cfg, quiet=True)
    trainer.train_data = FailingAt(trainer.train_data, fail_at=6)  # the third step's second image
    with pytest.raises(RunStopped) as info:
        trainer.fit()
    assert str(info.value).startswith("faces/f9.png: corrupt or truncated image (image file is truncated); "
                                      "the run stopped at step 2 (")
    assert str(info.value).endswith("step_00000002.pt): --resume continues it")
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert TinyTrainer.build(cfg, quiet=True).fit(resume=True)["step"] == 6
    # Stopped before the first whole step: nothing to keep, the reader's message alone.
    cfg0 = cfg.model_copy(update={"out": str(tmp_path / "run0")})
    trainer = TinyTrainer.build(cfg0, quiet=True)
    trainer.train_data = FailingAt(trainer.train_data, fail_at=1)
    with pytest.raises(RunStopped, match=r"^faces/f9\.png: corrupt or truncated image \(image file is truncated\)$"):
        trainer.fit()
    assert list_checkpoints(tmp_path / "run0") == []


def test_unreadable_validation_images_stop_the_run_after_a_checkpoint(faces: Path, tmp_path: Path) -> None:
    """Validation data failing is the data failing: the run stops with a checkpoint of the step
    reached and says --resume continues it (it had ended with none, naming 'training images')."""
    from restorekit.training import SRPairDataset

    out = tmp_path / "run"
    cfg = TinyConfig(steps=6, batch_size=2, optimizer="adam", lr=0.01, log_every=1, ckpt_every=100, val_every=2,
                     device="cpu", out=str(out), data={"root": str(faces), "factors": [1, 2]})
    trainer = TinyTrainer.build(cfg, quiet=True)
    bad = tmp_path / "val.png"
    bad.write_bytes(b"not a png")
    trainer.val_data = SRPairDataset([bad], 16, train=False, factors=[2])
    with pytest.raises(RunStopped) as info:
        trainer.fit()
    assert str(info.value).startswith("none of the 1 validation images can be read")
    assert str(info.value).endswith("step_00000002.pt): --resume continues it")
    assert [s for s, _ in list_checkpoints(out)] == [2]


def test_a_checkpoint_write_cut_by_a_kill_leaves_no_temp_file_for_long(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stale = out / "checkpoints" / ".step_00000002.pt.k3j2.tmp"  # what atomic_save leaves when killed mid-write
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 1000)
    cfg = TinyConfig(steps=2, batch_size=2, optimizer="adam", lr=0.01, log_every=1, ckpt_every=2, device="cpu",
                     out=str(out), data={"root": str(faces), "factors": [1, 2]})
    TinyTrainer.build(cfg, quiet=True).fit()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt"]


# -- resuming with changed settings ----------------------------------------------------------------
def warnings_in(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("warning:")]


def test_resume_with_changed_settings_warns_once_naming_each(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(out),
                        "--steps", "2", "-q")
    assert code == 0, text
    # A changed batch size and learning rate still fit the networks: the run continues, and says
    # that it is no longer an exact continuation. Schedule length and bookkeeping are not listed.
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "6", "--until", "3", "-q",
                        "--set", "batch_size=3", "--set", "lr=0.02", "--set", "log_every=2", "--set", "keep_ckpts=1",
                        "--set", "ckpt_every=1", "--set", "val_every=7", "--set", "num_workers=0",
                        "--set", "num_threads=2", "--time-limit", "60")
    assert code == 0, text
    [line] = warnings_in(text)
    assert "step_00000002.pt" in line
    assert "batch_size: 2 → 3" in line and "lr: 0.01 → 0.02" in line
    for exempt in ("steps", "log_every", "keep_ckpts", "ckpt_every", "val_every", "num_threads"):
        assert f"{exempt}:" not in line, exempt
    # The next session compares with the checkpoint the changed settings wrote: nothing to say.
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "5", "-q", "--json")
    assert code == 0, text
    assert warnings_in(text) == [] and json.loads(text)["step"] == 5


def test_resume_with_only_the_steps_changed_says_nothing(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    """What scripts/gpu/stage2.sh does to export at the step a run stopped: --resume --steps STEP."""
    out = tmp_path / "run"
    cfg = str(config_file(tmp_path))
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "--until", "3", "-q")
    assert code == 0, text
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "3")
    assert code == 0, text
    assert "warning" not in text and "step 3/3 finished" in text


def test_many_changed_settings_are_one_shortened_line(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(out),
                        "--steps", "2", "-q")
    assert code == 0, text
    changes = ["seed=7", "lr=0.02", "batch_size=3", "weight_decay=0.1", "grad_clip=1.0", "data.flip=false",
               "data.quantize=false", "data.factors=[1]", "lr_schedule=cosine", "lr_final_ratio=0.5"]
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "3", "-q",
                        *[a for kv in changes for a in ("--set", kv)])
    assert code == 0, text
    [line] = warnings_in(text)
    # Sorted by name, the first eight: the last two (seed, weight_decay) are counted, not named.
    assert "data.factors: [1, 2] → [1]" in line and 'lr_schedule: "constant" → "cosine"' in line
    assert "and 2 more" in line and "seed" not in line and "weight_decay" not in line


def test_the_changed_settings_warning_comes_from_the_main_process_only(faces: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.training.distributed import DistInfo

    cfg = TinyConfig(steps=2, batch_size=2, optimizer="adam", lr=0.01, device="cpu", out=str(tmp_path / "run"),
                     data={"root": str(faces), "factors": [1, 2]})
    TinyTrainer.build(cfg, quiet=True).fit()
    changed = cfg.model_copy(update={"lr": 0.05})
    for rank, said in ((1, False), (0, True)):
        capsys.readouterr()
        t = TinyTrainer.build(changed, quiet=True)
        t.dist = DistInfo(rank=rank, world_size=2)  # what torchrun gives the second process
        assert t.resume() == 2
        err = capsys.readouterr().err
        assert ("lr: 0.01 → 0.05" in err) is said, (rank, err)


def test_a_setting_newer_than_the_checkpoint_counts_as_its_default(faces: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint written before a setting existed trained with its default: resuming at the
    default says nothing; resuming with another value names the change from the default."""
    cfg = TinyConfig(steps=2, batch_size=2, optimizer="adam", lr=0.01, device="cpu", out=str(tmp_path / "run"),
                     data={"root": str(faces), "factors": [1, 2]})
    TinyTrainer.build(cfg, quiet=True).fit()
    [(_, ckpt_path)] = list_checkpoints(tmp_path / "run")
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["config"]["amp_cpu"], ckpt["config"]["data"]["quantize"]  # as written before they existed
    torch.save(ckpt, ckpt_path)
    capsys.readouterr()
    assert TinyTrainer.build(cfg, quiet=True).resume() == 2
    assert "warning" not in capsys.readouterr().err
    changed = cfg.model_copy(update={"amp": True, "amp_cpu": True})
    assert TinyTrainer.build(changed, quiet=True).resume() == 2
    err = capsys.readouterr().err
    assert "amp: false → true; amp_cpu: false → true" in err and "quantize" not in err, err


def test_amp_cpu_autocasts_a_cpu_run_to_bf16_and_amp_alone_does_not(faces: Path, tmp_path: Path) -> None:
    base = TinyConfig(steps=1, batch_size=2, optimizer="adam", lr=0.01, device="cpu",
                      data={"root": str(faces), "factors": [1, 2]}, amp=True)
    for amp_cpu, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        t = TinyTrainer.build(base.model_copy(update={"amp_cpu": amp_cpu, "out": str(tmp_path / str(amp_cpu))}),
                              quiet=True)
        seen: list[torch.dtype] = []
        t.model.body.register_forward_hook(lambda m, i, o: seen.append(o.dtype))  # the convs, not x + body(x)
        t.fit()
        assert t.use_amp is amp_cpu and seen and set(seen) == {dtype}, (amp_cpu, seen)
    with pytest.raises(ValueError, match="amp_cpu autocasts to bf16 only"):
        TinyConfig(amp=True, amp_cpu=True, amp_dtype="fp16")


# -- what a resumed run takes from its checkpoint --------------------------------------------------
def test_resume_with_the_config_file_but_no_data_takes_the_rest_from_the_checkpoint(cli: click.Group, faces: Path,
                                                                                    tmp_path: Path) -> None:
    out, cfg = tmp_path / "run", str(config_file(tmp_path))
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "--steps", "2",
                        "--set", "width=4", "--set", "lr=0.02", "-q")
    assert code == 0, text
    # The same command a session later, without --data and the --set's: the data folder and the
    # width come from the checkpoint; the file's lr (0.01) is laid over the checkpoint's 0.02.
    code, text = invoke(cli, "tiny_sr", "--config", cfg, "--out", str(out), "--resume", "-q", "--json")
    assert code == 0, text
    [line] = warnings_in(text)
    assert line.endswith("continuation: lr: 0.02 → 0.01")  # no width, no data.root
    assert json.loads(text[text.index("{"):])["step"] == 4


def test_resume_names_a_data_folder_that_is_gone_and_the_fix(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out", str(out),
                        "--steps", "2", "-q")
    assert code == 0, text
    moved = faces.rename(tmp_path / "moved")
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "3")
    assert code == 2
    [error] = [ln for ln in text.splitlines() if ln.strip()]  # one line, no usage block
    assert error.startswith("error: ") and str(faces) in error and "no longer exists" in error and "--data" in error
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "3", "--data", str(moved), "-q")
    assert code == 0, text
    [line] = warnings_in(text)  # a new folder may hold other images: said, with both names' ends
    assert "data.root: " in line and 'faces" → ' in line and line.endswith('moved"')


def test_a_config_file_over_a_checkpoints_config_replaces_dict_settings_whole() -> None:
    from restorekit.training.config import merge_settings

    saved = {"lr": 0.1, "data": {"root": "faces", "repeat": {"a": 2}, "factors": [1, 2]}}
    over = {"data": {"repeat": {"b": 3}, "factors": [4]}, "seed": 3}
    assert merge_settings(saved, over, TrainConfig) == {
        "lr": 0.1, "seed": 3, "data": {"root": "faces", "repeat": {"b": 3}, "factors": [4]}}
    assert saved["data"]["repeat"] == {"a": 2}  # the inputs are left as they were


def test_a_run_started_with_relative_paths_resumes_from_another_folder(cli: click.Group, faces: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`--data ../faces` (and a relative split file) are saved absolute in the checkpoint, so the
    run resumes from any working folder; the same folder typed relative again is no change."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "split.txt").write_text("f5.png\n")
    cfg = str(config_file(tmp_path))
    monkeypatch.chdir(work)
    code, text = invoke(cli, "tiny_sr", "--data", "../faces", "--config", cfg, "--out", "run", "--steps", "2",
                        "--set", "data.split_file=../split.txt", "-q")
    assert code == 0, text
    [(_, ckpt)] = list_checkpoints(work / "run")[-1:]
    saved = torch.load(ckpt, weights_only=True)["config"]
    assert saved["data"]["root"] == str(faces) and saved["data"]["split_file"] == str(tmp_path / "split.txt")
    assert saved["out"] == str(work / "run")
    monkeypatch.chdir(tmp_path)
    code, text = invoke(cli, "tiny_sr", "--out", "work/run", "--resume", "--steps", "3", "-q", "--json")
    assert code == 0, text
    assert warnings_in(text) == [] and json.loads(text)["step"] == 3
    monkeypatch.chdir(work)
    code, text = invoke(cli, "tiny_sr", "--out", "run", "--resume", "--steps", "4", "--data", "../faces", "-q", "--json")
    assert code == 0, text
    assert warnings_in(text) == [] and json.loads(text)["step"] == 4
    # Another folder is a change, named as it was typed.
    (tmp_path / "faces").rename(tmp_path / "faces2")
    code, text = invoke(cli, "tiny_sr", "--out", "run", "--resume", "--steps", "5", "--data", "../faces2", "-q")
    assert code == 0, text
    [line] = warnings_in(text)
    assert 'faces" → "../faces2"' in line


@pytest.mark.parametrize("key", ["old_knob", "data.old_knob"])
def test_an_unknown_setting_in_a_checkpoint_names_the_checkpoint_not_the_config(cli: click.Group, faces: Path,
                                                                               tmp_path: Path, key: str) -> None:
    """A setting another restorekit version saved, which this one does not know, is blamed on the
    checkpoint, with what to do, whether or not a --config file is given."""
    out, cfg = tmp_path / "run", str(config_file(tmp_path))
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "--steps", "2", "-q")
    assert code == 0, text
    ckpt_path = list_checkpoints(out)[-1][1]
    ckpt = torch.load(ckpt_path, weights_only=True)
    node = ckpt["config"]
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = 3
    torch.save(ckpt, ckpt_path)
    for extra in (["--config", cfg], []):
        code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "3", "-q", *extra)
        assert code == 2, text
        [error] = [ln for ln in text.splitlines() if ln.strip()]  # one line, no usage block
        assert str(ckpt_path) in error and f"unknown setting '{key}'" in error, error
        assert "tiny.toml" not in error and "config:" not in error and "another restorekit version" in error, error
    if key != "old_knob":
        return
    # The same unknown setting in the file, laid over the checkpoint's, is the file's.
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "--steps", "3", "-q",
                        "--config", str(config_file(tmp_path, "old_knob = 1\n")))
    assert code == 2 and "tiny.toml: unknown setting 'old_knob'" in text, text


def test_a_new_run_refuses_a_folder_holding_checkpoints_and_leaves_it_as_it_was(cli: click.Group, faces: Path,
                                                                                tmp_path: Path) -> None:
    out, cfg = tmp_path / "run", str(config_file(tmp_path))
    assert invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "--steps", "2", "-q")[0] == 0
    kept, log = list_checkpoints(out), (out / "log.jsonl").read_text()
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "-q")
    assert code == 2 and "already holds checkpoints: pass --resume to continue, or choose another --out" in text
    assert list_checkpoints(out) == kept and (out / "log.jsonl").read_text() == log
    for _, p in kept:  # checkpoints gone: a new run there starts a new log
        p.unlink()
    assert invoke(cli, "tiny_sr", "--data", str(faces), "--config", cfg, "--out", str(out), "--steps", "1", "-q")[0] == 0
    assert [s for s in train_losses(out)] == [1]


def test_a_checkpoint_that_cannot_be_written_is_one_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    """torch reports a full disk as a RuntimeError of its zip writer: the save names the file."""
    from restorekit.errors import FileSystemError
    from restorekit.training import trainer as T

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(T.torch, "save", full_disk)
    target = tmp_path / "checkpoints" / "step_00000004.pt"
    with pytest.raises(FileSystemError, match=f"cannot write {target}: the write failed .*full disk"):
        T.atomic_save({"x": 1}, target)
    assert list(target.parent.iterdir()) == []  # no temporary file left
    target.mkdir()  # a folder in the way: an OS error, named by the checkpoint's path too
    monkeypatch.undo()
    with pytest.raises(FileSystemError, match=f"cannot write {target}"):
        T.atomic_save({"x": 1}, target)
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_checkpoints_get_the_permissions_of_every_other_output(tmp_path: Path) -> None:
    """Not mkstemp's 0600: a checkpoint is as readable as the run's other files (umask applies)."""
    from restorekit.training import trainer as T

    old = os.umask(0o022)
    try:
        T.atomic_save({"x": 1}, tmp_path / "a.pt")
        os.umask(0o077)
        T.atomic_save({"x": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("setting,key", [("lr=-1", "lr"), ("betas=[2, 0.9]", "betas"), ("device=bogus", "device"),
                                         ("eps=-1", "eps")])
def test_settings_outside_their_range_are_usage_errors_naming_the_key(cli: click.Group, faces: Path, tmp_path: Path,
                                                                     setting: str, key: str) -> None:
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out",
                        str(tmp_path / "r"), "--set", setting, "-q")
    assert code == 2 and f"setting '{key}" in text and "unexpected" not in text, text
    assert len([ln for ln in text.splitlines() if ln.strip()]) == 1


def test_a_data_setting_that_is_not_a_table_is_named(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text("data = 3\n")
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and f"{cfg}: setting 'data' must be a table" in text and "unexpected" not in text


def test_ctrl_c_stops_with_a_checkpoint_and_says_so_by_the_exit_code(cli: click.Group, faces: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """The first Ctrl-C ends training after the current step, with a checkpoint; the command then
    exits 130 as any interrupted restorekit command does (it had exited 0, like a finished run)."""
    import os
    import signal
    import sys

    module = sys.modules[__name__]
    calls = {"n": 0}
    plain = module.tiny_step

    def interrupted(net, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers
        return plain(net, batch)

    monkeypatch.setattr(module, "tiny_step", interrupted)
    out = tmp_path / "r"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out",
                        str(out), "--steps", "6", "-q")
    assert code == 128 + signal.SIGINT, text
    assert [s for s, _ in list_checkpoints(out)] == [2]
    monkeypatch.setattr(module, "tiny_step", plain)
    code, text = invoke(cli, "tiny_sr", "--out", str(out), "--resume", "-q")
    assert code == 0, text


def test_the_skip_warning_does_not_offer_an_option_train_lacks() -> None:
    from restorekit.errors import ImageError
    from restorekit.training.data import unreadable

    exc = ImageError("faces/huge.png: 196 MP is over the 100 MP limit (raise it with --max-pixels)")
    said = unreadable(exc, "skip")
    assert said.startswith("faces/huge.png: 196 MP is over the 100 MP limit; left out") and "--max-pixels" not in said
    with pytest.raises(DataError) as info:
        unreadable(exc, "stop")
    assert "--max-pixels" not in str(info.value) and "huge.png" in str(info.value)


def test_a_run_refused_while_it_is_built_leaves_no_empty_out_folder(cli: click.Group, faces: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "new_run"
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out",
                        str(out), "--set", "batch_size=100", "-q")
    assert code == 2 and not out.exists(), text


def test_a_check_across_settings_names_where_the_values_came_from(tmp_path: Path) -> None:
    """A model validator's error has no key and the whole table as its input: the message gives the
    validator's words and the file and --set it came from, not "setting '?'" and the table."""
    from pydantic import model_validator

    from restorekit.training.config import Layer, validate_config

    class Checked(TrainConfig):
        @model_validator(mode="after")
        def _steps_even(self) -> "Checked":
            if self.steps % 2:
                raise ValueError(f"steps must be even, got {self.steps}")
            return self

    with pytest.raises(ConfigError) as info:
        validate_config(Checked, {"steps": 3}, overrides=["steps=3"], layers=[Layer("run.toml", {"lr": 0.1})])
    msg = str(info.value)
    assert msg == "run.toml, --set steps=3: settings: Value error, steps must be even, got 3", msg


def test_a_mapped_checkpoint_read_gives_the_settings_and_refuses_a_cut_file(tmp_path: Path) -> None:
    """What ``--resume`` reads for the settings alone: tensors mapped, not read; a file cut short
    still refused; a file in torch's older format read whole."""
    from restorekit.training.trainer import CKPT_FORMAT, load_checkpoint

    ckpt = {"format": CKPT_FORMAT, "config": {"lr": 0.5}, "model": {"w": torch.arange(1000.0)}}
    new, old, cut = tmp_path / "new.pt", tmp_path / "old.pt", tmp_path / "cut.pt"
    torch.save(ckpt, new)
    torch.save(ckpt, old, _use_new_zipfile_serialization=False)
    cut.write_bytes(new.read_bytes()[:-200])
    for p in (new, old):
        got = load_checkpoint(p, mmap=True)
        assert got["config"] == {"lr": 0.5} and torch.equal(got["model"]["w"], ckpt["model"]["w"])
    with pytest.raises(TrainingError, match="cut.pt: not a loadable training checkpoint"):
        load_checkpoint(cut, mmap=True)


def test_a_second_run_on_a_folder_in_training_is_refused_at_once(cli: click.Group, faces: Path, tmp_path: Path) -> None:
    """A second run on the same --out had started silently, deleted the first's log and then both
    wrote log lines, checkpoints and the export."""
    import fcntl

    out = tmp_path / "r"
    out.mkdir()
    with open(out / ".train.lock", "w") as held:  # what a training run holds
        fcntl.flock(held, fcntl.LOCK_EX)
        code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out",
                            str(out), "--steps", "2", "-q")
        assert code == 2 and f"{out}: another training run is using this folder" in text, text
        assert sorted(p.name for p in out.iterdir()) == [".train.lock"]
    code, text = invoke(cli, "tiny_sr", "--data", str(faces), "--config", str(config_file(tmp_path)), "--out",
                        str(out), "--steps", "2", "-q")
    assert code == 0, text


def test_a_process_ending_with_loader_workers_it_did_not_stop_still_ends() -> None:
    """Workers outlive a TERM only for a grace period: a process that ends while holding a loader
    (an error left it to the collector) ends its workers with a TERM and waits for them — with the
    TERM ignored outright, that wait never ended."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import restorekit.training.trainer as T
        from torch.utils.data import DataLoader
        T.WORKER_TERM_GRACE_S = 0.2
        it = iter(DataLoader(list(range(100)), batch_size=2, num_workers=2,
                             worker_init_fn=T._worker_leaves_stopping_to_the_run))
        next(it)
        kept = [it]
        kept.append(kept)  # a cycle: still alive when the interpreter ends
        print("leaving", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "leaving", proc.stderr


# -- a run folder that other users may write to -------------------------------------------------------
needs_nofollow = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="no O_NOFOLLOW on this platform")


def tiny_trainer(faces: Path, out: Path, **kw: object) -> TinyTrainer:
    settings = {"steps": 2, "batch_size": 2, "optimizer": "adam", "lr": 0.01, "log_every": 1, "ckpt_every": 2,
                "device": "cpu", "out": str(out), "data": {"root": str(faces), "factors": [1, 2]}, **kw}
    return TinyTrainer.build(TinyConfig(**settings), quiet=True)


@needs_nofollow
def test_the_log_is_opened_once_so_a_link_swapped_in_during_the_run_is_not_followed(faces: Path,
                                                                                     tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    t = tiny_trainer(faces, tmp_path / "run")
    t.log({"step": 1, "loss": 0.5})
    os.rename(t.log_path, tmp_path / "moved")  # another user of the folder, mid-run
    t.log_path.symlink_to(victim)
    t.log({"step": 2, "loss": 0.25})
    t.close()
    assert victim.read_text() == "mine\n"
    assert [json.loads(ln)["step"] for ln in (tmp_path / "moved").read_text().splitlines()] == [1, 2]


@needs_nofollow
@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_a_log_planted_as_a_link_is_refused_in_one_line_naming_it(faces: Path, tmp_path: Path, plant: str) -> None:
    from restorekit.errors import FileSystemError

    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    t = tiny_trainer(faces, tmp_path / "run")
    t.out.mkdir()
    if plant == "symlink":
        t.log_path.symlink_to(victim)
    else:
        os.link(victim, t.log_path)
    with pytest.raises(FileSystemError, match=f"cannot write {t.log_path}: ") as exc:
        t.log({"step": 1, "loss": 0.5})
    assert "\n" not in str(exc.value)
    assert victim.read_text() == "mine\n"


def test_a_run_closes_its_log_at_the_end_and_a_resume_opens_the_trimmed_one(faces: Path, tmp_path: Path) -> None:
    t = tiny_trainer(faces, tmp_path / "run", steps=4)
    assert t.fit(until=2)["step"] == 2
    assert t.logs._files == {}  # closed with the run
    log = tmp_path / "run" / "log.jsonl"
    with log.open("a") as f:
        f.write('{"kind": "train", "step": 3, "loss": 1}\n{"kind": "train", "st')  # past the checkpoint, cut short
    t = tiny_trainer(faces, tmp_path / "run", steps=4)
    # A record before the run, on a line of its own after the cut one; the resume's trim replaces the
    # file (a handle kept on the old one would lose steps 3 and 4).
    t.log({"kind": "note", "step": 0})
    assert t.fit(resume=True)["step"] == 4 and t.logs._files == {}
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [1, 2, 0, 3, 4]


def test_only_the_main_process_writes_the_log(faces: Path, tmp_path: Path) -> None:
    from restorekit.training.distributed import DistInfo

    t = tiny_trainer(faces, tmp_path / "run")
    t.dist = DistInfo(rank=1, world_size=1)
    t.log({"step": 1, "loss": 0.5})
    assert not t.log_path.exists() and t.logs._files == {}


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="no os.fchmod on this platform")
def test_a_checkpoint_gets_its_permissions_on_the_open_file_not_by_name(tmp_path: Path, monkeypatch) -> None:
    """Between the temp file's creation and its permissions, another user of the folder could move
    it away and put a link to one of the victim's files in its place: a chmod by name would make
    that file readable by all."""
    from restorekit.errors import FileSystemError
    from restorekit.training import trainer as T

    victim = tmp_path / "victim_key"
    victim.write_text("secret")
    victim.chmod(0o600)
    save = torch.save

    def save_then_swap(obj, f):  # the attacker's move, just after the write
        save(obj, f)
        f.flush()
        (tmp,) = (tmp_path / "run").glob(".a.pt.*.tmp")
        os.rename(tmp, tmp_path / "stolen")
        tmp.symlink_to(victim)

    monkeypatch.setattr(T.torch, "save", save_then_swap)
    old = os.umask(0o022)
    try:
        with pytest.raises(FileSystemError, match="was replaced by something else"):
            T.atomic_save({"x": 1}, tmp_path / "run" / "a.pt")
    finally:
        os.umask(old)
    assert victim.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "stolen").stat().st_mode & 0o777 == 0o644  # the file written got them
    # ... and the link swapped in is not moved onto the checkpoint's name
    assert not (tmp_path / "run" / "a.pt").exists() and victim.read_text() == "secret"
