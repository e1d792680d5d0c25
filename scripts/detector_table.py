"""Measure face detectors on composed group photos: the table of docs/faces.md ("Choosing the default
detector (measured)"), reproducible from a seed.

The photo set. Eight 640×480 group photos, one per background (scikit-image ``coffee``, ``rocket``,
``chelsea``, ``brick``, ``grass``, ``hubble_deep_field``, ``retina``, ``gravel``; each cropped at its
centre to 4:3 and resized to 640×480, antialiased bicubic; grey ones made RGB). Each photo holds nine
faces, one at each eye distance of ``EYE_DISTANCES`` (10–44 px), one per cell of a 3×3 grid, each
placed at random inside its cell so that its paste disc (1.6 eye distances around a point 0.55 eye
distances below the eyes) lies wholly in the cell: no face covers another or is cut by the frame.
The 72 faces are the last ``--n-faces`` (60) images of the faces folder by file name, every one once
in a shuffled order and then 12 of them a second time; each is turned by an angle drawn uniformly in
±30° and exactly half of them are mirrored. Pasting is :func:`restorekit.faces.compose.make_group_photo`,
with every face's eye centres taken at ``FFHQ_TEMPLATE_128`` (the FFHQ framing's mean, measured with
dlib), which is therefore the truth the detectors are scored against. Plus seven photos without
people (``coffee``, ``rocket``, ``chelsea``, ``hubble_deep_field``, ``retina``, ``brick``,
``colorwheel``), made 640×480 the same way. Everything random comes from ``--seed``.

The scoring. A detected face matches a true face when both its eye centres lie within 30 % of the
true face's eye distance of the true eye centres; matches are made greedily, best first, each
detection and each true face used once. A true face with no match is missed; a detection with no
match on a group photo is a false detection, and every detection on a photo without people is a
false face. The eye error of a found face is the mean of its two eye-centre distances ÷ its eye
distance. Detectors are built by name through the plugin registry, as ``run``/``compare`` build them
(``--min-face`` as there: MTCNN's pyramid starts at 0.8 × it), so any registered detector can be
measured (``scrfd`` once its weights are imported).

The time is the wall-clock detection time per group photo, the mean over the eight photos of one run;
the table gives the median of ``--repeats`` runs and their range, after one untimed run (the one that
is scored). The header names the CPU, the torch threads and the load average.

    .venv/bin/python scripts/detector_table.py /path/to/ffhq128 --detectors mtcnn,dlib_hog --json-out table.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: One face at each of these eye distances (px) in every group photo.
EYE_DISTANCES: tuple[int, ...] = (10, 13, 16, 20, 24, 28, 32, 38, 44)
#: Rows of the table: ``(label, lowest, highest)`` eye distance (px), inclusive.
EYE_BINS: tuple[tuple[str, float, float], ...] = (("10 px", 10, 10), ("13–16 px", 13, 16),
                                                  ("≥ 20 px", 20, math.inf))
#: Rows of the table: ``(label, lowest, highest)`` absolute turn (degrees), inclusive, first match wins.
TURN_BINS: tuple[tuple[str, float, float], ...] = (("≤ 15°", 0, 15), ("15–30°", 15, 30))
MAX_TURN = 30.0
MATCH_FRACTION = 0.30
PHOTO_SIZE = (480, 640)  # H, W
GRID = (3, 3)  # rows, columns
DISC_RADIUS = 1.6  # eye distances, make_group_photo's default
DISC_DROP = 0.55  # eye distances from the eye midpoint down to the disc's centre (make_group_photo)
GROUP_BACKGROUNDS = ("coffee", "rocket", "chelsea", "brick", "grass", "hubble_deep_field", "retina", "gravel")
EMPTY_PHOTOS = ("coffee", "rocket", "chelsea", "hubble_deep_field", "retina", "brick", "colorwheel")
FACE_SUFFIXES = {".webp", ".png", ".jpg", ".jpeg"}

Eyes = tuple[tuple[float, float], tuple[float, float]]
FaceSource = tuple[Tensor, tuple[float, float], tuple[float, float]]  # image 1×3×h×w, eye_left, eye_right


class Problem(Exception):
    """A one-line error the script reports instead of a traceback."""


# -- the photo set ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where one face copy goes: ``face`` indexes the face list; x, y: its eye midpoint (px)."""

    photo: int
    face: int
    x: float
    y: float
    eye_distance: float
    angle: float
    mirror: int


