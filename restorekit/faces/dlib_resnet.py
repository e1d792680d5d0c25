"""dlib's 128-D face descriptor ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network is the one defined in dlib's ``examples/dnn_face_recognition_ex.cpp`` (``anet_type``),
read from bottom (input) to top:

* input ``input_rgb_image_sized<150>``: ``(pixel - avg) / 256`` per channel with the averages
  stored in the file (122.782, 117.001, 104.298 for R, G, B), pixels in 0..255;
* ``con<32,7,7,2,2>`` (no padding: dlib's default padding is 0 when the stride is not 1),
  ``affine`` (frozen batch norm: ``x·gamma + beta`` per channel), ``relu``,
  ``max_pool<3,3,2,2>`` (no padding) — 150 → 72 → 35;
* 14 residual blocks ``ares``/``ares_down``: ``relu(add_prev(block(x), skip))`` with
  ``block = affine(con3x3(relu(affine(con3x3_stride(x)))))``; the first 3×3 conv of a down
  block has stride 2 and no padding, the others stride 1 and padding 1; the skip of a down
  block is ``avg_pool<2,2,2,2>`` (no padding) of the block's input, otherwise the input itself.
  Channels 32 ×3, 64 (down) ×4, 128 (down) ×3, 256 (down) ×3, 256 (down) — spatial sizes
  35, 17, 8, 4 (block 3×3 + skip 4×4), 2 (block 1×1 + skip 2×2);
* ``add_prev`` adds tensors of different shapes as dlib's ``tt::add`` does: the output takes
  the larger size in every dimension and each input contributes where it exists (aligned at
  channel 0 and the top-left pixel), i.e. zero padding at the end of channels, rows, columns;
* ``avg_pool_everything`` (global mean) and ``fc_no_bias<128>`` (``x @ W`` with ``W`` stored as
  ``256×128`` row-major). The descriptor is the raw fc output (not unit-norm; dlib's same-person
  threshold is a Euclidean distance of 0.6).

Weights come only from dlib's ``.dat`` file through :mod:`restorekit.faces.dlib_dat`; the
loader checks the file's layer sequence against this definition layer by layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dlib_dat import DlibFormatError, DlibNetwork, LayerDetails, Wrapper, read_network

__all__ = [
    "CHIP_SIZE", "DEFAULT_MEAN_RGB", "DlibFaceDescriptor", "Affine", "ResidualBlock",
    "expected_layer_kinds", "state_dict_from_network", "convert_dat", "export_safetensors", "load_dlib_face_descriptor",
    "export_tensors", "quantize_int8", "dequantize",
]

CHIP_SIZE = 150
DEFAULT_MEAN_RGB = (122.782, 117.001, 104.298)
# (out_channels, downsample) for the 14 residual blocks, input side first.
BLOCKS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)


class Affine(nn.Module):
    """dlib's ``affine_`` layer in conv mode: ``x·gamma[c] + beta[c]`` (frozen batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def add_prev(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev``: sum over the union of shapes, each tensor zero-extended at the end."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: Tensor) -> Tensor:
        pad = []
        for dim in (3, 2, 1):
            pad += [0, shape[dim] - t.shape[dim]]
        return F.pad(t, pad)

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """``ares``/``ares_down``: ``relu(add_prev(affine(conv(relu(affine(conv(x))))), skip(x)))``."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, skip))


class DlibFaceDescriptor(nn.Module):
    """dlib's face recognition ResNet: ``N×3×150×150`` chips in [0,1] to raw 128-D descriptors.

    Chips must be dlib-aligned (``restorekit.faces.chips``). ``forward`` is differentiable;
    ``descriptor(..., normalize=True)`` gives unit vectors for cosine similarity.
    """

    mean_rgb: Tensor  # buffer

    def __init__(self, mean_rgb: tuple[float, float, float] = DEFAULT_MEAN_RGB) -> None:
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv0 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine0 = Affine(32)
        blocks = []
        cin = 32
        for cout, down in BLOCKS:
            blocks.append(ResidualBlock(cin, cout, down))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def normalize_input(self, chips: Tensor) -> Tensor:
        """[0,1] RGB to dlib's input scale: ``(255·x - avg) / 256``."""
        return (chips * 255.0 - self.mean_rgb) / 256.0

    def forward(self, chips: Tensor) -> Tensor:
        if chips.ndim != 4 or chips.shape[1] != 3 or chips.shape[2:] != (CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"dlib face descriptor expects N×3×{CHIP_SIZE}×{CHIP_SIZE} chips, "
                             f"got {tuple(chips.shape)}")
        x = self.normalize_input(chips)
        x = F.relu(self.affine0(self.conv0(x)))
        x = F.max_pool2d(x, 3, 2)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x)

    def descriptor(self, chips: Tensor, normalize: bool = False) -> Tensor:
        """Descriptors of ``chips``; unit-norm when ``normalize``."""
        d = self(chips)
        return F.normalize(d, dim=1) if normalize else d

    @classmethod
    def from_dat(cls, path: str | Path | None = None) -> DlibFaceDescriptor:
        """Build from dlib's ``dlib_face_recognition_resnet_model_v1.dat`` or its safetensors export
        (located if ``None``)."""
        return cls.from_state_dict(convert_dat(path))

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor]) -> DlibFaceDescriptor:
        """Build from a state dict with its ``mean_rgb`` (:func:`convert_dat`'s layout, float).

        Built on the meta device, then given the tensors: no random init to throw away, and none
        drawn from the global torch RNG (a metric or loss building this on first use must not
        change it). ``RuntimeError`` (torch's) when the tensors do not fit the network.
        """
        mean = tuple(float(v) for v in sd["mean_rgb"].flatten())
        with torch.device("meta"):
            model = cls(mean_rgb=mean)  # type: ignore[arg-type]
        model.load_state_dict({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
                              strict=True, assign=True)  # float32 whatever the file holds (assign keeps dtypes)
        left = [k for k, v in model.state_dict().items() if v.is_meta]
        if left:
            raise DlibFormatError(f"dlib face descriptor: '{left[0]}' was not loaded")
        return model.eval()


def expected_layer_kinds() -> list[tuple]:
    """The layer sequence of ``anet_type`` from the input side up, as the loader checks it.

    Entries: ``("con", filters, size, stride, padding)``, ``("affine",)``, ``("relu",)``,
    ``("max_pool"|"avg_pool", size, stride, padding)``, ``("add_prev",)``, ``("wrapper",)``
    (a tag or skip layer), ``("fc", outputs, bias_mode)``.
    """
    seq: list[tuple] = [("con", 32, 7, 2, 0), ("affine",), ("relu",), ("max_pool", 3, 2, 0)]
    for cout, down in BLOCKS:
        seq += [("wrapper",),  # tag1
                ("con", cout, 3, 2 if down else 1, 0 if down else 1), ("affine",), ("relu",),
                ("con", cout, 3, 1, 1), ("affine",)]
        if down:
            seq += [("wrapper",), ("wrapper",), ("avg_pool", 2, 2, 0)]  # tag2, skip1, avg_pool
        seq += [("add_prev",), ("relu",)]
    seq += [("avg_pool", 0, 1, 0), ("fc", 128, 1)]
    return seq


def _describe(entry: LayerDetails | Wrapper) -> tuple:
    if isinstance(entry, Wrapper):
        return ("wrapper",)
    f = entry.fields
    if entry.kind == "con":
        if f["nr"] != f["nc"] or f["stride_y"] != f["stride_x"] or f["padding_y"] != f["padding_x"]:
            return ("con", f["num_filters"], (f["nr"], f["nc"]), (f["stride_y"], f["stride_x"]),
                    (f["padding_y"], f["padding_x"]))
        return ("con", f["num_filters"], f["nr"], f["stride_y"], f["padding_y"])
    if entry.kind in ("max_pool", "avg_pool"):
        if f["nr"] != f["nc"] or f["stride_y"] != f["stride_x"] or f["padding_y"] != f["padding_x"]:
            return (entry.kind, (f["nr"], f["nc"]), (f["stride_y"], f["stride_x"]),
                    (f["padding_y"], f["padding_x"]))
        return (entry.kind, f["nr"], f["stride_y"], f["padding_y"])
    if entry.kind == "fc":
        return ("fc", f["num_outputs"], f["bias_mode"])
    if entry.kind == "affine":
        return ("affine",) if f["mode"] == 0 else ("affine_fc_mode",)
    return (entry.kind,)


def _module_names() -> Iterator[tuple[str, str]]:
    """(kind, state-dict prefix) for every parameterised layer, in the file's order."""
    yield "con", "conv0"
    yield "affine", "affine0"
    for i in range(len(BLOCKS)):
        yield "con", f"blocks.{i}.conv1"
        yield "affine", f"blocks.{i}.affine1"
        yield "con", f"blocks.{i}.conv2"
        yield "affine", f"blocks.{i}.affine2"
    yield "fc", "fc"


def state_dict_from_network(net: DlibNetwork) -> dict[str, Tensor]:
    """Map a parsed ``.dat`` network onto :class:`DlibFaceDescriptor`'s state dict.

    Raises :class:`DlibFormatError` naming the first layer that differs from ``anet_type``.
    """
    expected = expected_layer_kinds()
    found = [_describe(e) for e in net.layers]
    for i, (want, got) in enumerate(zip(expected, found)):
        if want != got:
            entry = net.layers[i]
            raise DlibFormatError(f"dlib face descriptor: layer {i} (byte offset {entry.offset}) is "
                                  f"{got}, expected {want}")
    if len(found) != len(expected):
        raise DlibFormatError(f"dlib face descriptor: {len(found)} layers in the file, expected {len(expected)}")
    inp = net.input.fields
    if net.input.name != "input_rgb_image_sized" or (inp.get("nr"), inp.get("nc")) != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"dlib face descriptor: input layer {net.input.name} {inp} is not "
                              f"input_rgb_image_sized<{CHIP_SIZE}>")

    averages = ("avg_red", "avg_green", "avg_blue")
    mean = torch.tensor([inp[k] for k in averages], dtype=torch.float32)
    bad = [k for k, finite in zip(averages, torch.isfinite(mean).tolist()) if not finite]
    if bad:  # (inf or NaN, or beyond a float32, which dlib holds it in: every descriptor NaN)
        raise DlibFormatError(f"dlib face descriptor: the input layer's {bad[0]} (byte offset {net.input.offset}) "
                              f"is {inp[bad[0]]}, not a finite float32")
    sd: dict[str, Tensor] = {"mean_rgb": mean.view(1, 3, 1, 1)}
    layers = [e for e in net.layers if isinstance(e, LayerDetails) and e.kind in ("con", "affine", "fc")]
    names = list(_module_names())
    if len(layers) != len(names):
        raise DlibFormatError(f"dlib face descriptor: {len(layers)} parameterised layers, expected {len(names)}")
    for entry, (kind, prefix) in zip(layers, names):
        assert entry.params is not None
        flat = entry.params.reshape(-1)
        nonfinite = np.flatnonzero(~np.isfinite(flat))
        if nonfinite.size:  # (any one makes every descriptor NaN)
            i = int(nonfinite[0])
            raise DlibFormatError(f"{prefix} (byte offset {entry.offset}): parameter {i} is {flat[i]}, "
                                  "not a finite number")
        f = entry.fields
        if kind == "con":
            n, k, nr, nc = f["filters"]
            count = n * k * nr * nc
            if flat.size != count + n:
                raise DlibFormatError(f"{prefix}: {flat.size} parameters, expected {count + n}")
            sd[f"{prefix}.weight"] = torch.from_numpy(flat[:count].reshape(n, k, nr, nc).copy())
            sd[f"{prefix}.bias"] = torch.from_numpy(flat[count:].copy())
        elif kind == "affine":
            c = f["gamma"][1] * f["gamma"][2] * f["gamma"][3]
            if flat.size != 2 * c:
                raise DlibFormatError(f"{prefix}: {flat.size} parameters, expected {2 * c}")
            sd[f"{prefix}.gamma"] = torch.from_numpy(flat[:c].copy())
            sd[f"{prefix}.beta"] = torch.from_numpy(flat[c:].copy())
        else:  # fc without bias: W is num_inputs × num_outputs, output = x @ W
            n_in, n_out = f["num_inputs"], f["num_outputs"]
            if flat.size != n_in * n_out:
                raise DlibFormatError(f"{prefix}: {flat.size} parameters, expected {n_in * n_out}")
            sd[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(flat.reshape(n_in, n_out).T))
    return sd


