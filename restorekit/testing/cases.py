"""The conformance suite over everything one plugin registers, as pytest parameters.

In a plugin's tests::

    import pytest
    from restorekit.testing import conformance_cases

    @pytest.mark.parametrize("case", conformance_cases(plugin="myplugin"))
    def test_conformance(case):
        case.run()

Each case is one registered component (``method:sharpen``, ``generator:stylegan2``…) checked
by the ``check_<kind>`` function of :mod:`restorekit.testing.conformance`; a plugin with a
``register_commands`` hook also gets ``commands:<plugin>``, which checks what its hook added
(the hooks run against a fresh ``restorekit`` command, as the CLI runs them, so a hook that
raises or takes a command another plugin or the core adds breaks the plugin here too). A
selection with no case is an error, never an empty (skipped) test. ``configs`` gives a
component the keyword arguments of its check (tiny sizes for a generator, options for a
method, a ``context`` for a loss), keyed by ``"name"`` or ``"kind:name"``; ``skip`` skips
components with a reason. A component whose weights are not cached is skipped, not failed
(``missing_weights="fail"`` makes it fail), as is one that needs a package not installed here
(``DependencyMissing``). A broken plugin yields one failing case that shows
its error.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..errors import DependencyMissing, WeightsMissing, exception_line
from ..plugins import KINDS, Registry, add_commands, core_cli, registry, suggest
from . import conformance as c

# kind (registry name) -> (singular label, check function, how the registered object is passed)
_CHECKS: dict[str, tuple[str, Callable[..., Any]]] = {
    "methods": ("method", c.check_method),
    "metrics": ("metric", c.check_metric),
    "degradations": ("degradation", c.check_degradation),
    "losses": ("loss", c.check_loss),
    "generators": ("generator", c.check_generator),
    "encoders": ("encoder", c.check_encoder),
    "face_embedders": ("face_embedder", c.check_face_embedder),
    "face_detectors": ("face_detector", c.check_face_detector),
    "weights": ("weights", c.check_weight_spec),
}
assert set(_CHECKS) == set(KINDS), "every plugin kind needs a conformance check"
_SINGULAR = {kind: label for kind, (label, _) in _CHECKS.items()}
#: The pseudo-kind of the case that checks a plugin's ``register_commands`` hook.
COMMANDS = "commands"
_SINGULAR[COMMANDS] = COMMANDS


def check_commands(commands: list[tuple[str, Any]], *, plugin: str = "") -> None:
    """What a plugin's ``register_commands`` hook added: at least one command, each a click command
    whose help can be shown (``restorekit COMMAND --help``)."""
    import click

    label = f"plugin '{plugin}'" if plugin else "register_commands"
    c._require(bool(commands), f"{label}: register_commands added no command")
    for path, cmd in commands:
        c._require(isinstance(cmd, click.Command), f"{label}: '{path}' is a {type(cmd).__name__}, not a click command")
        try:
            with click.Context(cmd, info_name=path.split()[-1]) as ctx:
                cmd.get_help(ctx)
        except Exception as exc:
            raise c.ConformanceError(f"{label}: `restorekit {path} --help` fails: {exception_line(exc)}") from exc


@dataclass(frozen=True)
class ConformanceCase:
    """One registered component and the check that applies to it; ``run()`` performs it."""

    plugin: str
    kind: str
    name: str
    obj: Any
    config: dict[str, Any] = field(default_factory=dict)
    missing_weights: Literal["skip", "fail"] = "skip"
    broken: str = ""

    @property
    def id(self) -> str:
        """``method:sharpen``: the pytest id."""
        return f"{_SINGULAR.get(self.kind, self.kind)}:{self.name}"

    def __str__(self) -> str:
        return self.id

    def check(self) -> Any:
        """Run the check; ``WeightsMissing`` propagates (see :meth:`run`)."""
        if self.broken:
            raise c.ConformanceError(f"plugin '{self.plugin}' is {self.broken}")
        if self.kind == COMMANDS:
            return check_commands(self.obj, plugin=self.plugin)
        _, check = _CHECKS[self.kind]
        accepted = [p for p in inspect.signature(check).parameters.values() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(self.config) - {p.name for p in accepted})
        if unknown:
            raise c.ConformanceError(f"{self.id}: config keys {unknown} are not arguments of {check.__name__} "
                                     f"(it takes: {', '.join(p.name for p in accepted)})")
        token = c._CHECKED_PLUGIN.set(self.plugin)  # the hints' `restorekit plugin check PLUGIN` commands
        try:
            if self.kind == "weights":
                return check(self.obj, name=self.name, plugin=self.plugin, **self.config)
            return check(self.obj, **self.config)
        finally:
            c._CHECKED_PLUGIN.reset(token)

    def run(self) -> Any:
        """Run the check under pytest: skips when weights are missing and ``missing_weights="skip"``,
        and when a package the component needs is not installed."""
        try:
            return self.check()
        except (WeightsMissing, DependencyMissing) as exc:
            if self.missing_weights == "fail" and isinstance(exc, WeightsMissing):
                raise
            import pytest

            pytest.skip(f"{self.id}: {exc}")


def _config_for(configs: dict[str, dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    specific = configs.get(f"{_SINGULAR[kind]}:{name}")
    return dict(specific if specific is not None else configs.get(name, {}))


def collect_cases(plugin: str | None = None, *, kinds: list[str] | tuple[str, ...] | None = None,
                  configs: dict[str, dict[str, Any]] | None = None,
                  missing_weights: Literal["skip", "fail"] = "skip",
                  reg: Registry | None = None) -> list[ConformanceCase]:
    """The cases for ``plugin`` (an entry-point name; None: every plugin), in registry order, then
    one ``commands:<plugin>`` case per plugin whose ``register_commands`` hook added commands
    (``kinds`` may name ``"commands"``).

    The command hooks run first, against a fresh ``restorekit`` command (unless the CLI has run
    them for this registry already), so a plugin they break is a broken case, as in
    ``restorekit plugin check``. Raises :class:`ConformanceError` for an unknown plugin or kind,
    a config naming a component the selection does not register (typos must not silently skip a
    check), or a selection that yields no case (an empty parametrization is a skipped test).
    """
    reg = reg if reg is not None else registry()
    configs = dict(configs or {})
    wanted = tuple(kinds) if kinds is not None else (*KINDS, COMMANDS)
    bad = [k for k in wanted if k not in (*KINDS, COMMANDS)]
    if bad:
        raise c.ConformanceError(f"unknown kinds {bad}; known: {', '.join((*KINDS, COMMANDS))}")
    if not reg.commands_checked:
        add_commands(reg, core_cli(), strict=False)
    if plugin is not None:
        clashing = [r for key, r in reg.plugins.items() if key.startswith(f"{plugin} (") and r.name == plugin]
        if clashing:  # two distributions declare this name: listed apart, and broken
            return [ConformanceCase(plugin, "plugin", plugin, None, broken=clashing[0].status)]
    if plugin is not None and plugin not in reg.plugins:
        names = sorted(reg.plugins)
        excluded = " or RESTOREKIT_LOAD_PLUGINS leaves it out" if "RESTOREKIT_LOAD_PLUGINS" in os.environ else ""
        raise c.ConformanceError(
            f"plugin '{plugin}' is not installed (no entry point '{plugin}' in the 'restorekit' group{excluded})"
            f"{suggest(plugin, names)}; installed: {', '.join(names)}; install it with `pip install -e .`")
    cases: list[ConformanceCase] = []
    if plugin is not None and reg.plugins[plugin].status != "ok":
        return [ConformanceCase(plugin, "plugin", plugin, None, broken=reg.plugins[plugin].status)]
    # Global state changed at import is put back for users (with a warning); the plugin's own check fails.
    for owner, change in sorted(reg.state_changes.items()):
        if plugin is None or owner == plugin:
            cases.append(ConformanceCase(owner, "plugin", owner, None, broken=(
                f"changing global state while it is imported and registered: {change} (restorekit puts it back "
                "and warns; set such state only inside the calls that need it, and back in a finally block)")))
    for kind in wanted:
        if kind == COMMANDS:
            continue
        for name in reg.names(kind):
            owner = reg.owner[kind][name]
            if plugin is not None and owner != plugin:
                continue
            cases.append(ConformanceCase(owner, kind, name, reg.items[kind][name],
                                         _config_for(configs, kind, name), missing_weights))
    if COMMANDS in wanted:
        hooks = [e.plugin for e in reg.commands if plugin is None or e.plugin == plugin]
        for owner in dict.fromkeys(hooks):
            cases.append(ConformanceCase(owner, COMMANDS, owner, list(reg.added_commands.get(owner, [])),
                                         missing_weights=missing_weights))
    if not cases:
        which = f"plugin '{plugin}'" if plugin is not None else "no plugin"
        what = "nothing the conformance suite can check" if kinds is None else f"no {' or '.join(wanted)}"
        raise c.ConformanceError(f"{which} registers {what}: a selection without cases would pass as an "
                                 "empty, skipped test")
    known = {cs.name for cs in cases if cs.kind != COMMANDS} | {cs.id for cs in cases}
    unknown = sorted(set(configs) - known)
    if unknown:
        raise c.ConformanceError(f"configs name {unknown}, which "
                                 f"{'plugin ' + repr(plugin) if plugin else 'no plugin'} does not register; "
                                 f"it registers: {', '.join(cs.id for cs in cases) or 'nothing'}")
    return cases


def conformance_cases(plugin: str | None = None, *, kinds: list[str] | tuple[str, ...] | None = None,
                      configs: dict[str, dict[str, Any]] | None = None,
                      skip: dict[str, str] | None = None,
                      missing_weights: Literal["skip", "fail"] = "skip") -> list[Any]:
    """``pytest.param`` objects, one per component ``plugin`` registers, for ``@pytest.mark.parametrize``.

    ``skip`` maps ``"name"`` or ``"kind:name"`` to a reason. See :func:`collect_cases` for the rest.
    """
    import pytest

    skip = dict(skip or {})
    out = []
    for case in collect_cases(plugin, kinds=kinds, configs=configs, missing_weights=missing_weights):
        reason = skip.pop(case.id, None) or skip.pop(case.name, None)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    if skip:
        raise c.ConformanceError(f"skip names {sorted(skip)}, which the selection does not register")
    return out


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case outside pytest."""

    id: str
    status: Literal["ok", "skipped", "failed"]
    detail: str = ""
    seconds: float = 0.0


