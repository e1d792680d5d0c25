"""The pix2pixHD inference graph as an exportable module (``restorekit export pix2pixhd``).

Graph: ``N×3×H×W`` in [0, 1] — the bicubic-upscaled input, sides multiples of the generator's
stride (``2^(n_downsampling + n_local_enhancers)``) — → generator → same size in [0, 1],
clamped. Batch, height and width are dynamic axes: the network is fully convolutional, so one
file serves any batch and any size that is a multiple of the stride.

As in the method, the bicubic upscaling by ``scale``, the padding to the stride
(:func:`~restorekit_baselines.pix2pixhd.pad_to_stride`) or the resize to ``input_size``, and the crop or resize back happen in PyTorch
around the graph, shared by the torch and onnxruntime backends.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from restorekit.consistency import back_project
from restorekit.degradations import bicubic_resize
from restorekit.errors import RestorekitError
from restorekit.onnx_export import ExportSpec

from .pix2pixhd import (DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, WEIGHTS_DIR, Pix2PixHDGenerator, check_input_size,
                        load_generator, pad_to_stride)


class Pix2PixHDInferenceGraph(nn.Module):
    """``N×3×H×W`` in [0, 1] → pix2pixHD generator → clamped [0, 1]; a copy of ``generator``."""

    def __init__(self, generator: Pix2PixHDGenerator) -> None:
        super().__init__()
        gen = copy.deepcopy(generator).cpu().float().eval()
        for p in gen.parameters():
            p.requires_grad_(False)
        self.generator = gen
        self.multiple = int(gen.cfg.multiple)

    def forward(self, x: Tensor) -> Tensor:
        return self.generator(x).clamp(0, 1)


def _sha256_of_loaded(path: Path, graph: Pix2PixHDInferenceGraph) -> str | None:
    """The sha256 of ``path`` when its bytes are the weights ``graph`` holds, else ``None``.

    The method loaded the file earlier: it may have been rewritten since (a trainer saving its
    checkpoint while an eval runs), and its hash now would name weights the graph does not hold.
    So the file is read again and hashed, unchanged in between, and the network it makes must
    be the one loaded."""
    from restorekit.onnx_export import state_sha256
    from restorekit.weights import file_version, sha256_file

    try:
        before = file_version(path)
        with torch.random.fork_rng(devices=[]):  # building the network draws from torch's RNG
            reread, _ = load_generator(path)
        sha = sha256_file(path)
        if file_version(path) != before:
            return None
    except (OSError, RestorekitError):  # gone or rewritten half-way: nothing vouches for a hash
        return None
    return sha if state_sha256(reread) == state_sha256(graph.generator) else None


def _provenance(method: Any, graph: Pix2PixHDInferenceGraph) -> dict[str, Any]:
    """``weights`` (a registered name, else the file's name: never a path), ``weights_file``,
    ``weights_sha256`` (of the bytes the graph holds; ``None`` when that cannot be said) and
    ``license`` (``None`` for an unregistered file) of the weights ``method`` loaded."""
    from restorekit.weights import get_spec, weights_source

    w = method.options.weights
    if w is None:  # the embedded default, checked against its registry entry (size, sha256) when loaded
        spec = get_spec(DEFAULT_MODEL_NAME)
        entry = spec.file()
        sha = entry.sha256 or _sha256_of_loaded(WEIGHTS_DIR / DEFAULT_MODEL_FILE, graph)
        return {"weights": DEFAULT_MODEL_NAME, "weights_file": entry.filename, "weights_sha256": sha,
                "license": spec.license}
    path, registered = weights_source(w)
    return {"weights": registered or path.name, "weights_file": path.name,
            "weights_sha256": _sha256_of_loaded(path, graph),
            "license": get_spec(registered).license if registered else None}


def pix2pixhd_export_spec(method: Any) -> ExportSpec:
    """The :class:`ExportSpec` of a ``pix2pixhd`` method (loaded here if needed)."""
    method.load()
    graph = Pix2PixHDInferenceGraph(method.generator)
    m = graph.multiple
    size = method.options.input_size
    check_input_size(size, m)
    side = size if size is not None else m * max(1, 64 // m)
    metadata = {
        "method": "pix2pixhd",
        **_provenance(method, graph),
        "graph": {"generator": dict(vars(method.generator.cfg)), "multiple": m,
                  "input": f"the bicubic-upscaled image in [0, 1], sides multiples of {m} (padded by the caller)",
                  "output": "same size, in [0, 1], clamped"},
        "trained": method.trained,
    }

    def prepare(lr: Tensor, scale: int) -> Tensor:
        h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
        x = bicubic_resize(lr.float(), (h, w)).clamp(0, 1)
        if size is not None:
            return bicubic_resize(x, (size, size)).clamp(0, 1)
        return pad_to_stride(x, m)

    def finish(y: Tensor, lr: Tensor, scale: int) -> Tensor:
        h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
        out = bicubic_resize(y, (h, w)) if size is not None else y[..., :h, :w]
        method.last_reports = [{"factors_trained": method.trained.get("factors")} for _ in range(lr.shape[0])]
        # as the torch backend: the consistency steps outside the graph
        return back_project(out.clamp(0, 1).float(), lr, steps=method.options.consistency_steps)

    return ExportSpec(module=graph, example=torch.full((1, 3, side, side), 0.5), metadata=metadata,
                      dynamic_spatial=True, spatial_multiple=m, prepare=prepare, finish=finish,
                      preflight=method.preflight)  # the torch backend's note and memory guard


# Registry-free lookup by restorekit.onnx_export.find_export_spec: method name → builder.
ONNX_EXPORTERS: dict[str, Callable[[Any], ExportSpec]] = {"pix2pixhd": pix2pixhd_export_spec}
