"""Faces in whole photos: detect → FFHQ-align → restore → paste back over an upscaled background.

For a method that restores aligned faces (``info.input_kind == "aligned_face"``), a photo is
handled in five steps:

1. **Detect** faces and 5 landmarks (a registered ``FaceDetector``; ``mtcnn`` by default).
   Faces whose box is smaller than ``min_face`` pixels (short side) are skipped, with the reason
   in their record; so are faces whose crop the method would shrink by more than ``max_shrink``
   (restoring them would lose the detail the photo has).
2. **Align** each face: the FFHQ crop quad from the landmarks (exact FFHQ recipe with mouth
   corners, else a similarity fit to the FFHQ template), resampled (antialiased) to the method's
   input size — ``method.face_input_size`` (an int, or a function of the scale) when the method
   has one, else ``256 // scale`` (so the restored crop is 256 px; at least 16).
3. **Restore** the crops, at most ``face_batch`` (8) to a call of the method: ``crop_size`` →
   ``crop_size·scale``. The restored crops count toward ``max_output_pixels`` with the composites
   (faces × (crop_size·scale)² × samples): a photo of a thousand small faces is refused in one line,
   after detection and before anything is restored, as a photo too large to paste back is.
4. **Background**: the whole photo upscaled by ``scale`` with the background method
   (``bicubic``, built in, or any registered method by name).
5. **Paste**: each restored crop is warped back into the upscaled photo through the inverse of
   its alignment, blended with a feathered mask (``face_mask``: a linear ramp over ``feather``
   of the crop side), of the shape ``paste_mask`` names: ``square``, the whole crop (ramp at every
   edge), or ``face``, an ellipse around face and hair that leaves the crop's corners — background
   a face method re-draws — to the background method; with ``colour_match`` (off by default),
   after a per-channel colour correction measured in the mask's feather band when the restored
   face's colours differ visibly from the background's (``restorekit.faces.compose.color_match``).
   Larger faces are pasted first, so a small face inside a large face's crop keeps its own
   restoration.

``paste_mask`` is ``face`` by default: measured with the shipped psp_sr on 96 group photos
(``scripts/paste_masks.py``: 288 faces, ×4 and ×8, busy and plain backgrounds), it gave a lower
LPIPS-alex than ``square`` in the crop's square for 204 of the 288 faces and a higher PSNR-Y
(+0.8–1.8 dB) in every group; ``square`` scored better on LPIPS only at ×8 on busy backgrounds, where
psp_sr's invented background beats the blur of a ×8 bicubic upscale (docs/faces.md).

``colour_match`` is off by default: measured with the shipped psp_sr on 24 photos at ×4 and ×8
(faces pasted into gradients and blurred photos), it raised the face's LPIPS in 18–19 of 21–22
photos (+0.03) and tripled its red–green error, because the feather band it measures is mostly
background and hair, whose colour it then cast onto the skin.

Each face aligned, each batch restored and each face pasted is a :func:`restorekit.progress.report`
step, so a caller that follows progress (``serve``) sees it and can cancel there.

Outside every face mask the result is exactly the background. :func:`restore_photo` is the
one-call form (``compare --faces detect`` uses it per image); :class:`FacePipeline` keeps the
detector, background method and options for many photos and also returns the restored crops.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import numpy as np
import torch
from torch import Tensor

from ..degradations import bicubic_resize, upscale
from ..errors import ImageError, RestorekitError
from ..images import DEFAULT_MAX_OUTPUT_PIXELS, _mp, check_output_size, side_by_side
from ..interfaces import Face, FaceDetector, Method, MethodInfo, check_image_batch, refuse_nan, result_options
from ..methods import check_values
from ..progress import report
from ..run_record import PINS
from .align import AlignedFace, align_face, check_paste_mask, face_mask, quad_from_points, warp
from .compose import ColorMatch, blend, color_match, grey, is_grey
from .detectors import DEFAULT_DETECTOR, layout_of, named_points
# (NO_FACE, _expected_firsts and settings_changed lived here before reruns.py: importable from here still)
from .reruns import NO_FACE, DetectPlan, _expected_firsts, _nothing_to_write, settings_changed  # noqa: F401

__all__ = [
    "DEFAULT_MIN_FACE", "DEFAULT_MAX_SHRINK", "DEFAULT_FEATHER", "DEFAULT_PASTE_MASK", "FACE_BATCH", "FaceRecord",
    "PhotoResult",
    "face_input_size",
    "build_detector", "build_background", "paste_warp", "FacePipeline", "restore_photo", "largest_face_crop",
]

DEFAULT_MIN_FACE = 20.0
# Faces whose crop the method would shrink more than this are left to the background method.
DEFAULT_MAX_SHRINK = 3.0
DEFAULT_FEATHER = 0.1
#: The paste mask's shape (``align.PASTE_MASKS``), chosen by ``scripts/paste_masks.py`` (docs/faces.md).
DEFAULT_PASTE_MASK = "face"
MIN_CROP = 16
#: Faces restored in one call of the method: its activations grow with the batch (a PULSE search holds
#: a generator pass per face), so a photo of many faces is restored a few at a time.
FACE_BATCH = 8

Background = Callable[[Tensor, int], Tensor]


@dataclass
class FaceRecord:
    """What was found and done for one face; ``as_dict()`` is the JSON sidecar entry."""

    index: int
    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]]
    landmark_layout: str
    face_px: float
    action: Literal["restored", "skipped"] = "skipped"
    reason: str = ""
    # The option whose limit left a skipped face to the background ("min_face", "max_shrink").
    limit: str | None = None
    quad: list[tuple[float, float]] | None = None
    crop_size: int | None = None
    restored_size: int | None = None
    source_px_per_crop_px: float | None = None
    color_match: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        r2 = lambda v: round(float(v), 2)  # noqa: E731
        out: dict[str, Any] = {
            "index": self.index, "action": self.action,
            "box": [r2(v) for v in self.box], "score": round(self.score, 4),
            "landmarks": [[r2(x), r2(y)] for x, y in self.landmarks],
            "landmark_layout": self.landmark_layout, "face_px": r2(self.face_px),
        }
        if self.reason:
            out["reason"] = self.reason
        if self.limit:
            out["limit"] = self.limit
        if self.quad is not None:
            out["quad"] = [[r2(x), r2(y)] for x, y in self.quad]
            out["crop_size"] = self.crop_size
            out["restored_size"] = self.restored_size
            out["source_px_per_crop_px"] = round(float(self.source_px_per_crop_px or 0), 3)
        if self.color_match is not None:
            out["color_match"] = self.color_match
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass
class PhotoResult:
    """Composites (one per sample), per-face records and the restored crops of restored faces."""

    images: list[Tensor]
    records: list[FaceRecord]
    crops: dict[int, list[Tensor]]
    scale: int
    crop_size: int
    detector: str
    background: str
    timings_ms: dict[str, float]
    grey: bool = False

    @property
    def image(self) -> Tensor:
        return self.images[0]

    @property
    def n_restored(self) -> int:
        return sum(r.action == "restored" for r in self.records)

    def sidecar(self) -> dict[str, Any]:
        """The JSON-able description written next to each photo's outputs (``reruns.sidecar_name``)."""
        return {
            "scale": self.scale, "detector": self.detector, "background": self.background,
            "crop_size": self.crop_size, **({"grey": True} if self.grey else {}), "faces_found": len(self.records),
            "faces_restored": self.n_restored, "faces": [r.as_dict() for r in self.records],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


def face_input_size(method: Method, scale: int) -> int:
    """The side of the aligned LR crop handed to ``method`` at ``scale``.

    ``method.face_input_size`` (int, or callable taking the scale) wins; otherwise
    ``max(16, 256 // scale)``, i.e. 256-px restored crops, the FFHQ framing's working size.
    """
    size = getattr(method, "face_input_size", None)
    if callable(size):
        size = size(scale)
    if size is None:
        return max(MIN_CROP, 256 // scale)
    size = int(size)
    if size < 1:
        raise RestorekitError(f"{method.info.name}: face_input_size must be positive, got {size}")
    return size


def build_detector(name: str | FaceDetector, *, min_face: float | None = None,
                   device: str | torch.device = "cpu") -> FaceDetector:
    """A detector by registered name (or one already built); ``min_face`` speeds up MTCNN.

    The detector is asked to search from ``max(12, 0.8·min_face)`` px when it takes a
    ``min_face`` argument (skipped faces are reported, not silently lost, because the detector
    searches a little below the threshold).
    """
    if isinstance(name, FaceDetector):
        return name
    from ..plugins import registry

    factory = registry().get("face_detectors", name)
    params = inspect.signature(factory.build).parameters
    kwargs: dict[str, Any] = {}
    if min_face is not None and "min_face" in params:
        kwargs["min_face"] = max(12.0, 0.8 * float(min_face))
    if "device" in params:
        kwargs["device"] = device
    det = factory.build(**kwargs)
    if not isinstance(det, FaceDetector):
        raise RestorekitError(f"face detector '{name}' built a {type(det).__name__}, not a FaceDetector")
    load = getattr(det, "load", None)
    if callable(load):
        load()
    return det


def build_background(name: str | Method | Background, device: str | torch.device = "cpu") -> tuple[str, Background]:
    """``(label, fn(image, scale) -> upscaled)`` for a background method name or object.

    ``bicubic`` is built in (antialiased Keys cubic, PIL convention, clipped — the same as the
    baselines' ``bicubic`` method); any other name is a registered method, built and loaded.
    """
    if isinstance(name, Method):
        m = name
        return m.info.name, lambda img, s: m.restore(img.to(m.device), s).cpu()
    if callable(name) and not isinstance(name, str):
        return getattr(name, "__name__", "custom"), name
    if name == "bicubic":
        return "bicubic", upscale
    from ..methods import build_method

    check_background(name)
    m = build_method(name, {}, str(device) if not isinstance(device, str) else device)
    return name, lambda img, s: m.restore(img.to(m.device), s).cpu()


def background_methods() -> list[str]:
    """The names ``--background`` takes: ``bicubic`` (built in) and every registered whole-image method."""
    from ..methods import method_class
    from ..plugins import registry

    names = [n for n in registry().names("methods") if method_class(n).info.input_kind != "aligned_face"]
    return sorted({"bicubic", *names})


def check_background(name: str) -> None:
    """Refuse (one line naming ``--background``) a background method name that is not registered,
    listing only those it takes (:func:`background_methods`), or one that names a method of aligned
    faces (it cannot upscale a whole photo); ``bicubic`` is built in."""
    if name == "bicubic":
        return
    from ..errors import UnknownNameError
    from ..methods import method_class
    from ..plugins import registry, suggest

    try:
        cls = method_class(name)
    except UnknownNameError as exc:
        # The registry's line lists face methods too; its notes after that list (plugins left out by
        # RESTOREKIT_LOAD_PLUGINS, broken ones) are kept. A broken plugin's method: its line as it is.
        known = ", ".join(registry().names("methods")) or "none registered"
        _, listed, notes = str(exc).partition(f"; known: {known}")
        if not listed:
            raise RestorekitError(f"--background {name}: {exc}") from None
        takes = background_methods()
        raise RestorekitError(f"--background {name}: unknown method{suggest(name, takes)}; it takes a whole-image "
                              f"method: {', '.join(takes)}{notes}") from None
    if cls.info.input_kind == "aligned_face":
        raise RestorekitError(f"--background {name}: it restores aligned faces, not whole photos; "
                              "use bicubic or another whole-image method")


def paste_warp(crop: Tensor, geom: AlignedFace, out_h: int, out_w: int, scale: float) -> Tensor:
    """A restored crop warped into (upscaled) photo coordinates; edges extend the crop's border.

    Same geometry as ``align.unalign``, but with border padding: samples near the crop's
    edge must not mix with black, or a dark fringe would show through the feathered mask.
    """
    inv = geom.to_crop.copy()
    inv[:, :2] /= scale
    inv[0] *= crop.shape[-1] / geom.size
    inv[1] *= crop.shape[-2] / geom.size
    shrink = float(crop.shape[-1]) / (geom.size * geom.scale * scale)
    return warp(crop, inv, out_h, out_w, shrink=shrink, padding_mode="border")


def _shown_over(value: float, limit: float) -> str:
    """``value``, which passes ``limit``, to one decimal, or to as many more (up to 6) as it takes to
    read over it: 3.012 over a limit of 3 is "3.01", not "3.0"."""
    for digits in range(1, 7):
        text = f"{value:.{digits}f}"
        if float(text) > limit:
            return text
    return repr(value)


def _window(geom: AlignedFace, scale: int, h: int, w: int, margin: int = 2) -> tuple[int, int, int, int] | None:
    """Output-pixel window (y0, y1, x0, x1) covering the quad scaled by ``scale``, clipped."""
    q = geom.quad * scale
    x0 = max(int(math.floor(q[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(q[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(q[:, 0].max())) + margin, w)
    y1 = min(int(math.ceil(q[:, 1].max())) + margin, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


class FacePipeline:
    """Detector + restorer + background method + paste options, reusable over many photos."""

    def __init__(self, method: Method, scale: int, *, detector: str | FaceDetector = DEFAULT_DETECTOR,
                 background: str | Method | Background = "bicubic", min_face: float = DEFAULT_MIN_FACE,
                 feather: float = DEFAULT_FEATHER, colour_match: bool = False,
                 paste_mask: str = DEFAULT_PASTE_MASK, crop_size: int | None = None,
                 max_shrink: float | None = DEFAULT_MAX_SHRINK,
                 max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS, face_batch: int = FACE_BATCH) -> None:
        method.check_scale(scale)
        self.max_output_pixels = max_output_pixels
        if face_batch < 1:
            raise RestorekitError(f"face_batch must be ≥ 1, got {face_batch}")
        self.face_batch = int(face_batch)
        if max_shrink is not None and not max_shrink >= 1:  # NaN too
            raise RestorekitError(f"--max-shrink must be ≥ 1, got {max_shrink}")
        self.max_shrink = max_shrink
        if not 0 < feather <= 0.5:
            raise RestorekitError(f"feather must be in (0, 0.5] of the crop side, got {feather}")
        if not min_face >= 0:  # NaN too
            raise RestorekitError(f"--min-face must be ≥ 0 px, got {min_face}")
        self.method = method
        self.scale = scale
        self.min_face = float(min_face)
        self.feather = float(feather)
        self.paste_mask = check_paste_mask(paste_mask)
        self.colour_match = colour_match
        self.crop_size = int(crop_size) if crop_size else face_input_size(method, scale)
        self.detector = build_detector(detector, min_face=min_face, device="cpu")
        self.detector_name = detector if isinstance(detector, str) else type(detector).name
        self.layout = layout_of(self.detector)
        self.background_name, self.background = build_background(background, method.device)

    def records_for(self, faces: list[Face]) -> list[FaceRecord]:
        """Records with quads for the faces to restore and reasons for the ones skipped."""
        recs = []
        for i, f in enumerate(faces):
            x0, y0, x1, y1 = f.box
            px = float(min(x1 - x0, y1 - y0))
            rec = FaceRecord(i, tuple(float(v) for v in f.box), float(f.score),  # type: ignore[arg-type]
                             [(float(x), float(y)) for x, y in f.landmarks], self.layout, px)
            if px < self.min_face:
                shown = f"{px:.0f}" if round(px) < self.min_face else f"{math.floor(px * 100) / 100:g}"  # not "8 < 8"
                rec.reason, rec.limit = f"face {shown} px < --min-face {self.min_face:g} px", "min_face"
            else:
                try:
                    quad = quad_from_points(named_points(f, self.layout))
                except ValueError as exc:
                    rec.reason = f"cannot align: {exc}"
                else:
                    rec.quad = [(float(x), float(y)) for x, y in quad]
                    rec.crop_size = self.crop_size
                    rec.restored_size = self.crop_size * self.scale
                    rec.source_px_per_crop_px = AlignedFace(quad, self.crop_size).scale
                    rec.action = "restored"
                    across = rec.source_px_per_crop_px * self.crop_size
                    if self.max_shrink is not None and rec.source_px_per_crop_px > self.max_shrink:
                        rec.action, rec.limit = "skipped", "max_shrink"
                        shown = _shown_over(rec.source_px_per_crop_px, self.max_shrink)  # not "3.0× … 3"
                        rec.reason = (f"the face crop spans {across:.0f} input px, {shown}× "
                                      f"the method's {self.crop_size}-px input: restoring would lose detail "
                                      f"(--max-shrink {self.max_shrink:g}; a lower --scale gives larger crops)")
                    elif rec.source_px_per_crop_px < 1:
                        rec.notes.append(f"the face crop spans {across:.0f} input px; it is upsampled to "
                                         f"the method's {self.crop_size} px")
                    elif rec.source_px_per_crop_px > 1.5:
                        rec.notes.append(f"the face crop spans {across:.0f} input px but the method takes "
                                         f"{self.crop_size} px: detail finer than {rec.source_px_per_crop_px:.1f} "
                                         "input px is lost (a lower --scale gives larger crops)")
            recs.append(rec)
        return recs

    def output_pixels(self, width: int, height: int, n_faces: int, n_samples: int = 1) -> tuple[int, int]:
        """``(composite pixels, restored-crop pixels)`` one photo of ``width``×``height`` with
        ``n_faces`` faces to restore makes (each × ``n_samples``)."""
        s, side = self.scale, self.crop_size * self.scale
        return width * s * height * s * n_samples, n_faces * side * side * n_samples

    def check_outputs(self, width: int, height: int, n_faces: int, n_samples: int = 1, where: object = "photo",
                      fix: str = "raise --min-face to leave small faces to the background, or raise "
                                 "--max-output-pixels") -> None:
        """Refuse (:class:`ImageError`, one line naming the count and the limit, ``fix`` in brackets)
        a photo whose composites and restored face crops together pass ``max_output_pixels``: the
        crops are made and held (and written by ``--only-faces`` and ``serve``) as the composites are.
        (A lower scale would not help: a method's crops are about 256 px restored at any scale.)"""
        photo, crops = self.output_pixels(width, height, n_faces, n_samples)
        if n_faces and photo + crops > self.max_output_pixels:
            side = self.crop_size * self.scale
            many = f" × {n_samples} samples" if n_samples > 1 else ""
            raise ImageError(f"{where}: {n_faces:,} faces to restore make {n_faces:,} × {side}×{side}{many} = "
                             f"{_mp(crops)} of face crops besides the ×{self.scale} photo's {_mp(photo)}, over the "
                             f"output limit of {_mp(self.max_output_pixels)} ({fix})")

    def restorable(self, faces: list[Face]) -> int:
        """How many of ``faces`` the pipeline would restore (the others are left to the background)."""
        return sum(r.action == "restored" for r in self.records_for(faces))

    @torch.no_grad()  # not inference_mode: optimisation-based methods (PULSE) enable grad inside restore
    def run(self, image: Tensor, *, seed: int | None = None, n_samples: int = 1,
            faces: list[Face] | None = None, where: object = "photo") -> PhotoResult:
        """Restore every face of one 1×3×H×W photo; ``faces`` skips detection (given detections);
        ``where`` names the photo in a refusal.

        The photo is checked as :meth:`Method.restore` checks its batch: one in another convention
        (uint8, 0-255, [-1, 1]) or holding NaN is a one-line ``ValueError`` starting with ``where``
        (a 0-255 photo came back nearly white without a face, and a NaN was blamed on the
        background method)."""
        check_image_batch(image, str(where))
        refuse_nan(image, str(where))
        if image.shape[0] != 1:
            raise ValueError(f"expected one 1×3×H×W photo, got {tuple(image.shape)}")
        image = image.detach().float().cpu()
        s = self.scale
        H0, W0 = int(image.shape[-2]), int(image.shape[-1])
        # The paste-back holds one composite per sample at scale × the photo: refuse before any work.
        check_output_size(W0, H0, s, where, max_output_pixels=self.max_output_pixels, n_outputs=n_samples)
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        if faces is None:
            faces = self.detector.detect(image[0])
        t["detect"] = (time.perf_counter() - t0) * 1e3
        records = self.records_for(faces)
        todo = [r for r in records if r.action == "restored"]
        # … and the restored crops too, once the faces are known: before any is aligned or restored.
        self.check_outputs(W0, H0, len(todo), n_samples, where)
        name = self.method.info.name

        t0 = time.perf_counter()
        geoms: dict[int, AlignedFace] = {}
        crops = []
        for i, r in enumerate(todo):
            report(f"{name}: aligning faces", i, len(todo))
            crop, geom = align_face(image, np.asarray(r.quad), self.crop_size)
            geoms[r.index] = geom
            crops.append(crop)
        t["align"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        restored: Tensor | None = None
        if crops:
            want = self.crop_size * s
            parts: list[Tensor] = []
            for b in range(0, len(crops), self.face_batch):
                report(f"{name}: restoring faces", b, len(crops))
                chunk = crops[b:b + self.face_batch]
                out = check_values(name, self.method.restore(torch.cat(chunk).to(self.method.device), s,
                                                             seed=seed, n_samples=n_samples)).cpu()
                if out.shape[0] != len(chunk) * n_samples:
                    raise RestorekitError(f"{name} returned {out.shape[0]} images for "
                                          f"{len(chunk)} faces × {n_samples} samples")
                if tuple(out.shape[-2:]) != (want, want):
                    out = bicubic_resize(out, (want, want)).clamp(0, 1)
                parts.append(out)
            del crops
            restored = torch.cat(parts) if len(parts) > 1 else parts[0]
            del parts
        # A black-and-white photo stays so: a colour model's faces (and background) are made grey.
        grey_photo = is_grey(image)
        if grey_photo and restored is not None:
            restored = grey(restored)
        t["restore"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        base = check_values(f"--background {self.background_name}", self.background(image, s)).cpu().clamp(0, 1)
        if grey_photo and not is_grey(base, 0.0):  # bicubic keeps a grey photo grey, bit for bit
            base = grey(base)
        if tuple(base.shape[-2:]) != (image.shape[-2] * s, image.shape[-1] * s):
            raise RestorekitError(f"background method {self.background_name} returned "
                                  f"{tuple(base.shape[-2:])}, expected {image.shape[-2] * s}×{image.shape[-1] * s}")
        t["background"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        H, W = base.shape[-2:]
        composites = [base.clone() for _ in range(n_samples)]
        crops_out: dict[int, list[Tensor]] = {}
        # Coarsest crops first, finest last: a large face's crop square covers the faces beside it,
        # and each pixel keeps the restoration of the finest crop over it (a small face its own).
        order = sorted(range(len(todo)), key=lambda k: -geoms[todo[k].index].scale)
        for done, k in enumerate(order):
            report(f"{name}: pasting faces", done, len(order))
            r = todo[k]
            geom = geoms[r.index]
            win = _window(geom, s, H, W)
            crops_out[r.index] = [restored[k * n_samples + j:k * n_samples + j + 1] for j in range(n_samples)]  # type: ignore[index]
            if win is None:
                r.notes.append("the face lies outside the image after alignment; nothing pasted")
                continue
            y0, y1, x0, x1 = win
            local = AlignedFace(geom.quad - np.array([x0, y0], float) / s, geom.size)
            mask = face_mask(local, y1 - y0, x1 - x0, s, self.feather, self.paste_mask)
            # Compare colours at twice the coarser of the crop's and the photo's pixel size.
            lowpass = int(math.ceil(2 * s * max(1.0, geom.scale)))
            matches: list[ColorMatch] = []
            for j in range(n_samples):
                face = paste_warp(crops_out[r.index][j], local, y1 - y0, x1 - x0, s)
                region = composites[j][..., y0:y1, x0:x1]
                if self.colour_match:
                    face, cm = color_match(face, region, mask, lowpass=lowpass)
                    matches.append(cm)
                composites[j][..., y0:y1, x0:x1] = blend(region, face, mask)
            if matches:
                r.color_match = matches[0].as_dict()
                if n_samples > 1:
                    r.color_match["applied_samples"] = sum(m.applied for m in matches)
        t["paste"] = (time.perf_counter() - t0) * 1e3
        return PhotoResult([c.clamp(0, 1) for c in composites], records, crops_out, s, self.crop_size,
                           self.detector_name, self.background_name, t, grey=grey_photo)


def largest_face_detector(name: str | None = None) -> FaceDetector:
    """The face detector the largest face is found with, by ``demo`` and by ``serve``'s *photo,
    largest face* mode (built once there), so the page's crop and figures are the demo's: ``name``
    (default: the pipeline's) at the detector's own settings — for MTCNN the published pyramid from
    20 px, facenet-pytorch's default, at which docs/faces.md's parity with it is measured — not the
    16-px pyramid of ``run --faces detect`` (``--min-face``), which looks for small faces too."""
    return build_detector(name or DEFAULT_DETECTOR)


def largest_face_crop(photo: Tensor, size: int, detector: str | FaceDetector = DEFAULT_DETECTOR
                      ) -> tuple[Tensor, dict[str, Any]]:
    """The largest face of one photo (1×3×H×W) as a ``size×size`` FFHQ-aligned crop, and a record
    (detector, box, score, quad) — what ``restorekit demo`` restores. No face: ``RestorekitError``."""
    det = build_detector(detector)
    faces = det.detect(photo[0])
    name = detector if isinstance(detector, str) else type(detector).name
    if not faces:
        raise RestorekitError(f"detector '{name}' found no face in the photo")
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    quad = quad_from_points(named_points(face, layout_of(det)))
    crop, _ = align_face(photo, quad, size)
    return crop.clamp(0, 1), {"detector": name, "box": list(face.box), "score": face.score,
                              "quad": np.round(quad, 2).tolist()}


# restore_photo() keeps a method's last few pipelines on the method itself (in its __dict__), so
# per-image callers (compare) build detectors once, and a method the caller drops goes with them:
# a module-level cache held the last methods (whole models) alive after their callers let go.
_PIPELINES_ATTR = "_restorekit_face_pipelines"
_PIPELINES_PER_METHOD = 8


def _pipelines_of(method: Method) -> dict[tuple[Any, ...], FacePipeline] | None:
    """``method``'s pipeline cache (made on first use); None for an object without a ``__dict__``."""
    try:
        return vars(method).setdefault(_PIPELINES_ATTR, {})
    except TypeError:
        return None


def restore_photo(method: Method, image: Tensor, scale: int, detector: str | FaceDetector = DEFAULT_DETECTOR,
                  *, background: str | Method | Background = "bicubic", min_face: float = DEFAULT_MIN_FACE,
                  feather: float = DEFAULT_FEATHER, colour_match: bool = False, seed: int | None = None,
                  max_shrink: float | None = DEFAULT_MAX_SHRINK, warn_no_face: bool = False,
                  max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
                  paste_mask: str = DEFAULT_PASTE_MASK) -> tuple[Tensor, list[dict[str, Any]]]:
    """Restore every face of one photo (1×3×H×W) with ``method``; returns (composite, face records).

    The photo follows the image convention (float in [0, 1]; else a one-line ``ValueError``, as
    from :meth:`Method.restore`). The composite is ``scale`` times the photo's size (on the CPU);
    records are JSON-able dicts (see :class:`FaceRecord`). Pipelines are kept on the method per
    (scale, detector, background, options), so calling this per image builds the detector once,
    and they go when the method does. A photo without faces comes back as the background upscale,
    with an empty record list (and a warning when ``warn_no_face``).
    """
    key = (scale, detector if isinstance(detector, str) else id(detector),
           background if isinstance(background, str) else id(background), float(min_face), float(feather),
           bool(colour_match), max_shrink, max_output_pixels, check_paste_mask(paste_mask))
    cache = _pipelines_of(method)
    pipe = cache.get(key) if cache is not None else None
    if pipe is None:  # (a detector or background object keyed by id: the pipeline holds it, so the id is its)
        pipe = FacePipeline(method, scale, detector=detector, background=background, min_face=min_face,
                            feather=feather, colour_match=colour_match, max_shrink=max_shrink,
                            max_output_pixels=max_output_pixels, paste_mask=paste_mask)
        if cache is not None:
            if len(cache) >= _PIPELINES_PER_METHOD:
                cache.pop(next(iter(cache)))
            cache[key] = pipe
    result = pipe.run(image, seed=seed)
    if warn_no_face and not result.records:
        warnings.warn(f"{no_face_found(pipe, image)}: the photo is only upscaled by the background method", stacklevel=2)
    return result.image, [r.as_dict() for r in result.records]


def no_face_found(pipe: FacePipeline, image: Tensor) -> str:
    """"no face found", and why when ``min_face`` is the cause: a face that size cannot fit the photo."""
    h, w = image.shape[-2:]
    if pipe.min_face > min(h, w):
        return (f"no face found: a face of --min-face {pipe.min_face:g} px cannot fit in the {w}×{h} photo "
                "(a lower --min-face searches for smaller faces)")
    return "no face found"


class NoFaceError(RestorekitError):
    """A photo in which no face was restored, where one was required (``--require-face``)."""


def photo_outputs(pipe: FacePipeline, image: Tensor, stem: str, *, seed: int | None = None,
                  n_samples: int = 1, only_faces: bool = False, require_face: bool = False,
                  warn: Callable[[str], None] | None = None,
                  where: object = "photo") -> tuple[list[tuple[str, Tensor]], dict[str, Any]]:
    """What ``run --faces detect`` writes for one photo: ``[(stem, image), …]`` and the sidecar.

    Outputs are ``<stem>`` (``<stem>_s<j>`` per sample), or with ``only_faces`` the restored
    crops ``<stem>_face<i>`` (``_s<j>``), ``i`` being the face's index in the sidecar. A photo in
    which no face was restored is passed through as the background upscale with a warning, or
    raises :class:`NoFaceError` when ``require_face``. ``where`` names the photo (its input path) in
    a refusal and in that warning, as error lines name it.
    """
    result = pipe.run(image, seed=seed, n_samples=n_samples, where=where)
    sidecar = result.sidecar()
    if result.n_restored == 0:
        why = no_face_found(pipe, image) if not result.records else (
            "no face restored (" + "; ".join(r.reason for r in result.records if r.reason) + ")")
        if require_face:
            raise NoFaceError(f"{why} (--require-face)")
        sidecar["warning"] = why
        if warn is not None:
            what = "nothing written (--only-faces)" if only_faces else f"passed through ({result.background} ×{pipe.scale})"
            warn(f"{where}: {why}; {what}")
    suffix = (lambda j: "") if n_samples == 1 else (lambda j: f"_s{j}")
    outs: list[tuple[str, Tensor]] = []
    if only_faces:
        for i, crops in sorted(result.crops.items()):
            outs.extend((f"{stem}_face{i}{suffix(j)}", c) for j, c in enumerate(crops))
    else:
        outs.extend((f"{stem}{suffix(j)}", img) for j, img in enumerate(result.images))
    return outs, sidecar


def sidecar_json(data: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers (a point, a box) on one line. The lists are found in
    the data, not by a pattern over the text, which also rewrote lists spelt inside strings (an
    input named ``shot [ 1, 2 ].png``, an option's text), so that a rerun read other settings."""
    import json
    import secrets

    token = secrets.token_hex(8)
    flat: list[list[Any]] = []

    def mark(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                flat.append(list(value))
                return f"{token}:{len(flat) - 1}"
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(data), indent=2)
    for i, numbers in enumerate(flat):
        text = text.replace(json.dumps(f"{token}:{i}"), json.dumps(numbers), 1)
    return text


def not_a_face_method(info: MethodInfo) -> str | None:
    """What to tell a user who runs a method that is not a face method through the face pipeline."""
    if info.input_kind == "aligned_face":
        return None
    return (f"{info.name} is not a face method (input_kind={info.input_kind}); "
            "its face crops are restored like any image")


def faces_summary(sidecars: Any) -> str:
    """``9 of 72 faces restored; 32 under --min-face, 31 over --max-shrink: left to the background``
    over the sidecars of a run (the photos it made now); just ``N faces restored`` when none was
    left out."""
    found = restored = small = shrink = other = 0
    for side in sidecars:
        if not isinstance(side, dict):
            continue
        found += int(side.get("faces_found", 0) or 0)
        restored += int(side.get("faces_restored", 0) or 0)
        for f in side.get("faces") or []:
            if not isinstance(f, dict) or f.get("action") == "restored":
                continue
            if f.get("limit") == "min_face":
                small += 1
            elif f.get("limit") == "max_shrink":
                shrink += 1
            else:
                other += 1
    if restored == found:
        return f"{restored} faces restored"
    parts = [f"{n} {what}" for n, what in ((small, "under --min-face"), (shrink, "over --max-shrink"),
                                           (other, "not restored otherwise")) if n]
    return f"{restored} of {found} faces restored; {', '.join(parts)}: left to the background"


def detect_plan(cls: type[Method], options: Any, settings: dict[str, Any], output: Any, *, scale: int,
                detector: str | None, background: str | None, min_face: float | None, max_shrink: float | None,
                colour_match: bool, only_faces: bool, n_samples: int, ext: str,
                paste_mask: str | None = None) -> DetectPlan:
    """The :class:`~restorekit.faces.reruns.DetectPlan` of one ``run --faces detect`` of method
    ``cls`` (``options`` validated; ``settings`` its :func:`~restorekit.run_record.run_settings`),
    before the method is built: the detector and background are checked here (one line naming
    what is missing), and the defaults filled in as :func:`run_detect` runs them."""
    from pathlib import Path

    from ..plugins import registry
    from .detectors import check_available

    det_name = detector or DEFAULT_DETECTOR
    registry().get("face_detectors", det_name)
    check_available(det_name)
    bg_name = background or "bicubic"
    check_background(bg_name)
    mf = float(DEFAULT_MIN_FACE if min_face is None else min_face)
    if not mf >= 0:  # NaN too (FacePipeline says so again)
        raise RestorekitError(f"--min-face must be ≥ 0 px, got {min_face}")
    ms = DEFAULT_MAX_SHRINK if max_shrink is None else max_shrink
    if not ms >= 1:  # NaN too
        raise RestorekitError(f"--max-shrink must be ≥ 1, got {max_shrink}")
    shrink = float(ms) if math.isfinite(ms) else None  # no limit as null: strict JSON has no Infinity
    mask = check_paste_mask(DEFAULT_PASTE_MASK if paste_mask is None else paste_mask)
    pins = {k: settings[k] for k in PINS if k in settings}
    recorded: dict[str, Any] = {"options": result_options(options), "min_face": mf, "max_shrink": shrink,
                                "couple": bool(settings.get("couple")),
                                **({"seed": settings["seed"]} if "seed" in settings else {}), **pins}
    note = {**settings, "faces": "detect", "detector": det_name, "min_face": mf, "max_shrink": shrink,
            "only_faces": bool(only_faces)}
    sidecar_now = {"method": cls.info.name, "scale": scale, "detector": det_name, **recorded}
    if not only_faces:  # the restored crops alone do not depend on the background, mask or colour matching
        note["background"] = bg_name
        note["paste_mask"] = recorded["paste_mask"] = mask
        sidecar_now.update(background=bg_name, paste_mask=mask, **{"colour match": "on" if colour_match else "off"})
    return DetectPlan(outdir=Path(output), method=cls.info.name, scale=scale, detector=det_name, background=bg_name,
                      colour_match=bool(colour_match), only_faces=bool(only_faces), n_samples=n_samples, ext=ext,
                      note=note, sidecar_now=sidecar_now, recorded=recorded,
                      ignore_options=frozenset(type(options).result_neutral))


def end_of_run(plan: DetectPlan, result: Any, *, device: str | None, backend: str, as_json: bool,
               quiet: bool) -> NoReturn:
    """Say how ``run --faces detect`` went (``--json``, or one line unless ``quiet``; rank 0 only,
    under torchrun) and exit like ``run`` (0, or 1 when some inputs failed). ``device`` None: no
    method was built (every photo was finished, or none could be read)."""
    import click

    from ..cli import emit_json
    from ..sharding import current_job

    if current_job().is_main:  # under torchrun, rank 0 prints the whole job's summary
        if as_json:
            emit_json({"method": plan.method, "scale": plan.scale, "device": device, "backend": backend,
                       "faces": "detect", "detector": plan.detector, "background": plan.background,
                       **result.as_dict()})
        elif not quiet:
            click.echo(f"{len(result.written)} written ({faces_summary(result.reports.values())}), "
                       f"{result.skipped_text()}, {len(result.failed)} failed → {plan.outdir}", err=True)
    raise SystemExit(result.exit_code)


def run_detect(method: Method, plan: DetectPlan, items: list[Any], *, require_face: bool,
               seed: int | None, overwrite: bool, couple: bool, max_pixels: int,
               quiet: bool, as_json: bool, max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
               backend: str = "torch") -> None:
    """The body of ``restorekit run --faces detect``: every photo through :class:`FacePipeline`.

    The rerun checks are :class:`~restorekit.faces.reruns.DetectPlan`'s, made before the method
    was built. Writes the outputs of :func:`photo_outputs`, each recording ``plan.note_for``
    inside, and then the photo's sidecar (:func:`~restorekit.faces.reruns.sidecar_name`,
    atomically, last: a photo is finished once its sidecar is there, so an interrupted one is
    done again) — only where every output there is this run's (one kept from another program gets
    none, one made with other settings fails the photo); exits like ``run``.
    """
    from ..batch import process_files
    from ..cli import error_line, fail_usage, warn
    from ..images import atomic_write_bytes

    try:
        pipe = FacePipeline(method, plan.scale, detector=plan.detector, background=plan.background,
                            min_face=plan.recorded["min_face"], max_shrink=plan.recorded["max_shrink"],
                            colour_match=plan.colour_match, max_output_pixels=max_output_pixels,
                            paste_mask=plan.note.get("paste_mask", DEFAULT_PASTE_MASK))
    except RestorekitError as exc:
        fail_usage(str(exc))
        return
    note = not_a_face_method(method.info)
    if note and not quiet:
        warn(note)
    outdir, ext, n_samples, only_faces = plan.outdir, plan.ext, plan.n_samples, plan.only_faces
    sidecars: dict[str, dict[str, Any]] = {}
    planned: dict[str, list[Any]] = {}  # each photo's output paths, as restore made them

    def restored(item: Any) -> bool:
        return bool(sidecars[str(item.path)].get("faces_restored"))

    def restore(image: Tensor, item: Any) -> list[tuple[str, Tensor]]:
        outs, sidecar = photo_outputs(pipe, image, item.stem, seed=seed, n_samples=n_samples,
                                      only_faces=only_faces, require_face=require_face,
                                      where=item.path,
                                      warn=warn)  # -q too: the photo is only upscaled by the background
        sidecar = {"input": str(item.path), "method": method.info.name, **plan.recorded, **sidecar}
        sidecars[str(item.path)] = sidecar
        planned[str(item.path)] = [outdir / f"{stem}.{ext}" for stem, _ in outs]
        if only_faces and not outs:  # counted as skipped, with the reason, not lost from the summary
            write_sidecar(item)  # nothing else to write: the sidecar marks the photo done
            raise _nothing_to_write(str(sidecar.get("warning") or "no face restored"))
        if couple and not only_faces:
            outs = [(stem, side_by_side(image, out)) for stem, out in outs]
        return outs

    def write_sidecar(item: Any) -> None:
        """After the photo's images are saved (process_files' ``finish``): never a sidecar without
        them, nor for images kept there that this run did not make."""
        problem = plan.kept_problem(item, planned.get(str(item.path), []), restored(item))
        if problem is not None:
            msg, fails = problem
            if fails:
                raise ImageError(msg)
            warn(msg)
            return
        atomic_write_bytes(plan.sidecar_path(item.stem), (sidecar_json(sidecars[str(item.path)]) + "\n").encode())

    result = process_files(items, outdir, restore, ext=ext, overwrite=overwrite, max_pixels=max_pixels,
                           quiet=quiet, label=f"{method.info.name} (faces)", on_error=error_line,
                           expected=plan.expected, report=lambda item: sidecars.get(str(item.path)),
                           out_scale=plan.scale, n_outputs=n_samples, max_output_pixels=max_output_pixels,
                           finish=write_sidecar, finished=plan.finished, couple=couple and not only_faces,
                           note=lambda item, name: plan.note_for(item, restored(item)))
    end_of_run(plan, result, device=str(method.device), backend=backend, as_json=as_json, quiet=quiet)
