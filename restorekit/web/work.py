"""What one job of the page does, with restorekit's own pieces only.

1. ``crop`` mode: the largest face of the upload, found and FFHQ-aligned as ``restorekit demo`` does
   (:func:`restorekit.faces.pipeline.largest_face_crop` with the demo's detector,
   :func:`restorekit.faces.pipeline.largest_face_detector`), rounded to 8 bits:
   what is degraded, restored and scored against is the PNG the page shows.
2. ``degrade``: the upload (or crop) is the HR; its LR is compare's
   (:func:`restorekit.harness.inputs.degrade_hr`: crop to a multiple of the scale, the degradation
   spec, default ``bicubic:K``), rounded to 8 bits as compare's LR file. Otherwise the upload is the LR.
3. Each method restores the LR ×scale (``detect`` mode: as ``run --faces detect``, through
   :class:`restorekit.faces.pipeline.FacePipeline` — every face found once on the LR photo,
   aligned, restored, pasted back over the bicubic-upscaled photo). Once the faces are found, the
   job is refused (one line) when any method's composites and restored face crops together would
   pass ``--max-output-pixels``, before anything is restored; each face aligned, restored, pasted
   and written is a progress step, where a cancel stops the job.
4. Every output is rounded to 8 bits, written (PNG) and, with an HR, scored by the harness
   (:func:`restorekit.harness.runner.score`; samples of a stochastic method aggregated by
   :func:`restorekit.harness.aggregate.summarize`: mean ± population std). At ×1, as in
   ``compare --scale 1``, a degradation must be named and ``lr_consistency`` is left out unless
   ``serve --metrics`` names it.

The page reads ``job.result`` while the job runs, so each method's outputs appear as soon as it
finishes; the JSON of the numbers is written when the job ends, however it ends.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .. import __version__
from ..degradations import parse_spec
from ..errors import RestorekitError, exception_line
from ..faces.pipeline import FacePipeline, largest_face_crop, not_a_face_method
from ..harness.aggregate import best_per_column, summarize
from ..harness.inputs import check_fits_scale, degrade_hr, png_bytes
from ..harness.runner import SR_ONLY_AT_SCALE_ONE, backend_info, left_out_at_scale, metric_device, score
from ..harness.store import Record, dumps, jsonable
from ..images import check_output_size, check_size, from_pil, to_pil
from ..interfaces import Face
from ..methods import check_restored, keep_black_and_white
from ..plugins import failure_reason
from ..progress import reporting
from .catalogue import Catalogue, MethodEntry
from .config import DEFAULT_METRICS, ServeConfig
from .files import FileStore, StorageError, safe_download_name
from .jobs import Job, JobSettings
from .uploads import Upload, UploadStore

#: The side of the face crop in ``crop`` mode unless a chosen method has its own ``resolution``.
CROP_SIZE = 128
#: Drawings of detected faces are made at least this many pixels on their long side.
OUTLINE_MIN_SIDE = 384
#: Why a ×1 job that degrades the upload needs a degradation (as ``compare --scale 1``).
SCALE_ONE_NEEDS_DEGRADATION = ("at ×1 degrading the upload needs a degradation (e.g. noise:15, blur:1.5, jpeg:30): "
                               "the default, bicubic:1, leaves the image as it is, so every method would restore an "
                               "undamaged image and doing nothing would score best")


def scored_metrics(catalogue: Catalogue, k: int, named: list[str] | None) -> list[dict[str, Any]]:
    """The catalogue's metrics (set up once) as a job at scale ``k`` lists them: at ×1 those declaring
    :attr:`~restorekit.interfaces.Metric.sr_only` (``lr_consistency``) are skipped with the reason, as
    ``compare --scale 1`` does (:func:`restorekit.harness.runner.scale_metrics`), unless ``named``
    (the operator's ``serve --metrics``; None: the page's default list) names them."""
    rows: list[dict[str, Any]] = catalogue.public()["metrics"]
    for row, m in zip(rows, catalogue.metrics):
        if row["status"] == "ok" and left_out_at_scale(m.cls, m.name, k, named):
            row.update(status="skipped", reason=SR_ONLY_AT_SCALE_ONE)
    return rows


def named_metrics(config: ServeConfig) -> list[str] | None:
    """The metrics the operator named (``serve --metrics``: ``metrics_named``, or a list other than
    :data:`~restorekit.web.config.DEFAULT_METRICS`), None for the page's default list."""
    named = config.metrics_named or list(config.metrics) != list(DEFAULT_METRICS)
    return list(config.metrics) if named else None


