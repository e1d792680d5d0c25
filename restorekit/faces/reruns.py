"""Reruns of ``restorekit run --faces detect``: which photos are finished, and which outputs there
were made otherwise.

A photo's outputs carry the settings that made them inside the file (:mod:`restorekit.provenance`,
as ``run`` records them for aligned faces, with ``"faces": "detect"``, the detector, background,
limits and colour matching), so an aligned run, or a faces run with other settings, refuses them
rather than counting them as its own. Beside them a sidecar describes the photo's faces; it is
written last, so it also marks the photo finished. One sidecar per format and kind of output
(:func:`sidecar_name`): a run in another ``--ext``, or with ``--only-faces``, in the same folder
neither reads nor replaces the description of outputs it did not make. An older restorekit wrote
one ``<stem>.json`` for every format and no record inside the images: it is still read for such
images (:meth:`DetectPlan.sidecar_to_check`).

Everything here is known before the method is built: a rerun of a finished folder loads no weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..batch import SkipInput
from ..provenance import read_note
from ..run_record import (PINS, changed_among, changed_outputs, differences, option_differences,
                          paste_mask_difference, pin_differences, same_default_weights, same_files, seed_used)

NO_FACE = "no face"  # how the end-of-run line counts --only-faces photos with nothing to write


def _nothing_to_write(why: str) -> SkipInput:
    """The skip of a photo in which no face was restored, under ``--only-faces``."""
    return SkipInput(f"{why}; nothing to write (--only-faces)", NO_FACE)


def sidecar_name(stem: str, ext: str, only_faces: bool = False) -> str:
    """The sidecar of one photo's outputs in ``ext``: ``<stem>.<ext>.json`` beside ``<stem>.<ext>``
    (and its samples), ``<stem>_faces.<ext>.json`` beside its restored crops ``<stem>_face<i>.<ext>``."""
    return f"{stem}_faces.{ext}.json" if only_faces else f"{stem}.{ext}.json"


def legacy_sidecar(outdir: Path, stem: str) -> Path:
    """The sidecar an older restorekit wrote for every format and kind of output: ``<stem>.json``."""
    return outdir / f"{stem}.json"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system: not there
        return False


def _read_json(path: Path) -> Any:
    """The JSON value in ``path``; None where there is none, or it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _sidecar_file(outdir: Path, stem: str, ext: str, only_faces: bool) -> Path:
    """This format's sidecar where it exists, else an older restorekit's ``<stem>.json`` where that
    exists (else the former)."""
    path = outdir / sidecar_name(stem, ext, only_faces)
    legacy = legacy_sidecar(outdir, stem)
    return legacy if not _is_file(path) and _is_file(legacy) else path


def _expected_firsts(outdir: Any, stem: str, only_faces: bool, ext: str = "png") -> list[str]:
    """Output stems (before sample suffixes) a finished photo has: ``<stem>``, or with
    ``only_faces`` one ``<stem>_face<i>`` per face its sidecar lists as restored (a photo without
    a sidecar, or whose sidecar does not parse, is not finished: the run asks for the sidecar
    too, since it is written after the images). A photo whose sidecar lists no restored face
    raises :class:`~restorekit.batch.SkipInput` (done before, nothing to write)."""
    if not only_faces:
        return [stem]
    sidecar = _read_json(_sidecar_file(Path(outdir), stem, ext, True))
    try:
        faces = [int(f["index"]) for f in sidecar["faces"] if f.get("action") == "restored"]
        if any(not 0 <= i < 10**6 for i in faces):  # no face index of a photo's
            raise ValueError("a face index out of range")
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):  # none, or of another shape
        return [f"{stem}_face0"]
    if not faces:
        raise _nothing_to_write(str(sidecar.get("warning") or "no face restored"))
    return [f"{stem}_face{i}" for i in faces]


