"""restorekit in a CI job or a batch job: no terminal anywhere (stdin /dev/null, stdout and stderr
captured), and the variables such services set (FORCE_COLOR, TTY_COMPATIBLE, NO_COLOR, TERM=dumb,
COLUMNS=0). Each test runs the real command in a subprocess, as a job's log gets it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from restorekit.testing.data import smooth_image

#: What the parent test run may have set that these tests set themselves.
_OURS = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM", "CLICOLOR_FORCE")


def restorekit(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``restorekit ARGS`` as a job runs it: stdin /dev/null, stdout and stderr to pipes, ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if k not in _OURS}
    return subprocess.run([sys.executable, "-m", "restorekit", *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, encoding="utf-8", env={**base, **env}, timeout=300)


def test_a_listing_in_a_dumb_log_with_forced_colour_is_not_cut_at_80() -> None:
    """TERM=dumb with FORCE_COLOR: rich took the log for an 80×25 dumb terminal, whatever width it was
    given, and cut every summary of ``methods`` with '…' (and padded each line to 80)."""
    r = restorekit("methods", env={"FORCE_COLOR": "1", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("bicubic "))
    assert row.endswith("Bicubic interpolation (Keys a=-0.5, PIL convention) — the baseline of every SR paper"), row
    assert "…" not in r.stdout and not any(ln != ln.rstrip() for ln in r.stdout.splitlines()), r.stdout


def test_compare_in_a_dumb_log_with_forced_colour_keeps_the_wide_table(hr_folder: Path, tmp_path: Path) -> None:
    """The same for compare: its table, about 100 columns wide, was turned to fit 80 columns."""
    r = restorekit("compare", "--methods", "bicubic,bicubic@b", "--scale", "4", "--data", hr_folder,
                   "--out", tmp_path / "out", "--metrics", "psnr_rgb,ssim_rgb,lr_consistency,psnr_y_crop",
                   "--device", "cpu", env={"FORCE_COLOR": "1", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
    header = next((ln for ln in plain.splitlines() if "method" in ln), "")
    assert all(h in header for h in ("psnr_rgb ↑", "lr_consistency ↓", "psnr_y_crop ↑", "ms/img")), plain
    assert any(ln.startswith("* best in column. Runtime:") and ln.endswith("precision float32.")
               for ln in plain.splitlines()), plain


def test_columns_zero_keeps_error_lines_and_weights_show(tmp_path: Path) -> None:
    """COLUMNS=0: rich took 0 for the width of its stderr console, so a failed image's ``error:`` line
    was never printed (exit 1 and no word of which file), and ``weights show`` printed nothing."""
    data = tmp_path / "in"
    data.mkdir()
    Image.fromarray(smooth_image(16, 16, 0)).save(data / "good.png")
    (data / "broken.png").write_text("not an image")
    r = restorekit("run", "bicubic", "--scale", "2", "--input", data, "--output", tmp_path / "out",
                   env={"COLUMNS": "0"})
    assert r.returncode == 1, r.stderr
    assert f"error: {data / 'broken.png'}: not a readable image" in r.stderr, r.stderr
    assert "1 written, 0 skipped" in r.stderr and "1 failed" in r.stderr
    shown = restorekit("weights", "show", "lpips-alex", env={"COLUMNS": "0"})
    assert shown.returncode == 0, shown.stderr
    assert "architecture: lpips-alex   plugin: restorekit" in shown.stdout.splitlines(), shown.stdout


def test_no_color_wins_over_forced_colour_in_a_log(hr_folder: Path, tmp_path: Path) -> None:
    """NO_COLOR with FORCE_COLOR (a service forcing colour for every job, a job asking for none):
    rich dropped the colours but wrote bold, dim and underline codes into the log."""
    env = {"NO_COLOR": "1", "FORCE_COLOR": "1"}
    shown = restorekit("weights", "show", "lpips-alex", env=env)
    assert shown.returncode == 0 and "architecture: lpips-alex" in shown.stdout, shown.stderr
    assert "\x1b" not in shown.stdout, repr(shown.stdout[:300])
    r = restorekit("compare", "--methods", "bicubic", "--scale", "4", "--data", hr_folder, "--out", tmp_path / "out",
                   "--metrics", "psnr_rgb", "--device", "cpu", env=env)
    assert r.returncode == 0 and "psnr_rgb ↑" in r.stdout, r.stderr
    assert "\x1b" not in r.stdout + r.stderr, repr(r.stdout)


def test_training_in_a_log_leaves_no_cut_progress_line(tmp_path: Path) -> None:
    """Where stderr is a log the training bar is off: its last state was one line cut at 80 columns
    (``pix… loss 10.37 … d…``), above the summary line that says the same losses whole."""
    data = tmp_path / "faces"
    data.mkdir()
    for i in range(4):
        Image.fromarray(smooth_image(40, 40, i)).save(data / f"img{i}.png")
    tiny = ("batch_size=2", "size=16", "ngf=4", "n_downsampling=2", "n_blocks=1", "ndf=4", "n_layers_d=2", "num_d=1",
            "allow_random_vgg=true", "data.factors=[2]", "log_every=1")
    r = restorekit("train", "pix2pixhd", "--data", data, "--out", tmp_path / "run", "--steps", "2", "--device", "cpu",
                   *[a for kv in tiny for a in ("--set", kv)], env={})
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stderr, r.stderr
    summary = [ln for ln in r.stderr.splitlines() if "finished; loss" in ln]
    assert len(summary) == 1 and summary[0].startswith("pix2pixhd: step 2/2 finished; loss "), r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("pix2pixhd: step 1/2  ")]  # the log's note, whole
    assert len(notes) == 1 and "g_gan" in notes[0] and "images/s" in notes[0], r.stderr


class _Tty:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("env, tty, terminal, animates", [
    ({}, True, True, True),
    ({}, False, False, False),
    ({"FORCE_COLOR": "1"}, False, False, False),  # colour, not a terminal
    ({"TTY_INTERACTIVE": "0"}, True, True, False),  # no bars, but the terminal's width still holds
    ({"TTY_INTERACTIVE": "1"}, False, False, True),  # bars in a log that renders them, tables still whole
    ({"TERM": "dumb"}, True, True, False),  # an editor's shell buffer: a terminal that cannot redraw
    ({"TTY_COMPATIBLE": "1"}, False, True, True),
    ({"TTY_COMPATIBLE": "0"}, True, False, False),
    ({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0"}, False, True, False),
])
def test_terminal_and_animation_are_two_questions(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tty: bool,
                                                  terminal: bool, animates: bool) -> None:
    """TTY_INTERACTIVE turned the terminal's width off (tables 150 columns in a 100-column terminal)
    and, set to 1 in a pipe, cut listings at 80; under TERM=dumb training still drew its cut bar line."""
    from restorekit.terminals import stream_animates, stream_is_terminal

    monkeypatch.setenv("TERM", "xterm-256color")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert (stream_is_terminal(_Tty(tty)), stream_animates(_Tty(tty))) == (terminal, animates)


def test_methods_json_given_to_the_group_keeps_stdout_the_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    """``methods --json show NAME``: the group's flag now runs the subcommand as a --json one too."""
    import json

    from click.testing import CliRunner

    from restorekit.cli import build_cli

    r = CliRunner().invoke(build_cli(), ["methods", "--json", "show", "bicubic"])
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "bicubic", r.output


