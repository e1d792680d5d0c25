"""Plugin isolation: every way a plugin can fail at load or registration leaves it listed as
broken with the reason, drops all its registrations, and keeps every command working."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from restorekit import plugins
from restorekit.cli import build_cli
from restorekit.errors import PluginError
from plugin_sources import BAD_PLUGINS, QUIET_PLUGINS, bad_plugin_source, quiet_plugin_source


def _dist(case: str) -> tuple[str, str]:
    return f"thirdparty-{case.replace('_', '-')}", f"thirdparty_{case}"


def _owned(reg: plugins.Registry, plugin: str) -> list[tuple[str, str]]:
    return [(kind, name) for kind in plugins.KINDS for name, owner in reg.owner[kind].items() if owner == plugin]


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugin_is_broken_with_its_reason_and_loses_everything(plugin_site, case):
    dist, module = _dist(case)
    plugin_site(dist, module, bad_plugin_source(case))
    reg = plugins.registry()
    group = click.Group("t", commands={"run": click.Command("run", help="Restore images.")})
    core_run = group.commands["run"]
    plugins.add_commands(reg, group)  # command hooks run isolated too
    rec = reg.plugins[module]
    expected = BAD_PLUGINS[case][1].replace("CASE", case)
    assert rec.status.startswith("broken: ") and re.search(expected, rec.status), rec.status
    assert "\n" not in rec.status
    assert rec.registers == {} and _owned(reg, module) == []
    assert f"good_{case}" not in reg.names("methods")
    assert group.commands["run"] is core_run and f"hello-{case}" not in group.commands  # nothing of it stays
    assert core_run.params == [] and core_run.help == "Restore images."  # changed in place: undone
    # Everything else is intact.
    assert {"bicubic", "psp_sr"} <= set(reg.names("methods"))
    assert reg.owner["metrics"]["psnr_rgb"] == "restorekit"
    assert all(r.status == "ok" for name, r in reg.plugins.items() if name != module)
    # Strict mode names the plugin and the reason.
    if not case.startswith("command"):  # those break in add_commands, not while loading
        plugins.reset()
        with pytest.raises(PluginError, match=re.escape(f"plugin '{module}' ({dist}) is broken: ")):
            plugins.registry(strict=True)


def test_a_real_ctrl_c_is_not_swallowed(plugin_site):
    plugin_site("thirdparty-sigint", "thirdparty_sigint", '''
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)  # what a user's Ctrl-C delivers
time.sleep(5)
''')
    with pytest.raises(KeyboardInterrupt):
        plugins.registry()


def test_a_good_plugin_may_add_its_commands_again(plugin_site):
    plugin_site("thirdparty-cmds", "thirdparty_cmds", '''
import click
from restorekit.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("hello-3p")
    def hello():
        click.echo("hello")
''')
    group = click.Group("t")
    reg = plugins.registry()
    plugins.add_commands(reg, group)
    first = group.commands["hello-3p"]
    plugins.add_commands(reg, group)  # a second CLI in one process replaces its own command: fine
    assert group.commands["hello-3p"] is not first and reg.plugins["thirdparty_cmds"].status == "ok"


CLI_CASES = ["exit_at_import", "exit_in_hook", "interrupt_at_import", "method_without_info", "weights_conflict",
             "weights_not_spec", "metric_duplicate_core", "swallowed", "command_raises", "command_replaces_core"]


def test_every_command_works_beside_all_bad_plugins(plugin_site, hr_folder, tmp_path):
    """In a fresh ``restorekit`` process, whose CLI is built with the plugins' command hooks (one
    tries to replace ``run``; a plugin whose hook fails loses its methods then), and, for the
    commands those hooks do not bear on, in this one: its registry loads the same plugins afresh."""
    cli = build_cli()  # built before the plugins exist: their command hooks never run in this process
    for case in CLI_CASES:
        plugin_site(*_dist(case), bad_plugin_source(case))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def rk(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "restorekit", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)

    def invoke(*args: object):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    r = rk("plugins", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    status = {p["name"]: p for p in json.loads(r.stdout)}
    for case in CLI_CASES:
        rec = status[_dist(case)[1]]
        assert re.search(BAD_PLUGINS[case][1].replace("CASE", case), rec["status"]), rec
        assert rec["registers"] == {}
    assert status["baselines"]["status"] == status["psp_sr"]["status"] == "ok"

    r = rk("methods", "--json")
    assert r.returncode == 0, r.stderr
    names = {m["name"] for m in json.loads(r.stdout)}
    assert {"bicubic", "psp_sr", "pulse"} <= names and not any(n.startswith(("good_", "noinfo_")) for n in names)

    out = tmp_path / "o"
    r = rk("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", out, "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}.png" for i in range(4)]

    r = rk("--strict", "methods")
    assert r.returncode == 2 and "is broken: " in r.stderr and "Traceback" not in r.stderr

    r = invoke("--version")
    assert r.exit_code == 0 and re.match(r"restorekit, version \S+", r.stdout), r.output

    r = invoke("weights", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = {w["name"]: w for w in json.loads(r.stdout)}
    assert rows["lpips-alex"]["architecture"] == "lpips-alex" and not any(n.startswith("fake-") for n in rows)

    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--out", tmp_path / "c",
               "--metrics", "psnr_rgb", "--device", "cpu", "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c" / "results.json").read_text())
    psnr = next(m for m in doc["metrics"] if m["name"] == "psnr_rgb")
    assert psnr["plugin"] == "restorekit" and psnr["higher_is_better"] is True
    assert len(doc["images"]) == 4 and all(i["metrics"]["psnr_rgb"] > 25 for i in doc["images"])


@pytest.mark.parametrize("case", sorted(QUIET_PLUGINS))
def test_a_plugin_that_registers_nothing_here_or_imports_a_register_function_is_fine(plugin_site, case):
    """Hooks may register nothing (an optional dependency missing), and a ``register_*`` function
    imported from another library is not a misspelt hook: neither breaks the plugin."""
    dist, module = _dist(case)
    plugin_site(dist, module, quiet_plugin_source(case))
    reg = plugins.registry(strict=True)
    plugins.add_commands(reg, click.Group("t"), strict=True)
    assert reg.plugins[module].status == "ok"
    assert (f"good_{case}" in reg.names("methods")) == (case == "imports_a_register_function")
