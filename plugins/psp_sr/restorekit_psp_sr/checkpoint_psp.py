"""Import (and, for tests and interchange, export) of official pSp checkpoints.

An official pSp ``.pt`` is ``{"state_dict": {"encoder.*", "decoder.*"}, "opts": dict,
"latent_avg": tensor}``. It is read with ``torch.load(weights_only=True, map_location="cpu")``
(``opts`` is a plain dict, with e.g. ``device: 'cuda:0'`` that is ignored here; tensors may have
been saved on CUDA). ``opts`` read: ``encoder_type``, ``input_nc``, ``label_nc``,
``output_size`` (1024 when absent, as official inference assumes), ``learn_in_w`` (implied by
``encoder_type``; checked when present), ``n_styles``, ``start_from_latent_avg``, ``resize_factors``,
``n_iters_per_batch``.

Input channels. restorekit feeds an encoder 3 channels (RGB: pSp) or 6 (the RGB input, then the
current reconstruction: ReStyle, github.com/yuval-alaluf/restyle-encoder). A file whose
encoder's first conv (``encoder.input_layer.0.weight``) reads any other count (pSp's sketch or
segmentation models, ``label_nc``) is refused at load. A 6-channel file imports as a ReStyle
model: ``opts.n_iters_per_batch`` passes (5 when absent, ReStyle's default), the first from
``latent_avg`` (required; ReStyle starts there whatever ``start_from_latent_avg`` says, which
only set its training's W-norm reference), and reconstructions brought to the encoder's
256 px as the official ``face_pool`` does (adaptive average pooling; the model's
``restyle_recon_resize``). A restorekit ReStyle model written in this layout records a
different resize under the non-official opt ``restorekit_restyle_recon_resize``.

Encoder types: pSp's ``GradualStyleEncoder`` and ``BackboneEncoderUsingLastLayerIntoW``, and
ReStyle's ``BackboneEncoder`` (every style head on the backbone's last map; ReStyle's FFHQ pSp
models). ReStyle's ``ResNetBackboneEncoder`` (a torchvision ResNet-34 body, its other domains) and
pSp's ``GradualStyleEncoder`` on ResNet are refused with their name.

Key mapping. Encoder keys: ``encoder.<k>`` → ``<k>`` of :mod:`.encoder`'s modules, whose names
mirror ``models/encoders/psp_encoders.py`` (and ReStyle's ``restyle_psp_encoders.py``) one to one; :func:`official_encoder_keys` writes
out the official key list from the official architecture and the importer requires the file's
keys to be exactly those. Decoder keys: ``decoder.<k>`` → ``<k>`` of the rosinality-named
:class:`~.stylegan2.StyleGAN2Generator` (:func:`.rosinality.generator_from_state_dict`).
The architecture (backbone depth and widths, n_styles, head widths, input size, generator
widths) is read off the tensors, so the paper's IR-SE50 / 1024-px models and the tiny test
models import through the same path.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from restorekit.errors import RestorekitError

from .encoder import ENCODER_TYPES, BackboneEncoder, BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder
from .irse import BackboneConfig, bn_keys, infer_backbone_config, official_body_keys
from .psp import DEFAULT_RECON_RESIZE, PSP, RECON_RESIZES, RESTYLE_IMAGE_NC, ReconResize

SUPPORTED_ENCODERS = ("GradualStyleEncoder", "BackboneEncoder", "BackboneEncoderUsingLastLayerIntoW")
#: Encoders with one map2style head per style (W+ codes).
HEADED_ENCODERS = ("GradualStyleEncoder", "BackboneEncoder")
# Not an official option: the encoder input size of a learn-in-W model (its weights do not
# reveal it); official models use 256, the default.
INPUT_SIZE_OPT = "restorekit_input_size"
# Not an official option: how a ReStyle model resizes its reconstructions, when not as official ReStyle.
RECON_RESIZE_OPT = "restorekit_restyle_recon_resize"
OFFICIAL_RECON_RESIZE = "adaptive_avg_pool"  # ReStyle's face_pool = AdaptiveAvgPool2d((256, 256))
#: Passes of an official ReStyle checkpoint whose opts lack n_iters_per_batch (ReStyle's default).
RESTYLE_DEFAULT_PASSES = 5
#: Input channels restorekit can feed an encoder: RGB (pSp), RGB + reconstruction (ReStyle).
FED_CHANNELS = (3, 2 * RESTYLE_IMAGE_NC)


class PSPCheckpointError(RestorekitError):
    """A file is not an official pSp checkpoint this importer understands."""


@dataclass(frozen=True)
class PSPOptions:
    """The training options an import uses, with official inference's defaults."""

    encoder_type: str = "GradualStyleEncoder"
    input_nc: int = 3
    label_nc: int = 0
    output_size: int = 1024
    learn_in_w: bool = False
    n_styles: int | None = None
    start_from_latent_avg: bool = False
    resize_factors: tuple[int, ...] | None = None
    input_size: int = 256
    n_iters_per_batch: int | None = None
    restyle_recon_resize: str = OFFICIAL_RECON_RESIZE

    @classmethod
    def from_opts(cls, opts: Mapping[str, Any]) -> PSPOptions:
        """Read the fields pSp inference uses; other keys (``device``, losses, paths) are ignored."""
        rf = opts.get("resize_factors")
        factors: tuple[int, ...] | None = None
        if rf not in (None, ""):
            try:
                factors = tuple(int(f) for f in (rf.split(",") if isinstance(rf, str) else rf))
            except (TypeError, ValueError):
                raise PSPCheckpointError(f"opts.resize_factors {rf!r} is not a list of integers") from None
        n_styles = opts.get("n_styles")
        iters = opts.get("n_iters_per_batch")
        try:
            n_iters = None if iters is None else int(iters)
        except (TypeError, ValueError):
            raise PSPCheckpointError(f"opts.n_iters_per_batch {iters!r} is not an integer") from None
        return cls(
            encoder_type=str(opts.get("encoder_type", "GradualStyleEncoder")),
            input_nc=int(opts.get("input_nc", 3)),
            label_nc=int(opts.get("label_nc", 0) or 0),
            output_size=int(opts.get("output_size") or 1024),
            learn_in_w=bool(opts.get("learn_in_w", False)),
            n_styles=None if n_styles is None else int(n_styles),
            start_from_latent_avg=bool(opts.get("start_from_latent_avg", False)),
            resize_factors=factors,
            input_size=int(opts.get(INPUT_SIZE_OPT, 256)),
            n_iters_per_batch=n_iters,
            restyle_recon_resize=str(opts.get(RECON_RESIZE_OPT, OFFICIAL_RECON_RESIZE)),
        )


