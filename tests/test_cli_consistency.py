"""The commands behave alike: empty inputs, unknown names, -q, --json failures, option help and
spellings, and no stray output on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli

from cli_commands import all_commands

#: Options still without help because their file is another change's (restorekit/commands/run.py);
#: remove them here when they get one.
PENDING_HELP: set[tuple[str, str]] = set()


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], prog_name="restorekit", catch_exceptions=False)


def rk(*args: object) -> subprocess.CompletedProcess:
    """The command in a fresh process, stdout and stderr files (not terminals)."""
    return subprocess.run([sys.executable, "-m", "restorekit", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "100"})


def _commands() -> list[tuple[str, click.Command]]:
    return all_commands()


def _command(path: str) -> click.Command:
    return dict(_commands())[path]


def _usage_error(r, text: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Usage: " in r.stderr and f"Error: {text}" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# Help and spellings


def test_every_option_of_every_command_has_help() -> None:
    missing = [(path, p.opts[0]) for path, cmd in _commands() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert sorted(set(missing) - PENDING_HELP) == []


def test_every_command_with_json_keeps_stdout_the_documents_from_start_to_end() -> None:
    """A command's ``--json`` promise holds over the whole command (restorekit.cli.json_output), not
    over the blocks each command remembers to wrap: compare built its methods (plugin constructors)
    outside its blocks, and their prints reached stdout."""
    unwrapped = [path for path, cmd in _commands()
                 if any(p.name == "as_json" for p in cmd.params)
                 and not getattr(cmd.callback, "restorekit_json_output", False)]
    assert unwrapped == []
    assert len([path for path, cmd in _commands() if any(p.name == "as_json" for p in cmd.params)]) >= 19


def test_help_texts_hold_no_docstring_markup() -> None:
    """``--help`` shows a command's docstring and options' help as written: Sphinx markup there
    (double backticks, ``:func:`` roles) reaches the user as noise; single backticks mark a command."""
    import re

    markup = re.compile(r"``|:(?:func|class|meth|mod|data|attr):`")
    found = [(path, text) for path, cmd in _commands()
             for text in [cmd.help or "", cmd.short_help or ""]
             + [p.help or "" for p in cmd.params if isinstance(p, click.Option)] if markup.search(text)]
    assert found == []


@pytest.mark.parametrize("path, dest, names", [
    ("compare", "out", ["--out", "--output"]),
    ("demo", "output", ["--output", "--out"]),
    ("run", "output", ["--output", "--out"]),
    ("degrade", "output", ["--output", "--out"]),
    ("export", "out", ["--out", "--output"]),
    ("generate", "output", ["--output", "--out"]),
    ("train psp_sr", "out", ["--out", "--output"]),
    ("bench faces", "repeat", ["--repeat", "--repeats"]),
    ("bench method", "repeat", ["--repeat", "--repeats"]),
    ("bench harness", "repeats", ["--repeats", "--repeat"]),
    ("bench scaleout", "repeats", ["--repeats", "--repeat"]),
    ("bench generator", "repeats", ["--repeats", "--repeat"]),
    ("bench generator", "batch", ["--batch", "--batch-size"]),
    ("realism", "batch_size", ["--batch-size", "--batch"]),
])
def test_both_spellings_are_one_option_and_help_lists_the_primary_first(path: str, dest: str,
                                                                         names: list[str]) -> None:
    (param,) = [p for p in _command(path).params if p.name == dest]
    assert param.opts[:2] == names


def test_an_alias_parses_to_the_same_value() -> None:
    cmd = _command("generate")
    ctx = cmd.make_context("generate", ["--generator", "stylegan2", "--out", "x"])
    assert ctx.params["output"] == Path("x")


def test_the_quiet_flag_is_on_every_command_that_writes_notes() -> None:
    for path in ("run", "degrade", "compare", "demo", "generate", "realism", "export"):
        (q,) = [p for p in _command(path).params if p.name == "quiet"]
        assert "-q" in q.opts and q.help, path


# ---------------------------------------------------------------------------------------------
# Empty inputs


def test_degrade_and_bench_faces_refuse_an_empty_folder_or_list(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    listed = tmp_path / "none.txt"
    listed.write_text("")
    for spec in (empty, f"@{listed}"):
        r = invoke("degrade", "--spec", "bicubic:2", "--input", spec, "--output", tmp_path / "out", "--json")
        _usage_error(r, f"{spec}: no input images")
        assert r.stdout == ""
    r = invoke("bench", "faces", "--input", empty, "--repeat", "1", "--detector", "mtcnn")
    _usage_error(r, f"{empty}: no input images")


def test_require_inputs_is_the_shared_check() -> None:
    from restorekit.batch import require_inputs
    from restorekit.cli import UsageProblem

    with pytest.raises(UsageProblem, match="^x/: no input images$"):
        require_inputs([], "x/")
    assert require_inputs(["a"], "x/") == ["a"]  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Unknown names: click's usage style, exit 2


@pytest.mark.parametrize("args, text", [
    (["methods", "show", "bicubc"], "unknown method 'bicubc' (did you mean 'bicubic'?)"),
    (["generate", "--generator", "stylegan3", "--output", "OUT"], "unknown generator 'stylegan3'"),
    (["realism", "--generator", "stylegan3", "--data", "OUT"], "unknown generator 'stylegan3'"),
    (["weights", "path", "psp-sr-face"], "unknown weights 'psp-sr-face' (did you mean 'psp-sr-faces128'?)"),
    (["weights", "show", "psp-sr-face"], "unknown weights 'psp-sr-face'"),
    (["bench", "faces", "--detector", "mtcn", "--repeat", "1"], "unknown face detector 'mtcn'"),
])
def test_unknown_names_are_usage_errors(tmp_path: Path, args: list[str], text: str) -> None:
    r = invoke(*(str(tmp_path / "out") if a == "OUT" else a for a in args))
    _usage_error(r, text)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Devices, option ranges


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_device_cuda_without_a_gpu_is_one_line_exit_2(hr_folder: Path, tmp_path: Path) -> None:
    from restorekit.training.distributed import pick_device
    from restorekit.errors import RestorekitError

    with pytest.raises(RestorekitError, match=r"^--device cuda: no CUDA device is available \(use --device cpu"):
        pick_device("cuda")
    r = invoke("train", "stylegan2", "--data", hr_folder, "--out", tmp_path / "run", "--steps", "1",
               "--device", "cuda", "--set", "resolution=32")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1] == ("error: --device cuda: no CUDA device is available (use --device cpu "
                                                 "or auto)"), r.stderr
    assert "unexpected" not in r.stderr


def test_weights_pull_refuses_negative_retries() -> None:
    r = invoke("weights", "pull", "lpips-alex", "--retries", "-1")
    assert r.exit_code == 2 and "--retries" in r.stderr and "-1" in r.stderr, r.output


# ---------------------------------------------------------------------------------------------
# -q, --json, streams


def test_degrade_on_a_file_stderr_has_no_stray_blank_line(hr_folder: Path, tmp_path: Path) -> None:
    r = rk("degrade", "--spec", "bicubic:2", "--input", hr_folder, "--output", tmp_path / "lr")
    assert r.returncode == 0, r.stderr
    want = f"4 written, 0 skipped (exist; --overwrite replaces), 0 failed → {tmp_path / 'lr'}\n"  # run's words
    assert r.stderr == want, repr(r.stderr)


def test_progress_bar_is_off_when_stderr_is_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from restorekit.batch import bar_disabled

    assert bar_disabled(Console(file=open(os.devnull, "w")), 10, False)
    assert not bar_disabled(Console(force_terminal=True), 10, False)
    assert bar_disabled(Console(force_terminal=True), 10, True)


def test_generate_quiet_and_json_failed(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    r = invoke("generate", "--generator", "stylegan2", "--seeds", "0", "--output", out, "-q", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and r.stderr == ""
    r = invoke("generate", "--generator", "stylegan2", "--seeds", "0-1", "--output", out, "--json", "--device", "cpu")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["failed"] == [] and len(doc["written"]) == 1 and len(doc["skipped"]) == 1


def test_generate_a_seed_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    (out / "seed0000.png").mkdir(parents=True)  # a folder where the image goes
    r = invoke("generate", "--generator", "stylegan2", "--seeds", "0-1", "--output", out, "--json", "--overwrite",
               "--device", "cpu", "-q")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert [f["path"] for f in doc["failed"]] == [str(out / "seed0000.png")]
    assert doc["written"] == [str(out / "seed0001.png")]
    assert str(out / "seed0000.png") in r.stderr and "error:" in r.stderr


def test_realism_names_the_flag_of_a_set_too_small(tmp_path: Path, hr_folder: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("realism", "--images", hr_folder, "--data", empty, "--spaces", "alex", "--detector", "none")
    _usage_error(r, f"--data {empty}: the reference set needs at least 2 images, got 0")
    r = invoke("realism", "--images", empty, "--data", hr_folder, "--spaces", "alex", "--detector", "none")
    _usage_error(r, f"--images {empty}: the image set needs at least 2 images, got 0")
    r = invoke("realism", "--images", hr_folder, "--data", tmp_path / "nope", "--detector", "none")
    _usage_error(r, f"--data {tmp_path / 'nope'}: no such file or folder")


def test_realism_failed_entries_name_the_path() -> None:
    from restorekit.commands.realism import _failures

    lines = ("d/a: b.png: not a readable image", "e/x.png: cut short")
    assert _failures(lines, ["d/a", "d/a: b.png", "e/x.png"]) == [
        {"path": "d/a: b.png", "error": lines[0]}, {"path": "e/x.png", "error": lines[1]}]
    assert _failures(("f.png: bad",), []) == [{"path": "f.png", "error": "f.png: bad"}]


def test_demo_quiet_prints_nothing_but_problems(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    r = invoke("demo", "--methods", "bicubic", "--output", tmp_path / "demo", "-q")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "side by side" not in r.stderr and "note:" not in r.stderr
    assert (tmp_path / "demo" / "metrics.json").exists()
