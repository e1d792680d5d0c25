"""Throwaway third-party plugin distributions for discovery tests (module source + dist-info)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, ClassVar

import torch


def write_plugin_dist(site: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """A minimal installed distribution on ``site``: a module plus its dist-info with an entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[restorekit]\n{ep_name or module} = {module}\n")


GOOD_PLUGIN = '''
from typing import ClassVar
from pydantic import Field
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Options, Metric
import torch


class NearestOptions(Options):
    gain: float = Field(1.0, ge=0, description="multiply the output")


class Nearest(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="nearest3p", summary="nearest-neighbour upscaling")
    Options = NearestOptions

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        out = torch.nn.functional.interpolate(lr.float(), scale_factor=scale, mode="nearest") * self.options.gain
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


class MeanAbs(Metric):
    name: ClassVar[str] = "mean_abs_3p"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()


@hookimpl
def register_methods(register):
    register(Nearest)


@hookimpl
def register_metrics(register):
    register(MeanAbs)
'''

# A third-party degradation step ('gamma3p'); a test edits OFFSET between runs, as an upgrade would.
GAMMA_PLUGIN = '''
from typing import ClassVar
from pydantic import Field
from restorekit.degradations import spec_number
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Degradation, Options

OFFSET = 0.0


class GammaParams(Options):
    gamma: float = Field(gt=0, le=5, description="exponent")


class Gamma(Degradation):
    name: ClassVar[str] = "gamma3p"
    Params = GammaParams

    def __call__(self, hr, *, generator=None):
        return hr.clamp(0, 1) ** (self.params.gamma + OFFSET)

    def spec(self):
        return f"gamma3p:{spec_number(self.params.gamma)}"


@hookimpl
def register_degradations(register):
    register(Gamma)
'''


BROKEN_PLUGIN = '''
raise ImportError("this plugin is broken on purpose")
'''


