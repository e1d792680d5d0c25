"""Where dlib's model files are: the ``face-recognition-models`` package, or a folder you name.

``import face_recognition_models`` fails with setuptools >= 81 (it imports ``pkg_resources``),
so the package folder is located with ``importlib.util.find_spec`` without importing it.
Licenses: the 5-point predictor, HOG/CNN detectors and the ResNet descriptor are public domain
(CC0) as packaged; the 68-point predictor is trained on iBUG 300-W (no commercial use).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from ..errors import WeightsMissing

__all__ = ["DLIB_MODEL_FILES", "DlibModel", "models_dirs", "dlib_model_path", "dlib_available"]

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
    """Folders searched, in order: ``$RESTOREKIT_DLIB_MODELS``, then the package's ``models/``."""
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env))
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
