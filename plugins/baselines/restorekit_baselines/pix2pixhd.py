"""pix2pixHD (Wang et al., CVPR 2018) for super-resolution: networks, losses and the ``pix2pixhd`` method.

The generator translates the bicubic-upscaled low-resolution image (the "label map" of the
paper) into the high-resolution image:

* :class:`GlobalGenerator` — 7×7 conv, ``n_downsampling`` stride-2 convs, ``n_blocks`` residual
  blocks, as many transposed-conv upsamplings, 7×7 conv, tanh; instance norm, reflect padding.
* :class:`Pix2PixHDGenerator` — the global generator, optionally wrapped by ``n_local_enhancers``
  local enhancers (each works at twice the resolution of the one inside it and adds its
  downsampled features to the inner generator's last features), as in the paper.
* :class:`MultiscaleDiscriminator` — ``num_d`` conditional PatchGAN discriminators
  (``n_layers`` stride-2 convs) on the input pyramid (3×3 average pooling, stride 2), each
  returning every intermediate feature map for the feature-matching loss.
* Losses: LSGAN (:func:`lsgan_loss`), discriminator feature matching (:func:`feature_matching_loss`,
  weights ``4/(n_layers+1)`` per layer and ``1/num_d`` per scale), and :class:`VGGLoss`.

VGG features: pix2pixHD uses VGG19 relu1_1…relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1. The
only ImageNet VGG that reaches an offline machine through restorekit's weights registry is
VGG16 (``lpips-vgg``: torchvision's ``vgg16().features`` layout), so :class:`VGGLoss` uses
VGG16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 with the same weights. Its input
(``vgg_input``): ``"official"`` feeds the raw [-1, 1] image, un-normalised, as pix2pixHD's VGGLoss
does; ``"imagenet"`` normalises the [0, 1] image with the ImageNet mean/std the torchvision weights
expect (a first-layer input about 2.2× larger, so the VGG term weighs more against LSGAN and
feature matching at the same λ). It refuses random backbone weights unless ``allow_random_vgg=True``
(tests only).

Initialisation: the networks are built with PyTorch's default init; :func:`official_init` redraws
them as pix2pixHD's ``weights_init`` does (every conv and transposed conv weight from N(0, 0.02)),
which the trainer applies to fresh networks (this matters most for D's first conv, which no norm
follows). Loading weights never re-initialises.

Modules take and return images in restorekit's ``[0, 1]`` convention and convert to the
``[-1, 1]`` range the networks use inside themselves.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from restorekit.consistency import back_project
from restorekit.degradations import bicubic_resize
from restorekit.device_memory import check_working_memory
from restorekit.errors import RestorekitError, WeightsMissing
from restorekit.interfaces import Method, MethodInfo, Options, OptionsModel
from restorekit.options import OptionError, WeightsRef

EXPORT_FORMAT = "restorekit.pix2pixhd/1"
#: The embedded default model (trained by plugins/baselines/recipes/faces128, shipped in the package)
#: and where it lives; its registry entry pins the file's size and sha256.
DEFAULT_MODEL_NAME = "pix2pixhd-faces128"
DEFAULT_MODEL_FILE = "pix2pixhd_faces128.safetensors"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


# -- generator ------------------------------------------------------------------------------
MAX_BLOCKS = 256
MAX_CHANNELS = 16384


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a :class:`Pix2PixHDGenerator` (pix2pixHD's defaults: ngf 64, 4 down, 9 blocks)."""

    ngf: int = 64
    n_downsampling: int = 4
    n_blocks: int = 9
    n_local_enhancers: int = 0
    n_blocks_local: int = 3
    channels: int = 3

    def __post_init__(self) -> None:
        if self.ngf < 1 or self.n_downsampling < 0 or self.n_blocks < 0 or self.n_local_enhancers < 0 \
                or self.n_blocks_local < 0 or self.channels < 1:
            raise ValueError(f"invalid pix2pixHD generator config {self}")
        # Far beyond any pix2pixHD (the paper's widest layer is 1024 channels, 9 + 3 blocks), and
        # small enough that a file's claimed architecture can be built to check it against its tensors.
        if self.n_blocks > MAX_BLOCKS or self.n_blocks_local > MAX_BLOCKS or self.channels > 16 \
                or self.n_downsampling + self.n_local_enhancers > 10 \
                or self.ngf * 2 ** (self.n_downsampling + self.n_local_enhancers) > MAX_CHANNELS:
            raise ValueError(f"pix2pixHD generator config out of range {self} (at most {MAX_BLOCKS} blocks per "
                             f"generator, {MAX_CHANNELS} channels, 10 halvings)")

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (every downsampling halves them exactly)."""
        return 2 ** (self.n_downsampling + self.n_local_enhancers)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RestorekitError(f"pix2pixHD generator config: unknown key '{unknown[0]}'")
        return cls(**{k: int(v) for k, v in data.items()})


def _norm(ch: int) -> nn.Module:
    return nn.InstanceNorm2d(ch, affine=False)


class ResnetBlock(nn.Module):
    """``x + (reflect-pad, conv3, norm, ReLU, reflect-pad, conv3, norm)(x)``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _global_layers(cfg: GeneratorConfig, ngf: int) -> list[nn.Module]:
    """The global generator's layers up to (not including) its output 7×7 conv and tanh."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(cfg.channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
    for i in range(cfg.n_downsampling):
        c = ngf * 2**i
        layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
    c = ngf * 2**cfg.n_downsampling
    layers += [ResnetBlock(c) for _ in range(cfg.n_blocks)]
    for i in range(cfg.n_downsampling, 0, -1):
        c = ngf * 2**i
        layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), _norm(c // 2),
                   nn.ReLU(True)]
    return layers


def _output_layers(ngf: int, channels: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]


class GlobalGenerator(nn.Module):
    """pix2pixHD's global generator on ``[-1, 1]`` tensors."""

    def __init__(self, cfg: GeneratorConfig, ngf: int | None = None) -> None:
        super().__init__()
        ngf = cfg.ngf if ngf is None else ngf
        self.model = nn.Sequential(*_global_layers(cfg, ngf), *_output_layers(ngf, cfg.channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Pix2PixHDGenerator(nn.Module):
    """Global generator plus optional local enhancers; ``[0, 1]`` images in and out.

    With ``n_local_enhancers = K`` the global generator (``ngf·2^K`` filters) runs on the input
    downsampled ``K`` times; enhancer ``k`` (``ngf·2^(K−k)`` filters) adds its front end's
    features to the inner result and refines them at its own resolution.
    """

    def __init__(self, cfg: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        k = cfg.n_local_enhancers
        ngf_global = cfg.ngf * 2**k
        # The global generator without its output layers when enhancers follow.
        glob = _global_layers(cfg, ngf_global)
        if k == 0:
            glob += _output_layers(ngf_global, cfg.channels)
        self.global_net = nn.Sequential(*glob)
        self.local_down = nn.ModuleList()
        self.local_up = nn.ModuleList()
        for n in range(1, k + 1):
            ngf = cfg.ngf * 2 ** (k - n)
            self.local_down.append(nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(cfg.channels, ngf, 7), _norm(ngf), nn.ReLU(True),
                nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), _norm(2 * ngf), nn.ReLU(True)))
            up: list[nn.Module] = [ResnetBlock(2 * ngf) for _ in range(cfg.n_blocks_local)]
            up += [nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1), _norm(ngf),
                   nn.ReLU(True)]
            if n == k:
                up += _output_layers(ngf, cfg.channels)
            self.local_up.append(nn.Sequential(*up))
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def bytes_per_pixel(self) -> int:
        """Peak working memory of one inference per input pixel, in bytes (float32): about 3.6
        activations of the full-resolution width ``ngf`` are alive at once (conv, its norm, the
        reflect padding of the next), and each local enhancer's lower levels add about a third
        (measured on the CPU: 248, 474, 917 B/px for ngf 16, 32, 64; 603 for ngf 32 with one enhancer)."""
        return int(15 * self.cfg.ngf * (1 + 0.35 * self.cfg.n_local_enhancers)) + 24

    def forward(self, x: Tensor) -> Tensor:
        """``N×3×H×W`` in [0,1] (sides multiples of ``cfg.multiple``) to the same size in [0,1]."""
        m = self.cfg.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"pix2pixHD input sides must be multiples of {m}, got {x.shape[-2]}×{x.shape[-1]}")
        pyramid = [x * 2 - 1]
        for _ in range(self.cfg.n_local_enhancers):
            pyramid.append(self.pool(pyramid[-1]))
        out = self.global_net(pyramid[-1])
        for n, (down, up) in enumerate(zip(self.local_down, self.local_up), start=1):
            out = up(down(pyramid[-1 - n]) + out)
        return (out + 1) * 0.5


