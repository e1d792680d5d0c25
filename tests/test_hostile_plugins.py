"""Third-party plugins that misbehave without raising: global state, stdout, malformed metadata,
names that take over others' or break the reports. Each must harm itself alone."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar

import pytest
import torch
from PIL import Image
from pydantic import Field

from restorekit import global_state, plugins
from restorekit.errors import PluginError, UnknownNameError
from restorekit.interfaces import Method, MethodInfo, Metric, Options
from restorekit.plugin_checks import check_method, check_metric, check_name
from restorekit.testing.data import smooth_image

from plugin_sources import GOOD_PLUGIN, write_plugin_dist

# A nearest-neighbour method factory plugins below build their methods from.
METHOD = '''
from typing import ClassVar
import os, sys
import torch, torch.nn.functional as F
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


def nearest(name, load=None, restore_hook=None):
    class M(Method):
        info: ClassVar[MethodInfo] = MethodInfo(name=name, summary="nearest " + name, license="MIT")

        def load(self):
            if load is not None:
                load(self)

        def restore(self, lr, scale, *, seed=None, n_samples=1):
            self.check_input(lr)
            self.check_scale(scale)
            if restore_hook is not None:
                restore_hook(self)
            out = F.interpolate(lr.float(), scale_factor=int(scale), mode="nearest")
            if hasattr(self, "conv"):
                out = out + self.conv(out)  # float32 input: fails on a float64 layer
            return out.clamp(0, 1).repeat_interleave(n_samples, 0)
    M.__qualname__ = "M_" + name
    return M
'''


@pytest.fixture(autouse=True)
def _state_put_back():
    """Whatever a test's plugin leaks (when the code under test fails) must not reach other tests."""
    before = global_state.snapshot()
    yield
    global_state.put_back(before, global_state.snapshot())


def _write_dist_info(site: Path, dist: str | None, folder: str, entry_points: str) -> None:
    """A dist-info with free-form metadata (``dist`` None: no ``Name`` line) and ``entry_points.txt``."""
    info = site / f"{folder}.dist-info"
    info.mkdir(parents=True)
    name = f"Name: {dist}\n" if dist is not None else ""
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\n{name}Version: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def _lr_folder(tmp_path: Path, n: int = 2, size: int = 16) -> Path:
    d = tmp_path / "lr"
    d.mkdir()
    for i in range(n):
        Image.fromarray(smooth_image(size, size, i)).save(d / f"img{i}.png")
    return d