def outline_faces(image: Tensor, boxes: list[tuple[int, tuple[float, float, float, float], bool]],
                  factor: float) -> Image.Image:
    """``image`` with each box (``index``, ``x0,y0,x1,y1`` × ``factor``, restored or not) drawn and numbered."""
    pil = to_pil(image)
    grow = max(1, math.ceil(OUTLINE_MIN_SIDE / max(pil.size)))
    if grow > 1:
        pil = pil.resize((pil.width * grow, pil.height * grow), Image.Resampling.NEAREST)
    f = factor * grow
    draw = ImageDraw.Draw(pil)
    width = max(2, round(max(pil.size) / 128))
    for index, (x0, y0, x1, y1), restored in boxes:
        colour = (40, 220, 90) if restored else (255, 160, 0)
        draw.rectangle((x0 * f, y0 * f, x1 * f, y1 * f), outline=colour, width=width)
        draw.text((x0 * f + width + 2, y0 * f + width + 1), str(index), fill=colour)
    return pil


def page_text(column: str, v: float) -> str:
    """A mean as the page prints it (app.js ``fmt``; ms to 0.1): the best of a column is marked as read."""
    if column == "runtime":
        return f"{v:.1f}"
    a = abs(v)
    if a != 0 and (a < 1e-2 or a >= 1e5):
        return f"{v:.2e}"
    return f"{v:.2f}" if a >= 10 else f"{v:.4f}"


