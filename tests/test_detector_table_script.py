"""scripts/detector_table.py, the measurement behind docs/faces.md's detector table: its matching
rule and bins on hand-made detections, and its photo set being a function of the seed alone."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import pytest
import torch

from restorekit.interfaces import Face, FaceDetector
from restorekit.testing.data import smooth_image
from script_modules import script_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "detector_table.py"


@pytest.fixture(scope="module")
def dt() -> ModuleType:
    return script_module(SCRIPT)


A = ((10.0, 10.0), (30.0, 10.0))     # eye distance 20
B = ((100.0, 100.0), (140.0, 100.0))  # eye distance 40


def test_match_within_30_percent_a_miss_and_a_false_positive(dt: ModuleType) -> None:
    near_a = ((14.0, 10.0), (30.0, 12.0))       # eyes 4 and 2 px off: 20 % / 10 % of 20 px
    far = ((300.0, 300.0), (320.0, 300.0))       # nowhere near a face
    m = dt.match([far, near_a], [A, B])
    assert m["truth_to_det"] == [1, None]        # A found, B missed
    assert m["det_to_truth"] == [None, 0]        # the far one matches nothing
    assert m["eye_error"][0] == pytest.approx((4 + 2) / 2 / 20)
    assert m["eye_error"][1] is None
    assert m["nearest"][1] == (0, pytest.approx(0.2))


def test_match_takes_both_eyes_and_the_30_percent_edge(dt: ModuleType) -> None:
    one_eye_off = ((100.0, 100.0), (140.0, 113.0))   # right eye 13/40 = 32.5 % off: no match
    edge = ((112.0, 100.0), (140.0, 100.0))         # left eye 12/40 = 30 %: a match
    m = dt.match([one_eye_off], [A, B])
    assert m["truth_to_det"] == [None, None] and m["nearest"][0] == (1, pytest.approx(0.325))
    assert dt.match([edge], [A, B])["truth_to_det"] == [None, 0]


def test_match_gives_a_face_to_its_best_detection_once(dt: ModuleType) -> None:
    good = ((101.0, 100.0), (140.0, 100.0))    # 2.5 % off
    worse = ((108.0, 100.0), (140.0, 104.0))   # 20 % off
    m = dt.match([worse, good], [B])
    assert m["truth_to_det"] == [1] and m["det_to_truth"] == [None, 0]  # the duplicate is unmatched


def test_bins(dt: ModuleType) -> None:
    assert [dt.eye_distance_bin(d) for d in (10, 13, 16, 20, 44)] == ["10 px", "13–16 px", "13–16 px",
                                                                      "≥ 20 px", "≥ 20 px"]
    assert dt.eye_distance_bin(11) is None
    assert [dt.turn_bin(a) for a in (0, -15, 15.1, -30, 30)] == ["≤ 15°", "≤ 15°", "15–30°", "15–30°", "15–30°"]
    assert dt.turn_bin(30.5) is None
    # Every planned eye distance falls in a bin, and the planned turns too.
    assert all(dt.eye_distance_bin(d) for d in dt.EYE_DISTANCES)


class _Scripted(FaceDetector):
    """Returns, per call, the faces given for that photo (in MTCNN's landmark layout)."""

    name: ClassVar[str] = "scripted"
    landmark_layout: ClassVar[str] = "eyes_nose_mouth5"

    def __init__(self, per_photo: list[list[Face]]) -> None:
        self.per_photo, self.calls = per_photo, 0

    def detect(self, image: torch.Tensor) -> list[Face]:
        out = self.per_photo[self.calls % len(self.per_photo)]
        self.calls += 1
        return out


def _face(eyes: tuple[tuple[float, float], tuple[float, float]], score: float) -> Face:
    (lx, ly), (rx, ry) = eyes
    box = (lx - 10, ly - 10, rx + 10, ry + 30)
    return Face(box=box, score=score, landmarks=[eyes[0], eyes[1], (0, 0), (0, 0), (0, 0)])


def test_measure_and_table_count_found_missed_and_false(dt: ModuleType) -> None:
    img = torch.zeros(1, 3, 8, 8)
    truth = [{"eye_left": list(A[0]), "eye_right": list(A[1]), "eye_distance": 20.0, "angle": -20.0,
              "mirror": 1},
             {"eye_left": list(B[0]), "eye_right": list(B[1]), "eye_distance": 40.0, "angle": 5.0,
              "mirror": 0}]
    group = [dt.Photo("g", img, truth)]
    empty = [dt.Photo("e (no people)", img, [])]
    on_a = ((17.0, 10.0), (30.0, 10.0))  # on face A, 35 % off: a false detection on a true face
    det = _Scripted([[_face(((11.0, 10.0), (30.0, 10.0)), 0.99), _face(on_a, 0.95),
                      _face(((300.0, 300.0), (320.0, 300.0)), 0.5)],
                     [_face(((1.0, 1.0), (5.0, 1.0)), 0.7)]])
    ticks = iter(range(100))
    result = dt.measure("scripted", det, group, empty, repeats=3, clock=lambda: float(next(ticks)))
    s = dt.summarise(result)
    assert s["found"] == [1, 2]
    assert s["by_eye_distance"] == {"10 px": [0, 0], "13–16 px": [0, 0], "≥ 20 px": [1, 2]}
    assert s["by_turn"] == {"≤ 15°": [0, 1], "15–30°": [1, 1]}
    assert s["unmatched_group"] == 2 and s["unmatched_on_a_true_face"] == 1
    assert s["unmatched_on_a_true_face_error"] == [pytest.approx(0.35)] * 2
    assert s["false_faces_empty"] == 1 and s["false_faces_empty_photos"] == ["e (no people)"]
    assert s["median_eye_error"] == pytest.approx(0.5 / 20)
    assert s["lowest_found_score"] == 0.99 and s["highest_false_score"] == 0.95
    assert s["ms_per_photo"] == {"median": 1000.0, "min": 1000.0, "max": 1000.0, "n": 3}  # one tick per photo
    table = dt.markdown_table({"scripted": s}, 1, 3)
    assert "| faces found (2) | 1 (50 %) |" in table
    assert "| … eye distance ≥ 20 px | 1/2 |" in table
    assert "| false faces on the 1 photos without people | 1 (e (no people)) |" in table
    assert "| detections not matching a true face, group photos | 2 (1 on a true face, eyes 35 % off) |" in table
    assert "| median eye error / eye distance (vs the template) | 2 % |" in table


def _tiny_faces() -> list[tuple[torch.Tensor, tuple[float, float], tuple[float, float]]]:
    out = []
    for seed in range(3):
        img = torch.from_numpy(smooth_image(32, 32, seed).transpose(2, 0, 1).copy())[None].float() / 255
        out.append((img, (11.5 + seed, 14.0), (20.5 + seed, 14.5)))
    return out


#: A photo a quarter the size and faces half as far apart keep the test fast (same rules).
SMALL = (240, 320)
SMALL_DISTANCES = (5, 6, 8, 10, 12, 14, 16, 19, 22)


def test_photo_set_is_a_function_of_the_seed(dt: ModuleType) -> None:
    faces = _tiny_faces()
    bgs = [(f"bg{i}", torch.from_numpy(smooth_image(*SMALL, 10 + i).transpose(2, 0, 1).copy())[None].float() / 255)
           for i in range(2)]
    a = dt.build_group_photos(faces, bgs, seed=3, distances=SMALL_DISTANCES)
    b = dt.build_group_photos(faces, bgs, seed=3, distances=SMALL_DISTANCES)
    c = dt.build_group_photos(faces, bgs[:1], seed=4, distances=SMALL_DISTANCES)
    assert [p.name for p in a] == ["bg0", "bg1"]
    for pa, pb in zip(a, b):
        assert torch.equal(pa.image, pb.image) and pa.faces == pb.faces
    assert not torch.equal(a[0].image, c[0].image) and a[0].faces != c[0].faces
    rows, cols = dt.GRID
    h, w = SMALL
    truths = [t for p in a for t in p.faces]
    assert sum(t["mirror"] for t in truths) == len(truths) // 2 == 9
    assert sorted(t["face"] for t in truths) == [0] * 6 + [1] * 6 + [2] * 6
    for p in a:
        assert sorted(t["eye_distance"] for t in p.faces) == list(SMALL_DISTANCES)
        cells = set()
        for t in p.faces:
            (lx, ly), (rx, ry) = t["eye_left"], t["eye_right"]
            assert math.hypot(rx - lx, ry - ly) == pytest.approx(t["eye_distance"])
            assert abs(t["angle"]) <= dt.MAX_TURN
            # The turn is the eye line's angle (counter-clockwise on screen: y down).
            assert math.degrees(math.atan2(-(ry - ly), rx - lx)) == pytest.approx(t["angle"], abs=1e-6)
            # The paste disc lies wholly inside one grid cell, a different cell per face.
            th = -math.radians(t["angle"])
            cx = (lx + rx) / 2 - math.sin(th) * dt.DISC_DROP * t["eye_distance"]
            cy = (ly + ry) / 2 + math.cos(th) * dt.DISC_DROP * t["eye_distance"]
            r = dt.DISC_RADIUS * t["eye_distance"]
            col, row = int(cx // (w / cols)), int(cy // (h / rows))
            assert col * w / cols <= cx - r - 1e-6 and cx + r <= (col + 1) * w / cols + 1e-6
            assert row * h / rows <= cy - r - 1e-6 and cy + r <= (row + 1) * h / rows + 1e-6
            cells.add((row, col))
        assert len(cells) == rows * cols


def test_plan_refuses_a_photo_too_small_for_its_faces(dt: ModuleType) -> None:
    with pytest.raises(ValueError, match="too small for faces of eye distance 44"):
        dt.plan(3, 1, 0, size=(240, 320))
    assert len(dt.plan(3, 8, 0)) == 72  # the documented set: 8 photos × 9 faces at 640×480


def test_fit_photo_crops_to_the_aspect_and_makes_grey_rgb(dt: ModuleType) -> None:
    grey = np.zeros((30, 80), np.uint8)
    grey[:, 35:45] = 255  # a bright band in the middle survives the centre crop to 4:3 (40×30)
    out = dt.fit_photo(grey, (6, 8))
    assert out.shape == (1, 3, 6, 8)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert out[0, 0, 3, 3:5].min() > 0.9 and out[0, 0, 3, 0] < 0.05


def test_options_and_errors_are_one_line(dt: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dt.parse_options(["mtcnn.min_score=0", "mtcnn.device=cpu"], ["mtcnn"]) == {
        "mtcnn": {"min_score": 0, "device": "cpu"}}
    with pytest.raises(dt.Problem, match="expected DETECTOR.KEY=VALUE"):
        dt.parse_options(["min_score=0"], ["mtcnn"])
    with pytest.raises(dt.Problem, match="'scrfd' is not among the detectors measured"):
        dt.parse_options(["scrfd.threshold=0.3"], ["mtcnn"])
    assert dt.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("detector_table: ") and "nowhere: not a folder" in err
    (tmp_path / "a.png").write_bytes(b"")
    assert dt.main([str(tmp_path), "--n-faces", "2"]) == 2
    assert "1 face images" in capsys.readouterr().err
    assert dt.main([str(tmp_path), "--n-faces", "1"]) == 2  # an empty file: one line naming it
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.png" in err
