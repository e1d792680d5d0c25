"""What a user configures — ``--opt``/``--set`` values, config files, ``train``'s options, torchrun's
variables — is refused in one line before any work where it is nonsense, and kept as given where not."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from restorekit.commands.train import add_trainer, resolve_training_config
from restorekit.process_layout import process_layout
from restorekit.errors import RestorekitError
from restorekit.options import FiniteFloatRange, OptionError, validate
from restorekit.training.config import TrainConfig


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.1, gt=0)
    ratio: float | None = None  # no bounds: NaN would pass pydantic
    pair: tuple[float, float] = (0.0, 1.0)
    layers: list[int] | None = None
    steps: int = Field(10, ge=1)
    impl: Literal["auto", "ref"] = "auto"
    name: str = "x"


@pytest.mark.parametrize(("key", "text"), [("lr", "inf"), ("lr", "1e400"), ("ratio", "nan"), ("ratio", "-inf"),
                                           ("ratio", " NaN "), ("pair", "[0.5, NaN]"), ("pair", "[0.5, inf]")])
def test_non_finite_numbers_are_refused_naming_the_option(key: str, text: str) -> None:
    with pytest.raises(OptionError, match=f"^m: option '{key}' takes (a finite number|finite numbers); got ") as exc:
        validate(_Options, {key: text}, label="m")
    assert "\n" not in str(exc.value)


def test_a_non_finite_float_from_python_is_refused_too() -> None:
    with pytest.raises(OptionError, match="option 'ratio' takes a finite number; got inf"):
        validate(_Options, {"ratio": math.inf}, label="m")


def test_finite_numbers_and_strings_are_read_as_given() -> None:
    o = validate(_Options, {"lr": "1e-3", "ratio": "-0", "steps": "1_000", "pair": "[0.5, 1]", "name": "inf",
                            "layers": "[8, 9]"}, label="m")
    assert (o.lr, o.steps, o.pair, o.name, o.layers) == (1e-3, 1000, (0.5, 1.0), "inf", [8, 9])
    assert o.ratio == 0.0 and isinstance(o.steps, int)
    # What a run records (JSON) reads back to the same settings, types kept.
    again = validate(_Options, o.model_dump(mode="json"), label="m")
    assert again == o and isinstance(again.pair[1], float)


def test_an_option_in_another_case_is_suggested() -> None:
    with pytest.raises(OptionError, match=r"unknown option 'IMPL' \(did you mean 'impl'\?\)"):
        validate(_Options, {"IMPL": "ref"}, label="m")


@pytest.mark.parametrize("text", ["8,9", "8"])
def test_a_bare_list_is_told_how_lists_are_written(text: str) -> None:
    with pytest.raises(OptionError, match=r"option 'layers': Input should be a valid list .*write a list as \[8, 9\]"):
        validate(_Options, {"layers": text}, label="m")


@pytest.mark.parametrize("text", ["nan", "inf", "1e400"])
def test_finite_float_range_refuses_nan_and_inf(text: str) -> None:
    with pytest.raises(click.BadParameter, match="not a finite number"):
        FiniteFloatRange(min=0).convert(text, None, None)
    assert FiniteFloatRange(min=0).convert("-0", None, None) == 0.0


# -- train -----------------------------------------------------------------------------------------
class _NoTrainer:
    """Refusals come before any work: building this trainer fails the test."""

    name = "cfgtest"
    Config = TrainConfig

    @classmethod
    def build(cls, config: Any, *, quiet: bool = False) -> Any:
        raise AssertionError("the trainer was built")


def _resolve(tmp_path: Path, config: Path | None = None, sets: tuple[str, ...] = (), **kw: Any) -> Any:
    args: dict[str, Any] = dict(data=tmp_path, config=config, out=tmp_path.parent / f"{tmp_path.name}-run",
                                steps=None, sets=sets, resume=False, device=None)  # (--out outside --data)
    args.update(kw)
    return resolve_training_config(lambda: _NoTrainer, **args)


@pytest.mark.parametrize(("sets", "said"), [(("out=",), "--set out=: setting 'out' is empty"),
                                            (("data.root= ",), "--set data.root= : setting 'data.root' is empty")])
def test_an_empty_path_setting_is_refused(tmp_path: Path, sets: tuple[str, ...], said: str) -> None:
    """An empty folder setting would be the current folder: `--set out=` trained into it."""
    with pytest.raises(RestorekitError) as exc:
        _resolve(tmp_path, sets=sets, data=None if "data.root" in sets[0] else tmp_path, out=None)
    assert str(exc.value).startswith(said)


def test_an_empty_path_in_the_config_file_is_named_with_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('out = ""\n')
    with pytest.raises(RestorekitError, match=f"^{re.escape(str(cfg))}: setting 'out' is empty"):
        _resolve(tmp_path, cfg, out=None)


@pytest.mark.parametrize(("text", "said"), [("lr = inf\n", "setting 'lr' must be a finite number; got inf"),
                                            ("grad_clip = nan\n", "setting 'grad_clip' must be a finite number"),
                                            ("betas = [0.9, inf]\n", "setting 'betas' must be a finite number"),
                                            ("steps = true\n", "setting 'steps' takes a number; got true"),
                                            ("[data]\nrepeat = {a = false}\n",
                                             "setting 'data.repeat.a' takes a number"),
                                            # (pydantic read [true] as [1]; the same value alone is refused)
                                            ("[data]\nfactors = [1, true]\n",
                                             "setting 'data.factors' takes numbers; got [1, true]")])
def test_a_config_file_number_that_is_no_number_is_refused(tmp_path: Path, text: str, said: str) -> None:
    """TOML's inf passed `lr > 0` (the run failed a step later); `steps = true` ran 1 step."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(RestorekitError, match=f"^{re.escape(str(cfg))}: {re.escape(said)}"):
        _resolve(tmp_path, cfg)


