"""``restorekit serve`` in *every face* mode on a photo of many faces: the restored crops count
toward ``--max-output-pixels`` (the job is refused once the faces are found, before any method
restores), and each face pasted or crop written is a progress step where a cancel stops the job.

A stub detector (40 small faces on a grid) stands in for MTCNN; jobs run in this thread through
the server's own :class:`~restorekit.web.work.Restorer`, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from restorekit.errors import ImageError  # noqa: E402
from restorekit.interfaces import Face, FaceDetector  # noqa: E402
from restorekit.progress import Cancelled  # noqa: E402
from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.jobs import Job, JobSettings  # noqa: E402
from restorekit.web.server import ServeState, build_state  # noqa: E402


def upright_face(x: float, y: float, d: float) -> Face:
    lm = [(x - d / 2, y), (x + d / 2, y), (x, y + 0.7 * d), (x - 0.464 * d, y + 1.04 * d),
          (x + 0.464 * d, y + 1.04 * d)]
    return Face((x - d, y - 0.6 * d, x + d, y + 1.5 * d), 0.99, lm)


class Grid(FaceDetector):
    """``n`` small upright faces on a grid, 8 a row, whatever the photo."""

    name: ClassVar[str] = "grid"

    def __init__(self, n: int) -> None:
        self.n = n

    def detect(self, image: torch.Tensor) -> list[Face]:
        return [upright_face(20.0 + 40 * (i % 8), 20.0 + 40 * (i // 8), 12.0) for i in range(self.n)]


def make_state(tmp_path: Path, faces: int, **limits: Any) -> ServeState:
    cfg = ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], detector="no_such_detector",
                      temp_parent=tmp_path, **limits)
    state = build_state(cfg)
    state.catalogue.detector = Grid(faces)  # (the named one does not exist: no weights are read)
    return state


def job_for(state: ServeState, samples: int = 1) -> Job:
    pixels = (torch.rand(1, 3, 220, 330, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    up = state.uploads.add(pixels, "crowd.png")
    settings = JobSettings(upload=up.id, methods=["bicubic"], scale=2, faces="detect", samples=samples)
    state.restorer.check(settings, up)  # what the page's request passes: the composite alone is within the limit
    return Job("job1", settings, upload=up)


def test_a_job_whose_face_crops_pass_the_output_limit_is_refused_before_restoring(tmp_path: Path) -> None:
    """×2 of 330×220: a 290,400 px composite; bicubic restores 256×256 crops: 40 of them are
    2.6 MP, over a 1 MP limit."""
    state = make_state(tmp_path, 40, max_output_pixels=1_000_000)
    try:
        job = job_for(state)
        with pytest.raises(ImageError) as err:
            state.restorer.run(job)
        msg = str(err.value)
        assert msg.startswith("crowd.png: 40 faces to restore make 40 × 256×256 = 2.6 MP of face crops")
        assert msg.endswith("output limit of 1.0 MP (crop the photo to fewer faces; the limit is restorekit serve "
                            "--max-output-pixels)") and "\n" not in msg
        assert job.result["methods"] == [] and job.result["images"] == []  # nothing restored, nothing written
        assert not list(state.files.root.glob(f"j{job.id}/*.png"))
    finally:
        state.close()


def test_each_face_is_a_step_and_a_cancel_while_crops_are_written_stops_the_job(tmp_path: Path) -> None:
    state = make_state(tmp_path, 12)
    try:
        job = job_for(state)
        seen: list[tuple[str, int, int]] = []
        real = job.report

        def report(label: str, done: int, total: int) -> None:
            seen.append((label, done, total))
            if label == "bicubic: writing face crops" and done == 3:
                job.cancel_requested.set()
            real(label, done, total)

        job.report = report  # type: ignore[method-assign]
        with pytest.raises(Cancelled):
            state.restorer.run(job)
        (row,) = job.result["methods"]
        assert row["status"] == "cancelled" and len(row["crops"]) == 3 and len(row["outputs"]) == 1
        assert [s[1:] for s in seen if s[0] == "bicubic: pasting faces"] == [(i, 12) for i in range(12)]
        assert [s[1:] for s in seen if s[0] == "bicubic: restoring faces"] == [(0, 12), (8, 12)]
        assert [s[1:] for s in seen if s[0] == "bicubic: writing face crops"] == [(i, 12) for i in range(4)]
        # A cancel while the faces are pasted stops there, before anything of that method is written.
        job = job_for(state)
        real2 = job.report

        def report2(label: str, done: int, total: int) -> None:
            if label == "bicubic: pasting faces" and done == 5:
                job.cancel_requested.set()
            real2(label, done, total)

        job.report = report2  # type: ignore[method-assign]
        with pytest.raises(Cancelled):
            state.restorer.run(job)
        (row,) = job.result["methods"]
        assert row["status"] == "cancelled" and row["outputs"] == [] and row["crops"] == []
    finally:
        state.close()