def official_init(module: nn.Module) -> nn.Module:
    """``module`` with every conv and transposed-conv weight redrawn from N(0, 0.02) (biases kept),
    as pix2pixHD's ``weights_init`` (which also draws BatchNorm weights from N(1, 0.02); the
    networks here normalise with parameter-free instance norm). Draws from torch's global RNG in
    module order."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.normal_(1.0, 0.02)
                m.bias.zero_()
    return module


# -- discriminator --------------------------------------------------------------------------
class NLayerDiscriminator(nn.Module):
    """Conditional PatchGAN: ``n_layers`` stride-2 4×4 convs, one stride-1, a 1-channel output.

    Returns every block's output (``n_layers + 2`` maps; the last is the patch prediction).
    """

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_ch, ndf, 4, stride=2, padding=2),
                                                 nn.LeakyReLU(0.2, True))]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            blocks.append(nn.Sequential(nn.Conv2d(prev, nf, 4, stride=2, padding=2), _norm(nf),
                                        nn.LeakyReLU(0.2, True)))
        prev, nf = nf, min(nf * 2, 512)
        blocks.append(nn.Sequential(nn.Conv2d(prev, nf, 4, stride=1, padding=2), _norm(nf), nn.LeakyReLU(0.2, True)))
        blocks.append(nn.Sequential(nn.Conv2d(nf, 1, 4, stride=1, padding=2)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs on the (condition, image) pair at 1, 1/2, 1/4… resolution.

    ``forward(condition, image)`` takes both in [0,1] and returns, per scale (finest first),
    the list of that discriminator's feature maps.
    """

    def __init__(self, channels: int = 3, ndf: int = 64, n_layers: int = 3, num_d: int = 3) -> None:
        super().__init__()
        self.n_layers, self.num_d = n_layers, num_d
        self.discriminators = nn.ModuleList(NLayerDiscriminator(2 * channels, ndf, n_layers) for _ in range(num_d))
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, condition: Tensor, image: Tensor) -> list[list[Tensor]]:
        x = torch.cat([condition, image], 1) * 2 - 1
        out = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.pool(x)
            out.append(d(x))
        return out