def _head_convs(sd: Mapping[str, Tensor], i: int) -> int:
    n = 0
    while f"styles.{i}.convs.{2 * n}.weight" in sd:
        n += 1
    return n


def official_encoder_keys(encoder_type: str, backbone: BackboneConfig, *, n_styles: int = 18,
                          head_convs: Sequence[int] = (), with_num_batches: bool = True) -> list[str]:
    """The official pSp encoder's state-dict keys, written out from its architecture.

    ``head_convs``: number of stride-2 convs of each map2style head (GradualStyleEncoder,
    BackboneEncoder).
    """
    def bn(p: str) -> list[str]:
        return bn_keys(p, with_num_batches=with_num_batches)

    keys = official_body_keys(backbone, with_num_batches=with_num_batches)
    if encoder_type in HEADED_ENCODERS:
        if len(head_convs) != n_styles:
            raise ValueError(f"need one conv count per style head ({n_styles}); got {len(head_convs)}")
        for i, n in enumerate(head_convs):
            for j in range(n):
                keys += [f"styles.{i}.convs.{2 * j}.weight", f"styles.{i}.convs.{2 * j}.bias"]
            keys += [f"styles.{i}.linear.weight", f"styles.{i}.linear.bias"]
        if encoder_type == "GradualStyleEncoder":
            keys += ["latlayer1.weight", "latlayer1.bias", "latlayer2.weight", "latlayer2.bias"]
    elif encoder_type == "BackboneEncoderUsingLastLayerIntoW":
        keys += ["linear.weight", "linear.bias"]
    else:
        raise ValueError(f"unknown pSp encoder type '{encoder_type}'")
    return keys


def _split(state: Mapping[str, Any], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, Tensor)}