#: The descriptor's weights as restorekit writes them (:func:`export_safetensors`), looked for
#: beside (or instead of) dlib's ``.dat`` — e.g. on a machine without the dlib model package.
SAFETENSORS_NAME = "dlib_face_recognition_resnet_model_v1.safetensors"


def convert_dat(path: str | Path | None = None) -> dict[str, Tensor]:
    """Read dlib's descriptor ``.dat`` (or its :func:`export_safetensors` file) into a
    :class:`DlibFaceDescriptor` state dict (float32).

    Usable as a weights converter (``module:function`` taking the file path). With ``None``
    the ``.dat`` is located by :func:`restorekit.faces.dlib_models.dlib_model_path`, falling back
    to :data:`SAFETENSORS_NAME` in the same folders. A ``.dat`` this cannot follow raises
    :class:`DlibFormatError` naming the file (the located one too: a metric's set-up says it).
    """
    if path is None:
        from ..errors import WeightsMissing
        from .dlib_models import dlib_model_path

        try:
            path = dlib_model_path("face_descriptor")
        except WeightsMissing:
            try:
                path = dlib_model_path(SAFETENSORS_NAME)
            except WeightsMissing:
                raise WeightsMissing("dlib_face_recognition_resnet_model_v1.dat", "dlib model file not found; "
                                     "pip install face-recognition-models==0.3.0 or set RESTOREKIT_DLIB_MODELS "
                                     "to a folder holding it (or its .safetensors export)") from None
    p = Path(path)
    if p.suffix == ".safetensors":
        from ..weights.load import read_safetensors

        return dequantize(read_safetensors(p)[0])
    data = p.read_bytes()
    try:
        return state_dict_from_network(read_network(data))
    except DlibFormatError as exc:
        raise DlibFormatError(f"{p}: {exc}") from None


