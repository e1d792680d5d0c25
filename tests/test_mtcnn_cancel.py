"""MTCNN detection is cancellable between pyramid scales (``serve``'s cancel reaches a long detection)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.faces.detectors import PROGRESS_LABEL, MtcnnDetector
from restorekit.progress import Cancelled, reporting
from restorekit.web.jobs import Job, JobSettings

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                reason="MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")

SIZE = 160


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    small = Image.fromarray(skimage_data.astronaut()).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 255


def counting_pnet(det: MtcnnDetector, monkeypatch: pytest.MonkeyPatch, after_first=None) -> list[tuple[int, ...]]:
    """Record the input shape of every P-Net call (one per pyramid scale); ``after_first`` runs after the first."""
    det.load()
    assert det._nets is not None
    pnet = det._nets[0]
    forward = pnet.forward
    calls: list[tuple[int, ...]] = []

    def counted(x: torch.Tensor) -> list[torch.Tensor]:
        out = forward(x)
        calls.append(tuple(x.shape))
        if len(calls) == 1 and after_first is not None:
            after_first()
        return out

    monkeypatch.setattr(pnet, "forward", counted)
    return calls


def test_every_scale_and_stage_is_a_progress_step(photo: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    det = MtcnnDetector()
    n = len(det.scales(SIZE, SIZE))
    assert n == 7
    calls = counting_pnet(det, monkeypatch)
    seen: list[tuple[str, int, int]] = []
    with reporting(lambda label, done, total: seen.append((label, done, total))):
        faces = det.detect(photo)
    assert len(faces) == 1 and faces[0].score > 0.99  # the astronaut's face, found at 160 px
    assert len(calls) == n
    assert seen == [(PROGRESS_LABEL, i, n + 2) for i in range(n + 2)]  # each scale, then R-Net, O-Net


def test_a_cancel_during_the_first_scale_stops_before_the_second(photo: torch.Tensor,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job = Job(id="j1", settings=JobSettings(upload="u", methods=["bicubic"], scale=2, faces="detect"))
    det = MtcnnDetector()
    calls = counting_pnet(det, monkeypatch, after_first=job.cancel_requested.set)  # as POST /api/jobs/j1/cancel
    with reporting(job.report), pytest.raises(Cancelled):
        det.detect(photo)
    assert len(calls) == 1  # of 7 scales
    assert (job.stage, job.step) == (PROGRESS_LABEL, (1, 9))
