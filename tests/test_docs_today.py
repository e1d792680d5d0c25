"""README statements held against the commands: which commands have ``--threads`` (the CPU-budget
rule names them), and ``--json`` keeping stdout the document's alone in ``degrade`` and ``bench
harness`` too (their plugin code runs inside :func:`restorekit.cli.json_output`, as ``run``'s does)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner
from PIL import Image

from plugin_sources import GAMMA_PLUGIN
from restorekit.cli import build_cli
from restorekit.testing.data import smooth_image

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(cmd: click.Command, path: list[str]) -> Iterator[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from _commands(sub, [*path, name])
    else:
        yield " ".join(path), cmd


def test_the_readme_names_exactly_the_commands_that_have_a_threads_option() -> None:
    """The CPU-budget rule says a user's thread count wins, ``--threads`` among them: it must name
    the commands that have that option, and no other (``run`` and ``compare`` have none)."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    found = re.search(r"the `--threads` of (.+?) \(the only commands that have one\)", text)
    assert found, "the CPU-budget rule no longer says which commands have --threads"
    named = set(re.findall(r"`([a-z][a-z ]*)`", found.group(1)))
    having = {path for path, cmd in _commands(build_cli(), [])
              if any(isinstance(p, click.Option) and "--threads" in p.opts for p in cmd.params)}
    assert named == having == {"bench method", "bench faces", "bench scaleout"}


def test_degrade_json_is_the_whole_stdout_while_a_plugin_step_prints(plugin_site, tmp_path: Path) -> None:
    loud = GAMMA_PLUGIN.replace("        return hr.clamp(0, 1)",
                                "        print('gamma3p: degrading')\n        return hr.clamp(0, 1)")
    assert loud != GAMMA_PLUGIN
    plugin_site("thirdparty-gamma", "thirdparty_gamma", loud)
    src = tmp_path / "hr"
    src.mkdir()
    Image.fromarray(smooth_image(16, 16, 0)).save(src / "img0.png")
    out = tmp_path / "lr"
    r = CliRunner().invoke(build_cli(), ["degrade", "--spec", "gamma3p:1.5+bicubic:2", "--input", str(src),
                                         "--output", str(out), "--json"], prog_name="restorekit")
    assert r.exit_code == 0, r.output
    assert "gamma3p: degrading" in r.stderr
    doc = json.loads(r.stdout)  # the step's line was in it
    assert doc["written"] == [str(out / "img0.png")] and doc["failed"] == []


def test_bench_harness_json_is_the_whole_stdout_while_the_method_prints(plugin_site) -> None:
    from test_cli_contract import TALKING_PLUGIN

    plugin_site("thirdparty-talk", "thirdparty_talk", TALKING_PLUGIN)
    r = CliRunner().invoke(build_cli(), ["bench", "harness", "--method", "talk3p", "--n", "2", "--size", "16",
                                         "--scale", "2", "--metrics", "psnr_rgb", "--standin-ms", "0",
                                         "--repeats", "1", "--json"], prog_name="restorekit")
    assert r.exit_code == 0, r.output
    assert "talk3p: restoring" in r.stderr
    doc = json.loads(r.stdout)  # the method's lines were in it
    assert doc["n"] == 2 and doc["scale"] == 2