def test_booleans_inside_a_list_of_numbers_are_refused_as_alone(tmp_path: Path) -> None:
    with pytest.raises(RestorekitError, match=r"--set: option 'data\.factors' takes numbers; got '\[true\]' "
                                              r"\(true and false are no numbers\)"):
        _resolve(tmp_path, sets=("data.factors=[true]",))
    from restorekit.methods import method_class, validate_options
    from restorekit.options import OptionError

    with pytest.raises(OptionError, match=r"option 'mix_layers' takes numbers; got '\[8, false\]'"):
        validate_options(method_class("psp_sr"), {"mix_layers": "[8, false]"})
    assert validate_options(method_class("psp_sr"), {"mix_layers": "[8, 9]"}).mix_layers == [8, 9]


def test_an_out_folder_inside_the_data_folder_is_refused(tmp_path: Path) -> None:
    """The run's own images (validation grids, loss.png) became training and validation faces of
    the next run or resume: 4 faces were listed as 6 training and 3 validation images."""
    (tmp_path / "faces" / "sub").mkdir(parents=True)
    for out in (tmp_path / "faces" / "run", tmp_path / "faces", tmp_path / "faces" / "sub" / ".." / "r"):
        with pytest.raises(RestorekitError) as exc:
            _resolve(tmp_path, data=tmp_path / "faces", out=out)
        assert str(exc.value) == (f"--out {out} is inside the training data {tmp_path / 'faces'}: the images the run "
                                  "writes there (validation grids, loss.png) would be read as faces by the next run "
                                  "or --resume; choose an --out outside it")
    (tmp_path / "link").symlink_to(tmp_path / "faces")
    with pytest.raises(RestorekitError, match="is inside the training data"):
        _resolve(tmp_path, data=tmp_path / "faces", out=tmp_path / "link" / "run")
    assert _resolve(tmp_path, data=tmp_path / "faces", out=tmp_path / "faces-run").config.out == str(
        tmp_path / "faces-run")


def test_set_refuses_inf_and_keeps_finite_values(tmp_path: Path) -> None:
    with pytest.raises(RestorekitError, match="option 'lr' takes a finite number; got 'inf'"):
        _resolve(tmp_path, sets=("lr=inf",))
    cfg = _resolve(tmp_path, sets=("lr=1e-3", "steps=1_000", "data.flip=no", "out=a=b c")).config
    assert (cfg.lr, cfg.steps, cfg.data.flip, cfg.out) == (1e-3, 1000, False, "a=b c")


def _cli() -> click.Group:
    @click.group()
    def cli() -> None:
        pass

    add_trainer(cli, "cfgtest", "A trainer never built.", lambda: _NoTrainer)
    return cli


