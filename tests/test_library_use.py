"""restorekit from Python (a notebook): a batch in another convention is a one-line error naming the
fix, integer-like scales pass, weights options take paths, metrics refuse what they would misread."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, ValidationError

from restorekit.harness.metrics import LrConsistency, PsnrRgb, PsnrYCrop, SsimRgb, SsimYCrop
from restorekit.images import to_pil
from restorekit.interfaces import Method, MethodInfo, Options, OptionsModel, check_image_batch
from restorekit.options import WeightsRef, validate
from restorekit.testing.data import smooth_batch


class Nearest(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="nearest_lib", summary="nearest-neighbour upscaling")

    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        self.check_input(lr)
        self.check_scale(scale)
        return F.interpolate(lr.float(), scale_factor=int(scale), mode="nearest").repeat_interleave(n_samples, 0)


class OnlyFour(Nearest):
    info: ClassVar[MethodInfo] = MethodInfo(name="only_four", summary="x4 only", scales=(4,))


BATCH = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))

#: (what, input, words the one-line message must hold)
WRONG_INPUTS = [
    ("numpy H×W×3 uint8", (BATCH[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
     ["numpy.ndarray", "torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255"]),
    ("PIL image", to_pil(BATCH[0]), ["PIL", "restorekit.images.from_pil"]),
    ("3×H×W", BATCH[0], ["(3, 8, 8)", "x[None]"]),
    ("N×H×W×3", BATCH.permute(0, 2, 3, 1), ["(2, 8, 8, 3)", "permute(0, 3, 1, 2)"]),
    ("H×W×3", BATCH[0].permute(1, 2, 0), ["(8, 8, 3)", "permute(2, 0, 1)[None]"]),
    ("one channel", BATCH[:, :1], ["(2, 1, 8, 8)", "expand"]),
    ("RGBA", torch.cat([BATCH, BATCH[:, :1]], 1), ["(2, 4, 8, 8)", "alpha"]),
    ("H×W", BATCH[0, 0], ["(8, 8)"]),
    ("uint8", (BATCH * 255).to(torch.uint8), ["torch.uint8", "/ 255"]),
    ("0-255 floats", BATCH * 255, ["[0, 1]", "255"]),
    ("[-1, 1] floats", BATCH * 2 - 1, ["[0, 1]", "(x + 1) / 2"]),
    ("empty batch", torch.zeros(0, 3, 8, 8), ["empty"]),
]


@pytest.mark.parametrize("what,x,words", WRONG_INPUTS, ids=[w[0] for w in WRONG_INPUTS])
def test_restore_refuses_a_batch_in_another_convention_in_one_line(what, x, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        Nearest().restore(x, 2)
    msg = str(info.value)
    assert msg.startswith("nearest_lib: lr") and "\n" not in msg, msg
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_any_float_type_in_range_passes(dtype: torch.dtype) -> None:
    m = Nearest()
    m.check_input(BATCH.to(dtype))
    m.check_input(BATCH.clone().requires_grad_(True))
    m.check_input(BATCH.contiguous(memory_format=torch.channels_last))
    # A resampled image rings a little past [0, 1]: that is still an image in the convention.
    m.check_input((BATCH * 1.2 - 0.1).to(dtype))
    assert Nearest().restore(BATCH.to(dtype), 2).shape == (2, 3, 16, 16)


def test_check_image_batch_names_the_caller() -> None:
    with pytest.raises(ValueError, match=r"^my_thing: x must be a torch.Tensor"):
        check_image_batch([1, 2, 3], "my_thing: x")


@pytest.mark.parametrize("scale", [4, np.int64(4), np.int32(4), torch.tensor(4), torch.tensor(4, dtype=torch.int8)])
def test_check_scale_takes_any_integer(scale: object) -> None:
    Nearest().check_scale(scale)  # type: ignore[arg-type]
    OnlyFour().check_scale(scale)  # type: ignore[arg-type]
    assert Nearest().restore(BATCH, scale).shape == (2, 3, 32, 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [True, False, 4.0, 2.5, np.float64(4), torch.tensor(4.0), torch.tensor(True),
                                   torch.tensor([4, 2]), torch.tensor([4]), 0, -2, np.int64(0), "4", None])
def test_check_scale_still_refuses_non_integers_and_non_positive(scale: object) -> None:
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        Nearest().check_scale(scale)  # type: ignore[arg-type]


def test_check_scale_limits_apply_to_numpy_scales() -> None:
    with pytest.raises(ValueError, match="only_four supports --scale 4; got 2"):
        OnlyFour().check_scale(np.int64(2))  # type: ignore[arg-type]


def test_options_annotation_in_method_resolves_to_the_options_base() -> None:
    """Inside ``class Method`` the ``Options`` attribute hides the module's class: the constructor's
    annotation uses :data:`OptionsModel`, the same class, so type checkers (py.typed) resolve it."""
    assert OptionsModel is Options
    hints = typing.get_type_hints(Method.__init__, vars(__import__("restorekit.interfaces").interfaces))
    assert hints["options"] == Options | None


class WeightsModel(BaseModel):
    weights: WeightsRef = Field(None, description="a weights name or file")


def test_a_weights_option_takes_a_path(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    assert WeightsModel(weights=f).weights == str(f)
    assert WeightsModel(weights=str(f)).weights == str(f)
    assert WeightsModel(weights=None).weights is None
    # The command line's strings are unchanged: a name, and `none` clearing the option.
    assert validate(WeightsModel, {"weights": "stylegan2-faces128"}, label="m").weights == "stylegan2-faces128"
    assert validate(WeightsModel, {"weights": "none"}, label="m").weights is None
    assert validate(WeightsModel, {"weights": f}, label="m").weights == str(f)
    with pytest.raises(ValidationError, match="valid string"):
        WeightsModel(weights=3)
    # To option parsing and `methods show` the field is still `str | None`.
    assert WeightsModel.model_fields["weights"].annotation == (str | None)


# -- metrics --------------------------------------------------------------------------------
METRICS = [PsnrYCrop, SsimYCrop, PsnrRgb, SsimRgb, LrConsistency]


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hr = smooth_batch(2, 32, 32, seed=3)
    pred = (hr * 0.9 + 0.05).clamp(0, 1)
    return pred, hr, F.avg_pool2d(hr, 2)


@pytest.mark.parametrize("metric", METRICS, ids=[m.name for m in METRICS])
def test_metrics_refuse_0_255_uint8_and_unbatched_images(metric) -> None:  # type: ignore[no-untyped-def]
    pred, hr, lr = _pair()
    m = metric()
    ok = m(pred, hr, lr=lr, scale=2)
    assert ok.shape == (2,) and ok.dtype == torch.float64
    assert torch.allclose(m(pred.half(), hr.half(), lr=lr.half(), scale=2), ok, rtol=1e-2, atol=1e-4)
    for bad, words in [((pred * 255, hr * 255, lr * 255), "255"),
                       ((pred.mul(255).round().byte(), hr.mul(255).round().byte(), lr.mul(255).round().byte()), "uint8"),
                       ((pred[0], hr[0], lr[0]), "x[None]")]:
        with pytest.raises(ValueError) as info:
            m(bad[0], bad[1], lr=bad[2], scale=2)
        assert str(info.value).startswith(f"{m.name}: ") and words in str(info.value), str(info.value)


@pytest.mark.parametrize("metric", [PsnrYCrop, SsimYCrop, PsnrRgb, SsimRgb], ids=lambda m: m.name)
def test_pair_metrics_check_the_target_too(metric) -> None:  # type: ignore[no-untyped-def]
    pred, hr, lr = _pair()
    with pytest.raises(ValueError, match=f"^{metric.name}: target has values from"):
        metric()(pred, hr * 255, lr=lr, scale=2)
    with pytest.raises(ValueError, match=f"^{metric.name}: target must be N×3×H×W"):
        metric()(pred, hr[:, :1], lr=lr, scale=2)


def test_lr_consistency_checks_the_lr() -> None:
    pred, hr, lr = _pair()
    with pytest.raises(ValueError, match="^lr_consistency: lr has values from"):
        LrConsistency()(pred, hr, lr=lr * 255, scale=2)


def test_psnr_of_an_image_with_a_nan_is_nan_not_a_perfect_score() -> None:
    from restorekit.harness.metrics import PsnrRgb, PsnrYCrop

    a = torch.rand(2, 3, 16, 16)
    b = a.clone()
    b[1, 0, 3, 3] = float("nan")
    for m in (PsnrRgb(), PsnrYCrop()):
        v = m(b, a, lr=a[..., ::2, ::2], scale=2)
        assert math.isinf(float(v[0])) and math.isnan(float(v[1]))


@pytest.mark.parametrize("name", ["lpips_alex_v0.1", "identity_dlib"])
def test_network_metrics_refuse_0_255_images_before_loading_anything(name: str) -> None:
    from restorekit.plugins import registry

    metric = registry().metric(name)()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="divide by 255"):
        metric(x * 255, x, lr=x[..., ::4, ::4], scale=4)
