"""Metrics compute in float32 whatever the caller's precision: inside ``torch.autocast`` (a training
loop's validation) and under ``torch.set_default_dtype(torch.float64)`` (a notebook) every built-in
metric gives the score it gives outside them, and the caller's settings are its own again after
the call. LPIPS-alex moved from 0.189593 to 0.189453 under bfloat16 autocast, identity_dlib by 4e-5."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from restorekit.errors import DependencyMissing, WeightsMissing
from restorekit.interfaces import Metric
from restorekit.plugins import registry

BUILT_IN = ["identity_arcface", "identity_dlib", "identity_dlib_dist", "lpips_alex_v0.1", "lpips_vgg_v0.1",
            "lr_consistency", "psnr_rgb", "psnr_y_crop", "ssim_rgb", "ssim_y_crop"]


@pytest.fixture(scope="module")
def face() -> tuple[Tensor, Tensor, Tensor]:
    """(pred, target, lr): a 128-px face photo (so identity metrics find a face), a blurred copy, its ×4 LR."""
    astronaut = pytest.importorskip("skimage.data", reason="needs scikit-image for its face photo").astronaut
    from restorekit.degradations import bicubic_resize

    img = torch.from_numpy(astronaut()[0:256, 96:352].copy()).permute(2, 0, 1)[None].float() / 255
    hr = torch.nn.functional.interpolate(img, size=(128, 128), mode="area")
    pred = torch.nn.functional.avg_pool2d(hr, 3, 1, 1)
    return pred, hr, bicubic_resize(hr, (32, 32)).clamp(0, 1)


@pytest.fixture
def float64_default() -> Iterator[None]:
    assert torch.get_default_dtype() == torch.float32
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)


def test_every_built_in_metric_is_listed() -> None:
    assert registry().names("metrics") == BUILT_IN  # a new one is checked below too


def make(name: str) -> Metric:
    """Metric ``name`` set up on the CPU under the default dtype now in force (skipped when its
    weights or packages are not installed)."""
    metric: Metric = registry().metric(name)()
    try:
        metric.setup(torch.device("cpu"))
    except (WeightsMissing, DependencyMissing, ImportError) as exc:
        pytest.skip(f"{name}: {str(exc).splitlines()[0]}")
    return metric


def same(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype == torch.float64 and bool(torch.equal(a.isnan(), b.isnan())) and bool(
        torch.equal(a.nan_to_num(), b.nan_to_num()))


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_metric_scores_alike_under_autocast_and_a_float64_default(
        name: str, face: tuple[Tensor, Tensor, Tensor], float64_default: None) -> None:
    pred, hr, lr = face
    metric = make(name)
    want = metric(pred, hr, lr=lr, scale=4)
    assert want.shape == (1,) and not math.isnan(float(want[0])), (name, want)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = metric(pred, hr, lr=lr, scale=4)
        assert torch.is_autocast_enabled("cpu")  # the caller's context is its own again
    assert same(under_autocast, want), (name, float(under_autocast[0]), float(want[0]))

    torch.set_default_dtype(torch.float64)
    set_up_under_float64 = make(name)  # builds its networks under float64: they must still be float32
    got = {"set up before": metric(pred, hr, lr=lr, scale=4),
           "set up under float64": set_up_under_float64(pred, hr, lr=lr, scale=4)}
    assert torch.get_default_dtype() == torch.float64
    for how, value in got.items():
        assert same(value, want), (name, how, float(value[0]), float(want[0]))


def test_lpips_on_its_own_network_is_unchanged_by_autocast(face: tuple[Tensor, Tensor, Tensor]) -> None:
    """Without the cached weights: a network given to the metric (random here) is held to float32 too."""
    from restorekit.metrics_lpips import LPIPSAlex
    from restorekit.networks.lpips_net import build_lpips

    pred, hr, lr = face
    metric = LPIPSAlex(net=build_lpips("alex", allow_random=True))
    want = metric(pred, hr, lr=lr, scale=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = metric(pred, hr, lr=lr, scale=4)
    assert same(got, want), (float(got[0]), float(want[0]))


class Probe(Metric):
    """A third-party metric: records the precision its ``setup`` and ``__call__`` run under."""

    name: ClassVar[str] = "probe_precision"
    higher_is_better: ClassVar[bool] = True
    seen: ClassVar[list[tuple[str, Any, bool]]] = []

    def setup(self, device: torch.device) -> None:
        self.seen.append(("setup", torch.get_default_dtype(), torch.is_autocast_enabled("cpu")))

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        self.seen.append(("call", torch.get_default_dtype(), torch.is_autocast_enabled("cpu")))
        return (pred - target).abs().flatten(1).mean(1).double()


def test_the_metric_base_holds_any_subclass_to_float32(float64_default: None) -> None:
    x = torch.rand(1, 3, 8, 8)
    Probe.seen.clear()
    torch.set_default_dtype(torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Probe().setup(torch.device("cpu"))
        Probe()(x, x, lr=x, scale=1)
        assert torch.is_autocast_enabled("cpu")
    assert torch.get_default_dtype() == torch.float64
    assert Probe.seen == [("setup", torch.float32, False), ("call", torch.float32, False)]
