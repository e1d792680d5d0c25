"""What a plugin's ``restore`` returns is checked before anything is written or scored.

A method that breaks the image convention (wrong size, channels or sample count, NaN, a
[0, 255] or [-1, 1] range, an integer dtype, not a tensor) fails on each input with one line
naming the method and the problem; nothing it produced is written.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli

_SOURCE = '''
from typing import ClassVar
import torch
import torch.nn.functional as F
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class Bad(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="bad_out_3p", summary="returns a broken output")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        out = F.interpolate(lr, scale_factor=scale, mode="bilinear").clamp(0, 1)
        out = out.repeat_interleave(n_samples, 0)
        return BROKEN


@hookimpl
def register_methods(register):
    register(Bad)
'''

BROKEN = {
    "one row short": ("out[..., :-1, :]", r"returned \(1, 3, 127, 128\), expected \(1, 3, 128, 128\)"),
    "one channel": ("out[:, :1]", r"returned \(1, 1, 128, 128\), expected \(1, 3, 128, 128\)"),
    "one sample of two": ("out[:1]", r"returned \(1, 3, 128, 128\), expected \(2, 3, 128, 128\)"),
    "nan": ("out.index_fill(3, torch.tensor([0]), float('nan'))", r"NaN or inf"),
    "0-255 range": ("out * 255", r"values from 0\.\d+ to 2\d\d; images are in \[0, 1\]"),
    "-1-1 range": ("out * 2 - 1", r"values from -0\.9\d* to 0\.9\d*; images are in \[0, 1\]"),
    "uint8": ("(out * 255).round().to(torch.uint8)", r"torch.uint8.*floating"),
    "numpy": ("out.numpy()", r"returned a ndarray, not a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_run_refuses_an_output_that_breaks_the_image_convention(plugin_site, hr_folder, tmp_path, case):
    import re

    expr, message = BROKEN[case]
    plugin_site("thirdparty-bad-out", "bad_out_3p", _SOURCE.replace("BROKEN", expr))
    out = tmp_path / "out"
    n = "2" if case == "one sample of two" else "1"
    r = CliRunner().invoke(build_cli(), ["run", "bad_out_3p", "--scale", "2", "--input", str(hr_folder / "img0.png"),
                                         "--output", str(out), "--n-samples", n, "-q"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    assert "img0.png" in lines[0] and "bad_out_3p" in lines[0] and re.search(message, lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_run_accepts_a_slight_overshoot(hr_folder, tmp_path):
    # bicubic without clipping overshoots [0, 1] a little near edges: that is not a broken range.
    out = tmp_path / "out"
    r = CliRunner().invoke(build_cli(), ["run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out),
                                         "--opt", "clamp=none", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len(list(out.iterdir())) == 4


@pytest.mark.parametrize("case", ["0-255 range", "uint8", "nan"])
def test_compare_fails_such_an_output_instead_of_scoring_it(plugin_site, hr_folder, tmp_path, case):
    import json

    plugin_site("thirdparty-bad-out", "bad_out_3p", _SOURCE.replace("BROKEN", BROKEN[case][0]))
    out = tmp_path / "cmp"
    r = CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic,bad_out_3p", "--scale", "2", "--data",
                                         str(hr_folder), "--out", str(out), "--metrics", "psnr_rgb", "--device", "cpu",
                                         "-q"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    doc = json.loads((out / "results.json").read_text())
    bad = [i for i in doc["images"] if i["method"] == "bad_out_3p"]
    assert len(bad) == 4 and all(i["status"] == "failed" and not i["metrics"] for i in bad)
    assert all("bad_out_3p: restore returned" in i["error"] for i in bad), bad[0]["error"]
    assert all(i["status"] == "ok" for i in doc["images"] if i["method"] == "bicubic")
