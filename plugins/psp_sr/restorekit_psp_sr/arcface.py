"""ArcFace IR-SE50 face embedder, as pSp's identity loss uses it, with an importer for its weights.

The network is InsightFace's ``Backbone(112, 50, 'ir_se')`` (TreB1eN/InsightFace_Pytorch naming:
``input_layer``, ``body.N``, ``output_layer``); ``output_layer`` is
``[BN2d(512), Dropout, Flatten, Linear(512·7·7, 512), BN1d(512)]`` and the 512-d output is
l2-normalised. The official file ``model_ir_se50.pth`` is a plain state dict in that layout.

Preprocessing follows pSp's ``IDLoss``: the FFHQ-framed face, at 256 px, is cropped to rows
35:223 and columns 32:220 (188×188, the inner face), adaptive-average-pooled to 112×112 and fed
in ``[-1, 1]``. Inputs of other sizes are first brought to 256 px (average pooling for integer
multiples, as pSp pools its 1024-px outputs; antialiased bilinear otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restorekit.interfaces import FaceEmbedder

from .irse import BackboneConfig, backbone_config, bn_keys, make_body, make_input_layer, official_body_keys

WEIGHT_NAME = "ir-se50"
FRAME = 256
CROP = (35, 223, 32, 220)  # top, bottom, left, right in the 256-px FFHQ frame
CHIP = 112


class IRSEBackbone(nn.Module):
    """InsightFace ``Backbone``: stem, IR(-SE) body, BN + dropout + linear + BN1d head (``embed_dim``)."""

    def __init__(self, backbone: str | BackboneConfig = "ir_se50", *, input_size: int = CHIP,
                 embed_dim: int = 512, drop_ratio: float = 0.6, affine: bool = True) -> None:
        super().__init__()
        cfg = backbone_config(backbone)
        if input_size % 2 ** len(cfg.units):
            raise ValueError(f"IR backbone input size {input_size} is not divisible by {2 ** len(cfg.units)}")
        self.cfg = cfg
        self.input_size = input_size
        side = input_size // 2 ** len(cfg.units)  # 7 for 112 px and 4 stages
        self.input_layer = make_input_layer(3, cfg.stem_width)
        self.body = make_body(cfg)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(cfg.out_width), nn.Dropout(drop_ratio), nn.Flatten(),
            nn.Linear(cfg.out_width * side * side, embed_dim), nn.BatchNorm1d(embed_dim, affine=affine))

    def forward(self, x: Tensor) -> Tensor:
        """``N×3×S×S`` in [-1, 1] to l2-normalised ``N×embed_dim``."""
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, p=2.0, dim=1)


def official_irse_keys(backbone: str | BackboneConfig = "ir_se50", *, affine: bool = True,
                       with_num_batches: bool = True) -> list[str]:
    """The state-dict keys of InsightFace's ``Backbone`` for ``backbone``, written out from its layout.

    Independent of :class:`IRSEBackbone` so tests can check the module against the official naming.
    """
    cfg = backbone_config(backbone)

    def bn(p: str, aff: bool = True) -> list[str]:
        return bn_keys(p, affine=aff, with_num_batches=with_num_batches)

    keys = official_body_keys(cfg, with_num_batches=with_num_batches)
    keys += [*bn("output_layer.0"), "output_layer.3.weight", "output_layer.3.bias", *bn("output_layer.4", affine)]
    return keys


def map_irse_state_dict(state: Mapping[str, Tensor], model: IRSEBackbone) -> dict[str, Tensor]:
    """Map an official IR-SE state dict onto ``model``'s names, checking every key and shape.

    Accepts a ``module.`` prefix (DataParallel saves) and files from PyTorch < 0.4.1 that lack
    BatchNorm's ``num_batches_tracked`` (filled with 0). Raises ``ValueError`` listing the problems.
    """
    src = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    missing = []
    for key, ref in target.items():
        if key in src:
            out[key] = src[key]
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(ref)
        else:
            missing.append(key)
    unexpected = sorted(set(src) - set(target))
    bad_shape = [f"{k} {tuple(out[k].shape)} vs {tuple(target[k].shape)}"
                 for k in out if out[k].shape != target[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
    if bad_shape:
        problems.append(f"{len(bad_shape)} with wrong shapes (first: {bad_shape[0]})")
    if problems:
        raise ValueError(f"IR-SE weights do not match the {describe(model.cfg)} layout: " + "; ".join(problems))
    return out


def describe(cfg: BackboneConfig) -> str:
    """A short human description of a backbone for error messages."""
    kind = "IR-SE" if cfg.se else "IR"
    return f"{kind} {'/'.join(map(str, cfg.units))} units at widths {'/'.join(map(str, cfg.widths))}"


def load_state_file(name_or_path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A flat state dict from a weights name or file, read without running code from it."""
    from restorekit.weights import load_state_dict

    return load_state_dict(name_or_path)