def _hr_folder(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(smooth_image(32, 32, 0)).save(d / "img0.png")
    return d


# -- 1. global torch state --------------------------------------------------------------------

STATE_AT_IMPORT = METHOD + '''
import numpy as np, random
torch.set_default_dtype(torch.float64)
torch.set_grad_enabled(False)
torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
torch.manual_seed(1234)
np.random.seed(0)

@hookimpl
def register_methods(register):
    torch.set_num_threads(torch.get_num_threads() + 1)
    register(nearest("state3p"))
'''


def test_global_state_a_plugin_changes_at_import_is_put_back_and_named(plugin_site, capsys):
    before = global_state.snapshot()
    plugin_site("thirdparty-state", "thirdparty_state", STATE_AT_IMPORT)
    reg = plugins.registry()
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    assert global_state.changed_keys(before, global_state.snapshot()) == []  # the RNGs too
    assert reg.plugins["thirdparty_state"].status == "ok" and "state3p" in reg.names("methods")
    change = reg.state_changes["thirdparty_state"]
    for what in ("torch.get_default_dtype() float32 → float64", "torch.is_grad_enabled() True → False",
                 "torch.backends.cudnn.benchmark", "torch.get_num_threads()"):
        assert what in change
    assert "RNG" not in change  # put back without a word: building a network draws from it
    warnings = [line for line in capsys.readouterr().err.splitlines() if "thirdparty_state" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: plugin 'thirdparty_state' changed global state while it was imported and registered: ")


def test_plugin_check_fails_on_global_state_changed_at_import(plugin_site):
    from restorekit.testing.cases import run_conformance

    plugin_site("thirdparty-state", "thirdparty_state", STATE_AT_IMPORT)
    results = {r.id: r for r in run_conformance("thirdparty_state")}
    assert results["plugin:thirdparty_state"].status == "failed"
    detail = results["plugin:thirdparty_state"].detail
    assert detail.startswith("plugin 'thirdparty_state' is changing global state while it is imported and registered: ")
    assert "torch.get_default_dtype() float32 → float64" in detail
    assert results["method:state3p"].status == "ok"


LEAKY_LOAD = METHOD + '''
def leak(self):
    torch.set_default_dtype(torch.float64)


def build_layer(self):  # a layer made in load(): float64 if the default dtype leaked into it
    self.conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        self.conv.weight.zero_()
        self.conv.bias.zero_()


@hookimpl
def register_methods(register):
    register(nearest("leak3p", load=leak))
    register(nearest("probe3p", load=build_layer))
'''


def test_compare_does_not_depend_on_a_method_that_changes_global_state_in_load(plugin_site, tmp_path):
    # It used to: probe3p failed with "Input type (float) and bias type (double)" after leak3p, not before.
    plugin_site("thirdparty-leak", "thirdparty_leak", LEAKY_LOAD)
    r = _invoke("compare", "--methods", "leak3p,probe3p", "--scale", "2", "--data", _hr_folder(tmp_path),
                "--out", tmp_path / "cmp", "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {m["name"]: m["aggregate"]["failed"] for m in doc["methods"]} == {"leak3p": 0, "probe3p": 0}
    assert "warning: method 'leak3p' (plugin 'thirdparty_leak') changed global state while it " \
           "loaded: torch.get_default_dtype() float32 → float64" in r.stderr
    assert torch.get_default_dtype() == torch.float32


def test_run_puts_back_what_a_method_load_changes(plugin_site, tmp_path):
    plugin_site("thirdparty-leak", "thirdparty_leak", LEAKY_LOAD)
    r = _invoke("run", "leak3p", "--scale", "2", "--input", _lr_folder(tmp_path), "--output", tmp_path / "out",
                "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert torch.get_default_dtype() == torch.float32
    assert "method 'leak3p' (plugin 'thirdparty_leak') changed global state while it loaded" in r.stderr


def _invoke(*args: Any) -> Any:
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False, prog_name="restorekit")


# -- 2. malformed distributions ---------------------------------------------------------------

def test_a_distribution_with_unreadable_entry_points_is_skipped_with_one_line(plugin_site, capsys):
    site = plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    _write_dist_info(site, "thirdparty-badeptxt", "thirdparty_badeptxt-0.1",
                     "[restorekit]\nthis line has no equals sign\n")
    _write_dist_info(site, "thirdparty-other-tool", "thirdparty_other_tool-0.1",  # not a plugin: not ours to mention
                     "[console_scripts]\nanother line without one\n")
    reg = plugins.registry()
    assert reg.plugins["thirdparty_nearest"].status == "ok" and "nearest3p" in reg.names("methods")
    err = capsys.readouterr().err
    assert "warning: skipped the installed distribution thirdparty-badeptxt: its entry_points.txt " \
           "cannot be read (" in err
    assert "thirdparty-other-tool" not in err

    from restorekit.weights.package_member import converter_packages

    assert "thirdparty_nearest" in converter_packages()


def test_a_distribution_without_a_name_does_not_stop_the_others(plugin_site):
    site = plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    write_plugin_dist(site, "thirdparty-dup", "thirdparty_dup", "def register_methods(register):\n    pass\n",
                      ep_name="dup3p")
    _write_dist_info(site, None, "thirdparty_noname-0.1", "[restorekit]\ndup3p = thirdparty_dup\n")
    reg = plugins.registry()  # used to be a TypeError comparing None with a str, for every command
    assert reg.plugins["thirdparty_nearest"].status == "ok"
    statuses = [rec.status for key, rec in reg.plugins.items() if key.startswith("dup3p (")]
    assert len(statuses) == 2 and all("plugin name 'dup3p' is declared by " in s for s in statuses)
    assert any("thirdparty_noname-0.1.dist-info" in s for s in statuses)


def test_an_entry_point_value_that_is_not_a_module_breaks_its_plugin_with_that_line(plugin_site):
    site = plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    _write_dist_info(site, "thirdparty-badval", "thirdparty_badval-0.1", "[restorekit]\nbadval3p = rk badval:::\n")
    reg = plugins.registry()
    assert reg.plugins["badval3p"].status == "broken: PluginError: entry point value 'rk badval:::' is not " \
                                             "module[:attr]"
    assert reg.plugins["thirdparty_nearest"].status == "ok"


# -- 3. names of the first-party plugins --------------------------------------------------------

def test_a_plugin_adding_a_first_party_command_breaks_alone(plugin_site):
    plugin_site("thirdparty-trainer", "thirdparty_trainer", '''
def register_commands(cli):
    from restorekit.commands.train import add_trainer
    add_trainer(cli, "pix2pixhd", "my own pix2pixhd trainer", lambda: None)
''')
    reg = plugins.registry()
    plugins.add_commands(reg, plugins.core_cli(), strict=False)
    assert reg.plugins["thirdparty_trainer"].status == (
        "broken: register_commands: command 'train pix2pixhd' is added by both 'baselines' and 'thirdparty_trainer'")
    assert reg.plugins["baselines"].status == "ok" and "bicubic" in reg.names("methods")


def test_a_plugin_declaring_a_first_party_plugin_name_breaks_alone(plugin_site):
    plugin_site("thirdparty-fake", "thirdparty_fake", GOOD_PLUGIN, ep_name="baselines")
    reg = plugins.registry()
    assert reg.plugins["baselines"].status == "ok" and reg.plugins["baselines"].distribution == "restorekit-baselines"
    assert reg.plugins["baselines (thirdparty-fake)"].status == \
        "broken: plugin name 'baselines' is already taken by restorekit-baselines"
    assert "bicubic" in reg.names("methods") and "nearest3p" not in reg.names("methods")


def test_a_name_lost_with_a_broken_plugin_says_why(plugin_site):
    for plugin in ("thirdparty_a", "thirdparty_z"):
        plugin_site(plugin.replace("_", "-"), plugin, METHOD + '''
def register_methods(register):
    register(nearest("same3p"))
''')
    reg = plugins.registry()
    with pytest.raises(UnknownNameError, match=r"^method 'same3p' is unavailable: plugin 'thirdparty_a' is broken: "
                       r"PluginError: method 'same3p' is registered by both 'thirdparty_a' and 'thirdparty_z'; see "
                       r"`restorekit plugins`$"):
        reg.method("same3p")


def test_an_unknown_name_mentions_the_broken_plugins(plugin_site):
    plugin_site("thirdparty-broken", "thirdparty_broken", "raise ImportError('no')\n")
    with pytest.raises(UnknownNameError, match=r"; broken plugins, which may have had it: 'thirdparty_broken' "):
        plugins.registry().method("nowhere3p")


# -- 4. stdout is the commands' ---------------------------------------------------------------

NOISY = METHOD + '''
print("PRINT-AT-IMPORT")
sys.__stdout__.write("DUNDER-AT-IMPORT\\n")
sys.__stdout__.flush()
os.write(1, b"FD1-AT-IMPORT\\n")


def loud(self):
    print("PRINT-IN-LOAD")
    os.write(1, b"FD1-IN-LOAD\\n")


def louder(self):
    print("PRINT-IN-RESTORE")
    sys.__stdout__.write("DUNDER-IN-RESTORE\\n")
    sys.__stdout__.flush()
    os.write(1, b"FD1-IN-RESTORE\\n")


class NoisyInit(nearest("noisyinit3p")):
    def __init__(self, *args, **kwargs):
        print("PRINT-IN-INIT")
        os.write(1, b"FD1-IN-INIT\\n")
        super().__init__(*args, **kwargs)


@hookimpl
def register_methods(register):
    register(nearest("noisy3p", load=loud, restore_hook=louder))
    register(NoisyInit)
'''
MARKERS = ("-AT-IMPORT", "-IN-INIT", "-IN-LOAD", "-IN-RESTORE")


def test_what_a_plugin_writes_to_stdout_at_import_goes_to_stderr_also_below_print(plugin_site, capfd):
    plugin_site("thirdparty-noisy", "thirdparty_noisy", NOISY)
    assert plugins.registry().plugins["thirdparty_noisy"].status == "ok"
    out, err = capfd.readouterr()
    assert "AT-IMPORT" not in out
    assert all(f"{m}-AT-IMPORT" in err for m in ("PRINT", "DUNDER", "FD1"))


@pytest.mark.parametrize("command", ["run", "run-init", "compare"])
def test_json_stdout_holds_the_json_alone_whatever_the_method_prints(plugin_site, tmp_path, capfd, command):
    plugin_site("thirdparty-noisy", "thirdparty_noisy", NOISY)
    if command.startswith("run"):
        args = ["run", "noisy3p" if command == "run" else "noisyinit3p", "--scale", "2", "--input", _lr_folder(tmp_path), "--output", tmp_path / "out"]
    else:
        args = ["compare", "--methods", "noisy3p,noisyinit3p", "--scale", "2", "--data", _hr_folder(tmp_path), "--out",
                tmp_path / "cmp", "--metrics", "psnr_rgb"]
    r = _invoke(*args, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)  # nothing else on the command's stdout
    out, err = capfd.readouterr()  # nor on file descriptor 1
    assert not any(m in out for m in MARKERS), out
    said = (() if command == "run" else ("PRINT-IN-INIT", "FD1-IN-INIT")) + (() if command == "run-init" else (
        "PRINT-IN-LOAD", "FD1-IN-LOAD", "PRINT-IN-RESTORE", "DUNDER-IN-RESTORE", "FD1-IN-RESTORE"))
    assert all(m in r.stderr + err for m in said), r.stderr + err


def test_output_to_stderr_nests_and_puts_stdout_back(capfd):
    import os
    import sys

    stdout = sys.stdout
    with plugins.output_to_stderr():
        with plugins.output_to_stderr():
            os.write(1, b"inner\n")
        os.write(1, b"outer\n")
        assert sys.stdout is sys.stderr
    assert sys.stdout is stdout
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == "inner\nouter\n"


@pytest.mark.skipif(sys.platform == "win32", reason="a C library's stdout buffer is reached by name on POSIX")
def test_what_native_code_prints_inside_leaves_before_stdout_is_put_back(tmp_path):
    """A native extension's ``printf`` sits in the C library's own buffer where stdout is a pipe or
    a file (no ``PYTHONUNBUFFERED`` here): flushed at exit it landed after the JSON document."""
    import subprocess

    script = tmp_path / "native_print.py"
    script.write_text(
        "import ctypes, json\n"
        "from restorekit.plugins import output_to_stderr\n"
        "with output_to_stderr():\n"
        "    ctypes.CDLL(None).printf(b'NATIVE-BANNER\\n')\n"
        "print(json.dumps({'ok': True}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"ok": true}\n'
    assert "NATIVE-BANNER" in r.stderr


# -- 5-7. registration checks -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["methods", "metrics"])
def test_a_name_with_a_trailing_newline_is_refused(kind):
    with pytest.raises(PluginError, match=r"name 'bicubic\\n' is not valid"):
        check_name(kind, "bicubic\n")


def _metric(name: str) -> type[Metric]:
    class M(Metric):
        higher_is_better: ClassVar[bool] = True

        def __call__(self, pred: torch.Tensor, target: torch.Tensor, *, lr: torch.Tensor,
                     scale: int) -> torch.Tensor:
            return pred.flatten(1).mean(1).double()
    M.name = name
    return M


@pytest.mark.parametrize("name, column", [("status", "results.csv column 'status'"),
                                          ("method", "results.csv column 'method'"),
                                          ("metric_errors", "results.csv column 'metric_errors'"),
                                          ("ms", "results.csv column 'ms'"),
                                          ("runtime", "the tables' 'runtime' column"), ("ms_per_image", None)])
def test_a_metric_name_that_a_report_column_has_is_refused(name, column):
    if column is None:
        check_metric(_metric(name))  # summary.csv has ms_per_image, but a metric's columns are ms_per_image_mean, …
        return
    with pytest.raises(PluginError, match=rf"^metric name '{name}' \(.*M\) is taken by compare's reports "
                                          rf"\({column}\): choose another name$"):
        check_metric(_metric(name))


def test_a_method_whose_options_are_not_json_is_refused_at_registration():
    class NoJson(Options):
        fn: Callable[..., Any] = Field(print, description="a callable")

    class M(Method):
        info: ClassVar[MethodInfo] = MethodInfo(name="nojson3p", summary="s")
        Options = NoJson

        def restore(self, lr: torch.Tensor, scale: int, *, seed: int | None = None,
                    n_samples: int = 1) -> torch.Tensor:
            return lr

    with pytest.raises(PluginError, match=r"^method 'nojson3p' \(.*M\): Options .*NoJson has no JSON schema "):
        check_method(M)


@pytest.mark.parametrize("field", ["name", "license"])
def test_the_conformance_suite_matches_names_and_licenses_whole(field):
    from restorekit.testing.conformance import ConformanceError, check_method_info

    values = {"name": "whole3p", "summary": "s", "license": "MIT"}
    values[field] += "\n"

    class M(Method):
        info: ClassVar[MethodInfo] = MethodInfo(**values)

        def restore(self, lr: torch.Tensor, scale: int, *, seed: int | None = None,
                    n_samples: int = 1) -> torch.Tensor:
            return lr

    with pytest.raises(ConformanceError):
        check_method_info(M)


def test_every_command_that_builds_a_method_puts_back_what_its_load_changes(plugin_site, tmp_path, capsys):
    # build_method (bench, serve, demo, export, the face pipeline) left a leaked default dtype in place
    plugin_site("thirdparty-leak", "thirdparty_leak", LEAKY_LOAD)
    r = _invoke("bench", "method", "leak3p", "--scale", "2", "--size", "8", "--batch", "1", "--repeat", "1",
                "--warmup", "0", "--device", "cpu", "--compare-to", "probe3p", "--compare-repeat", "1")
    assert r.exit_code == 0, r.output
    assert torch.get_default_dtype() == torch.float32
    assert "method 'leak3p' (plugin 'thirdparty_leak') changed global state while it loaded" in r.stderr

    from restorekit.methods import build_method

    capsys.readouterr()
    build_method("leak3p", {}, "cpu")
    assert torch.get_default_dtype() == torch.float32
    assert "method 'leak3p' (plugin 'thirdparty_leak') changed global state while it loaded: " \
           "torch.get_default_dtype() float32 → float64" in capsys.readouterr().err