def sidecar_differences(side: Mapping[str, Any], now: Mapping[str, Any], *,
                        ignore_options: frozenset[str] = frozenset()) -> list[str]:
    """What differs between a photo's sidecar and this run's settings ``now`` (as sidecars record
    them: method, scale, detector, background, colour match, paste mask, the method's options but
    ``ignore_options``, min_face, max_shrink, seed, couple, weights pins), ``key: old → new``. A key
    an older sidecar lacks is not a difference, but for the paste mask (it was ``square`` then);
    colour matching and the mask show only where a face was restored."""
    listed = side.get("faces")
    faces = [f for f in listed if isinstance(f, dict) and f.get("action") == "restored"] \
        if isinstance(listed, list) else []
    old = {k: side.get(k) for k in ("method", "scale", "detector", "background")}
    if faces:
        old["colour match"] = "on" if any("color_match" in f for f in faces) else "off"
    found = [f"{k}: {old[k]} → {now[k]}" for k in old if k in now and old[k] is not None and old[k] != now[k]]
    for k in ("min_face", "max_shrink", "seed", "couple"):
        same_seed = k == "seed" and seed_used(side.get(k)) == seed_used(now.get(k))  # (omitted: seed 0)
        if k in side and k in now and side[k] != now[k] and not same_seed:
            found.append(f"{k}: {side[k]} → {now[k]}")
    if faces:
        found += paste_mask_difference(side, now)
    defaults = same_default_weights(side, now)  # (the default weights named explicitly: the same weights)
    for k in PINS:  # (in one of them only: the weights options differ, and say so themselves)
        if isinstance(side.get(k), dict) and isinstance(now.get(k), dict) and old["method"] == now.get("method"):
            a, b = ({n: v for n, v in d.items() if n not in defaults} for d in (side[k], now[k]))
            found += pin_differences(k, a, b)
    if isinstance(side.get("options"), dict) and isinstance(now.get("options"), dict):
        found += option_differences(side["options"], now["options"],
                                    ignore_options=ignore_options | same_files(side, now) | defaults)
    return found


def settings_changed(outdir: Any, stems: list[str], now: dict[str, Any], *,
                     ignore_options: frozenset[str] = frozenset(), ext: str | None = None,
                     only_faces: bool = False) -> tuple[list[str], list[str]] | None:
    """The photos among ``stems`` whose sidecar in ``outdir`` (this ``ext``'s, or an older
    restorekit's ``<stem>.json``; ``ext`` None: only the latter) records other settings than ``now``
    (:func:`sidecar_differences`), and the differences; None when there are none. A sidecar that
    is missing or of another shape is passed over (that photo is made again)."""
    outdir = Path(outdir)
    return changed_among(
        stems,
        lambda stem: _read_json(legacy_sidecar(outdir, stem) if ext is None
                                else _sidecar_file(outdir, stem, ext, only_faces)),
        lambda side: sidecar_differences(side, now, ignore_options=ignore_options))