#: Suffix of the per-output-channel scales beside an int8 weight in an :func:`export_safetensors` file.
SCALE_SUFFIX = ".int8_scale"


def _per_channel(scale: Tensor, dim: int) -> Tensor:
    """``scale`` (one per output channel) shaped to broadcast over a weight of ``dim`` dimensions."""
    return scale.view((-1,) + (1,) * (dim - 1))


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(int8 weight, float32 scale per output channel)``, symmetric: ``weight ≈ q · scale``."""
    scale = weight.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    q = torch.round(weight / _per_channel(scale, weight.dim())).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


def dequantize(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A float32 state dict from an export: int8 weights times their scales, the rest as they are."""
    out: dict[str, Tensor] = {}
    for k, v in tensors.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        if v.dtype == torch.int8:
            scale = tensors.get(k + SCALE_SUFFIX)
            if scale is None:
                raise ValueError(f"int8 tensor {k} has no {k + SCALE_SUFFIX}")
            v = v.float() * _per_channel(scale.float(), v.dim())
        out[k] = v.float()
    return out


def export_tensors(sd: dict[str, Tensor], dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """A descriptor state dict as :func:`export_safetensors` stores it (``mean_rgb`` kept as is):
    in ``dtype``, or for ``torch.int8`` the conv and fc weights quantised with their scales beside
    them and the rest fp16. :func:`dequantize` reverses it."""
    tensors: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k == "mean_rgb":
            tensors[k] = v.contiguous()
        elif dtype == torch.int8 and v.dim() >= 2:
            tensors[k], tensors[k + SCALE_SUFFIX] = quantize_int8(v)
        else:
            tensors[k] = v.to(torch.float16 if dtype == torch.int8 else dtype).contiguous()
    return tensors


def export_safetensors(out: str | Path, path: str | Path | None = None, *,
                       dtype: torch.dtype = torch.float16) -> Path:
    """Write the descriptor's weights (from ``path`` or the located ``.dat``) as safetensors.

    fp16 halves the file (11 MB) for machines that cannot install the model package; the
    descriptors it gives differ from the float32 ones by well under dlib's own tolerance
    (``tests/test_dlib_port.py`` measures it). ``torch.int8`` quarters it (5.7 MB) for a transfer
    with a size limit, such as a lent GPU's: conv and fc weights quantised per output channel
    (:func:`quantize_int8`, scales stored beside them), everything else fp16; unit descriptors then
    move by about 0.02 and distances between faces by under 0.01 (dlib's same-person threshold is
    0.6), enough for a training loss, not for reporting figures.
    """
    from ..images import atomic_write_bytes
    from ..weights.st_bytes import safetensors_bytes

    tensors = export_tensors(convert_dat(path), dtype)
    meta = {"format": "restorekit.dlib-face-descriptor/1", "source": "dlib_face_recognition_resnet_model_v1.dat"}
    if dtype == torch.int8:
        meta["quantized"] = "int8, symmetric, per output channel"
    target = Path(out)
    atomic_write_bytes(target, safetensors_bytes(tensors, meta))
    return target


def load_dlib_face_descriptor(path: str | Path | None = None,
                              device: str | torch.device = "cpu") -> DlibFaceDescriptor:
    """A ready, frozen :class:`DlibFaceDescriptor` in eval mode on ``device``."""
    model = DlibFaceDescriptor.from_dat(path).to(device)
    model.requires_grad_(False)
    return model
