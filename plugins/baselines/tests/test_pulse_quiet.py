"""PULSE's note that it resizes the generator's output: sizes written width×height, as restorekit
writes them everywhere, once per size; and `run -q` silences it (run sets pulse's `quiet`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from restorekit.cli import build_cli
from restorekit.images import save_image
from restorekit.interfaces import Generator
from restorekit.plugins import Factory, registry
from restorekit_baselines.pulse import Pulse, PulseOptions

TINY = "tiny-pulse-quiet-test"


class TinyGenerator(Generator):
    """16-px faces from a 2-layer mapping and a smooth decoder: enough for a few search steps."""

    def __init__(self, resolution: int = 16, dim: int = 8, n_styles: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.resolution, self.z_dim, self.style_dim, self.n_styles = resolution, dim, dim, n_styles
        self.m1 = nn.Parameter(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        coarse = torch.randn(n_styles * dim, 3, 4, 4, generator=g)
        fine = F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)
        self.basis = nn.Parameter(fine.view(n_styles, dim, 3, resolution, resolution))
        self.register_buffer("noise_0", torch.randn(1, 1, 4, 4, generator=g))

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z @ self.m1, 0.2) * math.sqrt(2)

    def noise_buffers(self) -> list[torch.Tensor]:
        return [self.noise_0]

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):  # type: ignore[no-untyped-def]
        x = torch.einsum("nld,ldchw->nchw", w_plus, self.basis) / math.sqrt(self.n_styles * self.style_dim)
        return 0.5 + 0.5 * torch.tanh(x)


@pytest.fixture
def tiny():
    reg = registry()
    reg.add("generators", TINY, Factory(TINY, lambda **kw: TinyGenerator(**kw), "test"), "tests")
    yield TINY
    del reg.items["generators"][TINY]
    del reg.owner["generators"][TINY]


OPTS = {"steps": 2, "gaussian_fit_samples": 500}


def test_the_resize_note_says_width_by_height_once_per_size(tiny, capsys):
    m = Pulse(PulseOptions(generator=tiny, **OPTS))
    lr = torch.rand(1, 3, 6, 10)  # 10 wide, 6 high: ×2 → 20×12
    assert m.restore(lr, 2).shape == (1, 3, 12, 20)
    m.restore(lr, 2)
    err = capsys.readouterr().err
    assert err.count("pulse: resizing the generator's 16×16 output to 20×12 (scale×input") == 1, err
    assert "12×20" not in err
    Pulse(PulseOptions(generator=tiny, quiet=True, **OPTS)).restore(lr, 2)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("quiet", [True, False])
def test_run_q_silences_pulses_notes(tiny, tmp_path, quiet):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        save_image(torch.rand(1, 3, 6, 10), src / name)
    args = ["run", "pulse", "--scale", "2", "--input", str(src), "--output", str(tmp_path / "o"), "--device", "cpu",
            "--opt", f"generator={tiny}"] + [f"--opt={k}={v}" for k, v in OPTS.items()] + (["-q"] if quiet else [])
    r = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "b.png"]
    pulse_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("pulse:")]
    if quiet:
        assert r.stderr == "", r.stderr
    else:  # the rule once (run prints the method's notes), the size once for both inputs
        assert sum("makes 16×16 faces" in ln for ln in pulse_lines) == 1, r.stderr
        assert sum("output to 20×12" in ln for ln in pulse_lines) == 1, r.stderr


def test_an_explicit_quiet_option_wins_over_run_q(tiny, tmp_path):
    save_image(torch.rand(1, 3, 6, 10), tmp_path / "a.png")
    args = ["run", "pulse", "--scale", "2", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o"),
            "--device", "cpu", "--opt", f"generator={tiny}", "--opt", "quiet=false", "-q"] + \
        [f"--opt={k}={v}" for k, v in OPTS.items()]
    r = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert r.exit_code == 0 and "output to 20×12" in r.stderr, r.output