def prepare_faces(faces: Tensor) -> Tensor:
    """FFHQ-framed ``N×3×H×W`` in [0, 1] to pSp's 112-px ``[-1, 1]`` inner-face crop."""
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"faces must be N×3×H×W; got shape {tuple(faces.shape)}")
    h, w = faces.shape[-2:]
    if (h, w) != (FRAME, FRAME):
        if h == w and h % FRAME == 0:
            faces = F.adaptive_avg_pool2d(faces, FRAME)
        else:
            faces = F.interpolate(faces, size=(FRAME, FRAME), mode="bilinear", align_corners=False, antialias=True)
    t, b, l, r = CROP
    x = F.adaptive_avg_pool2d(faces[:, :, t:b, l:r], CHIP)
    return x * 2 - 1


class ArcFaceEmbedder(nn.Module, FaceEmbedder):
    """ArcFace IR-SE50 (``arcface_irse50``): FFHQ-framed faces in [0, 1] to unit 512-d vectors.

    Differentiable with respect to its input; the network stays in eval mode (frozen BN, no
    dropout). Build with :meth:`from_file` or :func:`build_arcface_irse50` for the real weights.
    """

    name: ClassVar[str] = "arcface_irse50"
    differentiable: ClassVar[bool] = True
    framing: ClassVar[Literal["ffhq", "chip"]] = "ffhq"

    def __init__(self, backbone: str | BackboneConfig = "ir_se50", embed_dim: int = 512) -> None:
        super().__init__()
        self.net = IRSEBackbone(backbone, embed_dim=embed_dim)
        self.eval()

    def train(self, mode: bool = True) -> ArcFaceEmbedder:
        """Always eval: the embedder is a fixed measurement, never trained here."""
        return super().train(False)

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Load an official ``model_ir_se50.pth`` state dict (see :func:`map_irse_state_dict`)."""
        self.net.load_state_dict(map_irse_state_dict(state, self.net), strict=True)

    @classmethod
    def from_file(cls, name_or_path: str | os.PathLike[str],
                  backbone: str | BackboneConfig = "ir_se50") -> ArcFaceEmbedder:
        """Build and load from a weights name or a ``model_ir_se50.pth``-layout file."""
        model = cls(backbone)
        model.load_official(load_state_file(name_or_path))
        return model

    def embed(self, faces: Tensor) -> Tensor:
        """``N×3×H×W`` FFHQ-framed faces in [0, 1] to ``N×512`` unit vectors."""
        return self.net(prepare_faces(faces))

    def forward(self, faces: Tensor) -> Tensor:
        return self.embed(faces)


def build_arcface_irse50(weights: str | os.PathLike[str] = WEIGHT_NAME, device: str | torch.device = "cpu",
                         backbone: str | BackboneConfig = "ir_se50") -> ArcFaceEmbedder:
    """Registry factory ``arcface_irse50``: the embedder with official IR-SE50 weights.

    ``weights``: a weights name (default ``ir-se50``, resolved in the cache, which raises
    ``restorekit.errors.WeightsMissing`` naming the fix) or a file path. ``backbone`` other
    than ``ir_se50`` only serves files of other depths in the same layout (e.g. tests).
    """
    return ArcFaceEmbedder.from_file(weights, backbone).to(device)