@dataclass(frozen=True)
class DetectPlan:
    """What decides the outputs of one ``run --faces detect``, known before the method is built.

    ``note`` is recorded in each output (with the input's name, and colour matching where a
    face was restored: only then does it change the photo); ``sidecar_now`` is what a photo's
    sidecar is compared with (as sidecars record it); ``recorded`` what sidecars record besides
    the method, the scale and the photo's findings.
    """

    outdir: Path
    method: str
    scale: int
    detector: str
    background: str
    colour_match: bool
    only_faces: bool
    n_samples: int
    ext: str
    note: dict[str, Any]
    sidecar_now: dict[str, Any]
    recorded: dict[str, Any]
    ignore_options: frozenset[str]

    def sidecar_path(self, stem: str) -> Path:
        return self.outdir / sidecar_name(stem, self.ext, self.only_faces)

    def expected(self, item: Any) -> list[str]:
        """The output stems a finished photo has (``SkipInput``: finished with nothing to write)."""
        suffixes = [""] if self.n_samples == 1 else [f"_s{j}" for j in range(self.n_samples)]
        return [f"{first}{sfx}" for first in _expected_firsts(self.outdir, item.stem, self.only_faces, self.ext)
                for sfx in suffixes]

    def outputs(self, item: Any) -> list[Path]:
        """The paths of :meth:`expected` (none for a photo finished with nothing to write)."""
        try:
            return [self.outdir / f"{s}.{self.ext}" for s in self.expected(item)]
        except SkipInput:
            return []

    def finished(self, item: Any) -> bool:
        """Whether a photo whose outputs all exist is done: with its sidecar (written last), or when
        one of them records nothing inside (another program's, or an older restorekit's: taken as
        finished, as ``run`` takes such outputs, and never described by a sidecar of this run)."""
        return _is_file(self.sidecar_path(item.stem)) or any(read_note(p) is None for p in self.outputs(item))

    def done(self, item: Any) -> bool:
        """Whether a rerun skips the photo without reading it (as ``process_files`` decides, unless
        ``--overwrite``)."""
        try:
            stems = self.expected(item)
        except SkipInput:
            return True
        try:
            every = all((self.outdir / f"{s}.{self.ext}").exists() for s in stems)
        except (OSError, ValueError):  # a name too long: left to process_files, which fails it alone
            return False
        return every and self.finished(item)

    def note_for(self, item: Any, restored: bool) -> dict[str, Any]:
        """The record written into each output of a photo (``restored``: a face of it was restored)."""
        colour = {"colour_match": self.colour_match} if restored and not self.only_faces else {}
        return {**self.note, **colour, "input": item.path.name}

    def sidecar_to_check(self, item: Any) -> Any:
        """The sidecar a rerun compares: this format's; else an older restorekit's ``<stem>.json``
        where this run would keep outputs of that version (there, and none recording settings
        inside), or skip the photo as that sidecar says (no face restored, ``--only-faces``)."""
        path = self.sidecar_path(item.stem)
        if _is_file(path):
            return _read_json(path)
        legacy = legacy_sidecar(self.outdir, item.stem)
        if not _is_file(legacy):
            return None
        try:
            paths = [self.outdir / f"{s}.{self.ext}" for s in self.expected(item)]
        except SkipInput:  # (from that sidecar: this format's is not there)
            return _read_json(legacy)
        there = [p for p in paths if _is_file(p)]
        if not there or any(read_note(p) is not None for p in there):  # none kept, or this version's
            return None
        return _read_json(legacy)

    def refusal(self, items: list[Any]) -> str | None:
        """One line refusing the rerun where a photo's sidecar, or one of its outputs there, records
        other settings than this run's (it would be kept as this run's); None where none does."""
        now = {**self.note, **({} if self.only_faces else {"colour_match": self.colour_match})}
        photos: list[str] = []
        diffs: dict[str, None] = {}
        for item in items:
            found: list[str] = []
            side = self.sidecar_to_check(item)
            if isinstance(side, dict):
                found += sidecar_differences(side, self.sidecar_now, ignore_options=self.ignore_options)
            changed = changed_outputs(self.outputs(item), now, ignore_options=self.ignore_options)
            if changed:
                found += changed[1]
            if found:
                photos.append(item.stem)
                diffs.update(dict.fromkeys(found))
        if not photos:
            return None
        return (f"{self.outdir}: the outputs of {len(photos)} of these photos ({', '.join(photos[:3])}"
                f"{', …' if len(photos) > 3 else ''}) were made with other settings ({'; '.join(diffs)}); "
                "use another --output, or --overwrite to remake them")

    def kept_problem(self, item: Any, paths: list[Path], restored: bool) -> tuple[str, bool] | None:
        """Why the photo's sidecar must not be written, where one of its ``paths`` there was not
        made by this run's settings (kept, not replaced), and whether that fails the photo (made
        with other settings) or only leaves it without a sidecar (no record inside); None if all are."""
        now = self.note_for(item, restored)
        unrecorded: list[str] = []
        for path in paths:
            note = read_note(path)
            if note is None:
                unrecorded.append(path.name)
                continue
            found = differences(note, now, ignore_options=self.ignore_options)
            if found:
                return (f"{path}: made with other settings ({'; '.join(found)}), kept; no sidecar written "
                        "(--overwrite remakes it)"), True
        if unrecorded:
            return (f"{item.path}: {', '.join(unrecorded[:3])}{', …' if len(unrecorded) > 3 else ''} kept (not "
                    "made by restorekit: no record inside); no sidecar written"), False
        return None