def valid_entry(kind: str, name: str) -> Any:
    """The smallest entry of a non-factory ``kind`` that registration accepts, called ``name``."""
    from restorekit.interfaces import Degradation, Loss, Method, MethodInfo, Metric, NoOptions
    from restorekit.weights import WeightFile, WeightSpec

    if kind == "methods":
        class M(Method):
            info: ClassVar[MethodInfo] = MethodInfo(name=name, summary="test method")

            def restore(self, lr: torch.Tensor, scale: int, *, seed: int | None = None,
                        n_samples: int = 1) -> torch.Tensor:
                return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        return M
    if kind == "metrics":
        class Me(Metric):
            higher_is_better: ClassVar[bool] = True

            def __call__(self, pred: torch.Tensor, target: torch.Tensor, *, lr: torch.Tensor,
                         scale: int) -> torch.Tensor:
                return (pred - target).abs().flatten(1).mean(1).double()
        Me.name = name
        return Me
    if kind == "degradations":
        class D(Degradation):
            Params = NoOptions

            def __call__(self, hr: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
                return hr
        D.name = name
        return D
    if kind == "losses":
        class L(Loss):
            def __call__(self, pred: torch.Tensor, target: torch.Tensor, **context: Any) -> torch.Tensor:
                return (pred - target).abs().mean()
        L.name = name
        return L
    if kind == "weights":
        return WeightSpec(name=name, architecture="test", plugin="test",
                          files=(WeightFile(filename="w.bin"),), license="MIT")
    raise ValueError(f"no valid entry for {kind}")


# Throwaway plugins that fail in every way a plugin can at load or registration. Each also
# registers a fine method ``good_<case>`` first (where it gets that far), which must be dropped
# with the rest of its registrations. ``case -> (hook source, what its "broken:" status says)``.
_BAD_HEADER = '''
import sys
import types
from typing import ClassVar
import torch
from pydantic import BaseModel
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Degradation, Loss, Method, MethodInfo, Metric, Options


def _up(lr, scale):
    return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")


class Good(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="good_CASE", summary="a fine method")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return _up(lr, scale)


class NoInfo(Method):
    name = "noinfo_CASE"

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return _up(lr, scale)
'''


def _methods(*lines: str) -> str:
    body = "\n".join(f"    {line}" for line in ("register(Good)",) + lines)
    return f"@hookimpl\ndef register_methods(register):\n{body}\n"


BAD_PLUGINS: dict[str, tuple[str, str]] = {
    "exit_at_import": (_methods() + "sys.exit(3)\n", r"SystemExit\(3\): the plugin tried to end the program"),
    "exit_in_hook": (_methods("sys.exit()"), r"SystemExit\(None\)"),
    "interrupt_at_import": ("raise KeyboardInterrupt\n",
                            r"KeyboardInterrupt \(raised by the plugin, not by the user\)"),
    "base_exception": (_methods() + '''
class Escape(BaseException):
    pass

@hookimpl
def register_metrics(register):
    raise Escape("out of here")
''', r"Escape: out of here"),
    "bad_hook_signature": ('''
@hookimpl
def register_methods(reg):
    reg(Good)
''', r"PluginValidationError"),
    "method_without_info": (_methods("register(NoInfo)"), r"method class NoInfo has no `info`"),
    "method_not_subclass": ('''
class Plain:
    info = MethodInfo(name="plain_CASE", summary="not a Method")
''' + _methods("register(Plain)"), r"is not a subclass of restorekit.interfaces.Method"),
    "method_abstract": ('''
class Abstract(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="abstract_CASE", summary="no restore")
''' + _methods("register(Abstract)"), r"method class Abstract does not implement restore"),
    "method_bad_options": ('''
class BadOptions(Good):
    info: ClassVar[MethodInfo] = MethodInfo(name="badopts_CASE", summary="s")
    Options = dict
''' + _methods("register(BadOptions)"), r"Options must be a pydantic model class"),
    "method_bad_name": ('''
class Comma(Good):
    info: ClassVar[MethodInfo] = MethodInfo(name="a,b", summary="s")
''' + _methods("register(Comma)"), r"method name 'a,b' is not valid"),
    "method_bad_info": ('''
class BadInfo(Good):
    info: ClassVar[MethodInfo] = MethodInfo(name="badinfo_CASE", summary="s", scales=(0,), input_kind="faces")
''' + _methods("register(BadInfo)"), r"scales must be None or positive integers.*input_kind must be one of"),
    "metric_no_direction": (_methods() + '''
class M(Metric):
    name: ClassVar[str] = "m_CASE"

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()

@hookimpl
def register_metrics(register):
    register(M)
''', r"metric 'm_CASE' \(M\): higher_is_better must be true or false"),
    "metric_duplicate_core": (_methods() + '''
class Psnr(Metric):
    name: ClassVar[str] = "psnr_rgb"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        return torch.zeros(pred.shape[0], dtype=torch.float64)

@hookimpl
def register_metrics(register):
    register(Psnr)
''', r"metric 'psnr_rgb' is registered by both 'restorekit' and 'thirdparty_metric_duplicate_core'"),
    "degradation_bad": (_methods() + '''
class D(Degradation):
    name: ClassVar[str] = "b:2"
    Params = Options

    def __call__(self, hr, *, generator=None):
        return hr

@hookimpl
def register_degradations(register):
    register(D)
''', r"degradation name 'b:2' is not valid"),
    "loss_not_subclass": (_methods() + '''
class L:
    name = "l_CASE"

@hookimpl
def register_losses(register):
    register(L)
''', r"is not a subclass of restorekit.interfaces.Loss"),
    "weights_not_spec": (_methods() + '''
@hookimpl
def register_weights(register):
    register(types.SimpleNamespace(name="fake-case"))
''', r"is a SimpleNamespace, not a restorekit.weights.WeightSpec"),
    "weights_conflict": (_methods() + '''
from restorekit.weights import WeightFile, WeightSpec

@hookimpl
def register_weights(register):
    register(WeightSpec(name="lpips-alex", architecture="not-lpips", plugin="x", license="MIT",
                        files=(WeightFile(filename="lpips-alex.safetensors"),)))
''', r"weights 'lpips-alex' differ from the registry entry .*lpips-alex.toml \(fields: architecture, "),
    "generator_not_callable": (_methods() + '''
@hookimpl
def register_generators(register):
    register("gen_CASE", 42, summary="not a factory")
''', r"generator 'gen_CASE': the factory 42 is not callable"),
    "detector_bad_name": (_methods() + '''
@hookimpl
def register_face_detectors(register):
    register("two words", lambda **kw: None, summary="s")
''', r"face detector name 'two words' is not valid"),
    "swallowed": (_methods('''try:
        register(NoInfo)
    except Exception:
        pass  # a plugin that hides its own failure is still broken'''), r"method class NoInfo has no `info`"),
    "weights_swallowed_dict": (_methods() + '''
@hookimpl
def register_weights(register):
    try:
        register({"name": "a-dict"})
    except Exception:
        pass
''', r"cannot tell the name of \{'name': 'a-dict'\}"),
    "extra_arguments": (_methods("register(Good, lambda: None)"),
                        r"register_methods: call register\(Entry\) with the entry alone"),
    "command_raises": (_methods() + '''
@hookimpl
def register_commands(cli):
    import click

    @cli.command("hello-CASE")
    def hello():
        click.echo("hello")

    sys.exit(1)
''', r"register_commands: SystemExit\(1\)"),
    "command_replaces_core": (_methods() + '''
@hookimpl
def register_commands(cli):
    import click

    @cli.command("run")
    def run():
        click.echo("not the real run")
''', r"register_commands: command 'run' is added by both the core \('restorekit'\) and "
        r"'thirdparty_command_replaces_core'$"),
    # A core command changed in place (the same object, so no replacement) used to stay "ok".
    "command_mutates_core": (_methods() + '''
@hookimpl
def register_commands(cli):
    import click

    click.option("--hijack-CASE", is_flag=True, help="added by a plugin")(cli.commands["run"])
    cli.commands["run"].help = "HIJACKED"
''', r"register_commands: it changes existing commands it did not add: 'run' \(help, params\)$"),
    "command_removes_core": (_methods() + '''
@hookimpl
def register_commands(cli):
    del cli.commands["run"]
''', r"register_commands: its commands replace or remove existing commands 'run'$"),
    # A plain (undecorated) hook with a misspelt name used to register nothing and stay "ok".
    "misspelt_plain_hook": (_methods() + '''
def register_metric(register):
    register(object())
''', r"PluginError: 'register_metric' \(did you mean 'register_metrics'\?\) is not a restorekit hook"),
    "registers_nothing": ("", r"PluginError: registers nothing: it defines none of the hooks register_methods, "),
}

# Command hooks of throwaway plugins: each adds what it names (a command added twice is a clash).
COMMAND_PLUGIN = '''
import click
from restorekit.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    for name in NAMES:
        cli.add_command(click.Command(name, callback=lambda: click.echo("from PLUGIN"), help="from PLUGIN"))
'''


def command_plugin_source(plugin: str, *names: str) -> str:
    """A plugin whose only hook adds the top-level commands ``names``."""
    return COMMAND_PLUGIN.replace("NAMES", repr(list(names))).replace("PLUGIN", plugin)


def bad_plugin_source(case: str) -> str:
    """The module source of throwaway plugin ``case`` (names made unique per case)."""
    return (_BAD_HEADER + BAD_PLUGINS[case][0]).replace("CASE", case)


# Plugins that are fine though they register nothing here (an optional dependency missing), or hold
# a register_* function that is not theirs but imported.
QUIET_PLUGINS = {
    "hooks_register_nothing": '''
@hookimpl
def register_metrics(register):
    pass
''',
    "commands_add_nothing": '''
@hookimpl
def register_commands(cli):
    pass
''',
    "imports_a_register_function": _methods() + '''
from copyreg import constructor as register_constructor  # noqa: F401 (another library's register_*)
from torch.serialization import register_package  # noqa: F401
''',
}


def quiet_plugin_source(case: str) -> str:
    """The module source of :data:`QUIET_PLUGINS` ``case`` (names made unique per case)."""
    return (_BAD_HEADER + QUIET_PLUGINS[case]).replace("CASE", case)


ONE_FACE_PLUGIN = '''
from typing import ClassVar
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo
from restorekit.degradations import upscale


class BrightFace(Method):
    """A face method visibly unlike bicubic: ×scale, then brighter."""

    info: ClassVar[MethodInfo] = MethodInfo(name="bright_face_{suffix}", summary="test face method",
                                            input_kind="aligned_face")
    face_input_size = {input_size}

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return (upscale(lr, scale) * 0.5 + 0.5).clamp(0, 1).repeat_interleave(n_samples, 0)


class OneFace(FaceDetector):
    name = "one_{suffix}"

    def detect(self, image):
        if image.shape[-1] < {min_width}:
            return []
        x, y, d = {x}, {y}, {d}
        lm = [(x - d / 2, y), (x + d / 2, y), (x, y + 0.7 * d), (x - 0.464 * d, y + 1.04 * d),
              (x + 0.464 * d, y + 1.04 * d)]
        return [Face((x - d, y - 0.6 * d, x + d, y + 1.5 * d), 0.99, lm)]


@hookimpl
def register_methods(register):
    register(BrightFace)


@hookimpl
def register_face_detectors(register):
    register("one_{suffix}", OneFace, summary="test: one face in photos {min_width} px wide or more")
'''


def one_face_plugin_source(suffix: str, *, input_size: int, x: float, y: float, d: float, min_width: int = 0) -> str:
    """A plugin with a face method ``bright_face_<suffix>`` (``face_input_size`` ``input_size``;
    ×scale, then brighter: unlike bicubic wherever it is pasted) and a detector ``one_<suffix>``
    finding one face, eyes ``d`` apart around (``x``, ``y``), in photos ``min_width`` px wide or more."""
    return ONE_FACE_PLUGIN.format(suffix=suffix, input_size=input_size, x=float(x), y=float(y), d=float(d),
                                  min_width=min_width)