@pytest.mark.parametrize(("args", "said"), [(["--out", ""], "Invalid value for '--out'"),
                                            (["--out", "r", "--data", " "], "Invalid value for '--data'"),
                                            (["--out", "r", "--time-limit", "nan"], "'nan' is not a finite number")])
def test_train_options_refuse_empty_folders_and_a_nan_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 args: list[str], said: str) -> None:
    """`--out ""` trained into the current folder; `--time-limit nan` ran without a limit."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(_cli(), ["train", "cfgtest", "--data", str(tmp_path), *args])
    assert r.exit_code == 2 and said in r.output, r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("env", "said"), [({"RANK": "x"}, "RANK='x' must be a whole number"),
                                           ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' must be a whole number ≥ 0"),
                                           ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 without RANK"),
                                           ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2")])
def test_torchrun_variables_set_wrong_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   env: dict[str, str], said: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = CliRunner().invoke(_cli(), ["train", "cfgtest", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and r.output.startswith(f"error: environment variable {said}"), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_torchrun_layout_read_as_integers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", " 3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert process_layout() == {"WORLD_SIZE": 4, "RANK": 3}


@pytest.mark.parametrize(("name", "value"), [("WORLD_SIZE", "abc"), ("LOCAL_WORLD_SIZE", "0")])
def test_run_says_which_torchrun_variable_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rk_cli,
                                                   name: str, value: str) -> None:
    """run read them with a bare int(): 'unexpected ValueError'."""
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (90, 60, 40)).save(tmp_path / "in" / "a.png")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(name, value)
    r = rk_cli("run", "bicubic", "--scale", "2", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert r.exit_code != 0 and r.output.startswith(f"error: environment variable {name}={value!r} must be"), r.output
    assert len(r.output.strip().splitlines()) == 1


# -- training settings built in Python (library use), and where a bad one is said to come from ----


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_training_config_built_in_python_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="finite number"):
        TrainConfig(lr=value)
    with pytest.raises(ValueError, match="finite number"):
        TrainConfig(weight_decay=value)  # ge=0 alone let inf through
    with pytest.raises(ValueError, match="finite number"):
        TrainConfig(eps=value)  # optional: NaN passed every bound


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
def test_a_seed_outside_what_the_generators_take_is_one_line(seed: str) -> None:
    from restorekit.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"^--set seed={seed}: setting 'seed': ") as exc:
        load_config(TrainConfig, overrides=[f"seed={seed}"])
    assert "\n" not in str(exc.value)
    assert load_config(TrainConfig, overrides=[f"seed={2**32 - 1}"]).seed == 2**32 - 1


def test_a_setting_in_another_case_is_blamed_on_its_set_and_suggested() -> None:
    from restorekit.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^--set Data\.flip=false: unknown setting 'Data' \(did you mean 'data'\?\)"):
        load_config(TrainConfig, overrides=["Data.flip=false"])
    with pytest.raises(ConfigError, match=r"^--set LR=0\.1: unknown setting 'LR' \(did you mean 'lr'\?\)"):
        load_config(TrainConfig, overrides=["LR=0.1"])


def test_a_bare_list_setting_is_told_how_lists_are_written() -> None:
    from restorekit.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^--set data\.factors=4: setting 'data\.factors': .*write a list as \[8, 9\]"):
        load_config(TrainConfig, overrides=["data.factors=4"])


def test_a_training_process_group_says_which_torchrun_variable_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.training.distributed import init_distributed

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(RestorekitError, match="^environment variable LOCAL_RANK='one' must be a whole number"):
        init_distributed("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)


def test_every_float_option_of_every_command_refuses_nan_and_inf() -> None:
    """click's FloatRange (and float) let NaN through any bounds: each command's float option is a
    FiniteFloatRange, the plugins' commands and trainers included."""
    from restorekit.cli import build_cli

    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Parameter]]:
        for p in cmd.params:
            yield path, p
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None:
                    yield from walk(sub, f"{path} {name}")

    loose = [f"{where} {p.name}" for where, p in walk(build_cli(), "restorekit")
             if isinstance(p.type, (click.FloatRange, click.types.FloatParamType))
             and not isinstance(p.type, FiniteFloatRange)]
    assert loose == []
