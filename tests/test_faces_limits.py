"""The face pipeline's limits on a photo of many faces: the restored crops count toward
``max_output_pixels`` (refused after detection, before anything is restored, in ``run --faces
detect`` too), faces are restored a few at a time, and every face is a progress step where a
cancel stops the work. Stub detectors and tiny methods: no weights, no photos from /work/shared."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from restorekit.degradations import upscale
from restorekit.errors import ImageError
from restorekit.faces.pipeline import FACE_BATCH, FacePipeline
from restorekit.images import save_image
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo
from restorekit.progress import Cancelled, reporting


def upright_face(x: float, y: float, d: float) -> Face:
    """An upright face with its eye midpoint at (x, y), eye distance d (FFHQ template proportions)."""
    lm = [(x - d / 2, y), (x + d / 2, y), (x, y + 0.7 * d), (x - 0.464 * d, y + 1.04 * d),
          (x + 0.464 * d, y + 1.04 * d)]
    return Face((x - d, y - 0.6 * d, x + d, y + 1.5 * d), 0.99, lm)


def grid_faces(n: int, step: float = 40.0, d: float = 12.0, per_row: int = 8) -> list[Face]:
    """``n`` small upright faces on a grid (each box about 24×25 px: over the default --min-face)."""
    return [upright_face(20 + step * (i % per_row), 20 + step * (i // per_row), d) for i in range(n)]


class GivenFaces(FaceDetector):
    name: ClassVar[str] = "given"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = list(faces)

    def detect(self, image: torch.Tensor) -> list[Face]:
        return list(self.faces)


class CountingFace(Method):
    """A face method that upscales and records the batch sizes it was given."""

    info: ClassVar[MethodInfo] = MethodInfo(name="counting_face", summary="test", input_kind="aligned_face")
    face_input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        self.batches.append(int(lr.shape[0]))
        tag = torch.arange(lr.shape[0], dtype=lr.dtype).view(-1, 1, 1, 1) / lr.shape[0]
        return (upscale(lr, scale) * 0.9 + 0.05 * tag).clamp(0, 1).repeat_interleave(n_samples, 0)


class PlainFace(CountingFace):
    """Restores each crop on its own (no tag): its output does not depend on the batch."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        self.batches.append(int(lr.shape[0]))
        return upscale(lr, scale).clamp(0, 1).repeat_interleave(n_samples, 0)


def photo(h: int = 330, w: int = 330) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_restored_crops_count_toward_the_output_limit_and_are_refused_before_restoring() -> None:
    """20 faces × 64×64 crops at ×2 = 81,920 px of crops beside a 435,600 px composite: under a
    500,000 px limit the composite alone passes, the two together do not."""
    method = CountingFace()
    pipe = FacePipeline(method, 2, detector=GivenFaces(grid_faces(20)), max_output_pixels=500_000)
    assert pipe.output_pixels(330, 330, 20) == (435_600, 81_920)
    with pytest.raises(ImageError) as err:
        pipe.run(photo())
    msg = str(err.value)
    assert "20 faces to restore" in msg and "64×64" in msg and "81,920 px of face crops" in msg
    assert msg.endswith("output limit of 0.5 MP (raise --min-face to leave small faces to the background, or raise "
                        "--max-output-pixels)") and "\n" not in msg
    assert method.batches == []  # nothing restored
    # Samples multiply the crops as they multiply the composites.
    with pytest.raises(ImageError, match=r"× 2 samples"):  # 217,800 + 40,960 px
        FacePipeline(method, 1, detector=GivenFaces(grid_faces(20)), max_output_pixels=250_000).run(
            photo(), n_samples=2)
    # Faces left to the background (under --min-face) are not restored and do not count.
    small = FacePipeline(method, 2, detector=GivenFaces(grid_faces(20)), max_output_pixels=500_000, min_face=30)
    res = small.run(photo())
    assert res.n_restored == 0 and method.batches == []
    # Under the limit it restores them all.
    ok = FacePipeline(method, 2, detector=GivenFaces(grid_faces(20)), max_output_pixels=517_520)
    assert ok.run(photo()).n_restored == 20


def test_faces_are_restored_a_few_at_a_time_with_the_same_result() -> None:
    faces = grid_faces(20)
    method = CountingFace()
    res = FacePipeline(method, 2, detector=GivenFaces(faces)).run(photo(), n_samples=2)
    assert FACE_BATCH == 8 and method.batches == [8, 8, 4]
    method.batches.clear()
    three = FacePipeline(method, 2, detector=GivenFaces(faces), face_batch=3).run(photo(), n_samples=2)
    assert method.batches == [3] * 6 + [2]
    # (CountingFace tags each crop by its place in its batch, so compare the pasted result of a
    # batch-independent method instead.)
    plain = PlainFace()
    a = FacePipeline(plain, 2, detector=GivenFaces(faces), face_batch=100).run(photo(), n_samples=2)
    b = FacePipeline(plain, 2, detector=GivenFaces(faces), face_batch=3).run(photo(), n_samples=2)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert sorted(a.crops) == sorted(b.crops) == list(range(20))
    assert all(torch.equal(x, y) for i in a.crops for x, y in zip(a.crops[i], b.crops[i]))
    assert len(res.crops) == len(three.crops) == 20
    with pytest.raises(Exception, match="face_batch must be ≥ 1"):
        FacePipeline(plain, 2, detector=GivenFaces(faces), face_batch=0)


