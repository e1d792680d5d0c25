"""insightface model packs (SCRFD detector + ArcFace recogniser) from the restorekit weights cache.

The ONNX files of an insightface pack (``buffalo_l``: ``det_10g.onnx`` = SCRFD-10GF with 5
landmarks, ``w600k_r50.onnx`` = ArcFace ResNet-50 trained on WebFace600K) are registered as
restorekit weights (``registry/weights/insightface-*.toml``) and imported once by the user::

    restorekit weights import insightface-buffalo-l buffalo_l.zip    # or the unpacked folder

They are then opened through insightface's own loader, ``insightface.model_zoo.get_model(path,
providers=[...])``, so restorekit runs exactly the pre- and post-processing insightface ships
(``SCRFD``, ``ArcFaceONNX``). ONNX Runtime's CUDA provider is used when the device is CUDA and
the installed onnxruntime offers it, else the CPU provider.

The models are licensed for non-commercial research only (``LicenseRef-InsightFace-NonCommercial``);
:func:`note_license` prints that once per process when a pack is first loaded.

``insightface``, ``onnxruntime`` and ``cv2`` are imported lazily: restorekit imports without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import DependencyMissing, RestorekitError, WeightsMissing

__all__ = [
    "INSIGHTFACE_LICENSE", "INSIGHTFACE_LICENSE_NOTE", "INSIGHTFACE_HINT", "DEFAULT_PACK", "Pack", "PACKS",
    "import_insightface", "onnx_providers", "pack_file", "require_packages", "load_model", "load_detector", "load_recognizer",
    "note_license", "clear_cache",
]

INSIGHTFACE_LICENSE = "LicenseRef-InsightFace-NonCommercial"
INSIGHTFACE_LICENSE_NOTE = "non-commercial research use only (deepinsight/insightface pretrained models)"
# Tested with insightface 2.1. insightface declares opencv-python; the headless build provides
# the same cv2 module without GUI libraries, so the package itself is installed without deps.
INSIGHTFACE_HINT = ("pip install 'restorekit[insightface]' (or: pip install --no-deps insightface==2.1 && "
                    "pip install onnx onnxruntime opencv-python-headless requests scikit-image scipy tqdm)")
DEFAULT_PACK = "insightface-buffalo-l"

Role = Literal["detector", "recognizer"]


@dataclass(frozen=True)
class Pack:
    """Which file of an insightface pack plays which role, and where the pack comes from."""

    weights: str          # restorekit weights name
    pack: str             # insightface's own name for the pack
    detector: str         # SCRFD ONNX file name
    recognizer: str       # ArcFace ONNX file name
    archive_url: str      # the official zip
    recognizer_label: str  # what the embedder is, for metric summaries

    def filename(self, role: Role) -> str:
        return self.detector if role == "detector" else self.recognizer


PACKS: dict[str, Pack] = {
    "insightface-buffalo-l": Pack(
        "insightface-buffalo-l", "buffalo_l", "det_10g.onnx", "w600k_r50.onnx",
        "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        "ArcFace R50 (w600k_r50, WebFace600K)"),
    "insightface-antelopev2": Pack(
        "insightface-antelopev2", "antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx",
        "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
        "ArcFace R100 (glintr100, Glint360K)"),
}


def _pack(name: str) -> Pack:
    try:
        return PACKS[name]
    except KeyError:
        raise RestorekitError(f"unknown insightface pack '{name}'; known: {', '.join(PACKS)}") from None


def import_insightface() -> Any:
    """``import insightface`` (and its ONNX model zoo) with a one-line error naming the extra."""
    try:
        return importlib.import_module("insightface")
    except ImportError as exc:
        raise DependencyMissing(f"insightface models need the 'insightface' extra ({exc}); {INSIGHTFACE_HINT}") from None


def onnx_providers(device: str | torch.device = "cpu") -> list[Any]:
    """ONNX Runtime providers for ``device``: CUDA first when asked for and available, CPU always."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyMissing(f"insightface models need onnxruntime ({exc}); {INSIGHTFACE_HINT}") from None
    dev = torch.device(device)
    if dev.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        opts = {"device_id": dev.index if dev.index is not None else torch.cuda.current_device()}
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def pack_file(pack: str, role: Role) -> Path:
    """The cached, verified ONNX file of ``pack`` for ``role``.

    Raises :class:`WeightsMissing` whose message names the official archive and the
    ``restorekit weights import`` command that puts it into the cache.
    """
    from .. import weights as W

    p = _pack(pack)
    filename = p.filename(role)
    try:
        return W.resolve(p.weights, filename)
    except WeightsMissing:
        raise WeightsMissing(
            p.weights, f"{filename} is not cached",
            fix=f"download {p.pack}.zip ({p.archive_url}, {INSIGHTFACE_LICENSE_NOTE}) and run "
                f"`restorekit weights import {p.weights} {p.pack}.zip`, or run `restorekit weights pull {p.weights}` "
                f"(needs network)") from None


