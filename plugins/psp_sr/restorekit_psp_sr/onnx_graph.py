"""The psp_sr inference graph as an exportable module (``restorekit export psp_sr``).

Graph: ``N×3×S×S`` faces in [0, 1] at the encoder's input size ``S`` → encoder (on ``[-1, 1]``)
→ ``+ latent_avg`` → StyleGAN2 generator with its stored noise buffers as constants
(``noise_mode="const"``) → ``N×3×R×R`` in [0, 1], clamped. The batch axis is dynamic: one file
serves any batch size.

A ReStyle model's passes are in the graph, with the resize that brings each reconstruction to
the encoder's size (antialiased bilinear as two matrix products, or an imported official
model's average pooling, :func:`~.encoder.pool_input`); the sidecar's ``graph`` records the
passes and, when it is average pooling, ``restyle_recon_resize``.

Resizing of the input and output happens outside the graph, in PyTorch, and is shared with the
torch backend: the method's own input resize (bicubic or bilinear, antialiased, whatever
``input_resize`` says) brings any input to ``S×S`` before the graph, and the ``R``-px output is resized to
``scale ×`` the input afterwards (unless ``keep_native_size``), followed by the
``consistency_steps``. So ``restorekit run --backend onnxruntime`` takes the same inputs as the
torch backend, and users of the bare ``.onnx`` feed ``S×S`` faces already upsampled to the
encoder size (the file's sidecar states ``S``). Antialiased resizing is not in the graph because
ONNX ``Resize`` has no antialiased bicubic matching PyTorch's.

Export details. The encoder is exported as the method runs it: with its inference path
(:mod:`.fast_encoder`: batch norm folded) when the model was optimised — onnxruntime ran the
paper's encoder about as fast either way, so the simpler graph is kept — and as the official
modules otherwise (or in float16). The copy that is exported uses the reference ops (``impl="ref"``), the
activation-modulation form of every modulated convolution (``fused=False``: per-sample scaling
of activations, no per-sample weights, nothing shaped by the batch) and the CPU layer form
(bias, gain and noise folded, ``fold=True``). Its FIR filters (the blur after each transposed
convolution and the ToRGB skip upsampling) are :class:`StaticFIR` modules: the same
``upfirdn2d`` arithmetic with the channel count fixed when the module is built. The reference
``upfirdn2d`` reads the channel count from the input's shape, which the TorchScript tracer
records as a run-time value, so the depthwise kernel it builds has an unknown shape and the
export fails ("convolution for kernel of unknown shape"); ``c = int(x.shape[1])`` in
``ops/upfirdn2d.py::_fir`` would fix that at the source.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restorekit.onnx_export import ExportSpec

from .psp import DEFAULT_RECON_RESIZE
from .stylegan2 import Blur, ModulatedConv2d, StyledConv, StyleGAN2Generator, ToRGB, Upsample


class StaticFIR(nn.Module):
    """``upfirdn2d(x, k, up=up, pad=(p0, p1), gain=gain)`` for a fixed channel count (down = 1).

    Same semantics as :func:`restorekit_psp_sr.ops.upfirdn2d`: zero insertion, padding (negative
    pads crop), a true convolution with the separable filter ``k ⊗ k``, times ``gain``; as
    depthwise (transposed) convolutions whose kernel is a buffer of static shape.
    """

    weight: Tensor  # buffer

    def __init__(self, kernel_1d: Tensor, channels: int, *, up: int = 1, pad: tuple[int, int] = (0, 0),
                 gain: float = 1.0) -> None:
        super().__init__()
        k = kernel_1d.detach().float().cpu()
        f2 = torch.outer(k, k) * gain
        self.channels, self.up, self.pad, self.k = int(channels), int(up), (int(pad[0]), int(pad[1])), int(k.numel())
        # A transposed conv applies its kernel unflipped as a true convolution; conv2d correlates.
        w = f2 if self.up > 1 else f2.flip(0, 1)
        self.register_buffer("weight", w.reshape(1, 1, *f2.shape).repeat(self.channels, 1, 1, 1).contiguous())

    @staticmethod
    def _pad_or_crop(y: Tensor, lo: int, hi: int) -> Tensor:
        """Pad (positive) or crop (negative) both spatial axes by ``lo`` before and ``hi`` after."""
        if lo < 0:
            y = y[:, :, -lo:, -lo:]
        if hi < 0:
            y = y[:, :, :hi, :hi]
        if lo > 0 or hi > 0:
            p0, p1 = max(lo, 0), max(hi, 0)
            y = F.pad(y, [p0, p1, p0, p1])
        return y

    def forward(self, x: Tensor) -> Tensor:
        p0, p1 = self.pad
        if self.up > 1:
            y = F.conv_transpose2d(x, self.weight, stride=self.up, groups=self.channels)
            return self._pad_or_crop(y, p0 - self.k + 1, p1 + self.up - self.k)
        if p0 == p1 >= 0:
            return F.conv2d(x, self.weight, padding=p0, groups=self.channels)
        return F.conv2d(self._pad_or_crop(x, p0, p1), self.weight, groups=self.channels)

    @classmethod
    def from_blur(cls, blur: Blur, channels: int) -> StaticFIR:
        return cls(blur.kernel_1d, channels, pad=tuple(blur.pad), gain=blur.gain)  # type: ignore[arg-type]

    @classmethod
    def from_upsample(cls, up: Upsample, channels: int) -> StaticFIR:
        return cls(up.kernel_1d, channels, up=up.factor, pad=tuple(up.pad), gain=float(up.factor**2))  # type: ignore[arg-type]


def exportable_generator(generator: StyleGAN2Generator) -> StyleGAN2Generator:
    """Put a generator (in place) into the form described in the module docstring."""
    generator.set_impl("ref")
    for m in generator.modules():
        if isinstance(m, ModulatedConv2d):
            m.fused = False
            if m.upsample and isinstance(m.blur, Blur):
                m.blur = StaticFIR.from_blur(m.blur, m.out_channel)  # type: ignore[assignment]
        elif isinstance(m, StyledConv):
            m.fold = True
        elif isinstance(m, ToRGB) and isinstance(getattr(m, "upsample", None), Upsample):
            m.upsample = StaticFIR.from_upsample(m.upsample, 3)  # type: ignore[assignment]
    return generator


class PSPInferenceGraph(nn.Module):
    """``N×3×S×S`` in [0, 1] → encoder + ``latent_avg`` → generator (const noise) → ``N×3×R×R`` in [0, 1].

    A ReStyle model's passes are unrolled into the graph, as many as the model makes when exported.

    Holds an export-ready copy of ``model`` (a :class:`~.psp.PSP`); the original is untouched.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        psp = copy.deepcopy(model).cpu().float().eval()
        for p in psp.parameters():
            p.requires_grad_(False)
        exportable_generator(psp.decoder)
        self.psp = psp
        self.input_size = int(psp.input_size)
        self.resolution = int(psp.decoder.resolution)
        if getattr(psp.encoder, "inference_path", None) is not None:
            # Derive the folded encoder now, so the exporter traces its result, not its making.
            with torch.no_grad():
                self(torch.full((1, 3, self.input_size, self.input_size), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        w_plus = self.psp.encode(x)
        return self.psp.decode(w_plus, noise_mode="const").clamp(0, 1)


def psp_sr_export_spec(method: Any) -> ExportSpec:
    """The :class:`ExportSpec` of a ``psp_sr`` method (loaded here if needed)."""
    method.load()
    graph = PSPInferenceGraph(method.model)
    s, r = graph.input_size, graph.resolution
    info = dict(getattr(method, "weights_info", {}) or {})
    built_in: dict[str, object] = {
        "input_size": s, "resolution": r, "noise": "const (stored buffers)",
        "input": f"faces in [0, 1] at {s}×{s} (resized by the caller: the method's input_resize)",
        "output": f"{r}×{r} in [0, 1], clamped (resized to scale × input by the caller)"}
    passes = graph.psp.restyle_iterations
    if passes is not None:  # unrolled in the graph: fixed at export (--opt restyle_iterations=N)
        built_in["restyle_iterations"] = passes
        if graph.psp.restyle_recon_resize != DEFAULT_RECON_RESIZE:  # absent: restorekit's own (older sidecars)
            built_in["restyle_recon_resize"] = graph.psp.restyle_recon_resize
    metadata = {
        "method": "psp_sr",
        "weights": info.get("name"),
        "weights_file": Path(info["file"]).name if info.get("file") else None,  # its name: no user's path
        "weights_sha256": info.get("sha256"),
        "license": info.get("license"),
        "graph": built_in,
    }

    def prepare(lr: Tensor, scale: int) -> Tensor:
        method._check_input(lr)
        return method._to_input(lr)

    def preflight(lr: Tensor, scale: int, device: torch.device) -> None:
        method._check_detail(lr, scale)  # the torch backend's note on inputs with detail the prior re-draws

    def finish(y: Tensor, lr: Tensor, scale: int) -> Tensor:
        method.last_reports = [{"native_size": r, "seed": None} for _ in range(y.shape[0])]
        return method.finish(y, lr, scale)  # the torch backend's resize and consistency steps

    return ExportSpec(module=graph, example=torch.full((1, 3, s, s), 0.5), metadata=metadata,
                      prepare=prepare, finish=finish, preflight=preflight)


# Registry-free lookup by restorekit.onnx_export.find_export_spec: method name → builder.
ONNX_EXPORTERS: dict[str, Callable[[Any], ExportSpec]] = {"psp_sr": psp_sr_export_spec}
