"""pSp encoders: the feature-pyramid GradualStyleEncoder, ReStyle's BackboneEncoder and the
single-W backbone encoder.

Module names mirror the official pSp release (``models/encoders/psp_encoders.py``) so official
checkpoints load by name: ``input_layer``, ``body`` (IR-SE units, :mod:`.irse`), ``styles.i``
(map2style heads: ``convs`` + ``linear``), ``latlayer1``, ``latlayer2``; ReStyle's BackboneEncoder
(``models/encoders/restyle_psp_encoders.py``) the same without the lateral layers; and for the
learn-in-W encoder ``input_layer``, ``body``, ``output_pool``, ``linear``.

Pyramid (IR-SE50 on a 256-px input): ``c1`` = end of stage 2 (128 ch, 64 px, body index 6),
``c2`` = end of stage 3 (256 ch, 32 px, index 20), ``c3`` = end of stage 4 (512 ch, 16 px,
index 23). BackboneEncoder: every style reads ``c3``. ``p2 = up(c3) + latlayer1(c2)``, ``p1 = up(p2) + latlayer2(c1)`` (bilinear,
``align_corners=True`` as official). Styles ``0..coarse_ind-1`` read ``c3``, ``coarse_ind..
middle_ind-1`` read ``p2``, the rest read ``p1`` (official: 3 and 7). Each head halves its map with
stride-2 3×3 convs + LeakyReLU(0.01) down to 1×1, then an equalized linear layer.

``forward`` takes the official ``[-1, 1]`` input at ``input_size``; ``encode`` takes the
framework's ``[0, 1]`` images at any size (resized as :func:`resize_input` says).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restorekit.interfaces import Encoder

from .fast_encoder import InferencePath, backbone_heads_forward, gradual_style_forward, single_w_forward
from .irse import BackboneConfig, backbone_config, make_body, make_input_layer
from .stylegan2 import EqualLinear  # rosinality naming: weight, bias; lr_mul/sqrt(in) at run time
from .stylegan2 import in_onnx_export


def resize_input(x: Tensor, size: int) -> Tensor:
    """Resize ``N×C×H×W`` to ``size×size`` (bilinear, antialiased when shrinking; no-op when equal).

    Bilinear matches the official pipeline, which brings every input to 256 px with PIL's bilinear
    resize (antialiased on downscaling) before the encoder.
    """
    if x.shape[-2:] == (size, size):
        return x
    if in_onnx_export():  # ONNX has no antialiased resize: the same, as two matrix products
        rows = _resize_matrix(int(x.shape[-2]), size).to(x.dtype)
        cols = _resize_matrix(int(x.shape[-1]), size).to(x.dtype)
        return torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def pool_input(x: Tensor, size: int) -> Tensor:
    """Average-pool ``N×C×H×W`` to ``size×size``: ``adaptive_avg_pool2d`` (no-op when equal).

    The official pSp and ReStyle networks' ``face_pool``: 1024 → 256 is a 4×4 box average. When
    shrinking by a whole factor the ONNX export writes it as that average pool, otherwise (and
    when enlarging) as two matrix products, each row the mean over PyTorch's adaptive window.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == (size, size):
        return x
    if in_onnx_export():
        if h % size == 0 and w % size == 0:
            return F.avg_pool2d(x, (h // size, w // size))
        rows, cols = _pool_matrix(h, size).to(x.dtype), _pool_matrix(w, size).to(x.dtype)
        return torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
    return F.adaptive_avg_pool2d(x, size)


def _pool_matrix(n: int, size: int) -> Tensor:
    """``size×n``: adaptive average pooling along one axis, as a matrix (output ``i`` averages
    inputs ``floor(i·n/size) … ceil((i+1)·n/size) − 1``)."""
    m = torch.zeros(size, n)
    for i in range(size):
        start, end = (i * n) // size, -((-(i + 1) * n) // size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _resize_matrix(n: int, size: int) -> Tensor:
    """``size×n``: :func:`resize_input` along one axis (it is separable), as a matrix — what it
    makes of each basis vector."""
    with torch.no_grad():  # the other axis 4 wide, kept: antialiasing treats an axis of 1 apart
        basis = torch.eye(n).reshape(n, 1, n, 1).expand(n, 1, n, 4).contiguous()
        out = F.interpolate(basis, size=(size, 4), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0, :, 0].t().contiguous()


def default_style_split(n_styles: int) -> tuple[int, int]:
    """``(coarse_ind, middle_ind)``: official 3 and 7, required to leave at least one fine style."""
    _check_styles(n_styles)
    if n_styles < 8:
        raise ValueError(f"GradualStyleEncoder needs n_styles >= 8 (generators of 32 px or more); got {n_styles}")
    return 3, 7


class GradualStyleBlock(nn.Module):
    """map2style: stride-2 3×3 convs with LeakyReLU from ``spatial`` px down to 1×1, then EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int, style_dim: int | None = None) -> None:
        super().__init__()
        n_down = int(round(math.log2(spatial)))
        if 2 ** n_down != spatial or n_down < 1:
            raise ValueError(f"map2style head needs a power-of-two spatial size >= 2; got {spatial}")
        self.out_c = out_c
        self.spatial = spatial
        layers: list[nn.Module] = []
        for i in range(n_down):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, kernel_size=3, stride=2, padding=1),
                       nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, style_dim or out_c, lr_mul=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"map2style head for {self.spatial} px got a {tuple(x.shape[-2:])} map after "
                             f"its convs; resize the encoder input to its input_size")
        return self.linear(x.flatten(1))


#: More styles than any StyleGAN2 has (18 at 1024 px), and more input than any pSp reads (256 px):
#: a model file's config may claim anything, and these bound what building it can cost.
MAX_STYLES = 64
MAX_INPUT_SIZE = 4096


def _check_input_size(input_size: int) -> None:
    if input_size < 32 or input_size > MAX_INPUT_SIZE or 2 ** int(round(math.log2(input_size))) != input_size:
        raise ValueError(f"encoder input_size must be a power of two from 32 to {MAX_INPUT_SIZE}; got {input_size}")


def _check_styles(n_styles: int) -> None:
    if not 1 <= n_styles <= MAX_STYLES:
        raise ValueError(f"encoder n_styles must be 1 to {MAX_STYLES}; got {n_styles}")


def _checked_backbone(kind: str, backbone: str | BackboneConfig, n_styles: int, input_size: int) -> BackboneConfig:
    """The backbone config of a W+ encoder, its sizes checked before anything is built."""
    cfg = backbone_config(backbone)
    if len(cfg.units) != 4:
        raise ValueError(f"{kind} needs a 4-stage backbone; got {len(cfg.units)} stages")
    _check_input_size(input_size)
    _check_styles(n_styles)
    return cfg


class _HeadedEncoder(Encoder):
    """What pSp's W+ encoders share: the IR-SE backbone (``input_layer``, ``body``), their sizes,
    one map2style head per style (made by the subclass), and :meth:`encode`."""

    def __init__(self, cfg: BackboneConfig, n_styles: int, style_dim: int, input_nc: int, input_size: int,
                 head_channels: int | None) -> None:
        super().__init__()
        self.backbone_cfg = cfg
        self.n_styles = n_styles
        self.style_dim = style_dim
        self.input_nc = input_nc
        self.input_size = input_size
        self.head_channels = head_channels or style_dim
        self.input_layer = make_input_layer(input_nc, cfg.stem_width)
        self.body = make_body(cfg)
        #: Set by :func:`.fast_encoder.optimize_encoder`: the faster eval-mode forward.
        self.inference_path: InferencePath | None = None

    def _fast_path(self, x: Tensor) -> InferencePath | None:
        """The inference path, when ``forward`` may take it for ``x``."""
        path = self.inference_path
        usable = path is not None and x.shape[-2:] == (self.input_size, self.input_size) and path.usable(self, x)
        return path if usable else None

    def encode(self, image: Tensor) -> Tensor:
        """``N×C×H×W`` in [0, 1], any size, to ``N×n_styles×style_dim`` (without ``latent_avg``)."""
        return self(resize_input(image, self.input_size) * 2 - 1)


class GradualStyleEncoder(_HeadedEncoder):
    """pSp's feature-pyramid encoder into W+ (``N×n_styles×style_dim``), residual to ``latent_avg``.

    ``backbone``: a :class:`~.irse.BackboneConfig` or name (``ir_se50`` as in the paper;
    ``ir_se_light`` = 1/1/2/1 units at widths 16/32/64/128 for CPU). ``head_channels``: width of
    the map2style convs (official: 512 = ``style_dim``, the default).
    """

    def __init__(self, n_styles: int = 18, style_dim: int = 512, *, backbone: str | BackboneConfig = "ir_se50",
                 input_nc: int = 3, input_size: int = 256, head_channels: int | None = None,
                 coarse_ind: int | None = None, middle_ind: int | None = None) -> None:
        cfg = _checked_backbone("GradualStyleEncoder", backbone, n_styles, input_size)
        dc, dm = default_style_split(n_styles)
        coarse_ind = dc if coarse_ind is None else coarse_ind
        middle_ind = dm if middle_ind is None else middle_ind
        if not 0 < coarse_ind < middle_ind < n_styles:
            raise ValueError(f"need 0 < coarse_ind < middle_ind < n_styles; got {coarse_ind}, {middle_ind}, {n_styles}")
        super().__init__(cfg, n_styles, style_dim, input_nc, input_size, head_channels)
        self.coarse_ind = coarse_ind
        self.middle_ind = middle_ind
        ends = cfg.stage_ends()
        self._taps = (ends[1], ends[2], ends[3])  # c1, c2, c3
        top = cfg.out_width
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            spatial = input_size // (16 if i < coarse_ind else 8 if i < middle_ind else 4)
            self.styles.append(GradualStyleBlock(top, self.head_channels, spatial, style_dim))
        self.latlayer1 = nn.Conv2d(cfg.widths[2], top, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(cfg.widths[1], top, kernel_size=1, stride=1, padding=0)

    @staticmethod
    def _upsample_add(top: Tensor, lateral: Tensor) -> Tensor:
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    def forward(self, x: Tensor) -> Tensor:
        """Official forward: ``N×input_nc×S×S`` in [-1, 1] (``S = input_size``) to W+ codes."""
        path = self._fast_path(x)
        if path is not None:
            return gradual_style_forward(self, path, x)
        x = self.input_layer(x)
        t1, t2, t3 = self._taps
        feats: dict[int, Tensor] = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (t1, t2, t3):
                feats[i] = x
        c1, c2, c3 = feats[t1], feats[t2], feats[t3]
        codes = [self.styles[j](c3) for j in range(self.coarse_ind)]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        codes += [self.styles[j](p2) for j in range(self.coarse_ind, self.middle_ind)]
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        codes += [self.styles[j](p1) for j in range(self.middle_ind, self.n_styles)]
        return torch.stack(codes, dim=1)


class BackboneEncoder(_HeadedEncoder):
    """ReStyle's BackboneEncoder: pSp's encoder without the pyramid — every map2style head reads
    the backbone's last map (16 px on a 256-px input). ReStyle's FFHQ pSp models use it.

    ``head_channels``: width of the map2style convs (official: 512 = ``style_dim``, the default).
    """

    def __init__(self, n_styles: int = 18, style_dim: int = 512, *, backbone: str | BackboneConfig = "ir_se50",
                 input_nc: int = 6, input_size: int = 256, head_channels: int | None = None) -> None:
        cfg = _checked_backbone("BackboneEncoder", backbone, n_styles, input_size)
        super().__init__(cfg, n_styles, style_dim, input_nc, input_size, head_channels)
        self.styles = nn.ModuleList(GradualStyleBlock(cfg.out_width, self.head_channels, input_size // 16, style_dim)
                                    for _ in range(n_styles))

    def forward(self, x: Tensor) -> Tensor:
        """Official forward: ``N×input_nc×S×S`` in [-1, 1] (``S = input_size``) to W+ codes."""
        path = self._fast_path(x)
        if path is not None:
            return backbone_heads_forward(self, path, x)
        top = self.body(self.input_layer(x))
        return torch.stack([head(top) for head in self.styles], dim=1)


class BackboneEncoderUsingLastLayerIntoW(Encoder):
    """pSp's ``learn_in_w`` encoder: backbone, global average pool, EqualLinear to one W vector.

    ``forward`` returns ``N×style_dim`` as official; ``encode`` broadcasts it to all ``n_styles``.
    """

    def __init__(self, n_styles: int = 18, style_dim: int = 512, *, backbone: str | BackboneConfig = "ir_se50",
                 input_nc: int = 3, input_size: int = 256) -> None:
        super().__init__()
        cfg = backbone_config(backbone)
        _check_input_size(input_size)
        _check_styles(n_styles)
        self.backbone_cfg = cfg
        self.n_styles = n_styles
        self.style_dim = style_dim
        self.input_nc = input_nc
        self.input_size = input_size
        self.input_layer = make_input_layer(input_nc, cfg.stem_width)
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(cfg.out_width, style_dim, lr_mul=1)
        self.body = make_body(cfg)
        #: Set by :func:`.fast_encoder.optimize_encoder`: the faster eval-mode forward.
        self.inference_path: InferencePath | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Official forward: ``[-1, 1]`` input to ``N×style_dim``."""
        path = self.inference_path
        if path is not None and path.usable(self, x):
            return single_w_forward(self, path, x)
        x = self.body(self.input_layer(x))
        return self.linear(self.output_pool(x).flatten(1))

    def encode(self, image: Tensor) -> Tensor:
        """``N×C×H×W`` in [0, 1] to ``N×n_styles×style_dim`` (the W vector repeated)."""
        w = self(resize_input(image, self.input_size) * 2 - 1)
        return w.unsqueeze(1).expand(-1, self.n_styles, -1)


ENCODER_TYPES = {
    "GradualStyleEncoder": GradualStyleEncoder,
    "BackboneEncoder": BackboneEncoder,
    "BackboneEncoderUsingLastLayerIntoW": BackboneEncoderUsingLastLayerIntoW,
}


def build_gradual_style_encoder(n_styles: int = 18, style_dim: int = 512, backbone: str = "ir_se50",
                                input_nc: int = 3, input_size: int = 256, learn_in_w: bool = False,
                                head_channels: int | None = None, pyramid: bool = True) -> Encoder:
    """Registry factory ``gradual_style``: the W+ pyramid encoder; with ``pyramid=False`` ReStyle's
    BackboneEncoder (every head on the last map); the single-W one with ``learn_in_w``."""
    if learn_in_w and not pyramid:
        raise ValueError("learn_in_w and pyramid=False are two different encoders; choose one")
    if not pyramid:
        return BackboneEncoder(n_styles, style_dim, backbone=backbone, input_nc=input_nc,
                               input_size=input_size, head_channels=head_channels)
    if learn_in_w:
        return BackboneEncoderUsingLastLayerIntoW(n_styles, style_dim, backbone=backbone,
                                                 input_nc=input_nc, input_size=input_size)
    return GradualStyleEncoder(n_styles, style_dim, backbone=backbone, input_nc=input_nc,
                               input_size=input_size, head_channels=head_channels)