# -- losses ---------------------------------------------------------------------------------
def lsgan_loss(outputs: list[list[Tensor]], real: bool) -> Tensor:
    """LSGAN: the sum over scales of ``mean((pred − target)²)``, target 1 (real) or 0 (fake) —
    summed as pix2pixHD's ``GANLoss`` does, so the adversarial term weighs what it does there
    against feature matching and VGG (which are averaged over scales)."""
    total = outputs[0][-1].new_zeros(())
    for feats in outputs:
        pred = feats[-1]
        total = total + F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))
    return total


def feature_matching_loss(fake: list[list[Tensor]], real: list[list[Tensor]], n_layers: int) -> Tensor:
    """L1 between the discriminators' intermediate features of fake and (detached) real pairs.

    Weighted ``4/(n_layers+1)`` per layer and ``1/num_d`` per scale, as pix2pixHD.
    """
    total = fake[0][0].new_zeros(())
    w_layer, w_scale = 4.0 / (n_layers + 1), 1.0 / len(fake)
    for f_feats, r_feats in zip(fake, real):
        for f, r in zip(f_feats[:-1], r_feats[:-1]):
            total = total + w_scale * w_layer * F.l1_loss(f, r.detach())
    return total


# VGG16 ``features`` layout (torchvision): conv widths, "M" = max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: Indices in ``vgg16().features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG_LAYERS = (3, 8, 15, 22, 29)
VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features() -> nn.Sequential:
    """An empty VGG16 ``features`` stack up to relu5_3, indexed as torchvision's."""
    layers: list[nn.Module] = []
    ch = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            ch = int(v)
    return nn.Sequential(*layers)