class Restorer:
    """Validates the page's requests and runs its jobs, one at a time, with the catalogue's methods."""

    def __init__(self, config: ServeConfig, catalogue: Catalogue, files: FileStore, uploads: UploadStore) -> None:
        self.config = config
        self.catalogue = catalogue
        self.files = files
        self.uploads = uploads
        # ``detect`` jobs' pipelines, built once per (method, scale): at most the methods offered ×
        # ``max_scale`` of them, each holding the catalogue's method and detector (built once for the
        # server anyway) and a bicubic background — nothing that grows with the jobs.
        self._pipelines: dict[tuple[str, int], FacePipeline] = {}

    # ------------------------------------------------------------------ checks before queueing

    def upload_of(self, settings: JobSettings) -> Upload:
        upload = self.uploads.get(settings.upload)
        if upload is None:
            raise RestorekitError(f"the upload is no longer held (the server keeps the last "
                                  f"{self.config.keep_uploads}): choose the image again")
        return upload

    def entries(self, settings: JobSettings) -> list[MethodEntry]:
        return [self.catalogue.entry(n) for n in dict.fromkeys(settings.methods)]

    def crop_size(self, entries: list[MethodEntry]) -> int:
        sizes = [int(getattr(e.method, "resolution")) for e in entries
                 if isinstance(getattr(e.method, "resolution", None), int)]
        return max(sizes) if sizes else CROP_SIZE

    def check(self, settings: JobSettings, upload: Upload | None = None) -> Upload:
        """Everything a request can get wrong, before it waits in the queue: one line naming it.
        Returns the upload (``upload``, else the one the store holds under ``settings.upload``),
        which the job then holds until it ends."""
        cfg = self.config
        if upload is None:
            upload = self.upload_of(settings)
        entries = self.entries(settings)
        k = settings.scale
        if k > cfg.max_scale:
            raise RestorekitError(f"scale {k} is over this server's limit of {cfg.max_scale} "
                                  "(restorekit serve --max-scale)")
        if settings.samples > cfg.max_samples:
            raise RestorekitError(f"{settings.samples} samples is over this server's limit of {cfg.max_samples} "
                                  "(restorekit serve --max-samples)")
        for e in entries:
            if e.method is None:
                raise RestorekitError(f"{e.name} cannot run here: {e.reason}")
            try:
                e.method.check_scale(k)
            except ValueError as exc:
                raise RestorekitError(str(exc)) from None
        if settings.degradation is not None and not settings.degrade:
            raise RestorekitError("a degradation applies only when the page degrades the upload (degrade)")
        if settings.degrade:
            if k == 1 and not settings.degradation:
                raise RestorekitError(SCALE_ONE_NEEDS_DEGRADATION)
            chain = parse_spec(settings.degradation or f"bicubic:{k}")
            if chain.scale != k:
                raise RestorekitError(f"degradation '{chain.spec()}' downsizes by {chain.scale}, but the scale is {k}")
        if settings.faces != "aligned" and self.catalogue.detector is None:
            raise RestorekitError(f"finding faces is not available here: {self.catalogue.detector_reason}")
        w, h = upload.width, upload.height
        if settings.faces == "crop":
            w = h = self.crop_size(entries)
        if settings.degrade:  # as degrade_hr will: the HR's own size first, then its LR's
            check_fits_scale(w, h, k, upload.name)
            w, h = w // k, h // k
            check_size(w, h, f"{upload.name}: its ×{k} LR", max_pixels=cfg.max_pixels)
        n_out = max((self._samples(e, settings)[1] for e in entries), default=1)
        check_output_size(w, h, k, upload.name, max_output_pixels=cfg.max_output_pixels, n_outputs=n_out)
        return upload

    @staticmethod
    def _samples(entry: MethodEntry, settings: JobSettings) -> tuple[int | None, int]:
        """``(seed, n_samples)`` for one method: deterministic ones run once, without a seed."""
        if entry.deterministic:
            return None, 1
        return settings.seed, settings.samples

    # ------------------------------------------------------------------ running

    def _image(self, job: Job, tensor: Tensor | Image.Image, label: str, download: str, role: str) -> dict[str, Any]:
        pil = tensor if isinstance(tensor, Image.Image) else to_pil(tensor)
        token = self.files.add(png_bytes(pil), "png", download, f"j{job.id}")
        return {"role": role, "label": label, "url": f"files/{token}", "download": safe_download_name(download),
                "width": pil.width, "height": pil.height}

    def _pipeline(self, entry: MethodEntry, k: int) -> FacePipeline:
        key = (entry.name, k)
        pipe = self._pipelines.get(key)
        if pipe is None:
            assert entry.method is not None and self.catalogue.detector is not None
            pipe = FacePipeline(entry.method, k, detector=self.catalogue.detector, background="bicubic",
                                max_output_pixels=self.config.max_output_pixels)
            self._pipelines[key] = pipe
        return pipe

    def run(self, job: Job) -> None:
        """Do ``job`` (the worker thread); progress and cancellation through :mod:`restorekit.progress`."""
        with self.catalogue.lock, reporting(job.report):
            try:
                self._run(job)
            finally:
                self._write_numbers(job)

    def _run(self, job: Job) -> None:
        s = job.settings
        # Checked again (the catalogue is the same, but a job submitted without its upload is looked
        # up here); the job holds its upload from submission, so newer uploads cannot push it out.
        upload = self.check(s, job.upload)
        entries = self.entries(s)
        k = s.scale
        stem = upload.stem
        listed = scored_metrics(self.catalogue, k, named_metrics(self.config))
        with job.lock:
            job.result.update({"input": upload.public(), "stem": stem, "settings": s.model_dump(mode="json"),
                               "images": [], "methods": [], "notes": [],
                               "metrics": listed if s.degrade else []})
        job.units = len(entries) + 1
        image = upload.image()  # float32 while the job runs; the store keeps the 8-bit pixels
        boxes: list[tuple[int, tuple[float, float, float, float], bool]] = []

        job.report("preparing the input", 0, 1)
        if s.faces == "crop":
            size = self.crop_size(entries)
            assert self.catalogue.crop_detector is not None
            image, face = largest_face_crop(image, size, self.catalogue.crop_detector)
            image = from_pil(to_pil(image))  # the HR (or LR) as its PNG holds it: what is scored is what is shown
            job.publish("face", jsonable(face))
            job.publish("notes", f"the largest face, FFHQ-aligned at {size}×{size} px (detector "
                                 f"{self.catalogue.detector_name})", append=True)
            boxes = [(0, tuple(face["box"]), True)]  # type: ignore[list-item]
        hr: Tensor | None = None
        if s.degrade:
            chain = parse_spec(s.degradation or f"bicubic:{k}")
            hr, lr = degrade_hr(image, chain, k, where=upload.name, max_pixels=self.config.max_pixels)
            lr = from_pil(to_pil(lr))  # exactly what compare's 8-bit LR file holds
            job.publish("degradation", chain.spec())
        else:
            lr = image
        faces: list[Face] = []
        if s.faces == "detect":
            assert self.catalogue.detector is not None
            faces = self.catalogue.detector.detect(lr[0])
            boxes = [(i, f.box, True) for i, f in enumerate(faces)]
            job.publish("notes", f"{len(faces)} face(s) found by {self.catalogue.detector_name} in the "
                                 f"{lr.shape[-1]}×{lr.shape[-2]} input", append=True)
            # The restored crops are outputs too (shown, written): refused before any method restores.
            for entry in entries:
                job.check_cancel()
                pipe = self._pipeline(entry, k)
                pipe.check_outputs(int(lr.shape[-1]), int(lr.shape[-2]), pipe.restorable(faces),
                                   self._samples(entry, s)[1], upload.name,
                                   "crop the photo to fewer faces; the limit is restorekit serve --max-output-pixels")
        h, w = int(lr.shape[-2]), int(lr.shape[-1])
        job.publish("images", self._image(job, lr, f"input (LR) {w}×{h}", f"{stem}_lr_x{k}.png", "lr"), append=True)
        if hr is not None:
            job.publish("images", self._image(job, hr, f"original (HR) {hr.shape[-1]}×{hr.shape[-2]}",
                                              f"{stem}_hr.png", "hr"), append=True)
        if s.faces != "aligned":
            # The boxes are where the detector looked: the upload (crop), else the LR (drawn on the HR if any).
            if s.faces == "crop":
                base, factor = upload.image(), 1.0
            elif hr is not None:
                base, factor = hr, float(k)
            else:
                base, factor = lr, 1.0
            job.publish("images", self._image(job, outline_faces(base, boxes, factor),
                                              "faces found" if s.faces == "detect" else "the face found (outlined)",
                                              f"{stem}_faces.png", "faces"), append=True)
        job.units_done = 1

        mdev = metric_device(self.catalogue.device)
        scored = {row["name"] for row in listed if row["status"] == "ok"}
        active = [m for m in self.catalogue.metrics if m.instance is not None and m.name in scored] \
            if hr is not None else []
        summaries = []
        for entry in entries:
            job.report(f"{entry.name}: restoring", 0, 1)
            row, records = self._method(job, entry, lr, hr, k, faces, stem, active, mdev)
            if records:
                summary = summarize(entry.name, entry.deterministic, [r.seed for r in records], 1, records,
                                    [m.name for m in active])
                row["metrics"] = jsonable({m: st.as_dict() for m, st in summary.metrics.items()})
                if active:  # each output's own values (the samples of a stochastic method)
                    row["per_output"] = jsonable([{"output": j, "metrics": r.metrics, "metric_errors": r.metric_errors}
                                                  for j, r in enumerate(records)])
                summaries.append(summary)
            job.publish("methods", row, append=True)
            if active and summaries:
                best = best_per_column(summaries, {m.name: m.higher_is_better for m in active}, page_text)
                job.publish("best", {col: sorted(names) for col, names in best.items()})
            job.units_done += 1

    def _method(self, job: Job, entry: MethodEntry, lr: Tensor, hr: Tensor | None, k: int, faces: list[Face],
                stem: str, active: list[Any], mdev: torch.device) -> tuple[dict[str, Any], list[Record]]:
        """Restore with one method, write and score its outputs; a failure is this method's row only."""
        from ..progress import Cancelled

        m = entry.method
        assert m is not None
        seed, n = self._samples(entry, job.settings)
        row: dict[str, Any] = {"name": entry.name, "status": "ok", "seed": seed, "samples": n, "outputs": [],
                               "crops": [], "notes": []}
        if entry.deterministic and job.settings.samples > 1:
            row["notes"].append(f"{entry.name} is deterministic: one output")
        # As `run --faces detect`: every method restores the aligned face crops (a method that is not a
        # face method is told so), pasted back over the bicubic-upscaled photo.
        detect = job.settings.faces == "detect"
        note = not_a_face_method(m.info) if detect else None
        if note:
            row["notes"].append(note)
        t0 = time.perf_counter()
        try:
            if detect:
                result = self._pipeline(entry, k).run(lr, seed=seed, n_samples=n, faces=faces,
                                                      where=job.upload.name if job.upload is not None else "photo")
                outs = result.images
                row["faces"] = [r.as_dict() for r in result.records]
                if not result.n_restored:
                    row["notes"].append("no face restored: the photo is only upscaled (bicubic)")
                crops = result.crops
            else:
                with torch.no_grad():
                    y = m.restore(lr.to(m.device), k, seed=seed, n_samples=n)
                y = check_restored(entry.name, y, lr, k, n).cpu()  # size, dtype, NaN, range: as run and compare
                y = keep_black_and_white(m, lr.cpu(), y, n)
                outs, crops = [y[j:j + 1] for j in range(n)], {}
            if not all(bool(torch.isfinite(o).all()) for o in outs):
                raise RestorekitError(f"{entry.name}: output contains NaN or inf")
        except Cancelled:
            row.update(status="cancelled")
            job.publish("methods", row, append=True)
            raise
        except (Exception, SystemExit) as exc:  # one method failing (or calling sys.exit) must not stop the others
            row.update(status="failed", error=str(exc) if isinstance(exc, RestorekitError)
                       else failure_reason(exc) if isinstance(exc, SystemExit) else exception_line(exc))
            return row, []
        ms = (time.perf_counter() - t0) * 1000.0
        row["ms"] = round(ms, 1)  # all of its outputs; best.runtime ranks ms_per_output
        row["ms_per_output"] = round(ms / n, 1)
        reports = getattr(m, "last_reports", None)
        if isinstance(reports, list) and any(reports) and not detect:
            row["reports"] = jsonable(reports)
        records: list[Record] = []
        try:  # each output and face crop written is a step: a cancel there keeps what was written
            for j, out in enumerate(outs):
                job.report(f"{entry.name}: writing outputs", j, len(outs))
                suffix = "" if n == 1 else f"_s{j}"
                pil = to_pil(out)
                label = entry.name + (f" sample {j}" if n > 1 else "") + f" {pil.width}×{pil.height}"
                row["outputs"].append(self._image(job, pil, label, f"{stem}_x{k}_{entry.name}{suffix}.png", "output"))
                rec = Record(entry.name, stem, j if n > 1 else seed, "", "", "ok", ms=ms / n)
                if hr is not None:
                    values, errors = score(active, from_pil(pil), hr, lr, k, mdev)
                    rec.metrics, rec.metric_errors = values, errors
                    if errors:
                        row.setdefault("metric_errors", {}).update(errors)
                records.append(rec)
            n_crops = sum(len(samples) for samples in crops.values())
            for index, samples in sorted(crops.items()):
                for j, crop in enumerate(samples):
                    job.report(f"{entry.name}: writing face crops", len(row["crops"]), n_crops)
                    suffix = "" if n == 1 else f"_s{j}"
                    row["crops"].append(self._image(job, crop, f"face {index}" + (f" sample {j}" if n > 1 else ""),
                                                    f"{stem}_x{k}_{entry.name}_face{index}{suffix}.png", "crop"))
        except Cancelled:
            row.update(status="cancelled")
            job.publish("methods", row, append=True)
            raise
        return row, records

    def _write_numbers(self, job: Job) -> None:
        """The JSON of everything the page shows (settings, sizes, metrics, timings, faces, versions)."""
        if "input" not in job.result:
            return
        data = {"restorekit": __version__, "backend": backend_info(self.catalogue.device),
                **{k: v for k, v in job.result.items() if k != "numbers"}}
        stem = str(job.result.get("stem", "upload"))
        text = dumps(data, indent=2)
        name = f"{stem}_x{job.settings.scale}_results.json"
        try:
            token = self.files.add(text.encode(), "json", name, f"j{job.id}")
        except StorageError as exc:  # (in a finally: the job's own error, if any, is what the page shows)
            job.publish("notes", f"the numbers could not be written: {exc}", append=True)
            return
        job.publish("numbers", {"url": f"files/{token}", "download": safe_download_name(name)})


def forget_job(files: FileStore, job: Job) -> None:
    """Delete a finished job's files (the queue keeps the last few)."""
    files.drop_group(f"j{job.id}")


def sample_upload(uploads: UploadStore) -> Upload:
    """The public-domain astronaut photo that ``restorekit demo`` restores, as an upload."""
    from ..samples import astronaut_pixels

    return uploads.add(astronaut_pixels(), "astronaut.png")
