"""The face pipeline checks a photo as ``Method.restore`` checks a batch: a 0-255, uint8 or [-1, 1]
photo is a one-line ``ValueError`` naming the photo and the fix before any detection (a 0-255 photo
came back nearly white, mean 0.894, with no face found), and a photo holding NaN is refused as the
input's fault (it was blamed on the background method: "--background bicubic: restore returned NaN")."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from restorekit.faces.pipeline import FacePipeline, restore_photo
from restorekit.interfaces import Face, FaceDetector
from restorekit.methods import build_method

PHOTO = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))


class NoCalls(FaceDetector):
    """A detector that must not be reached: the photo is refused before detection."""

    name: ClassVar[str] = "no_calls"

    def detect(self, image: torch.Tensor) -> list[Face]:
        pytest.fail("the photo reached the detector before it was checked")


#: (what, photo, words the one-line message holds)
WRONG = [
    ("0-255", PHOTO * 255, "not 0-255: divide by 255"),
    ("uint8", (PHOTO * 255).to(torch.uint8), "got torch.uint8: for 8-bit values use x.float() / 255"),
    ("[-1, 1]", PHOTO * 2 - 1, "a [-1, 1] image? use (x + 1) / 2"),
    ("NaN", PHOTO.index_fill(3, torch.tensor([5]), float("nan")), "holds 144 NaN value(s) of 9216"),
    ("all NaN", PHOTO * float("nan"), "holds 9216 NaN value(s) of 9216"),
    ("inf", PHOTO.index_fill(2, torch.tensor([0]), float("inf")), "holds 192 infinite value(s) of 9216"),
    ("3×H×W", PHOTO[0], "add the batch dimension with x[None]"),
]


@pytest.mark.parametrize("what,photo,words", WRONG, ids=[w[0] for w in WRONG])
def test_restore_photo_refuses_a_photo_in_another_convention_in_one_line(what: str, photo: torch.Tensor,
                                                                         words: str) -> None:
    method = build_method("bicubic")
    with pytest.raises(ValueError) as info:
        restore_photo(method, photo, 2, NoCalls())
    msg = str(info.value)
    assert msg.startswith("photo ") and words in msg and "\n" not in msg, msg


def test_the_pipeline_names_the_photo_it_refuses() -> None:
    pipe = FacePipeline(build_method("bicubic"), 2, detector=NoCalls())
    with pytest.raises(ValueError, match=r"^group\.png has values from 0\.01389 to 254\.9; images are in \[0, 1\], "
                                         r"not 0-255: divide by 255$"):
        pipe.run(PHOTO * 255, where="group.png")
    with pytest.raises(ValueError, match=r"^group\.png holds 1 NaN value\(s\) of 9216; images are finite"):
        pipe.run(PHOTO.index_put((torch.tensor([0]),) * 4, torch.tensor(float("nan"))), where="group.png")


def test_a_photo_in_the_convention_still_runs() -> None:
    """float16 and float64 photos pass (converted), as restore takes them; no face: the background upscale."""
    method = build_method("bicubic")
    want = method.restore(PHOTO, 2)
    for photo in (PHOTO, PHOTO.double(), PHOTO.half()):
        out, faces = restore_photo(method, photo, 2, NoFaces())
        assert faces == [] and out.dtype == torch.float32 and out.shape == (1, 3, 96, 128)
        torch.testing.assert_close(out, want, rtol=0, atol=0 if photo.dtype != torch.float16 else 3e-3)


class NoFaces(FaceDetector):
    name: ClassVar[str] = "no_faces"

    def detect(self, image: torch.Tensor) -> list[Face]:
        return []