def encoder_input_channels(enc_sd: Mapping[str, Tensor], opts: PSPOptions) -> int:
    """The channels the encoder's first conv reads: checked against ``opts.input_nc`` and against
    what restorekit can feed (:data:`FED_CHANNELS`)."""
    w = enc_sd.get("input_layer.0.weight")
    if w is None or w.ndim != 4:
        raise PSPCheckpointError("pSp encoder weights: key 'encoder.input_layer.0.weight' is missing or not a "
                                 "conv weight")
    input_nc = int(w.shape[1])
    if input_nc not in FED_CHANNELS:
        what = f" (opts.label_nc {opts.label_nc})" if opts.label_nc else ""
        raise PSPCheckpointError(f"the encoder reads {input_nc}-channel inputs{what}; restorekit feeds 3 (RGB: pSp) "
                                 f"or 6 (input + reconstruction: ReStyle), so this model cannot run here")
    if input_nc != opts.input_nc:
        raise PSPCheckpointError(f"opts.input_nc is {opts.input_nc} but the encoder's first conv takes "
                                 f"{input_nc} channels")
    return input_nc


def build_encoder_from_state(enc_sd: Mapping[str, Tensor], opts: PSPOptions,
                             ) -> GradualStyleEncoder | BackboneEncoder | BackboneEncoderUsingLastLayerIntoW:
    """An encoder whose architecture matches ``enc_sd`` (official names), loaded strictly."""
    if opts.encoder_type not in SUPPORTED_ENCODERS:
        raise PSPCheckpointError(f"pSp encoder_type '{opts.encoder_type}' is not supported; "
                                 f"supported: {', '.join(SUPPORTED_ENCODERS)}")
    try:
        backbone = infer_backbone_config(enc_sd)
    except ValueError as exc:
        raise PSPCheckpointError(f"pSp encoder weights: {exc}") from None
    input_nc = encoder_input_channels(enc_sd, opts)
    encoder: GradualStyleEncoder | BackboneEncoder | BackboneEncoderUsingLastLayerIntoW
    if opts.encoder_type in HEADED_ENCODERS:
        n_styles = 0
        while f"styles.{n_styles}.linear.weight" in enc_sd:
            n_styles += 1
        if n_styles == 0:
            raise PSPCheckpointError(f"{opts.encoder_type} weights have no 'styles.N.linear' heads")
        convs = [_head_convs(enc_sd, i) for i in range(n_styles)]
        k = convs[0]
        lin = enc_sd["styles.0.linear.weight"]
    if opts.encoder_type == "BackboneEncoder":
        if convs != [k] * n_styles or k < 1:
            raise PSPCheckpointError(f"map2style heads have conv counts {convs}; a BackboneEncoder's heads all "
                                     "read the last map, so they have one count")
        encoder = BackboneEncoder(n_styles, int(lin.shape[0]), backbone=backbone, input_nc=input_nc,
                                  input_size=16 * 2 ** k, head_channels=int(lin.shape[1]))
        expected = official_encoder_keys(opts.encoder_type, backbone, n_styles=n_styles, head_convs=convs)
    elif opts.encoder_type == "GradualStyleEncoder":
        coarse = sum(1 for c in convs if c == k)
        middle = coarse + sum(1 for c in convs if c == k + 1)
        if convs != [k] * coarse + [k + 1] * (middle - coarse) + [k + 2] * (n_styles - middle) or k < 1:
            raise PSPCheckpointError(f"map2style heads have conv counts {convs}; expected coarse/medium/fine "
                                     "heads of k, k+1, k+2 convs")
        encoder = GradualStyleEncoder(n_styles, int(lin.shape[0]), backbone=backbone, input_nc=input_nc,
                                      input_size=16 * 2 ** k, head_channels=int(lin.shape[1]),
                                      coarse_ind=coarse, middle_ind=middle)
        expected = official_encoder_keys(opts.encoder_type, backbone, n_styles=n_styles, head_convs=convs)
    else:
        if "linear.weight" not in enc_sd:
            raise PSPCheckpointError("BackboneEncoderUsingLastLayerIntoW weights lack 'linear.weight'")
        style_dim = int(enc_sd["linear.weight"].shape[0])
        encoder = BackboneEncoderUsingLastLayerIntoW(opts.n_styles or 18, style_dim, backbone=backbone,
                                                     input_nc=input_nc, input_size=opts.input_size)
        expected = official_encoder_keys(opts.encoder_type, backbone)
    _load_exact(encoder, enc_sd, expected, "encoder")
    return encoder