@dataclass
class Photo:
    """One photo of the set and its ground truth (``faces``: one dict per pasted face)."""

    name: str
    image: Tensor  # 1×3×H×W
    faces: list[dict[str, Any]]


def plan(n_faces: int, n_photos: int, seed: int, size: tuple[int, int] = PHOTO_SIZE,
         distances: Sequence[float] = EYE_DISTANCES) -> list[Placement]:
    """The placements of ``n_photos`` group photos (``len(distances)`` faces each), from ``seed`` alone.

    Every face index appears once in a shuffled order before any appears twice; angles are uniform
    in ±``MAX_TURN`` (0.1° steps); exactly half the copies (rounded down) are mirrored. Each photo puts
    one face of each eye distance into a shuffled cell of the grid, its disc wholly inside the cell.
    """
    rows, cols = GRID
    if len(distances) != rows * cols:
        raise ValueError(f"need {rows * cols} eye distances (one per grid cell), got {len(distances)}")
    h, w = size
    ch, cw = h / rows, w / cols
    if 2 * DISC_RADIUS * max(distances) > min(ch, cw):
        raise ValueError(f"a {w}×{h} photo's grid cells ({cw:.0f}×{ch:.0f} px) are too small for faces of "
                         f"eye distance {max(distances)} px")
    rng = np.random.default_rng(seed)
    total = n_photos * len(distances)
    order: list[int] = []
    while len(order) < total:
        order += [int(i) for i in rng.permutation(n_faces)]
    order = order[:total]
    angles = np.round(rng.uniform(-MAX_TURN, MAX_TURN, total), 1)
    mirrors = np.zeros(total, int)
    mirrors[rng.permutation(total)[: total // 2]] = 1
    out = []
    k = 0
    for photo in range(n_photos):
        cells = rng.permutation(rows * cols)
        for d, cell in zip(distances, cells):
            r, c = divmod(int(cell), cols)
            theta = -math.radians(float(angles[k]))
            down = np.array([-math.sin(theta), math.cos(theta)])
            radius = DISC_RADIUS * float(d)
            cx = rng.uniform(c * cw + radius, (c + 1) * cw - radius)
            cy = rng.uniform(r * ch + radius, (r + 1) * ch - radius)
            mid = np.array([cx, cy]) - down * DISC_DROP * float(d)
            out.append(Placement(photo, order[k], round(float(mid[0]), 2), round(float(mid[1]), 2), float(d),
                                 float(angles[k]), int(mirrors[k])))
            k += 1
    return out


def build_group_photos(faces: Sequence[FaceSource], backgrounds: Sequence[tuple[str, Tensor]], seed: int,
                       distances: Sequence[float] = EYE_DISTANCES) -> list[Photo]:
    """One group photo per background (all the same size), composed by ``make_group_photo`` from
    ``faces`` (``(image 1×3×h×w, eye_left, eye_right)``) as :func:`plan` places them."""
    from restorekit.faces.compose import make_group_photo

    if not backgrounds:
        return []
    size = tuple(backgrounds[0][1].shape[-2:])
    placements = plan(len(faces), len(backgrounds), seed, size, distances)  # type: ignore[arg-type]
    photos = []
    for i, (name, bg) in enumerate(backgrounds):
        mine = [p for p in placements if p.photo == i]
        image, truth = make_group_photo(list(faces), bg, [asdict(p) for p in mine])
        photos.append(Photo(name, image, [
            {"face": p.face, "eye_left": list(t.eye_left), "eye_right": list(t.eye_right),
             "eye_distance": t.eye_distance, "angle": t.angle_deg, "mirror": int(t.mirrored)}
            for p, t in zip(mine, truth)]))
    return photos


def fit_photo(arr: np.ndarray, size: tuple[int, int] = PHOTO_SIZE) -> Tensor:
    """An ``H×W`` or ``H×W×3`` uint8 array as a ``1×3×size`` image: centre crop to the aspect, then
    antialiased bicubic resize, clipped to [0, 1]."""
    from restorekit.degradations import bicubic_resize

    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    h, w = arr.shape[:2]
    th, tw = size
    if w * th > h * tw:  # too wide
        cw = round(h * tw / th)
        arr = arr[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        chh = round(w * th / tw)
        arr = arr[(h - chh) // 2:(h - chh) // 2 + chh]
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255
    return bicubic_resize(x, size).clamp(0, 1)


def skimage_photo(name: str) -> Tensor:
    from skimage import data

    return fit_photo(getattr(data, name)())


def read_faces(folder: Path, n: int) -> tuple[list[Path], list[FaceSource]]:
    """The last ``n`` images of ``folder`` by file name, with the template's eye centres."""
    from restorekit.errors import RestorekitError
    from restorekit.faces.align import FFHQ_TEMPLATE_128, TEMPLATE_SIZE
    from restorekit.images import read_image

    if not folder.is_dir():
        raise Problem(f"{folder}: not a folder of face images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FACE_SUFFIXES and p.is_file())
    if len(files) < n:
        raise Problem(f"{folder}: {len(files)} face images ({', '.join(sorted(FACE_SUFFIXES))}), need {n}")
    files = files[-n:]
    out = []
    for f in files:
        try:
            img = read_image(f)
        except RestorekitError as exc:
            raise Problem(str(exc)) from None
        if tuple(img.shape[-2:]) != (TEMPLATE_SIZE, TEMPLATE_SIZE):
            raise Problem(f"{f}: {img.shape[-1]}×{img.shape[-2]} px; expected an FFHQ-aligned "
                          f"{TEMPLATE_SIZE}×{TEMPLATE_SIZE} face")
        out.append((img, FFHQ_TEMPLATE_128["eye_left"], FFHQ_TEMPLATE_128["eye_right"]))
    return files, out


# -- scoring ------------------------------------------------------------------------------------------
def eye_errors(det: Eyes, truth: Eyes) -> tuple[float, float]:
    """The two eye-centre distances (px), image-left eye with image-left eye."""
    return (math.dist(det[0], truth[0]), math.dist(det[1], truth[1]))


def match(detections: Sequence[Eyes], truths: Sequence[Eyes], fraction: float = MATCH_FRACTION) -> dict[str, Any]:
    """Match detected eye pairs to true ones: a pair qualifies when both eyes lie within ``fraction``
    of the true eye distance of the true eyes; pairs are taken best first (largest of the two eye
    errors ÷ eye distance), each detection and each truth once.

    Returns ``truth_to_det`` (a detection index or ``None`` per truth), ``det_to_truth`` (a truth
    index or ``None`` per detection), ``eye_error`` (per truth: mean eye error ÷ eye distance, or
    ``None``), and ``nearest`` (per detection: ``(truth index, largest eye error ÷ eye distance)``
    of the truth it comes closest to, or ``None`` when there is none).
    """
    dists = [math.dist(*t) for t in truths]
    pairs = []
    nearest: list[tuple[int, float] | None] = []
    for i, d in enumerate(detections):
        best: tuple[int, float] | None = None
        for j, t in enumerate(truths):
            err = max(eye_errors(d, t)) / dists[j]
            if best is None or err < best[1]:
                best = (j, err)
            if err <= fraction:
                pairs.append((err, i, j))
        nearest.append(best)
    pairs.sort()
    truth_to_det: list[int | None] = [None] * len(truths)
    det_to_truth: list[int | None] = [None] * len(detections)
    for _, i, j in pairs:
        if det_to_truth[i] is None and truth_to_det[j] is None:
            det_to_truth[i], truth_to_det[j] = j, i
    eye_error = [None if i is None else sum(eye_errors(detections[i], truths[j])) / 2 / dists[j]
                 for j, i in enumerate(truth_to_det)]
    return {"truth_to_det": truth_to_det, "det_to_truth": det_to_truth, "eye_error": eye_error, "nearest": nearest}


def bin_of(value: float, bins: Sequence[tuple[str, float, float]]) -> str | None:
    """The label of the first bin with ``lowest ≤ value ≤ highest``, or ``None``."""
    for label, lo, hi in bins:
        if lo <= value <= hi:
            return label
    return None


def eye_distance_bin(d: float) -> str | None:
    return bin_of(d, EYE_BINS)


def turn_bin(angle: float) -> str | None:
    """Turned either way: ``|angle|`` (a turn of exactly 15° counts as ≤ 15°)."""
    return bin_of(abs(angle), TURN_BINS)


# -- measuring ----------------------------------------------------------------------------------------
def build(name: str, min_face: float, options: dict[str, Any]) -> Any:
    """A registered detector by name, as :func:`restorekit.faces.pipeline.build_detector` builds it,
    with extra constructor ``options``; loaded. A missing install or weight is a one-line Problem."""
    from restorekit.errors import RestorekitError
    from restorekit.faces.pipeline import build_detector

    try:
        if not options:
            return build_detector(name, min_face=min_face)
        import inspect

        from restorekit.interfaces import FaceDetector
        from restorekit.plugins import registry

        factory = registry().get("face_detectors", name)
        params = inspect.signature(factory.build).parameters
        kwargs = dict(options)
        if "min_face" in params and "min_face" not in kwargs:
            kwargs["min_face"] = max(12.0, 0.8 * min_face)
        det = factory.build(**kwargs)
        if not isinstance(det, FaceDetector):
            raise Problem(f"detector '{name}' built a {type(det).__name__}, not a FaceDetector")
        if callable(getattr(det, "load", None)):
            det.load()
        return det
    except (RestorekitError, TypeError, ValueError) as exc:
        raise Problem(f"detector '{name}': {exc}") from None


def detected_eyes(det: Any, faces: Sequence[Any]) -> list[Eyes]:
    from restorekit.faces.detectors import layout_of, named_points

    out = []
    for f in faces:
        p = named_points(f, layout_of(det))
        out.append((tuple(map(float, p["eye_left"])), tuple(map(float, p["eye_right"]))))
    return out  # type: ignore[return-value]


def measure(name: str, det: Any, group: Sequence[Photo], empty: Sequence[Photo], repeats: int,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Score one detector on the photo set and time it on the group photos (see the module doc)."""
    faces: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for pi, photo in enumerate(group):
        found = det.detect(photo.image[0])
        eyes = detected_eyes(det, found)
        truths = [(tuple(t["eye_left"]), tuple(t["eye_right"])) for t in photo.faces]
        m = match(eyes, truths)  # type: ignore[arg-type]
        for j, t in enumerate(photo.faces):
            i = m["truth_to_det"][j]
            faces.append({"photo": photo.name, "index": j, **t, "found": i is not None,
                          "eye_error": None if i is None else round(m["eye_error"][j], 4),
                          "score": None if i is None else found[i].score})
        for i, f in enumerate(found):
            near = m["nearest"][i]
            on_face = near is not None and _inside(photo.faces[near[0]], f.box)
            detections.append({"photo": photo.name, "group": True, "box": [round(v, 2) for v in f.box],
                               "score": f.score, "eyes": [list(e) for e in eyes[i]],
                               "matches": m["det_to_truth"][i],
                               "nearest": None if near is None else near[0],
                               "nearest_error": None if near is None else round(near[1], 4),
                               "on_a_true_face": on_face})
    for photo in empty:
        found = det.detect(photo.image[0])
        for f, e in zip(found, detected_eyes(det, found)):
            detections.append({"photo": photo.name, "group": False, "box": [round(v, 2) for v in f.box],
                               "score": f.score, "eyes": [list(x) for x in e], "matches": None,
                               "nearest": None, "nearest_error": None, "on_a_true_face": False})
    runs = []
    for _ in range(repeats):
        total = 0.0
        for photo in group:
            t0 = clock()
            det.detect(photo.image[0])
            total += clock() - t0
        runs.append(total * 1e3 / max(1, len(group)))
    return {"detector": name, "faces": faces, "detections": detections, "ms_per_photo_runs": runs}


def _inside(truth: dict[str, Any], box: Sequence[float]) -> bool:
    """Whether the true face's eye midpoint lies inside ``box`` (a detection on that face)."""
    x = (truth["eye_left"][0] + truth["eye_right"][0]) / 2
    y = (truth["eye_left"][1] + truth["eye_right"][1]) / 2
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of one detector's :func:`measure` result."""
    faces, dets = result["faces"], result["detections"]

    def count(rows: list[dict[str, Any]]) -> list[int]:
        return [sum(r["found"] for r in rows), len(rows)]

    false_group = [d for d in dets if d["group"] and d["matches"] is None]
    on_face = [d for d in false_group if d["on_a_true_face"]]
    errors = [r["eye_error"] for r in faces if r["found"]]
    found_scores = [r["score"] for r in faces if r["found"]]
    false_scores = [d["score"] for d in dets if d["matches"] is None]
    runs = result["ms_per_photo_runs"]
    return {
        "found": count(faces),
        "by_eye_distance": {label: count([r for r in faces if eye_distance_bin(r["eye_distance"]) == label])
                            for label, _, _ in EYE_BINS},
        "by_turn": {label: count([r for r in faces if turn_bin(r["angle"]) == label]) for label, _, _ in TURN_BINS},
        "false_faces_empty": sum(not d["group"] for d in dets),
        "false_faces_empty_photos": sorted({d["photo"] for d in dets if not d["group"]}),
        "unmatched_group": len(false_group),
        "unmatched_on_a_true_face": len(on_face),
        "unmatched_on_a_true_face_error": [min(d["nearest_error"] for d in on_face),
                                           max(d["nearest_error"] for d in on_face)] if on_face else None,
        "median_eye_error": statistics.median(errors) if errors else None,
        "lowest_found_score": min(found_scores) if found_scores else None,
        "highest_false_score": max(false_scores) if false_scores else None,
        "ms_per_photo": {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "n": len(runs)}
        if runs else None,
    }


# -- output ---------------------------------------------------------------------------------------------
def _pct(n: int, total: int) -> str:
    return f"{n} ({round(100 * n / total)} %)" if total else "0"


def _ms(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    med, lo, hi = (f"{s[k]:.0f}" for k in ("median", "min", "max"))
    return med if s["n"] <= 1 or lo == hi else f"{med} ({lo}–{hi})"


def _score(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown_table(summaries: dict[str, dict[str, Any]], n_empty: int, repeats: int) -> str:
    """The docs' table: one column per detector."""
    names = list(summaries)
    any_s = next(iter(summaries.values()))
    total = any_s["found"][1]

    def row(label: str, cells: Sequence[str]) -> str:
        return "| " + " | ".join([label, *cells]) + " |"

    def unmatched(s: dict[str, Any]) -> str:
        n, k = s["unmatched_group"], s["unmatched_on_a_true_face"]
        if not k:
            return str(n)
        lo, hi = (round(100 * v) for v in s["unmatched_on_a_true_face_error"])
        span = f"{lo} %" if lo == hi else f"{lo}–{hi} %"
        return f"{n} ({'all' if k == n else k} on a true face, eyes {span} off)"

    lines = [row("", [f"`{n}`" for n in names]), "|---" * (len(names) + 1) + "|",
             row(f"faces found ({total})", [_pct(*s["found"]) for s in summaries.values()])]
    for label, _, _ in EYE_BINS:
        lines.append(row(f"… eye distance {label}", ["{}/{}".format(*s["by_eye_distance"][label])
                                                      for s in summaries.values()]))
    for label, _, _ in TURN_BINS:
        lines.append(row(f"… turned {label}", ["{}/{}".format(*s["by_turn"][label]) for s in summaries.values()]))
    lines += [
        row(f"false faces on the {n_empty} photos without people",
            [str(s["false_faces_empty"]) + (f" ({', '.join(s['false_faces_empty_photos'])})"
                                            if s["false_faces_empty"] else "") for s in summaries.values()]),
        row("detections not matching a true face, group photos", [unmatched(s) for s in summaries.values()]),
        row("median eye error / eye distance (vs the template)",
            ["-" if s["median_eye_error"] is None else f"{100 * s['median_eye_error']:.0f} %"
             for s in summaries.values()]),
        row("score (the detector's own scale): lowest of a found face / highest of a false one",
            [f"{_score(s['lowest_found_score'])} / {_score(s['highest_false_score'])}" for s in summaries.values()]),
        row(f"ms per 640×480 photo, median of {repeats} runs (range)", [_ms(s["ms_per_photo"])
                                                                         for s in summaries.values()]),
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The CPU, its cores, torch's threads and the load average (where the OS tells them)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": load,
            "python": platform.python_version(), "torch": torch.__version__}


def parse_options(items: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``DETECTOR.KEY=VALUE`` items (VALUE read as JSON when it parses, else a string) per detector."""
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in items:
        key, sep, value = item.partition("=")
        det, dot, opt = key.partition(".")
        if not sep or not dot or not opt:
            raise Problem(f"--option {item!r}: expected DETECTOR.KEY=VALUE (e.g. mtcnn.min_score=0)")
        if det not in out:
            raise Problem(f"--option {item!r}: '{det}' is not among the detectors measured ({', '.join(names)})")
        try:
            out[det][opt] = json.loads(value)
        except json.JSONDecodeError:
            out[det][opt] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("faces", type=Path, help="folder of FFHQ-aligned 128-px faces (e.g. ffhq128); the last "
                                             "--n-faces by file name are used")
    ap.add_argument("--detectors", default="mtcnn,dlib_hog", help="comma-separated registered detector names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs over the group photos (median, range)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--n-faces", type=int, default=60)
    ap.add_argument("--min-face", type=float, default=20.0,
                    help="as run/compare's --min-face: MTCNN's pyramid starts at max(12, 0.8·PX)")
    ap.add_argument("--option", action="append", default=[], metavar="DETECTOR.KEY=VALUE",
                    help="a detector constructor option, e.g. mtcnn.min_score=0 (repeatable)")
    ap.add_argument("--json-out", type=Path, default=None, help="write every face and detection here (JSON)")
    ap.add_argument("--save-photos", type=Path, default=None, help="write the composed photos here (PNG)")
    args = ap.parse_args(argv)
    try:
        return run(args, sys.argv[1:] if argv is None else argv)
    except Problem as exc:
        print(f"detector_table: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from restorekit.errors import RestorekitError
    from restorekit.images import atomic_write_bytes, save_image

    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    if not names:
        raise Problem("--detectors: no detector named")
    if args.repeats < 1 or args.threads < 1 or args.n_faces < 1:
        raise Problem("--repeats, --threads and --n-faces must be at least 1")
    options = parse_options(args.option, names)
    torch.set_num_threads(args.threads)
    files, faces = read_faces(args.faces, args.n_faces)
    try:
        from skimage import data  # noqa: F401
    except ImportError:
        raise Problem("the backgrounds are scikit-image's sample photos; install scikit-image (the demo extra)") \
            from None
    detectors = {n: build(n, args.min_face, options[n]) for n in names}  # a missing install stops here
    group = build_group_photos(faces, [(n, skimage_photo(n)) for n in GROUP_BACKGROUNDS], args.seed)
    for p in group:
        for t in p.faces:
            t["file"] = files[t["face"]].name
    empty = [Photo(f"{n} (no people)", skimage_photo(n), []) for n in EMPTY_PHOTOS]
    if args.save_photos is not None:
        try:
            for i, p in enumerate(group):
                save_image(p.image, args.save_photos / f"group{i}_{p.name}.png")
            for p in empty:
                save_image(p.image, args.save_photos / f"empty_{p.name.split()[0]}.png")
        except (RestorekitError, OSError) as exc:
            raise Problem(f"--save-photos: {exc}") from None
    results = {}
    for n, det in detectors.items():
        try:
            results[n] = measure(n, det, group, empty, args.repeats)
        except RestorekitError as exc:
            raise Problem(f"detector '{n}': {exc}") from None
    summaries = {n: summarise(r) for n, r in results.items()}
    info = machine()
    print(f"python scripts/detector_table.py {' '.join(argv)}")
    print(f"{len(group)} group photos ({len(group[0].faces) if group else 0} faces each, "
          f"{sum(len(p.faces) for p in group)} in all) + {len(empty)} without people, 640×480, seed {args.seed}; "
          f"faces: the last {len(files)} of {args.faces} ({files[0].name}–{files[-1].name}); "
          f"min face {args.min_face:g} px" + "".join(f"; {n} options {o}" for n, o in options.items() if o))
    print(f"CPU: {info['cpu']}, {info['cores']} cores; torch threads {info['torch_threads']}; "
          f"load average {info['load_average']}; torch {info['torch']}")
    print()
    print(markdown_table(summaries, len(empty), args.repeats))
    if args.json_out is not None:
        doc = {"command": ["python", "scripts/detector_table.py", *argv], "seed": args.seed, "machine": info,
               "faces_folder": str(args.faces), "face_files": [f.name for f in files], "min_face": args.min_face,
               "options": options, "match_fraction": MATCH_FRACTION,
               "eye_bins": [[lab, lo, None if hi == math.inf else hi] for lab, lo, hi in EYE_BINS],
               "turn_bins": [list(b) for b in TURN_BINS],
               "photos": [{"name": p.name, "faces": p.faces} for p in [*group, *empty]],
               "results": {n: {**r, "summary": summaries[n]} for n, r in results.items()}}
        try:
            atomic_write_bytes(args.json_out, (json.dumps(doc, indent=1) + "\n").encode())
        except (RestorekitError, OSError) as exc:
            raise Problem(f"--json-out: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
