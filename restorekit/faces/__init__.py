"""Face tools: dlib's face descriptor in PyTorch, dlib-style chips, dlib detector wrappers,
and the ``dlib_resnet`` embedder / ``identity_dlib`` metrics.

Submodules are imported on attribute access, and ``dlib`` itself only when a detector or the
reference pipeline is used, so ``import restorekit.faces`` needs neither dlib nor its models.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DlibFaceDescriptor": "dlib_resnet",
    "load_dlib_face_descriptor": "dlib_resnet",
    "convert_dat": "dlib_resnet",
    "read_network": "dlib_dat",
    "DlibFormatError": "dlib_dat",
    "extract_face_chips": "chips",
    "chip_geometry": "chips",
    "dlib_face_chip": "chips",
    "dlib_model_path": "dlib_models",
    "DlibFaceTools": "dlib_tools",
    "DlibResnetEmbedder": "identity_dlib",
    "IdentityDlib": "identity_dlib",
    "IdentityDlibDist": "identity_dlib",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'restorekit.faces' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
