"""Plugin discovery: every hook, isolation of broken plugins, strictness, name clashes."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import inspect
import itertools
import os
import re
import subprocess
import sys
import types

import pytest

from restorekit import hookspecs, plugins
from restorekit.errors import PluginError, UnknownNameError
from restorekit.plugins import KINDS, PluginRecord, Registry, _register_plugin

from plugin_sources import BROKEN_PLUGIN, GOOD_PLUGIN, command_plugin_source, valid_entry, write_plugin_dist


def test_every_hookspec_has_a_one_line_docstring():
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")]
    assert set(specs) == {f"register_{k}" for k in KINDS} | {"register_commands"}
    for name in specs:
        doc = getattr(hookspecs, name).__doc__
        assert doc and len(doc.strip().splitlines()) == 1, name


def _fake_plugin(kind: str) -> types.ModuleType:
    mod = types.ModuleType(f"fake_{kind}")
    if kind in plugins.FACTORY_KINDS:
        def hook(register):
            register(f"thing_{kind}", lambda: "built", summary="a test factory")
    else:
        thing = valid_entry(kind, f"thing_{kind}")

        def hook(register):
            register(thing)
    setattr(mod, f"register_{kind}", hook)
    return mod


@pytest.mark.parametrize("kind", KINDS)
def test_each_register_hook_adds_to_its_kind(kind):
    reg = Registry()
    rec = PluginRecord("fake", "fake-dist", "1.0")
    _register_plugin(reg, _fake_plugin(kind), rec)
    assert reg.names(kind) == [f"thing_{kind}"]
    assert rec.registers == {kind: [f"thing_{kind}"]}
    assert reg.owner[kind][f"thing_{kind}"] == "fake"
    if kind in plugins.FACTORY_KINDS:
        f = reg.get(kind, f"thing_{kind}")
        assert f.build() == "built" and f.summary == "a test factory"


def test_register_commands_hook_adds_a_subcommand(plugin_site):
    import click
    from click.testing import CliRunner

    plugin_site("cmd-plugin-3p", "cmdplug_3p", '''
import click
from restorekit.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("hello-3p")
    def hello():
        click.echo("hello from a plugin")
''')
    group = click.Group("t")
    plugins.add_commands(plugins.registry(), group)
    r = CliRunner().invoke(group, ["hello-3p"])
    assert r.exit_code == 0 and "hello from a plugin" in r.output


def test_duplicate_name_error_names_both_plugins():
    reg = Registry()
    _register_plugin(reg, _fake_plugin("methods"), PluginRecord("first", "d1", "1"))
    with pytest.raises(PluginError, match="both 'first' and 'second'"):
        _register_plugin(reg, _fake_plugin("methods"), PluginRecord("second", "d2", "1"))
    assert reg.owner["methods"]["thing_methods"] == "first"


def test_a_plugin_registering_one_name_twice_is_told_so():
    """It read "method 'thing_methods' is registered by both 'first' and 'first'"."""
    reg = Registry()
    mod = types.ModuleType("fake_twice")
    thing = valid_entry("methods", "thing_methods")

    def hook(register):
        register(thing)
        register(thing)

    mod.register_methods = hook
    with pytest.raises(PluginError, match=r"^plugin 'first' registers method 'thing_methods' twice$"):
        _register_plugin(reg, mod, PluginRecord("first", "d1", "1"))


def test_unknown_name_suggests():
    reg = plugins.registry()
    with pytest.raises(UnknownNameError, match="did you mean 'bicubic'"):
        reg.method("bicubik")


def test_builtins_and_first_party_plugins_present():
    reg = plugins.registry()
    assert {"bicubic", "blur", "noise", "jpeg"} <= set(reg.names("degradations"))
    assert "bicubic" in reg.names("methods")
    dists = {r.distribution for r in reg.plugins.values()}
    assert {"restorekit", "restorekit-psp-sr", "restorekit-baselines"} <= dists


def test_first_party_names_are_what_the_first_party_plugins_register():
    pytest.importorskip("restorekit_psp_sr")
    pytest.importorskip("restorekit_baselines")
    reg = plugins.registry()
    registered = {(kind, name): reg.plugins[reg.owner[kind][name]].distribution
                  for kind in KINDS for name in reg.owner.get(kind, {})
                  if reg.plugins[reg.owner[kind][name]].distribution in plugins.FIRST_PARTY and kind != "weights"}
    r = subprocess.run([sys.executable, "-m", "restorekit", "plugins", "--json"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    registered.update({("commands", path): p["distribution"] for p in json.loads(r.stdout)
                       if p["distribution"] in plugins.FIRST_PARTY for path in p["registers"].get("commands", [])})
    assert registered == plugins.FIRST_PARTY_NAMES


def test_a_first_party_name_whose_distribution_is_not_installed_names_it(monkeypatch):
    """With the core alone, `run psp_sr` said "unknown method 'psp_sr'; known: none registered"."""
    real = importlib.metadata.distribution

    def without_psp(name):
        if name == "restorekit-psp-sr":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "baselines")
    plugins.reset()
    with pytest.raises(UnknownNameError, match="known: bicubic, pix2pixhd, pulse .RESTOREKIT_LOAD_PLUGINS"):
        plugins.registry().method("psp_sr")  # installed, only not loaded: the usual line
    monkeypatch.setattr(importlib.metadata, "distribution", without_psp)
    with pytest.raises(UnknownNameError) as info:
        plugins.registry().method("psp_sr")
    assert str(info.value) == ("method 'psp_sr' comes with the restorekit-psp-sr distribution, which is not "
                               "installed: pip install restorekit-psp-sr")
    with pytest.raises(UnknownNameError, match="generator 'stylegan2' comes with the restorekit-psp-sr"):
        plugins.registry().get("generators", "stylegan2")
    with pytest.raises(UnknownNameError, match="unknown method 'nosuch'"):
        plugins.registry().method("nosuch")
    plugins.reset()


def test_third_party_plugin_is_discovered(plugin_site):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    reg = plugins.registry()
    assert "nearest3p" in reg.names("methods") and "mean_abs_3p" in reg.names("metrics")
    rec = reg.plugins["thirdparty_nearest"]
    assert (rec.distribution, rec.version, rec.status) == ("thirdparty-nearest", "0.3.1", "ok")


def test_broken_plugin_is_isolated_and_strict_fails(plugin_site, monkeypatch):
    plugin_site("thirdparty-broken", "thirdparty_broken", BROKEN_PLUGIN)
    reg = plugins.registry()
    assert reg.plugins["thirdparty_broken"].status.startswith("broken: ImportError: this plugin is broken")
    assert "bicubic" in reg.names("methods")
    plugins.reset()
    with pytest.raises(PluginError, match="thirdparty_broken"):
        plugins.registry(strict=True)
    plugins.reset()
    monkeypatch.setenv("RESTOREKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        plugins.registry()


def test_failing_registration_is_rolled_back(plugin_site):
    plugin_site("thirdparty-half", "thirdparty_half", '''
from typing import ClassVar
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Metric

class A(Metric):
    name: ClassVar[str] = "half_a_3p"
    higher_is_better: ClassVar[bool] = True

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()

@hookimpl
def register_metrics(register):
    register(A)
    raise RuntimeError("registration failed midway")
''')
    reg = plugins.registry()
    assert "half_a_3p" not in reg.names("metrics")
    assert "registration failed midway" in reg.plugins["thirdparty_half"].status


def test_load_plugins_env_selects(plugin_site, monkeypatch):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "")
    reg = plugins.registry()
    assert set(reg.plugins) == {"restorekit"} and reg.names("methods") == []
    plugins.reset()
    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "thirdparty_nearest")
    assert plugins.registry().names("methods") == ["nearest3p"]


def _require_core(site, dist: str, *requirements: str) -> None:
    meta = site / f"{dist.replace('-', '_')}-0.3.1.dist-info" / "METADATA"
    meta.write_text(meta.read_text() + "".join(f"Requires-Dist: {r}\n" for r in requirements))


def test_a_plugin_for_a_newer_restorekit_is_broken_with_the_requirement(plugin_site):
    from restorekit import __version__

    site = plugin_site("thirdparty-newer", "thirdparty_newer", '''
from restorekit.interfaces import SomethingFromTheFuture  # what a plugin for a newer core may import
''')
    _require_core(site, "thirdparty-newer", "torch>=2.1", "restorekit>=99.1", "restorekit[web]>=100; extra == 'web'")
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    _require_core(site, "thirdparty-nearest", f"restorekit>={__version__}", "restorekit[web]>=100; extra == 'web'")
    reg = plugins.registry()
    status = reg.plugins["thirdparty_newer"].status
    assert status == (f"broken: requires restorekit>=99.1, but restorekit {__version__} is installed (upgrade "
                      "restorekit, or install a release of thirdparty-newer made for this one)"), status
    assert reg.plugins["thirdparty_nearest"].status == "ok" and "nearest3p" in reg.names("methods")
    plugins.reset()
    with pytest.raises(PluginError, match=r"plugin 'thirdparty_newer' \(thirdparty-newer\) is broken: requires "
                                          r"restorekit>=99.1"):
        plugins.registry(strict=True)


_CHAIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Metric


def _method(name):
    class M(Method):
        info: ClassVar[MethodInfo] = MethodInfo(name=name, summary="nearest")

        def restore(self, lr, scale, *, seed=None, n_samples=1):
            self.check_scale(scale)
            return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
    return M


def _metric(name_):
    class M(Metric):
        name: ClassVar[str] = name_
        higher_is_better: ClassVar[bool] = True

        def __call__(self, pred, target, *, lr, scale):
            return (pred - target).abs().flatten(1).mean(1).double()
    return M


@hookimpl
def register_methods(register):
    for name in METHODS:
        register(_method(name))


@hookimpl
def register_metrics(register):
    for name in METRICS:
        register(_metric(name))
'''


def _chain_source(methods: list[str], metrics: list[str], tail: str = "") -> str:
    return _CHAIN.replace("METHODS", repr(methods)).replace("METRICS", repr(metrics)) + tail


@pytest.mark.parametrize("first", ["thirdparty_a", "thirdparty_z"])
def test_a_name_clash_breaks_both_plugins_whatever_their_order(plugin_site, first):
    # Which plugin loads first is an accident of names; neither may end up serving the name as "ok".
    other = {"thirdparty_a": "thirdparty_z", "thirdparty_z": "thirdparty_a"}[first]
    plugin_site(first.replace("_", "-"), first, _chain_source(["own_first3p", "same3p"], []))
    plugin_site(other.replace("_", "-"), other, _chain_source(["own_other3p", "same3p"], []))
    reg = plugins.registry()
    why = "broken: PluginError: method 'same3p' is registered by both 'thirdparty_a' and 'thirdparty_z'"
    assert reg.plugins["thirdparty_a"].status == reg.plugins["thirdparty_z"].status == why
    assert not {"same3p", "own_first3p", "own_other3p"} & set(reg.names("methods"))
    assert reg.plugins["thirdparty_a"].registers == reg.plugins["thirdparty_z"].registers == {}
    assert reg.plugins["baselines"].status == "ok" and "bicubic" in reg.names("methods")


def test_a_plugin_cannot_take_over_a_first_party_name_by_sorting_first(plugin_site):
    # 'aaa' sorts before 'baselines': it used to get 'bicubic' (listed ok) and knock baselines out;
    # then both were broken. A first-party name is like the core's: the newcomer breaks alone.
    plugin_site("aaa-bicubic-3p", "aaa_bicubic_3p", _chain_source(["bicubic"], []))
    reg = plugins.registry()
    assert reg.plugins["aaa_bicubic_3p"].status == ("broken: PluginError: method 'bicubic' is registered by both "
                                                    "'baselines' and 'aaa_bicubic_3p'")
    assert reg.plugins["baselines"].status == "ok" and reg.owner["methods"]["bicubic"] == "baselines"
    assert reg.plugins["psp_sr"].status == "ok" and "psp_sr" in reg.names("methods")
    plugins.reset()
    with pytest.raises(PluginError, match="'baselines' and 'aaa_bicubic_3p'"):
        plugins.registry(strict=True)


def _both(kind: str, name: str, *plugins_: str) -> str:
    first, second = sorted(plugins_)
    return f"{kind} '{name}' is registered by both '{first}' and '{second}'"


@pytest.mark.parametrize("order", ["".join(p) for p in itertools.permutations("ABC")])
def test_a_chain_of_clashes_breaks_all_three_plugins_in_every_order(plugin_site, order):
    # A and B share a method name, B and C a metric name. B's second name must count even when its
    # first one clashes, so C's health cannot depend on which of them loads first.
    sources = {"A": _chain_source(["own_a3p", "chain_x3p"], []),
               "B": _chain_source(["chain_x3p", "own_b3p"], ["chain_y3p"]),
               "C": _chain_source([], ["own_c3p", "chain_y3p"])}
    name = {role: f"thirdparty_{order.index(role)}_{role.lower()}" for role in "ABC"}  # load order = name order
    for role in order:
        plugin_site(f"thirdparty-chain-{role.lower()}", f"thirdparty_chain_{role.lower()}", sources[role], name[role])
    reg = plugins.registry()
    x = _both("method", "chain_x3p", name["A"], name["B"])
    y = _both("metric", "chain_y3p", name["B"], name["C"])
    assert reg.plugins[name["A"]].status == f"broken: PluginError: {x}"
    assert reg.plugins[name["B"]].status == f"broken: PluginError: {x}; {y}"
    assert reg.plugins[name["C"]].status == f"broken: PluginError: {y}"
    for role in "ABC":
        assert reg.plugins[name[role]].registers == {}
    assert not {"own_a3p", "own_b3p", "chain_x3p"} & set(reg.names("methods"))
    assert not {"own_c3p", "chain_y3p"} & set(reg.names("metrics"))
    assert reg.plugins["baselines"].status == "ok" and "bicubic" in reg.names("methods")
    plugins.reset()
    with pytest.raises(PluginError, match=re.escape(f"plugin '{sorted(name.values())[0]}' (")):
        plugins.registry(strict=True)


_COMMAND = '''

@hookimpl
def register_commands(cli):
    @cli.command("hello-clash3p")
    def hello():
        pass
'''


@pytest.mark.parametrize("first", ["P", "Q"])
def test_a_clashing_plugin_keeps_none_of_its_other_names(plugin_site, first):
    # A broken plugin registers nothing (README, Plugins): its unique names, before or after the
    # clashing one and of any kind, and its commands go with it.
    import click

    name = {"P": "thirdparty_1_p" if first == "P" else "thirdparty_2_p",
            "Q": "thirdparty_1_q" if first == "Q" else "thirdparty_2_q"}
    plugin_site("thirdparty-p", "thirdparty_p",
                _chain_source(["before_p3p", "shared3p", "after_p3p"], ["metric_p3p"], _COMMAND), name["P"])
    plugin_site("thirdparty-q", "thirdparty_q", _chain_source(["shared3p", "after_q3p"], []), name["Q"])
    reg = plugins.registry()
    group = click.Group("t")
    plugins.add_commands(reg, group)
    why = f"broken: PluginError: {_both('method', 'shared3p', name['P'], name['Q'])}"
    assert reg.plugins[name["P"]].status == reg.plugins[name["Q"]].status == why
    assert not {"before_p3p", "shared3p", "after_p3p", "after_q3p"} & set(reg.names("methods"))
    assert "metric_p3p" not in reg.names("metrics") and "hello-clash3p" not in group.commands
    assert reg.plugins[name["P"]].registers == reg.plugins[name["Q"]].registers == {}


@pytest.mark.parametrize("first", ["raises", "good"])
def test_a_plugin_broken_otherwise_does_not_break_the_one_sharing_its_name(plugin_site, first):
    # A plugin whose hook raises registers nothing, so the names it reached before raising take no
    # part in clashes: the other plugin is ok whichever of them loads first.
    name = {"raises": "thirdparty_1_raises" if first == "raises" else "thirdparty_2_raises",
            "good": "thirdparty_1_good" if first == "good" else "thirdparty_2_good"}
    plugin_site("thirdparty-raises", "thirdparty_raises",
                _chain_source(["shared3p"], []).replace("        register(_method(name))",
                                                        "        register(_method(name))\n"
                                                        "    raise RuntimeError('hook failed')"), name["raises"])
    plugin_site("thirdparty-good", "thirdparty_good", _chain_source(["shared3p"], []), name["good"])
    reg = plugins.registry()
    assert reg.plugins[name["raises"]].status == "broken: RuntimeError: hook failed"
    assert reg.plugins[name["good"]].status == "ok"
    assert reg.owner["methods"]["shared3p"] == name["good"]


@pytest.mark.parametrize("first_on_path", ["thirdparty-one", "thirdparty-two"])
def test_a_plugin_name_two_distributions_declare_is_neithers_whichever_python_finds_first(
        plugin_site, tmp_path, monkeypatch, first_on_path):
    # Before, the distribution found first on sys.path loaded and the other was 'already taken':
    # which one served the name was an accident of the path.
    site = plugin_site(first_on_path, "thirdparty_first", _chain_source(["first3p"], []), "samename3p")
    later = tmp_path / "site_later"
    i = sys.path.index(str(site))
    monkeypatch.setattr(sys, "path", [*sys.path[: i + 1], str(later), *sys.path[i + 1:]])  # found after `site`
    second = "thirdparty-two" if first_on_path == "thirdparty-one" else "thirdparty-one"
    write_plugin_dist(later, second, "thirdparty_second", _chain_source(["second3p"], []), "samename3p")
    importlib.invalidate_caches()
    plugins.reset()
    reg = plugins.registry()
    why = ("broken: plugin name 'samename3p' is declared by thirdparty-one and thirdparty-two; "
           "neither is loaded (uninstall one)")
    assert reg.plugins["samename3p (thirdparty-one)"].status == why
    assert reg.plugins["samename3p (thirdparty-two)"].status == why
    assert "samename3p" not in reg.plugins
    assert not {"first3p", "second3p"} & set(reg.names("methods"))
    assert reg.plugins["baselines"].status == "ok"


def test_two_distributions_declaring_one_plugin_name_fail_strict_mode(plugin_site, tmp_path, monkeypatch):
    site = plugin_site("thirdparty-one", "thirdparty_first", _chain_source(["first3p"], []), "samename3p")
    write_plugin_dist(site, "thirdparty-two", "thirdparty_second", _chain_source(["second3p"], []), "samename3p")
    plugins.reset()
    with pytest.raises(PluginError, match="plugin 'samename3p' .* is broken: plugin name 'samename3p' is declared by"):
        plugins.registry(strict=True)
    plugins.reset()
    from restorekit.testing.cases import collect_cases

    [case] = collect_cases("samename3p")  # broken, with why: not 'not installed'
    assert "is declared by thirdparty-one and thirdparty-two" in case.broken


def test_a_misspelt_hook_breaks_the_plugin_instead_of_registering_nothing(plugin_site):
    plugin_site("thirdparty-typo", "thirdparty_typo", GOOD_PLUGIN.replace("def register_methods", "def register_method"))
    reg = plugins.registry()
    status = reg.plugins["thirdparty_typo"].status
    assert status.startswith("broken: PluginValidationError") and "register_method" in status
    assert "nearest3p" not in reg.names("methods") and "mean_abs_3p" not in reg.names("metrics")
    plugins.reset()
    with pytest.raises(PluginError, match="thirdparty_typo"):
        plugins.registry(strict=True)


def test_a_plugin_error_keeps_the_lines_that_say_what_is_wrong(plugin_site):
    """pluggy names the bad argument on its second line: the status keeps it, on one line."""
    plugin_site("thirdparty-sig", "thirdparty_sig", GOOD_PLUGIN.replace("def register_methods(register):\n    register(",
                                                                       "def register_methods(reg):\n    reg("))
    status = plugins.registry().plugins["thirdparty_sig"].status
    assert "\n" not in status and "'reg'" in status and " | " in status


def test_what_a_plugin_prints_while_loading_goes_to_stderr(plugin_site, rk_cli, capsys):
    plugin_site("thirdparty-chatty", "thirdparty_chatty", "print('hello from the plugin')\n" + GOOD_PLUGIN)
    r = rk_cli("methods", "--json")
    assert r.exit_code == 0
    assert "nearest3p" in {m["name"] for m in json.loads(r.stdout)}  # stdout is the JSON alone
    seen = capsys.readouterr()  # the plugins load when the command is built, before it runs
    assert "hello from the plugin" in r.stderr + seen.err and "hello" not in seen.out


def test_a_load_plugins_name_that_is_not_installed_is_said(plugin_site, monkeypatch, rk_cli):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "thirdparty_nearst")
    reg = plugins.registry()
    assert reg.not_installed == ["thirdparty_nearst"]
    with pytest.raises(UnknownNameError, match="RESTOREKIT_LOAD_PLUGINS=thirdparty_nearst limits the plugins loaded"):
        reg.method("nearest3p")
    assert "RESTOREKIT_LOAD_PLUGINS names thirdparty_nearst, which no installed plugin declares" in rk_cli("plugins").stdout
    plugins.reset()
    with pytest.raises(PluginError, match="thirdparty_nearst.*installed: .*thirdparty_nearest"):
        plugins.registry(strict=True)


def test_strict_fails_on_a_broken_command_hook(plugin_site, rk_cli):
    """`restorekit --strict` reloads strictly, the command hooks included (a plugin's CI relies on it)."""
    plugin_site("thirdparty-cmdraise", "thirdparty_cmdraise", GOOD_PLUGIN + '''

@hookimpl
def register_commands(cli):
    raise RuntimeError("no commands today")
''')
    r = rk_cli("--strict", "plugins")
    assert r.exit_code == 2 and "thirdparty_cmdraise" in r.stderr and "no commands today" in r.stderr
    assert rk_cli("plugins").exit_code == 0  # lenient: listed as broken


@pytest.mark.parametrize("order", ["".join(p) for p in itertools.permutations("ABC")])
def test_a_command_two_plugins_add_breaks_all_of_them_whatever_their_order(plugin_site, order):
    # It used to stay with the plugin whose hook ran first; the second was broken with a line that
    # did not name the first. Like a method name, it is neither's now, and every error names all.
    import click

    name = {role: f"thirdparty_{order.index(role)}_{role.lower()}" for role in "ABC"}  # hook order = name order
    commands = {"A": ["own-a3p", "shared-cmd3p"], "B": ["shared-cmd3p"], "C": ["own-c3p"]}
    for role in "ABC":
        plugin_site(f"thirdparty-cmd-{role.lower()}", f"thirdparty_cmd_{role.lower()}",
                    command_plugin_source(role, *commands[role]), name[role])
    reg = plugins.registry()
    group = click.Group("t")
    plugins.add_commands(reg, group)
    why = (f"broken: register_commands: command 'shared-cmd3p' is added by both '{min(name['A'], name['B'])}' and "
           f"'{max(name['A'], name['B'])}'")
    assert reg.plugins[name["A"]].status == reg.plugins[name["B"]].status == why
    assert reg.plugins[name["C"]].status == "ok" and reg.plugins[name["C"]].registers == {"commands": ["own-c3p"]}
    assert not {"own-a3p", "shared-cmd3p"} & set(group.commands) and "own-c3p" in group.commands
    assert reg.plugins["baselines"].status == reg.plugins["psp_sr"].status == "ok"


def test_a_command_three_plugins_add_names_them_all(plugin_site):
    import click

    for p in "xyz":
        plugin_site(f"thirdparty-cmd-{p}", f"thirdparty_cmd_{p}", command_plugin_source(p, "shared3p"))
    reg = plugins.registry()
    plugins.add_commands(reg, click.Group("t"))
    why = ("broken: register_commands: command 'shared3p' is added by 'thirdparty_cmd_x', 'thirdparty_cmd_y' and "
           "'thirdparty_cmd_z'")
    assert [reg.plugins[f"thirdparty_cmd_{p}"].status for p in "xyz"] == [why] * 3


def test_a_hook_that_changes_a_core_command_in_place_is_undone_and_broken(plugin_site):
    # Same objects, so the identity comparison saw nothing: the plugin stayed ok with `run` changed.
    plugin_site("thirdparty-mutate", "thirdparty_mutate", GOOD_PLUGIN + '''

@hookimpl
def register_commands(cli):
    import click

    click.option("--mutated-by-plugin", is_flag=True)(cli.commands["run"])
    cli.commands["plugins"].help = "HIJACKED HELP"
    cli.commands["degrade"].callback = lambda **kw: None
''')
    cli = plugins.core_cli()
    run, listing, degrade = cli.commands["run"], cli.commands["plugins"], cli.commands["degrade"]
    before = (list(run.params), listing.help, degrade.callback)
    reg = plugins.registry()
    plugins.add_commands(reg, cli)
    status = reg.plugins["thirdparty_mutate"].status
    assert status.startswith("broken: register_commands: it changes existing commands it did not add: "), status
    for part in ("'run' (params)", "'plugins' (help)", "'degrade' (callback)"):
        assert part in status, status
    assert (list(run.params), listing.help, degrade.callback) == before
    assert "nearest3p" not in reg.names("methods")
    assert reg.plugins["psp_sr"].status == "ok" and "generator" in cli.commands["bench"].commands  # adding is fine


def test_plugins_lists_the_commands_each_plugin_adds(plugin_site):
    plugin_site("thirdparty-cmdlist", "thirdparty_cmdlist", command_plugin_source("cmdlist", "hello-list3p"))
    r = subprocess.run([sys.executable, "-m", "restorekit", "plugins", "--json"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    recs = {p["name"]: p for p in json.loads(r.stdout)}
    assert recs["thirdparty_cmdlist"]["registers"] == {"commands": ["hello-list3p"]}
    assert recs["thirdparty_cmdlist"]["status"] == "ok"
    assert recs["baselines"]["registers"]["commands"] == ["train pix2pixhd"]
    assert "bench generator" in recs["psp_sr"]["registers"]["commands"]


def test_a_misspelt_plain_hook_fails_strict_mode(plugin_site, rk_cli):
    plugin_site("thirdparty-plain", "thirdparty_plain", GOOD_PLUGIN.replace(
        "@hookimpl\ndef register_methods", "def register_method"))
    reg = plugins.registry()
    assert reg.plugins["thirdparty_plain"].status == (
        "broken: PluginError: 'register_method' (did you mean 'register_methods'?) is not a restorekit hook: "
        "restorekit never calls it, so it registers nothing")
    assert "mean_abs_3p" not in reg.names("metrics")
    r = rk_cli("--strict", "plugins")
    assert r.exit_code == 2 and "register_method" in r.stderr and "did you mean 'register_methods'" in r.stderr


def test_a_load_plugins_typo_is_warned_about_with_the_likely_name(plugin_site, monkeypatch, capsys):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "thirdparty_nearst")
    reg = plugins.registry()
    assert ("warning: RESTOREKIT_LOAD_PLUGINS names 'thirdparty_nearst', which no installed plugin "
            "declares (did you mean 'thirdparty_nearest'?)") in capsys.readouterr().err.splitlines()  # (the whole
    # line, as README says every warning is: it read "restorekit: warning: …")
    with pytest.raises(UnknownNameError, match=r"'thirdparty_nearst' is not installed \(did you mean "
                                               r"'thirdparty_nearest'\?\)"):
        reg.method("nearest3p")
    plugins.reset()
    with pytest.raises(PluginError, match=r"names thirdparty_nearst \(did you mean 'thirdparty_nearest'\?\), which"):
        plugins.registry(strict=True)


def _restorekit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "restorekit", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_a_command_of_a_broken_plugin_says_why_it_is_missing(plugin_site):
    """`restorekit train mine` of a plugin that broke answered click's bare "No such command
    'mine'.", as if it had never been installed."""
    plugin_site("thirdparty-cmdgone", "thirdparty_cmdgone", '''
import click
from restorekit.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    cli.commands["train"].add_command(click.Command("mine3p", callback=lambda: None))
    cli.add_command(click.Command("top3p", callback=lambda: None))
    cli.commands["run"].help = "changed"  # not its command: the plugin is broken, its commands undone
''')
    r = _restorekit("train", "mine3p", "--help")
    assert r.returncode == 2, r.stderr
    why = ("plugin 'thirdparty_cmdgone' is broken: register_commands: it changes existing commands it did not add: "
           "'run' (help); see `restorekit plugins`")
    assert f"Error: no such command 'mine3p': {why}" in r.stderr, r.stderr
    r = _restorekit("top3p")
    assert r.returncode == 2 and f"Error: no such command 'top3p': {why}" in r.stderr, r.stderr
    # A command no plugin added: the broken plugin may have had it (its hook may have stopped early).
    r = _restorekit("train", "other3p")
    assert r.returncode == 2, r.stderr
    assert ("Error: no such command 'other3p'; broken plugins, which may have had it: 'thirdparty_cmdgone' "
            "(see `restorekit plugins`)") in r.stderr, r.stderr


def test_a_first_party_command_names_its_distribution_when_it_is_not_installed(monkeypatch):
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    real = importlib.metadata.distribution

    def distribution(name: str):  # (as if restorekit-psp-sr were not installed)
        if name == "restorekit-psp-sr":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    cli = build_cli()
    train = cli.commands["train"]
    monkeypatch.delitem(train.commands, "psp_sr")  # (put back after the test)
    r = CliRunner().invoke(cli, ["train", "psp_sr", "--help"])
    assert r.exit_code == 2
    assert ("no such command 'psp_sr': it comes with the restorekit-psp-sr distribution, which is not installed: "
            "pip install restorekit-psp-sr") in r.output, r.output

    r = CliRunner().invoke(cli, ["bench", "nothing"])  # nothing known about it: the commands there are
    assert r.exit_code == 2 and "no such command 'nothing'; known: faces, generator, harness, method" in r.output
    r = _restorekit("train", "psp_sr", "--help", env={"RESTOREKIT_LOAD_PLUGINS": "baselines"})
    assert r.returncode == 2
    assert "Error: no such command 'psp_sr' (RESTOREKIT_LOAD_PLUGINS=baselines limits the plugins loaded)" in r.stderr
