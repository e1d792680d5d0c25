"""The core's own plugin: what restorekit registers without any plugin installed."""

from __future__ import annotations

from .hookspecs import Register, hookimpl


@hookimpl
def register_degradations(register: Register) -> None:
    from .degradations import BUILTIN_DEGRADATIONS

    for cls in BUILTIN_DEGRADATIONS:
        register(cls)


# Metrics of the core, as "module:Class"; each is imported when registered. Add a line per metric.
CORE_METRICS = [
    "restorekit.harness.metrics:PsnrYCrop",
    "restorekit.harness.metrics:SsimYCrop",
    "restorekit.harness.metrics:PsnrRgb",
    "restorekit.harness.metrics:SsimRgb",
    "restorekit.harness.metrics:LrConsistency",
    "restorekit.metrics_lpips:LPIPSAlex",
    "restorekit.metrics_lpips:LPIPSVgg",
    "restorekit.faces.identity_dlib:IdentityDlib",
    "restorekit.faces.identity_dlib:IdentityDlibDist",
    "restorekit.faces.identity_arcface:IdentityArcface",
]


@hookimpl
def register_losses(register: Register) -> None:
    from .losses import BUILTIN_LOSSES

    for cls in BUILTIN_LOSSES:
        register(cls)


@hookimpl
def register_metrics(register: Register) -> None:
    import importlib

    for ref in CORE_METRICS:
        module, _, name = ref.partition(":")
        register(getattr(importlib.import_module(module), name))


@hookimpl
def register_face_embedders(register: Register) -> None:
    from .faces.identity_dlib import DlibResnetEmbedder

    register("dlib_resnet", DlibResnetEmbedder,
             summary="dlib's 128-D ResNet face descriptor (PyTorch port), FFHQ-framed crops, differentiable; CC0 weights")


@hookimpl
def register_face_detectors(register: Register) -> None:
    from .faces.detectors import DETECTORS, SUMMARIES

    for name, cls in DETECTORS.items():
        register(name, cls, summary=SUMMARIES[name])
    from .faces.scrfd import SUMMARY as SCRFD_SUMMARY, ScrfdDetector

    register("scrfd", ScrfdDetector, summary=SCRFD_SUMMARY)