def test_idles_shell_is_no_terminal_though_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """IDLE's shell answers isatty() yes but shows escape codes as text: a library user there got
    progress bars redrawn as lines of codes (rich itself makes the same exception)."""
    import types

    from restorekit.terminals import stream_animates, stream_is_terminal

    shell = types.new_class("PseudoInputFile")
    shell.__module__ = "idlelib.run"
    monkeypatch.setattr(sys, "stdin", shell())
    assert not stream_is_terminal(_Tty(True)) and not stream_animates(_Tty(True))


def test_a_listing_in_a_log_keeps_the_colour_it_was_asked_for() -> None:
    """FORCE_COLOR asks for colour in a log: the listing's bold header reached it (click.echo stripped
    the codes rich wrote, as it does for anything not a terminal); without it, or under NO_COLOR, none."""
    bold = "\x1b[1m"
    r = restorekit("methods", env={"FORCE_COLOR": "1"})
    assert r.returncode == 0 and r.stdout.startswith(bold + "Methods"), r.stdout[:80]
    assert re.sub(r"\x1b\[[0-9;]*m", "", r.stdout).splitlines()[1].split()[:2] == ["name", "plugin"]
    for env in ({}, {"NO_COLOR": "1", "FORCE_COLOR": "1"}):
        r = restorekit("methods", env=env)
        assert r.returncode == 0 and "\x1b[" not in r.stdout, (env, r.stdout[:80])
