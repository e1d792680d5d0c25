"""Throwaway third-party plugin distributions for discovery tests (module source + dist-info)."""

from __future__ import annotations

import textwrap
from pathlib import Path


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
        out = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest") * self.options.gain
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

BROKEN_PLUGIN = '''
raise ImportError("this plugin is broken on purpose")
'''
