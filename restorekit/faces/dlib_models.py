"""Where dlib's model files are: the ``face-recognition-models`` package, or a folder you name.

``import face_recognition_models`` fails with setuptools >= 81 (it imports ``pkg_resources``),
so the package folder is located with ``importlib.util.find_spec`` without importing it.
Licenses: the 5-point predictor, HOG/CNN detectors and the ResNet descriptor are public domain
(CC0) as packaged; the 68-point predictor is trained on iBUG 300-W (no commercial use).
"""

from __future__ import annotations

import importlib.util
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

from ..errors import RestorekitError, WeightsMissing

__all__ = ["DLIB_MODEL_FILES", "DlibModel", "models_dirs", "dlib_model_path", "dlib_available", "dlib_model_pin",
           "dlib_version"]

DlibModel = Literal["shape_predictor_5", "shape_predictor_68", "mmod_detector", "face_descriptor"]

DLIB_MODEL_FILES: dict[str, str] = {
    "shape_predictor_5": "shape_predictor_5_face_landmarks.dat",
    "shape_predictor_68": "shape_predictor_68_face_landmarks.dat",
    "mmod_detector": "mmod_human_face_detector.dat",
    "face_descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}

ENV_VAR = "RESTOREKIT_DLIB_MODELS"
PACKAGE_HINT = "pip install face-recognition-models==0.3.0"


def models_dirs() -> list[Path]:
    """Folders searched, in order: ``$RESTOREKIT_DLIB_MODELS`` (``~`` expanded, as for
    ``$RESTOREKIT_HOME``), then the package's ``models/``. A ``$RESTOREKIT_DLIB_MODELS`` that is no
    folder is an error: the package's copies were used instead, without a word."""
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise RestorekitError(f"{ENV_VAR}={env}: {'not a folder' if folder.exists() else 'no such folder'} "
                                  "(it names a folder holding dlib's model files; unset it for those of "
                                  "face-recognition-models)")
        dirs.append(folder)
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            dirs.append(Path(loc) / "models")
    return dirs


def dlib_model_path(model: str) -> Path:
    """The path of one dlib model file (a key of ``DLIB_MODEL_FILES`` or a file name).

    Raises ``WeightsMissing`` naming the fix when no searched folder has it.
    """
    filename = DLIB_MODEL_FILES.get(model, model)
    for folder in models_dirs():
        path = folder / filename
        if path.is_file():
            return path
    raise WeightsMissing(filename, f"dlib model file not found; {PACKAGE_HINT} "
                                   f"or set {ENV_VAR} to a folder holding {filename}")


def dlib_available() -> bool:
    """Whether the ``dlib`` module (e.g. from ``dlib-bin``) can be imported, without importing it."""
    try:
        return importlib.util.find_spec("dlib") is not None
    except (ImportError, ValueError):
        return False


#: The distributions that install the ``dlib`` module, the prebuilt one first.
DLIB_DISTRIBUTIONS = ("dlib-bin", "dlib")
# sha256 of model files by (path, size, mtime, inode): each version of a file is hashed once a process.
_HASHED: dict[tuple[str, int, int, int], str] = {}


def dlib_model_pin(*models: str) -> str:
    """``FILENAME=SHA256`` of the first of ``models`` (keys of ``DLIB_MODEL_FILES`` or file names)
    that :func:`dlib_model_path` finds, ``FILENAME=missing`` when none is: what a value computed
    with that model depends on, so that another file there (a reinstalled package, another
    ``$RESTOREKIT_DLIB_MODELS``) is seen. Hashed once per process and version of the file."""
    from ..weights.checksum import sha256_file

    for model in models:
        try:
            path = dlib_model_path(model)
            st = path.stat()
            key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
            if key not in _HASHED:
                _HASHED[key] = sha256_file(path)
        except (WeightsMissing, OSError):
            continue
        return f"{path.name}={_HASHED[key]}"
    return f"{DLIB_MODEL_FILES.get(models[0], models[0])}=missing"


def dlib_version() -> str:
    """``DISTRIBUTION VERSION`` of the installed dlib (:data:`DLIB_DISTRIBUTIONS`; read from its
    metadata, without importing it), ``dlib none`` when neither is installed: dlib's own detector
    and landmark code run inside it."""
    for dist in DLIB_DISTRIBUTIONS:
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "dlib none"