def run_conformance(plugin: str | None = None, *, starting: Callable[[str], None] | None = None,
                    **kwargs: Any) -> list[CaseResult]:
    """Run every case of ``plugin`` without pytest; failures are collected, not raised.

    Missing weights give ``skipped`` (or ``failed`` with ``missing_weights="fail"``), and so does a
    package the component needs that is not installed (``DependencyMissing``). ``starting(id)``
    is called before each case (a slow one — PULSE at its default steps — must not look hung).
    """
    results = []
    for case in collect_cases(plugin, **kwargs):
        if starting is not None:
            starting(case.id)
        t0 = time.perf_counter()
        try:
            case.check()
        except (WeightsMissing, DependencyMissing) as exc:
            fail = case.missing_weights == "fail" and isinstance(exc, WeightsMissing)
            status: Literal["skipped", "failed"] = "failed" if fail else "skipped"
            results.append(CaseResult(case.id, status, str(exc), time.perf_counter() - t0))
        except c.ConformanceError as exc:
            results.append(CaseResult(case.id, "failed", str(exc), time.perf_counter() - t0))
        except Exception as exc:  # a crash inside the component is a failure of that component
            results.append(CaseResult(case.id, "failed", exception_line(exc), time.perf_counter() - t0))
        else:
            results.append(CaseResult(case.id, "ok", seconds=time.perf_counter() - t0))
    return results