_NOTED: set[str] = set()
_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def note_license(pack: str) -> None:
    """Print, once per process, that ``pack``'s models are for non-commercial research only."""
    if pack in _NOTED:
        return
    _NOTED.add(pack)
    p = PACKS.get(pack)
    label = f"{pack} ({p.pack})" if p else pack
    print(f"note: insightface models {label} are licensed {INSIGHTFACE_LICENSE}: {INSIGHTFACE_LICENSE_NOTE}",
          file=sys.stderr)


_EXPECTED = {"detector": "SCRFD", "recognizer": "ArcFaceONNX"}


def load_model(path: str | Path, role: Role, device: str | torch.device = "cpu") -> Any:
    """An insightface model object for an ONNX file, via ``insightface.model_zoo.get_model``.

    ``role`` says what the file must be: ``"detector"`` (an ``SCRFD`` with 5-point landmarks) or
    ``"recognizer"`` (an ``ArcFaceONNX``); anything else is refused with the file named. Loaded
    models are cached per (file, role, providers).
    """
    insightface = import_insightface()
    from insightface.model_zoo import get_model

    providers = onnx_providers(device)
    path = Path(path)
    key = (str(path.resolve()), role, repr(providers))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            model = get_model(str(path), providers=providers)
        except Exception as exc:  # onnxruntime/onnx parse errors come in many types
            raise RestorekitError(f"cannot load insightface model {path}: {type(exc).__name__}: {exc}") from None
        expected = _EXPECTED[role]
        cls = getattr(insightface.model_zoo, expected)
        if not isinstance(model, cls):
            got = type(model).__name__ if model is not None else "nothing insightface recognises"
            raise RestorekitError(f"{path} is not an insightface {expected} model ({role}); "
                                  f"insightface's model router made {got} of it")
        if role == "detector" and not getattr(model, "use_kps", False):
            raise RestorekitError(f"{path} is an SCRFD detector without landmarks; restorekit needs a "
                                  "5-point model (e.g. det_10g.onnx, scrfd_10g_bnkps.onnx)")
        if role == "recognizer":
            size = tuple(model.input_size)
            if size != (112, 112):
                raise RestorekitError(f"{path}: ArcFace input is {size[0]}×{size[1]}, restorekit aligns to 112×112")
        ctx = 0 if torch.device(device).type == "cuda" else -1
        model.prepare(ctx)
        _CACHE[key] = model
        return model


def require_packages(what: str) -> None:
    """Refuse in one line, naming the extra, when ``insightface`` or ``onnxruntime`` is not installed
    (found, not imported): asked before the pack's files, so that nobody fetches a 191 MB pack of
    non-commercial weights only to be told next that the packages that run it are missing."""
    missing = [m for m in ("insightface", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyMissing(f"{what} needs {' and '.join(missing)}; {INSIGHTFACE_HINT}")


def load_detector(pack: str = DEFAULT_PACK, device: str | torch.device = "cpu") -> Any:
    """The pack's SCRFD detector (insightface ``SCRFD``) from the weights cache."""
    require_packages("detector 'scrfd'")
    path = pack_file(pack, "detector")
    model = load_model(path, "detector", device)
    note_license(pack)
    return model


def load_recognizer(pack: str = DEFAULT_PACK, device: str | torch.device = "cpu") -> Any:
    """The pack's ArcFace recogniser (insightface ``ArcFaceONNX``) from the weights cache."""
    require_packages("the insightface recogniser (ArcFace)")
    path = pack_file(pack, "recognizer")
    model = load_model(path, "recognizer", device)
    note_license(pack)
    return model


def clear_cache() -> None:
    """Forget loaded sessions (tests; after the cached files changed)."""
    with _LOCK:
        _CACHE.clear()