def test_every_face_is_a_progress_step_where_a_cancel_stops_the_work() -> None:
    method = CountingFace()
    pipe = FacePipeline(method, 2, detector=GivenFaces(grid_faces(20)))
    seen: list[tuple[str, int, int]] = []
    with reporting(lambda label, done, total: seen.append((label, done, total))):
        pipe.run(photo())
    labels = [s[0] for s in seen]
    assert labels.count("counting_face: aligning faces") == 20
    assert [s[1:] for s in seen if s[0] == "counting_face: restoring faces"] == [(0, 20), (8, 20), (16, 20)]
    assert [s[1:] for s in seen if s[0] == "counting_face: pasting faces"] == [(i, 20) for i in range(20)]

    def cancel_at(label: str, at: int):  # type: ignore[no-untyped-def]
        def reporter(lab: str, done: int, total: int) -> None:
            if lab.endswith(label) and done == at:
                raise Cancelled("cancelled")
        return reporter

    method.batches.clear()
    with reporting(cancel_at("restoring faces", 8)), pytest.raises(Cancelled):
        pipe.run(photo())
    assert method.batches == [8]  # stopped before the second batch
    for label in ("aligning faces", "pasting faces"):
        method.batches.clear()
        with reporting(cancel_at(label, 5)), pytest.raises(Cancelled):
            pipe.run(photo())
        assert method.batches == ([] if label == "aligning faces" else [8, 8, 4])


GRID_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo
from restorekit.degradations import upscale


class Plain(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="plain_face3p", summary="test face method",
                                            input_kind="aligned_face")
    face_input_size = 32

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return upscale(lr, scale).clamp(0, 1).repeat_interleave(n_samples, 0)


class Grid(FaceDetector):
    """40 small upright faces on a grid in a photo 300 px wide or more; none in a smaller one."""

    name = "grid3p"

    def detect(self, image):
        faces = []
        if image.shape[-1] < 300:
            return faces
        for i in range(40):
            x, y, d = 20.0 + 40 * (i % 8), 20.0 + 40 * (i // 8), 12.0
            lm = [(x - d / 2, y), (x + d / 2, y), (x, y + 0.7 * d), (x - 0.464 * d, y + 1.04 * d),
                  (x + 0.464 * d, y + 1.04 * d)]
            faces.append(Face((x - d, y - 0.6 * d, x + d, y + 1.5 * d), 0.99, lm))
        return faces


@hookimpl
def register_methods(register):
    register(Plain)


@hookimpl
def register_face_detectors(register):
    register("grid3p", Grid, summary="test: 40 small faces on a grid")
'''


@pytest.mark.parametrize("only_faces", [False, True])
def test_run_faces_detect_refuses_a_photo_whose_crops_pass_the_output_limit(  # type: ignore[no-untyped-def]
        plugin_site, tmp_path, only_faces: bool) -> None:
    """`run --faces detect`: the same limit, per photo, in one line naming the count and the limit;
    nothing written for it, and the run goes on to the next photo."""
    from restorekit.cli import build_cli

    plugin_site("thirdparty-gridfaces", "thirdparty_gridfaces", GRID_PLUGIN)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(photo(220, 330), photos / "crowd.png")
    save_image(photo(100, 150), photos / "empty.png")  # no face: passed through (or skipped under --only-faces)
    out = tmp_path / "out"

    def run(limit: int):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(build_cli(), [
            "run", "plain_face3p", "--scale", "2", "--input", str(photos), "--output", str(out), "--faces", "detect",
            "--detector", "grid3p", "--max-output-pixels", str(limit), "--json"]
            + (["--only-faces"] if only_faces else []))

    # ×2: composite 660×440 = 290,400 px; 40 faces × 64×64 = 163,840 px of crops.
    r = run(400_000)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    (failed,) = doc["failed"]
    assert failed["path"] == str(photos / "crowd.png")
    assert failed["error"].startswith(f"{photos / 'crowd.png'}: 40 faces to restore make 40 × 64×64"), failed
    assert "output limit of 0.4 MP" in failed["error"] and "\n" not in failed["error"]
    assert not list(out.glob("crowd*"))  # nothing of it written
    went_on = doc["skipped"] if only_faces else doc["written"]
    assert len(went_on) == 1 and "empty" in json.dumps(went_on)  # the next photo was done
    # Within the limit the same photo is restored.
    r = run(454_240)
    assert r.exit_code == 0, r.output
    side = out / ("crowd_faces.png.json" if only_faces else "crowd.png.json")  # one per format and kind
    assert json.loads(side.read_text())["faces_restored"] == 40
