"""`restorekit demo` scores against the HR it writes: its metrics.json is what the metrics give on
its own files (the aligned face was scored as float32 off the 8-bit grid, written rounded)."""

from __future__ import annotations

import json
import math

import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.commands import demo
from restorekit.images import read_image
from restorekit.plugins import registry

METRICS = ("psnr_y_crop", "ssim_y_crop", "lr_consistency")


def off_grid_photo() -> torch.Tensor:
    """A smooth 256×320 photo whose values lie between 8-bit levels (as an aligned crop's do)."""
    y = torch.linspace(0, 1, 256)[:, None]
    x = torch.linspace(0, 1, 320)[None, :]
    grey = 0.45 + 0.2 * torch.sin(9 * x + 4 * y) + 0.1 * torch.cos(13 * y) + 0.3 / 255
    return torch.stack([grey, grey * 0.9, grey * 0.8]).clamp(0, 1)[None]


def test_demo_metrics_are_those_of_its_written_files(tmp_path, monkeypatch) -> None:
    from restorekit.faces import pipeline

    monkeypatch.setattr(demo, "DEMO_METRICS", METRICS)
    monkeypatch.setattr(demo, "astronaut", off_grid_photo)
    # The face crop itself is tested with the real detector in test_demo.py; a fixed crop here.
    monkeypatch.setattr(pipeline, "largest_face_crop", lambda photo, size, detector: (
        photo[:, :, 40:40 + size, 180:180 + size].clone(), {"detector": "mtcnn", "box": [180.0, 40.0, 308.0, 168.0],
                                                          "score": 0.99}))
    out = tmp_path / "demo"
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "bicubic", "--scale", "4", "-q"])
    assert r.exit_code == 0, r.output
    reported = json.loads((out / "metrics.json").read_text())["results"]["bicubic"]
    hr, lr = read_image(out / "astronaut_hr.png"), read_image(out / "astronaut_lr_x4.png")
    sr = read_image(out / "astronaut_x4_bicubic.png")
    assert hr.shape[-1] == 128 and lr.shape[-1] == 32
    for name in METRICS:
        metric = registry().metric(name)()
        metric.setup(torch.device("cpu"))
        value = float(metric(sr, hr, lr=lr, scale=4)[0])
        assert math.isfinite(value) and reported[name] == value, name  # was 22.3… vs 22.3…: another HR