WeightsArg = Mapping[str, Tensor] | str | os.PathLike[str] | None


VGGInput = Literal["official", "imagenet"]


class VGGLoss(nn.Module):
    """pix2pixHD's perceptual loss on VGG16 (see the module docstring for the layer choice).

    ``weights``: a state dict in torchvision ``features.N`` naming, a file, or a weights-registry
    name (default ``lpips-vgg``); extra keys (LPIPS heads) are ignored. ``allow_random_vgg=True``
    with ``weights=None`` builds a random backbone — for tests only; a loss on random features
    trains nothing meaningful, so without that flag ``weights=None`` is an error. ``vgg_input``:
    what the features read of a [0, 1] image ``x``: ``"official"`` ``x·2 − 1`` (pix2pixHD's),
    ``"imagenet"`` ``(x − mean)/std`` with ImageNet's mean and std.
    """

    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, weights: WeightsArg = "lpips-vgg", *, allow_random_vgg: bool = False,
                 vgg_input: VGGInput = "official") -> None:
        super().__init__()
        if vgg_input not in ("official", "imagenet"):
            raise RestorekitError(f"VGGLoss: vgg_input must be 'official' or 'imagenet', not {vgg_input!r}")
        self.vgg_input = vgg_input
        self.features = vgg16_features()
        if weights is None:
            if not allow_random_vgg:
                raise RestorekitError("VGGLoss: refusing a random VGG16 backbone (pass weights, e.g. 'lpips-vgg'; "
                                      "allow_random_vgg=True is for tests only)")
        else:
            sd = _load_vgg_state(weights)
            own = self.features.state_dict()
            missing = [k for k in own if f"features.{k}" not in sd]
            if missing:
                raise RestorekitError(f"VGGLoss: weights lack 'features.{missing[0]}' (not a VGG16 features state dict?)")
            self.features.load_state_dict({k: sd[f"features.{k}"] for k in own})
        self.random = weights is None
        self.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGLoss:
        super().train(mode)
        self.features.eval()  # frozen: never in training mode
        return self

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """relu1_2…relu5_3 of ``x`` in [0,1] (mapped to [-1, 1] or ImageNet-normalised inside, by ``vgg_input``)."""
        h = x * 2 - 1 if self.vgg_input == "official" else (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG_LAYERS:
                out.append(h)
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        fp, ft = self.feature_maps(pred), self.feature_maps(target)
        total = pred.new_zeros(())
        for w, a, b in zip(VGG_WEIGHTS, fp, ft):
            total = total + w * F.l1_loss(a, b.detach())
        return total


def _load_vgg_state(weights: Mapping[str, Tensor] | str | os.PathLike[str]) -> Mapping[str, Tensor]:
    if isinstance(weights, Mapping):
        return weights
    from restorekit.weights import load_state_dict

    return load_state_dict(weights)


# -- export / import ------------------------------------------------------------------------
def save_generator(generator: Pix2PixHDGenerator, path: str | os.PathLike[str], *,
                   factors: list[int] | None = None, input_size: int | None = None) -> Path:
    """Write the generator as safetensors with its architecture (and training setup) in the header."""
    from restorekit.images import atomic_write_bytes
    from restorekit.weights.st_bytes import safetensors_bytes

    p = Path(path)
    meta = {"format": EXPORT_FORMAT, "config": json.dumps(asdict(generator.cfg))}
    if factors is not None:
        meta["factors"] = json.dumps(list(factors))
    if input_size is not None:
        meta["input_size"] = str(int(input_size))
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    atomic_write_bytes(p, safetensors_bytes(state, meta))  # nothing half-written, errors naming p
    return p


def pad_to_stride(x: Tensor, m: int) -> Tensor:
    """Pad bottom/right to a multiple of the network's stride ``m``, and to at least ``2·m`` a side
    (so the bottleneck keeps 2 px for its instance norm and reflect padding): reflect, else
    replicate. The torch and onnxruntime backends both pad with this."""
    h, w = x.shape[-2:]
    ph, pw = max((-h) % m, 2 * m - h), max((-w) % m, 2 * m - w)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def _file_config(p: Path, read: Any) -> GeneratorConfig:
    """The generator config a file records (``read()`` gives its dict); one line naming the file."""
    try:
        data = read()
        if not isinstance(data, Mapping):
            raise ValueError(f"a {type(data).__name__}, not a mapping")
        return GeneratorConfig.from_dict(data)
    except RestorekitError as exc:
        raise RestorekitError(f"{p}: {exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        if str(exc).startswith(("invalid pix2pixHD", "pix2pixHD")):  # GeneratorConfig's own refusal
            raise RestorekitError(f"{p}: {exc}") from None
        raise RestorekitError(f"{p}: unreadable pix2pixHD generator config ({exc})") from None


def _check_shapes(p: Path, cfg: GeneratorConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a file whose tensors are not exactly the ones ``cfg``'s generator has (built on the
    meta device: no memory)."""
    from restorekit.weights import state_mismatch

    problem = state_mismatch(lambda: Pix2PixHDGenerator(cfg), shapes)
    if problem:
        raise RestorekitError(f"{p}: weights do not fit the recorded architecture ({problem})")


def load_generator(path: str | os.PathLike[str]) -> tuple[Pix2PixHDGenerator, dict[str, Any]]:
    """Read :func:`save_generator`'s file, or a ``restorekit train pix2pixhd`` checkpoint.

    Returns the generator (eval mode) and the training setup it records (``factors``,
    ``input_size`` when known).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsMissing(str(p), "no such file")
    info: dict[str, Any] = {}
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        from restorekit.weights.load import read_safetensors

        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != EXPORT_FORMAT:
                    raise RestorekitError(f"{p}: not a pix2pixHD export (header format {meta.get('format')!r}, "
                                          f"expected {EXPORT_FORMAT!r})")
                cfg = _file_config(p, lambda: json.loads(meta["config"]))
                # Tensor shapes from the header: a config claiming a network the file does not hold is
                # refused before anything is allocated (a 164-byte file could claim 100,000 blocks).
                _check_shapes(p, cfg, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
            state = read_safetensors(p)[0]  # (nothing kept per load: a server loads it again and again)
        except Exception as exc:  # safetensors reports a damaged file as its own SafetensorError
            if type(exc).__name__ != "SafetensorError":
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RestorekitError(f"{p}: not a readable safetensors file ({reason})") from None
        if "factors" in meta:
            info["factors"] = json.loads(meta["factors"])
        if "input_size" in meta:
            info["input_size"] = int(meta["input_size"])
    else:
        from restorekit.weights import load_checkpoint

        ckpt = load_checkpoint(p)
        if not isinstance(ckpt, Mapping) or ckpt.get("trainer") != "pix2pixhd":
            raise RestorekitError(f"{p}: not a pix2pixHD export (.safetensors) or `restorekit train pix2pixhd` "
                                  "checkpoint")
        extra = ckpt.get("extra", {})
        cfg = _file_config(p, lambda: extra["generator_config"])
        state = {k[len("G."):]: v for k, v in ckpt["model"].items() if k.startswith("G.")}
        info = {k: extra[k] for k in ("factors", "input_size") if k in extra}
        _check_shapes(p, cfg, {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)})
    gen = Pix2PixHDGenerator(cfg)
    try:
        gen.load_state_dict(state)
    except RuntimeError as exc:
        raise RestorekitError(f"{p}: weights do not fit the recorded architecture: "
                              f"{str(exc).splitlines()[0]}") from None
    return gen.eval(), info


# -- the method -----------------------------------------------------------------------------
#: What the method holds beside the network's peak per output pixel (the float32 result). Measured
#: for the whole `run` on the CPU: 240 B/px with the embedded model (ngf 16), back-projection included.
BYTES_PER_OUTPUT_PIXEL = 12


class Pix2PixHDOptions(Options):
    weights: WeightsRef = Field(
        None, description="trained generator: a .safetensors export or a training checkpoint "
                          "(`restorekit train pix2pixhd` writes both)")
    input_size: int | None = Field(
        None, ge=8, description="resize the upscaled input to this square size for the network "
                                "(the training size) and the result back; default: native size, padded")
    consistency_steps: int = Field(0, ge=0, le=100,
                                   description="back-projection steps that make the output downscale to the input "
                                               "(restorekit.consistency); 0: the network's output as is, as in the paper")


#: The smallest aligned crop :meth:`Pix2PixHD.face_input_size` asks for (smaller: the pipeline's default).
MIN_FACE_CROP = 8


class InputSizeError(OptionError, ValueError):
    """An ``input_size`` the loaded weights cannot take: an option refusal (``run`` refuses it in one
    line, exit 2, before any image), and the ``ValueError`` a Python caller gets for any other bad
    option value (pydantic's)."""


def check_input_size(size: int | None, multiple: int) -> None:
    """Refuse (:class:`InputSizeError`) an ``input_size`` that is not a multiple of the network's
    stride ``multiple``: every downsampling must halve it exactly. Naming the nearest that fit."""
    if size is None or size % multiple == 0:
        return
    below, above = size - size % multiple, size - size % multiple + multiple
    nearest = f"{below} or {above}" if below >= multiple else f"{above}"
    raise InputSizeError(f"pix2pixhd: input_size must be a multiple of {multiple} for these weights, got {size} "
                         f"(nearest: {nearest})")


class Pix2PixHD(Method):
    """pix2pixHD conditional GAN applied to the bicubic-upscaled input."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="pix2pixhd",
        summary="pix2pixHD (global generator, optional local enhancers; multi-scale GAN) on the bicubic-upscaled input",
        license="Apache-2.0",
        paper="Wang et al., High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs, "
              "CVPR 2018, https://arxiv.org/abs/1711.11585",
        deterministic=True,
        default_weights=DEFAULT_MODEL_NAME,
        # Its models (the embedded default, the recipe) are trained on aligned face crops: on a
        # photo, `run` and `compare --faces detect` restore its faces through the face pipeline.
        input_kind="aligned_face",
    )
    Options = Pix2PixHDOptions
    options: Pix2PixHDOptions

    def __init__(self, options: OptionsModel | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(options, device)
        self.generator: Pix2PixHDGenerator | None = None
        self.trained: dict[str, Any] = {}
        self.notes: list[str] = []
        self._warned: set[int] = set()

    def load(self) -> None:
        if self.generator is not None:
            return
        w = self.options.weights
        from restorekit.weights import resolve

        if w is None:
            if not (WEIGHTS_DIR / DEFAULT_MODEL_FILE).is_file():
                raise WeightsMissing("pix2pixhd", f"no --opt weights given, and the embedded default "
                                     f"{DEFAULT_MODEL_FILE} is not in this installation ({WEIGHTS_DIR})",
                                     fix="reinstall restorekit-baselines, or train with `restorekit train pix2pixhd "
                                         "--data DIR --out RUN` and pass --opt weights=RUN/pix2pixhd.safetensors")
            path = resolve(DEFAULT_MODEL_NAME)  # checks the bundled file's size and sha256 against the registry
            name = DEFAULT_MODEL_NAME
        else:
            from restorekit.weights import weights_source

            # A registered name even beside a same-named file (./NAME is the file), else an existing
            # file; raises WeightsMissing/UnknownNameError, or 'PATH: no such file'.
            path, registered = weights_source(w)
            name = registered or ""
        # Building the network initialises its layers from torch's global RNG before the weights
        # replace them: fork it, so a caller's torch.manual_seed(…) sequence is not moved by a load.
        with torch.random.fork_rng(devices=[]):
            gen, self.trained = load_generator(path)
        self.generator = gen.to(self.device)
        if name:
            from restorekit.weights import get_spec

            default = " (the embedded default; --opt weights=NAME|FILE selects another)" if w is None else ""
            self.notes.append(f"pix2pixhd: weights {name}{default}, license {get_spec(name).license}")
        if "factors" in self.trained:
            size = f" on {self.trained['input_size']}-px images" if "input_size" in self.trained else ""
            self.notes.append(f"pix2pixhd: these weights were trained for scale(s) {self.trained['factors']}{size}")
        # Now that the weights' stride is known: refused here, before any image, not by every restore.
        check_input_size(self.options.input_size, self.generator.cfg.multiple)

    def face_input_size(self, scale: int) -> int | None:
        """Aligned-crop size for photos (``--faces detect``): the size the weights were trained on
        (or ``input_size``) ÷ ``scale`` where it divides, so that faces reach the network at the
        size of its training faces (the pipeline's default, 256-px restored crops, would give this
        fully convolutional network faces twice that size); otherwise the pipeline's default."""
        self.load()
        size = self.options.input_size or self.trained.get("input_size")
        if size and size % scale == 0 and size // scale >= MIN_FACE_CROP:
            return size // scale
        return None

    def preflight(self, lr: Tensor, scale: int, device: torch.device | None = None) -> None:
        """Before any work, on either backend (the ONNX export spec's ``preflight``): the note on a
        scale the weights were not trained for, once per scale, the refusal of an ``input_size``
        the weights cannot take (set after :meth:`load`), and of an input whose working memory
        ``device`` (default: the method's) does not have."""
        self.load()
        assert self.generator is not None
        check_input_size(self.options.input_size, self.generator.cfg.multiple)
        scale = int(scale)
        factors = self.trained.get("factors")
        if factors and scale not in factors and scale not in self._warned:
            self._warned.add(scale)
            print(f"pix2pixhd: these weights were trained for scale(s) {factors}, not {scale}; "
                  "expect weaker results", file=sys.stderr)
        h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
        size = self.options.input_size
        side = size or max(h, w)
        network = side * side * self.generator.bytes_per_pixel()
        output = h * w * BYTES_PER_OUTPUT_PIXEL
        images = f" × {lr.shape[0]} images" if lr.shape[0] > 1 else ""
        if size is not None and network >= output:  # input_size, not the scale, makes it big: name it
            what = f"pix2pixhd at input_size={size} (its network runs on {size}×{size} images{images})"
            trained = self.trained.get("input_size")
            to = f" to the {trained} px these weights were trained on" if trained and trained < size else ""
            fix = f"lower --opt input_size{to}, or use a machine with more memory"
        else:
            what = f"pix2pixhd at ×{scale} ({w}×{h}{images})"
            fix = ("its network runs at the output's full size: lower --scale, restore the faces alone "
                   "(--faces detect), or use a machine with more memory")
        check_working_memory(lr.shape[0] * (output + network),
                             torch.device(device) if device is not None else self.device, what, fix)

    @torch.no_grad()
    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        scale, n_samples = int(scale), int(n_samples)
        self.load()
        assert self.generator is not None
        self.preflight(lr, scale)
        if n_samples > 1:  # the samples (one deterministic output, repeated) beside the network's working memory
            self.check_output_memory(lr, scale, n_samples, copies=1)
        lr = lr.to(self.device, torch.float32)
        h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
        size = self.options.input_size
        x = bicubic_resize(lr, (h, w)).clamp(0, 1)
        if size is not None:  # a multiple of the network's stride (checked by load and preflight)
            y = self.generator(bicubic_resize(x, (size, size)).clamp(0, 1))
            out = bicubic_resize(y, (h, w))
        else:
            out = self._run_padded(x)
        out = out.clamp(0, 1).float()
        out = back_project(out, lr, steps=self.options.consistency_steps)
        self.last_reports = [{"factors_trained": self.trained.get("factors")} for _ in range(lr.shape[0])]
        return out.repeat_interleave(n_samples, dim=0) if n_samples > 1 else out

    def _run_padded(self, x: Tensor) -> Tensor:
        """Pad for the network (:func:`pad_to_stride`), run, crop."""
        assert self.generator is not None
        h, w = x.shape[-2:]
        return self.generator(pad_to_stride(x, self.generator.cfg.multiple))[..., :h, :w]
