"""`restorekit demo`'s metrics.json: numbers as numbers, a missing figure null with its reason once,
the same keys for every method (metrics that cannot run, NaN, a failure on one output, weights)."""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any, ClassVar

import pytest
import torch
from click.testing import CliRunner

from restorekit import methods, plugins
from restorekit.cli import build_cli
from restorekit.commands import demo
from restorekit.errors import RestorekitError, WeightsMissing

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                reason="the demo photo ships in scikit-image")


class FakeMetric:
    nan_label: ClassVar[str] = ""
    calls: ClassVar[int] = 0

    def setup(self, device: torch.device) -> None:
        pass


class MeanError(FakeMetric):
    def __call__(self, pred: torch.Tensor, target: torch.Tensor, *, lr: torch.Tensor, scale: int) -> torch.Tensor:
        return (pred - target).abs().flatten(1).mean(1).double()


class NeedsWeights(FakeMetric):
    def setup(self, device: torch.device) -> None:
        raise WeightsMissing("fake-backbone")


class NoFace(FakeMetric):
    nan_label = "faces not found"

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, *, lr: torch.Tensor, scale: int) -> torch.Tensor:
        return torch.full((pred.shape[0],), math.nan, dtype=torch.float64)


class SecondFails(FakeMetric):
    """Measures the first method's output, refuses the second's."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, *, lr: torch.Tensor, scale: int) -> torch.Tensor:
        type(self).calls += 1
        if type(self).calls > 1:
            raise RestorekitError("second_fails: output too flat")
        return torch.full((pred.shape[0],), 0.5, dtype=torch.float64)


class Exact(FakeMetric):
    def __call__(self, pred: torch.Tensor, target: torch.Tensor, *, lr: torch.Tensor, scale: int) -> torch.Tensor:
        return torch.full((pred.shape[0],), math.inf, dtype=torch.float64)


FAKES = {"mean_error": MeanError, "needs_weights": NeedsWeights, "no_face": NoFace, "second_fails": SecondFails,
         "exact": Exact}


class Brighter:
    """Stands in for a method with weights: bicubic plus 0.1, its weights recorded without a sha256."""

    device = torch.device("cpu")
    notes: list[str] = []
    weights_info = {"name": "brighter-v1", "license": "MIT", "source": "not shown"}

    def restore(self, lr: torch.Tensor, scale: int, *, seed: int = 0) -> torch.Tensor:
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
        return (up + 0.1).clamp(0, 1)


def strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_json_is_consistent(tmp_path, monkeypatch) -> None:
    from restorekit.faces import pipeline

    SecondFails.calls = 0
    registry = plugins.registry()
    monkeypatch.setattr(registry, "metric", lambda name: FAKES[name])
    monkeypatch.setattr(demo, "DEMO_METRICS", tuple(FAKES))
    build = methods.build_method
    monkeypatch.setattr(methods, "build_method",
                        lambda name, *a, **kw: Brighter() if name == "pix2pixhd" else build(name, *a, **kw))
    # The face crop itself is tested with the real detector in test_demo.py; a fixed crop here.
    monkeypatch.setattr(pipeline, "largest_face_crop", lambda photo, size, detector: (
        photo[:, :, 40:40 + size, 180:180 + size].clone(), {"detector": "mtcnn", "box": [180.0, 40.0, 308.0, 168.0],
                                                          "score": 0.99}))
    ramp = torch.linspace(0.1, 0.7, 320)
    monkeypatch.setattr(demo, "astronaut", lambda: ramp.expand(1, 3, 256, 320).clone())  # smooth: bicubic is close
    out = tmp_path / "demo"
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "bicubic,pix2pixhd"])
    assert r.exit_code == 0, r.output
    text = (out / "metrics.json").read_text()
    summary = strict(text)
    assert summary["metrics"] == list(FAKES)
    res = summary["results"]
    assert list(res) == ["bicubic", "pix2pixhd"]
    keys = [*FAKES, "weights"]
    assert all(list(row) == keys for row in res.values())  # the same keys, in the same order
    b, p = res["bicubic"], res["pix2pixhd"]
    assert isinstance(b["mean_error"], float) and isinstance(p["mean_error"], float)
    assert 0 < b["mean_error"] < p["mean_error"] < 0.2  # brighter is further off
    assert (b["needs_weights"], p["needs_weights"], b["no_face"], p["no_face"]) == (None,) * 4
    assert (b["second_fails"], p["second_fails"]) == (0.5, None)
    assert b["exact"] == p["exact"] == "Infinity"  # as compare's report writes it
    assert b["weights"] is None
    assert p["weights"] == {"name": "brighter-v1", "sha256": None, "license": "MIT"}
    missing = summary["missing"]
    assert [(m["metric"], m["methods"]) for m in missing] == [
        ("needs_weights", ["bicubic", "pix2pixhd"]), ("no_face", ["bicubic", "pix2pixhd"]),
        ("second_fails", ["pix2pixhd"])]
    assert "fake-backbone" in missing[0]["reason"]
    assert missing[1]["reason"] == "faces not found"
    assert missing[2]["reason"] == "second_fails: output too flat"
    assert text.count(json.dumps(missing[0]["reason"])) == 1  # the reason once, not per method
    assert not any(isinstance(v, str) and v != "Infinity" for row in res.values() for v in row.values())

    # The table: a column per metric with a figure, n/a for a method without one, each reason once.
    assert "n/a" in r.stdout and "needs_weights" not in r.stdout and "no_face" not in r.stdout
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    assert warnings[1] == "warning: no_face skipped: faces not found"
    assert warnings[2] == "warning: second_fails skipped for pix2pixhd: second_fails: output too flat"