def _load_exact(module: torch.nn.Module, sd: Mapping[str, Tensor], expected: list[str], what: str) -> None:
    """Load ``sd`` into ``module`` requiring exactly the ``expected`` official keys and shapes."""
    own = module.state_dict()
    if set(own) != set(expected):  # the module must mirror the official naming
        raise AssertionError(f"{what} module keys differ from the official layout: "
                             f"{sorted(set(own) ^ set(expected))[:5]}")
    have = dict(sd)
    for key in expected:  # files from PyTorch < 0.4.1 lack BN counters
        if key.endswith("num_batches_tracked") and key not in have:
            have[key] = torch.zeros_like(own[key])
    missing = [k for k in expected if k not in have]
    unexpected = sorted(set(have) - set(expected))
    wrong = [f"{k} {tuple(have[k].shape)} vs {tuple(own[k].shape)}" for k in expected
             if k in have and have[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {what}.{missing[0]} (+{len(missing) - 1} more)")
        if unexpected:
            parts.append(f"unexpected {what}.{unexpected[0]} (+{len(unexpected) - 1} more)")
        if wrong:
            parts.append(f"wrong shape {what}.{wrong[0]}")
        raise PSPCheckpointError(f"pSp {what} weights do not match the official layout: " + "; ".join(parts))
    module.load_state_dict(have, strict=True)


def psp_from_checkpoint(ckpt: Mapping[str, Any], **generator_kwargs: Any) -> PSP:
    """A :class:`PSP` from a loaded official checkpoint dict; ``generator_kwargs`` (e.g. ``impl``)."""
    from .rosinality import CheckpointError, generator_from_state_dict

    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        have = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise PSPCheckpointError(f"not a pSp checkpoint: no 'state_dict' entry (has {have})")
    state = ckpt["state_dict"]
    raw_opts = ckpt.get("opts") or {}
    if not isinstance(raw_opts, Mapping):
        raise PSPCheckpointError(f"pSp checkpoint 'opts' is a {type(raw_opts).__name__}, not a dict")
    opts = PSPOptions.from_opts(raw_opts)
    enc_sd, dec_sd = _split(state, "encoder."), _split(state, "decoder.")
    other = sorted(k for k in state if not k.startswith(("encoder.", "decoder.")))
    if other:
        raise PSPCheckpointError(f"pSp state_dict has keys outside encoder./decoder.: {other[:4]}")
    if not enc_sd or not dec_sd:
        raise PSPCheckpointError("pSp state_dict needs both 'encoder.*' and 'decoder.*' weights")
    restyle = encoder_input_channels(enc_sd, opts) == 2 * RESTYLE_IMAGE_NC  # before building anything
    passes: int | None = None
    if restyle:
        passes = RESTYLE_DEFAULT_PASSES if opts.n_iters_per_batch is None else opts.n_iters_per_batch
        if passes < 1:
            raise PSPCheckpointError(f"ReStyle checkpoint: opts.n_iters_per_batch is {passes}; needs at least one pass")
        if opts.restyle_recon_resize not in RECON_RESIZES:
            raise PSPCheckpointError(f"opts.{RECON_RESIZE_OPT} {opts.restyle_recon_resize!r} is not one of "
                                     f"{', '.join(RECON_RESIZES)}")
    try:
        generator = generator_from_state_dict(dec_sd, **generator_kwargs)
    except CheckpointError as exc:
        raise PSPCheckpointError(f"pSp decoder: {exc}") from None
    if generator.resolution != opts.output_size:
        raise PSPCheckpointError(f"opts.output_size is {opts.output_size} but the decoder is "
                                 f"{generator.resolution} px" + ("" if "output_size" in raw_opts
                                                                 else " (opts has no output_size; 1024 assumed)"))
    if opts.n_styles is not None and opts.n_styles != generator.n_styles:
        raise PSPCheckpointError(f"opts.n_styles is {opts.n_styles} but a {generator.resolution}-px "
                                 f"decoder has {generator.n_styles} styles")
    opts_n = PSPOptions(**{**opts.__dict__, "n_styles": generator.n_styles,
                           "learn_in_w": opts.encoder_type == "BackboneEncoderUsingLastLayerIntoW"})
    encoder = build_encoder_from_state(enc_sd, opts_n)
    learn_in_w = isinstance(encoder, BackboneEncoderUsingLastLayerIntoW)
    if "learn_in_w" in raw_opts and opts.learn_in_w != learn_in_w:
        raise PSPCheckpointError(f"opts.learn_in_w={opts.learn_in_w} does not fit encoder_type {opts.encoder_type}")
    if encoder.n_styles != generator.n_styles:
        raise PSPCheckpointError(f"the encoder gives {encoder.n_styles} styles but the decoder takes {generator.n_styles}")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise PSPCheckpointError(f"pSp 'latent_avg' is a {type(latent_avg).__name__}, not a tensor")
    if latent_avg is None and restyle:
        raise PSPCheckpointError("ReStyle checkpoint (6-channel encoder) has no 'latent_avg', where its passes start")
    if latent_avg is None and opts.start_from_latent_avg:
        raise PSPCheckpointError("pSp checkpoint trained with start_from_latent_avg has no 'latent_avg'")
    if latent_avg is not None:
        latent_avg = latent_avg.detach().float().cpu()
        rows = latent_avg.numel() // generator.style_dim
        want = 1 if learn_in_w else generator.n_styles
        if latent_avg.shape[-1] != generator.style_dim or rows not in (1, want):
            raise PSPCheckpointError(f"pSp 'latent_avg' has shape {tuple(latent_avg.shape)}; "
                                     f"expected [{want}, {generator.style_dim}]")
    recon = cast(ReconResize, opts.restyle_recon_resize) if restyle else DEFAULT_RECON_RESIZE
    try:
        model = PSP(encoder, generator, latent_avg, start_from_latent_avg=restyle or opts.start_from_latent_avg,
                    restyle_iterations=passes, restyle_recon_resize=recon)
    except ValueError as exc:
        raise PSPCheckpointError(f"pSp checkpoint: {exc}") from None
    model.official_opts = opts_n
    return model.eval()


def read_psp_checkpoint(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a pSp checkpoint dict on the CPU without running code (a weights name or a path)."""
    from restorekit.weights import load_checkpoint

    obj = load_checkpoint(name_or_path)
    if not isinstance(obj, dict):
        raise PSPCheckpointError(f"{name_or_path}: expected a pSp checkpoint dict, got {type(obj).__name__}")
    return obj


def load_psp_official(name_or_path: str | os.PathLike[str], **generator_kwargs: Any) -> PSP:
    """A :class:`PSP` (eval mode) from an official pSp checkpoint file or weights name.

    A ReStyle checkpoint (6-channel encoder) gives a ReStyle model; see the module docstring.
    ``PSPCheckpointError`` names the file.
    """
    ckpt = read_psp_checkpoint(name_or_path)
    try:
        return psp_from_checkpoint(ckpt, **generator_kwargs)
    except PSPCheckpointError as exc:
        raise PSPCheckpointError(f"{name_or_path}: {exc}") from None


def official_encoder_type(encoder: Any) -> str:
    """The official ``opts.encoder_type`` naming ``encoder``'s architecture."""
    for name in SUPPORTED_ENCODERS:
        if type(encoder) is ENCODER_TYPES[name]:
            return name
    raise PSPCheckpointError(f"no official pSp encoder_type for {type(encoder).__name__}")


def psp_official_state(model: PSP, opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The official checkpoint dict for ``model``; ``opts`` extra training options to record.

    Architecture fields (encoder_type, input_nc, output_size, n_styles, learn_in_w,
    start_from_latent_avg; for a ReStyle model n_iters_per_batch, and its reconstruction resize
    when not the official one) are taken from the model and override ``opts``.
    """
    enc, dec = model.encoder, model.decoder
    derived: dict[str, Any] = {
        "encoder_type": official_encoder_type(enc),
        "input_nc": int(getattr(enc, "input_nc", 3)),
        "output_size": int(dec.resolution),
        "n_styles": int(dec.n_styles),
        "learn_in_w": bool(model.learn_in_w),
        "start_from_latent_avg": bool(model.start_from_latent_avg),
    }
    input_size = getattr(enc, "input_size", 256)
    if model.learn_in_w and input_size != 256:
        derived[INPUT_SIZE_OPT] = int(input_size)
    full_opts = {k: v for k, v in dict(opts or {}).items() if k != RECON_RESIZE_OPT}
    if model.restyle_iterations is not None:
        derived["n_iters_per_batch"] = int(model.restyle_iterations)
        if model.restyle_recon_resize != OFFICIAL_RECON_RESIZE:
            derived[RECON_RESIZE_OPT] = str(model.restyle_recon_resize)
    full_opts = {**full_opts, **derived}
    state: dict[str, Tensor] = {}
    for prefix, module in (("encoder.", enc), ("decoder.", dec)):
        for k, v in module.state_dict().items():
            state[prefix + k] = v.detach().cpu().clone()
    return {"state_dict": state, "opts": full_opts, "latent_avg": model.latent_avg.detach().cpu().clone()}


def save_psp_official(model: PSP, path: str | os.PathLike[str], opts: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as an official pSp checkpoint (atomic); see :func:`psp_official_state`."""
    from restorekit.images import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(psp_official_state(model, opts), buf)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p

