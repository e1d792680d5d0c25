"""identity_dlib and identity_dlib_dist score an image holding NaN as NaN, per image of a batch, as
PSNR, SSIM and LPIPS do (``check_image_batch``'s rule). Its 8-bit copy made the NaN black: an
all-NaN prediction scored 0.8642 (what an all-black one scores) and one NaN pixel moved the score
by 0.002 instead of making it NaN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from restorekit.faces.identity_dlib import IdentityDlib, IdentityDlibDist
from test_dlib_port import needs_dlib  # the same models, the same skip


pytestmark = needs_dlib


@pytest.fixture(scope="module")
def face() -> tuple[Tensor, Tensor]:
    """(pred, target): a 128-px face photo and a blurred copy of it."""
    astronaut = pytest.importorskip("skimage.data", reason="needs scikit-image for its face photo").astronaut
    img = torch.from_numpy(astronaut()[0:256, 96:352].copy()).permute(2, 0, 1)[None].float() / 255
    hr = torch.nn.functional.interpolate(img, size=(128, 128), mode="area")
    return torch.nn.functional.avg_pool2d(hr, 3, 1, 1), hr


@pytest.mark.parametrize("cls", [IdentityDlib, IdentityDlibDist], ids=lambda c: c.name)
def test_an_image_holding_nan_scores_nan_and_the_others_in_its_batch_their_own(
        cls: type, face: tuple[Tensor, Tensor]) -> None:
    pred, hr = face
    metric = cls()
    alone = float(metric(pred, hr)[0])
    assert math.isfinite(alone)

    one_pixel = pred.clone()
    one_pixel[0, 1, 60, 60] = float("nan")
    preds = torch.cat([pred, one_pixel, pred * float("nan"), pred])
    targets = torch.cat([hr, hr, hr, hr.index_fill(2, torch.tensor([7]), float("nan"))])
    got = metric(preds, targets)
    assert got.dtype == torch.float64 and got.shape == (4,)
    assert float(got[0]) == alone  # the clean pair is scored as alone
    assert all(math.isnan(float(v)) for v in got[1:]), got.tolist()  # not an all-black image's score
    assert metric.faces_not_found == 0  # a NaN is not a face not found
