"""The ``psp_sr`` method, and the file format of restorekit-trained pSp models.

Model files. ``psp_sr`` reads two formats:

- restorekit's own (what ``restorekit train psp_sr`` exports): a ``.safetensors`` file with the
  tensors ``encoder.*``, ``decoder.*`` (rosinality StyleGAN2 names) and ``latent_avg``
  (``n_styles×style_dim``), and in the safetensors metadata ``format = "restorekit.psp/1"`` and
  ``config``, a JSON object: ``encoder`` (type, backbone units/widths/SE, input_size, head
  channels, style split), ``generator`` (the generator's ``config()``), ``start_from_latent_avg``,
  ``training`` (``factors``, ``hr_size``, steps, losses …), ``license``, ``name``, and for a
  ReStyle model ``restyle_iterations`` (its passes; the encoder then reads 6 channels) and
  ``restyle_recon_resize`` (how its passes bring reconstructions to the encoder's size, see
  :mod:`.psp`; ``"antialiased_bilinear"`` when absent, as files written before it). Nothing in it
  runs code; the architecture is rebuilt from the JSON and the tensors are loaded strictly.
  A file may instead hold no ``decoder.*`` tensors and name its generator in ``config``:
  ``decoder_weights = {"name": NAME, "sha256": HEX}``, a weights-registry entry (restorekit's
  shipped psp_sr model decodes with the shipped ``stylegan2-faces128``, so the generator is
  installed once, not twice). Loading resolves ``NAME`` through the registry (which checks the
  file's size and sha256), requires the file's sha256 to be ``HEX`` (the generator the encoder
  was trained against) and its architecture to be ``config["generator"]``.
- official pSp checkpoints (``.pt`` with ``state_dict``/``opts``/``latent_avg``), and official
  ReStyle-pSp ones (6-channel encoder, ``n_iters_per_batch`` passes), through :mod:`.checkpoint_psp`.

Sizes (see DESIGN "What --scale means"). A model encodes a ``S×S`` input (its encoder input
size) and decodes at the generator's ``R×R``; trained for factors ``F`` it serves inputs of
``S/F`` px, upsampled to ``S`` inside. ``--scale K`` means the output is ``K×`` the input: the
``R``-px result is resized (antialiased bicubic) to ``K·h × K·w`` — a note says so once — unless
``keep_native_size`` is set. Non-square inputs are stretched to the square model input and the
output back to ``K·h × K·w`` (aspect distorted; a warning says so): pSp expects aligned,
square face crops.

Multi-modal outputs: ``n_samples > 1`` mixes the fine styles (``mix_layers``, default pSp's
``8..17`` of 18, scaled to the model) with the W of random ``z`` drawn from ``seed``
(``mix_alpha`` blends instead of replacing), as pSp's ``style_mixing.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from restorekit.errors import RestorekitError, UnknownNameError, WeightsMissing
from restorekit.interfaces import Method, MethodInfo, Options, OptionsModel
from restorekit.options import WeightsRef

PSP_FORMAT = "restorekit.psp/1"
#: Where the package keeps the models it ships (each pinned by a registry entry: size, sha256, license).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The embedded default model (stage 2 of plugins/psp_sr/recipes/prior128, shipped in the package;
# registry entry `psp-sr-faces128`). Its file holds the encoder and names its generator, below.
DEFAULT_MODEL_FILE = "psp_sr_faces128.safetensors"
DEFAULT_MODEL_NAME = "psp-sr-faces128"
# The shipped face prior: a 128-px StyleGAN2 trained adversarially (plugins/psp_sr/recipes/prior128),
# the default of the `stylegan2` generator (generate, realism, pulse) and psp_sr's decoder.
GENERATOR_MODEL_FILE = "stylegan2_faces128.safetensors"
GENERATOR_MODEL_NAME = "stylegan2-faces128"
OFFICIAL_WEIGHTS = "psp-celebs-super-resolution"


class PSPModelError(RestorekitError):
    """A pSp model file is missing, unreadable or inconsistent."""


def shipped_file(name: str, filename: str, *, missing: str, fix: str) -> Path:
    """The model ``filename`` this package ships, verified against its registry entry ``name``.

    ``WeightsMissing`` (``missing`` said, ``fix`` named) when the file is not in :data:`WEIGHTS_DIR`
    or no registry entry pins it; ``IntegrityError`` when its size or sha256 differ from the entry.
    """
    from restorekit.weights import resolve

    if not (WEIGHTS_DIR / filename).is_file():
        raise WeightsMissing(name, f"{missing}, and {filename} is not in this installation ({WEIGHTS_DIR})", fix=fix)
    try:
        return resolve(name)  # size + sha256 of the bundled file against the registry
    except UnknownNameError:
        raise WeightsMissing(name, f"{missing}; {WEIGHTS_DIR / filename} is there but no registry entry '{name}' "
                                   "pins its sha256", fix="reinstall restorekit-psp-sr (a release ships both), or "
                                                          "ship it with scripts/ship_embedded_model.py") from None


# -- restorekit's pSp file format -------------------------------------------------------------------
def encoder_config(encoder: Any) -> dict[str, Any]:
    """The JSON description that rebuilds ``encoder``'s architecture."""
    from .encoder import BackboneEncoder, BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder

    bb = encoder.backbone_cfg
    cfg: dict[str, Any] = {
        "backbone": {"units": list(bb.units), "widths": list(bb.widths), "se": bb.se, "se_reduction": bb.se_reduction},
        "n_styles": int(encoder.n_styles), "style_dim": int(encoder.style_dim),
        "input_nc": int(encoder.input_nc), "input_size": int(encoder.input_size)}
    if isinstance(encoder, GradualStyleEncoder):
        cfg.update(type="GradualStyleEncoder", head_channels=int(encoder.head_channels),
                   coarse_ind=int(encoder.coarse_ind), middle_ind=int(encoder.middle_ind))
    elif isinstance(encoder, BackboneEncoder):
        cfg.update(type="BackboneEncoder", head_channels=int(encoder.head_channels))
    elif isinstance(encoder, BackboneEncoderUsingLastLayerIntoW):
        cfg.update(type="BackboneEncoderUsingLastLayerIntoW")
    else:
        raise PSPModelError(f"cannot describe encoder type {type(encoder).__name__}")
    return cfg


def build_encoder(cfg: dict[str, Any]) -> Any:
    """An encoder from :func:`encoder_config`'s description."""
    from .encoder import BackboneEncoder, BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder
    from .irse import BackboneConfig

    b = cfg["backbone"]
    bb = BackboneConfig(tuple(b["units"]), tuple(b["widths"]), se=bool(b["se"]), se_reduction=int(b["se_reduction"]))
    common = dict(backbone=bb, input_nc=cfg["input_nc"], input_size=cfg["input_size"])
    if cfg["type"] == "GradualStyleEncoder":
        return GradualStyleEncoder(cfg["n_styles"], cfg["style_dim"], head_channels=cfg["head_channels"],
                                   coarse_ind=cfg["coarse_ind"], middle_ind=cfg["middle_ind"], **common)
    if cfg["type"] == "BackboneEncoder":
        return BackboneEncoder(cfg["n_styles"], cfg["style_dim"], head_channels=cfg["head_channels"], **common)
    if cfg["type"] == "BackboneEncoderUsingLastLayerIntoW":
        return BackboneEncoderUsingLastLayerIntoW(cfg["n_styles"], cfg["style_dim"], **common)
    raise PSPModelError(f"unknown encoder type '{cfg['type']}'")


def generator_config(generator: Any) -> dict[str, Any]:
    cfg = dict(generator.config())
    cfg["blur_kernel"] = list(cfg["blur_kernel"])
    return cfg


def build_fitting(build: Callable[[], nn.Module], tensors: Mapping[str, Tensor], path: Path, what: str) -> Any:
    """``build()``, once its network is known to have exactly ``tensors``' names and shapes: it is
    first built on the meta device (no memory), so a file whose config claims a network it does not
    hold — a few bytes claiming billions of parameters — is refused before anything is allocated."""
    from restorekit.weights import state_mismatch

    problem = state_mismatch(build, {k: tuple(v.shape) for k, v in tensors.items()}, what)
    if problem:
        raise PSPModelError(f"{path}: tensors do not match the stored architecture ({problem})")
    return build()


def build_generator(cfg: dict[str, Any], **kwargs: Any) -> Any:
    from .stylegan2 import StyleGAN2Generator

    c = dict(cfg)
    c["blur_kernel"] = tuple(c.get("blur_kernel", (1, 3, 3, 1)))
    return StyleGAN2Generator(**c, **kwargs)


def psp_model_config(model: Any, *, factors: list[int] | tuple[int, ...], license: str, name: str = "",
                     training: dict[str, Any] | None = None, source: str = "restorekit train psp_sr") -> dict[str, Any]:
    """The ``config`` metadata of a restorekit pSp file for ``model``."""
    cfg = {"encoder": encoder_config(model.encoder), "generator": generator_config(model.decoder),
           "start_from_latent_avg": bool(model.start_from_latent_avg),
           "training": {"factors": [int(f) for f in factors], **(training or {})},
           "license": license, "name": name, "source": source}
    if getattr(model, "restyle_iterations", None) is not None:
        cfg["restyle_iterations"] = int(model.restyle_iterations)
        cfg["restyle_recon_resize"] = str(model.restyle_recon_resize)
    return cfg


def save_psp_safetensors(model: Any, path: str | os.PathLike[str], *, factors: list[int] | tuple[int, ...],
                         license: str, name: str = "", training: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a :class:`~.psp.PSP`) in restorekit's pSp format, atomically."""
    from restorekit.images import atomic_write_bytes
    from restorekit.weights.st_bytes import safetensors_bytes

    tensors: dict[str, Tensor] = {}
    for prefix, module in (("encoder.", model.encoder), ("decoder.", model.decoder)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().float().cpu().contiguous().clone()
    tensors["latent_avg"] = model.latent_avg.detach().float().cpu().contiguous().clone()
    config = psp_model_config(model, factors=factors, license=license, name=name, training=training)
    data = safetensors_bytes(tensors, {"format": PSP_FORMAT, "config": json.dumps(config)})
    p = Path(path)
    atomic_write_bytes(p, data)
    return p


def load_psp_safetensors(path: str | os.PathLike[str], **generator_kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``(PSP in eval mode, config)`` from a restorekit pSp ``.safetensors`` file (self-contained,
    or naming its generator's weights entry: see the module docstring)."""
    from restorekit.errors import RestorekitError
    from restorekit.weights.load import read_safetensors

    from .psp import DEFAULT_RECON_RESIZE, PSP

    p = Path(path)
    try:  # (read_safetensors: nothing kept per load, for a server that loads it again and again)
        tensors, meta = read_safetensors(p)  # fp16 (shipped) or fp32: loading converts
    except RestorekitError as exc:
        raise PSPModelError(f"{p}: not a readable safetensors file ({exc.__cause__ or exc})") from None
    if meta.get("format") != PSP_FORMAT:
        raise PSPModelError(f"{p}: not a restorekit pSp model (metadata format is {meta.get('format')!r}, "
                            f"expected {PSP_FORMAT!r})")
    enc_sd = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    dec_sd = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
    try:
        config = json.loads(meta["config"])
        encoder = build_fitting(lambda: build_encoder(config["encoder"]), enc_sd, p, "encoder")
        ref = config.get("decoder_weights")
        if ref is None:
            generator = build_fitting(lambda: build_generator(config["generator"], **generator_kwargs), dec_sd, p,
                                      "decoder")
        elif dec_sd:
            raise PSPModelError(f"{p}: holds decoder tensors and also names decoder weights {ref.get('name')!r}; "
                                "a pSp file has one or the other")
        else:
            generator = referenced_generator(p, str(ref["name"]), str(ref["sha256"]), config["generator"],
                                             **generator_kwargs)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PSPModelError(f"{p}: its model config is incomplete or invalid ({exc})") from None
    try:
        encoder.load_state_dict(enc_sd, strict=True)
        if ref is None:
            generator.load_state_dict(dec_sd, strict=True)
    except RuntimeError as exc:  # (checked before building; kept for what shapes cannot show)
        first = str(exc).splitlines()[0]
        raise PSPModelError(f"{p}: tensors do not match the stored architecture ({first})") from None
    if "latent_avg" not in tensors:
        raise PSPModelError(f"{p}: no 'latent_avg' tensor")
    try:
        model = PSP(encoder, generator, tensors["latent_avg"],
                    start_from_latent_avg=bool(config.get("start_from_latent_avg", True)),
                    restyle_iterations=config.get("restyle_iterations"),
                    restyle_recon_resize=config.get("restyle_recon_resize", DEFAULT_RECON_RESIZE))
    except (ValueError, TypeError) as exc:
        raise PSPModelError(f"{p}: its model config is inconsistent ({exc})") from None
    return model.eval(), config


def _decoder_weights_file(model_file: Path, name: str) -> Path:
    """The registry's verified file of the generator ``name`` that ``model_file`` decodes with."""
    from restorekit.weights import get_spec, resolve

    what = f"{model_file.name} decodes with this generator"
    try:
        spec = get_spec(name)
    except UnknownNameError:
        raise WeightsMissing(name, f"{what}, and no registry entry describes it",
                             fix="install the restorekit-psp-sr release the model came with") from None
    try:
        return resolve(name)
    except WeightsMissing:
        bundled = spec.file().bundled
        fix = (f"reinstall the package that ships it ({bundled.partition(':')[0]})" if bundled else None)
        raise WeightsMissing(name, f"{what}, and it is not installed", fix=fix) from None


def referenced_generator(model_file: Path, name: str, sha256: str, architecture: dict[str, Any],
                         **generator_kwargs: Any) -> Any:
    """The generator a pSp file names instead of holding it: registry entry ``name``, whose file
    must hash to ``sha256`` and rebuild ``architecture``; its ``latent_avg`` is dropped, as a
    self-contained file's decoder has none (the pSp model keeps its own)."""
    from restorekit.weights import sha256_file

    from .train import load_generator

    path = _decoder_weights_file(model_file, name)
    actual = sha256_file(path)
    if actual != sha256:
        raise PSPModelError(f"{model_file}: its encoder was trained against the generator '{name}' with sha256 "
                            f"{sha256}, but the installed one ({path}) has {actual}: install the matching "
                            f"restorekit-psp-sr release, or re-ship the pSp model against this generator")
    g = load_generator(str(path), **generator_kwargs)
    if _canonical(generator_config(g)) != _canonical(architecture):
        raise PSPModelError(f"{model_file}: the generator '{name}' is a {generator_config(g)} network, not the "
                            f"{architecture} its config records")
    g.set_latent_avg(None)
    return g.eval()


def _canonical(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)


def same_weights(a: Tensor, ref: Tensor) -> bool:
    """Whether ``a`` is ``ref``: equal, or equal once rounded to fp16 when ``ref`` holds fp16 values
    (a generator shipped in fp16 is what a float32 decoder trained against it rounds to)."""
    a, ref = a.detach().float().cpu(), ref.detach().float().cpu()
    if a.shape != ref.shape:
        return False
    if torch.equal(a, ref):
        return True
    as_half = ref.half().float()
    return torch.equal(as_half, ref) and torch.equal(a.half().float(), ref)


def reference_decoder(model_file: Path, tensors: dict[str, Tensor], config: dict[str, Any],
                      name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A self-contained pSp file's ``tensors`` and ``config`` rewritten to name the generator
    weights entry ``name`` instead of holding ``decoder.*``: refused unless the decoder is that
    generator (same architecture, same tensors at its stored precision)."""
    from restorekit.weights import sha256_file

    dec = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
    if not dec or not isinstance(config.get("generator"), dict):
        raise PSPModelError(f"{model_file}: holds no decoder (tensors and config) to replace by a reference")
    sha = sha256_file(_decoder_weights_file(model_file, name))
    ref = referenced_generator(model_file, name, sha, config["generator"], impl="ref").state_dict()
    if set(ref) != set(dec):
        diff = sorted(set(ref) ^ set(dec))[:3]
        raise PSPModelError(f"{model_file}: its decoder's tensors are not those of the generator '{name}' "
                            f"(keys differ: {', '.join(diff)})")
    differ = [k for k in sorted(ref) if not same_weights(dec[k], ref[k])]
    if differ:
        k = differ[0]
        gap = float((dec[k].float() - ref[k].float()).abs().max()) if dec[k].shape == ref[k].shape else float("nan")
        raise PSPModelError(f"{model_file}: its decoder is not the generator '{name}' ({len(differ)} of {len(ref)} "
                            f"tensors differ, e.g. {k} by up to {gap:.3g}): train stage 2 with "
                            f"--set generator={name}, or ship the model self-contained")
    kept = {k: v for k, v in tensors.items() if not k.startswith("decoder.")}
    cfg = {**config, "decoder_weights": {"name": name, "sha256": sha}}
    return kept, cfg


def load_psp_model(path: str | os.PathLike[str], **generator_kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``(PSP, config)`` from a restorekit ``.safetensors`` or an official pSp ``.pt``.

    For official files the config is derived from ``opts`` (factors from ``resize_factors``;
    the paper's SR model: 1, 2, 4, 8, 16, 32) and ``format`` is ``"official"``.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        model, cfg = load_psp_safetensors(p, **generator_kwargs)
        return model, {**cfg, "format": PSP_FORMAT}
    from .checkpoint_psp import load_psp_official

    model = load_psp_official(p, **generator_kwargs)
    opts = model.official_opts
    if opts is None:
        raise RestorekitError(f"{p}: the pSp import recorded no training options")
    factors = list(opts.resize_factors) if opts.resize_factors else [1, 2, 4, 8, 16, 32]
    cfg = {"format": "official", "training": {"factors": factors}, "license": "", "name": p.stem,
           "start_from_latent_avg": model.start_from_latent_avg}
    if model.restyle_iterations is not None:
        cfg.update(restyle_iterations=model.restyle_iterations, restyle_recon_resize=model.restyle_recon_resize)
    return model, cfg


# -- the method ---------------------------------------------------------------------------------
class PSPSROptions(Options):
    """Options of ``psp_sr``."""

    result_neutral: ClassVar[frozenset[str]] = frozenset({"impl", "optimize", "keep_memory", "quiet"})

    weights: WeightsRef = Field(
        None, description="model: a weights name or a file (restorekit .safetensors or official pSp .pt); "
                          "default: the model embedded in the package")
    mix_alpha: float | None = Field(None, ge=0.0, le=1.0,
                                    description="n_samples > 1: blend the mixed styles (None: replace them)")
    mix_layers: list[int] | None = Field(None, description="styles mixed for n_samples > 1 (default: the fine ones)")
    input_resize: Literal["auto", "bicubic", "bilinear"] = Field(
        "auto", description="how inputs reach the encoder size (auto: bilinear for official pSp files, "
                            "as their training; bicubic for restorekit-trained models)")
    keep_native_size: bool = Field(False, description="return the generator's native size instead of scale × input")
    consistency_steps: int | None = Field(
        None, ge=0, le=100, description="back-projection steps that make the output downscale to the input "
                                        "(restorekit.consistency: low frequencies from the input, details from the "
                                        "generator); default: as many as the model was trained with (0 for the "
                                        "paper's: the decoder's face as is)")
    restyle_iterations: int | None = Field(None, ge=1, le=20,
                                           description="ReStyle models: refinement passes, each one more generator "
                                                       "call (default: the passes the model was trained with)")
    impl: Literal["auto", "ref", "cuda"] = Field("auto", description="StyleGAN2 ops backend")
    optimize: bool = Field(True, description="inference optimisations (batch norm folded, channels_last on CPU …; "
                                             "same results to float rounding); false runs the modules as trained")
    keep_memory: bool = Field(True, description="CPU, generators of 256 px and more: from the first restore on, keep "
                                                "freed memory in the process for the next call instead of returning "
                                                "it to the kernel (glibc; process-wide; spares faulting large "
                                                "activations in again on every call)")
    random_weights: bool = Field(False, description="an untrained model of the paper's shapes (IR-SE50 encoder on "
                                                    "256-px inputs, config-f generator): benchmarks and tests only")
    resolution: int | None = Field(None, description="random_weights: the generator's resolution, 32-1024 "
                                                     "(default 1024, the paper's)")
    quiet: bool = Field(False, description="no notes on stderr (inputs of sizes it was not trained on…; run -q and "
                                           "compare -q set it)")


class PSPSR(Method):
    """pSp face super-resolution: GradualStyle encoder into W+, frozen StyleGAN2 decoder."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="psp_sr",
        summary="pSp: encode an aligned face into StyleGAN2's W+ and decode it (fine styles mixable)",
        task="super-resolution",
        license="Apache-2.0",
        paper="Richardson et al., Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation, "
              "CVPR 2021 (arXiv:2008.00951)",
        # n_samples > 1 draws fine styles from `seed`; a single sample does not depend on it.
        deterministic=False,
        single_sample_deterministic=True,
        scales=None,
        input_kind="aligned_face",
        default_weights=DEFAULT_MODEL_NAME,
    )
    Options: ClassVar[type[OptionsModel]] = PSPSROptions
    options: PSPSROptions

    def __init__(self, options: OptionsModel | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(options, device)
        self.model: Any = None
        self.model_config: dict[str, Any] = {}
        self.weights_info: dict[str, Any] = {}
        self.notes: list[str] = []
        self._warned: set[str] = set()

    # -- loading ---------------------------------------------------------------------------
    def _model_path(self) -> tuple[Path, str]:
        """``(file, weights name or '')`` for the ``weights`` option."""
        w = self.options.weights
        if w is None:
            # The embedded default, verified against its registry entry (size, sha256).
            path = shipped_file(
                DEFAULT_MODEL_NAME, DEFAULT_MODEL_FILE, missing=f"{self.info.name}: no --weights given",
                fix=(f"pass --weights FILE (a restorekit-trained .safetensors or an official pSp .pt), or get the "
                     f"paper's model with `restorekit weights pull --trust {OFFICIAL_WEIGHTS}` (or `restorekit "
                     f"weights import --trust {OFFICIAL_WEIGHTS} FILE`: no sha256 is published for it) and pass "
                     f"--weights {OFFICIAL_WEIGHTS}; the embedded model's "
                     f"recipe is plugins/psp_sr/recipes/prior128"))
            return path, DEFAULT_MODEL_NAME
        from restorekit.weights import weights_source

        # A registered name even beside a same-named file (./NAME is the file), else an existing
        # file; WeightsMissing names the pull/import commands, and a value that is clearly a path
        # and names no file fails as 'PATH: no such file'.
        path, name = weights_source(w)
        return path, name or ""

    @classmethod
    def bench_model_options(cls, resolution: int) -> dict[str, Any]:
        """Options of an untrained model with the paper's shapes at ``resolution`` (``bench method
        --resolution``)."""
        return {"random_weights": True, "resolution": resolution}

    def _place(self, model: Any) -> None:
        """Put ``model`` on the device, frozen, optimised for inference unless ``optimize`` is off
        (after checking the options that depend on it: before any image, not on each)."""
        bad = [i for i in self.options.mix_layers or () if not 0 <= i < model.n_styles]
        if bad:
            raise PSPModelError(f"psp_sr: mix_layers {bad}: this model has {model.n_styles} styles "
                                f"(0…{model.n_styles - 1})")
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.options.optimize:
            from .inference import optimize_for_inference

            optimize_for_inference(model)
        self.model = model  # set once ready: `model is not None` is what load() and restore() go by

    def _load_random(self) -> None:
        from .random_model import paper_shaped_psp

        o = self.options
        if o.weights is not None:
            raise PSPModelError(f"psp_sr: random_weights=true and weights={o.weights!r} exclude each other")
        try:
            model, config = paper_shaped_psp(1024 if o.resolution is None else o.resolution, impl=o.impl)  # forks the RNG itself
        except ValueError as exc:
            raise PSPModelError(f"psp_sr: {exc}") from None
        self._place(model)
        self.model_config = config
        self.weights_info = {"name": config["name"], "file": None, "sha256": None, "license": config["license"],
                             "format": config["format"]}
        self.notes = [f"psp_sr: random weights (random_weights=true): an untrained {config['name']} model",
                      f"psp_sr: outputs are the generator's {self.resolution} px" if o.keep_native_size else
                      f"psp_sr: the {self.resolution}-px output is resized (antialiased bicubic) to scale × input size"]

    def load(self) -> None:
        if self.model is not None:
            return
        if self.options.resolution is not None and not self.options.random_weights:
            raise PSPModelError("psp_sr: resolution is read off the weights; it applies to random_weights=true only")
        if self.options.random_weights:
            self._load_random()
            return
        path, name = self._model_path()
        from restorekit.weights import file_version, sha256_file

        # The sha256 recorded (weights_info: run records, ONNX sidecars and their cache key) must be
        # of the bytes loaded: a file rewritten meanwhile (a trainer saving its checkpoint while an
        # eval runs) is loaded again, so the hash is never of other weights than the model's.
        for _ in range(3):
            before = file_version(path)
            # Building the modules initialises their layers from torch's global RNG before the weights
            # replace them: fork it (CPU), so a caller's torch.manual_seed(…) sequence is not moved by a load.
            with torch.random.fork_rng(devices=[]):
                model, config = load_psp_model(path, impl=self.options.impl)
            sha = sha256_file(path)
            if file_version(path) == before:
                break
        else:
            raise PSPModelError(f"{path}: the weights file changed each time it was read; load it once it is "
                                f"written")
        passes = self.options.restyle_iterations
        if passes is not None:
            if model.restyle_iterations is None:
                raise PSPModelError(f"psp_sr: restyle_iterations applies to ReStyle models; {path.name} encodes in "
                                    f"one pass (pSp)")
            model.set_restyle_iterations(passes)
        self._place(model)
        self.model_config = config
        license_ = config.get("license") or ""
        if name:
            from restorekit.weights import get_spec

            license_ = get_spec(name).license or license_
        self.weights_info = {"name": name or config.get("name") or path.name, "file": str(path),
                             "sha256": sha, "license": license_ or "unknown",
                             "format": config.get("format", PSP_FORMAT)}
        factors = ",".join(str(f) for f in self.factors)
        default = " (the embedded default; --weights NAME|PATH selects another)" if self.options.weights is None else ""
        ref = config.get("decoder_weights")
        decoder = f", decoder {ref['name']}" if isinstance(ref, dict) else ""
        restyle = f", {model.restyle_iterations} ReStyle passes" if model.restyle_iterations is not None else ""
        self.notes = [
            f"psp_sr: weights {self.weights_info['name']}{default}{decoder}, license {self.weights_info['license']}",
            f"psp_sr: {self.weights_info['name']} ({self.resolution}-px generator, {self.input_size}-px encoder input, "
            f"trained on it downsampled ×{factors}{restyle}): expects aligned square faces of {self.sizes_note()}",
            (f"psp_sr: outputs are the generator's {self.resolution} px (keep_native_size)"
             if self.options.keep_native_size else
             f"psp_sr: the {self.resolution}-px output is resized (antialiased bicubic) to scale × input size; "
             f"keep_native_size=true (from Python) keeps {self.resolution} px"),
        ]
        if self.options.consistency_steps is None and self.consistency_steps():
            self.notes.append(f"psp_sr: the output is back-projected onto the input in {self.consistency_steps()} "
                              f"steps (as the model was trained; --opt consistency_steps=0 leaves them out; "
                              f"none at ×1, where the output already has the input's size)")

    # -- what the model serves ---------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return int(self.model.input_size)

    @property
    def resolution(self) -> int:
        return int(self.model.decoder.resolution)

    @property
    def factors(self) -> list[int]:
        return [int(f) for f in self.model_config.get("training", {}).get("factors", [1])]

    def input_sizes(self) -> list[int]:
        """Input sizes the model was trained for: ``input_size / F``."""
        return sorted({self.input_size // f for f in self.factors if self.input_size % f == 0}, reverse=True)

    def sizes_note(self) -> str:
        """The trained input sizes, each with the ``--scale`` that takes it (output = scale × input,
        DESIGN "What --scale means"), e.g. ``32 px at --scale 4``: the pSp paper's factor ``F`` is the
        encoder input's downsampling instead, and pairing sizes with it misleads."""
        return ", ".join(f"{s} px at --scale {self.resolution // s}" if self.resolution % s == 0 else f"{s} px"
                         for s in self.input_sizes())

    def native_scales(self) -> list[int]:
        """Scales at which the generator's output needs no resize: ``R·F / input_size``."""
        return sorted({self.resolution * f // self.input_size for f in self.factors
                       if (self.resolution * f) % self.input_size == 0})

    def preferred_input_size(self, scale: int) -> int:
        """The trained input size whose native scale is ``scale`` (else ``input_size // scale``)."""
        self.load()
        for f in self.factors:
            if self.resolution * f == scale * self.input_size and self.input_size % f == 0:
                return self.input_size // f
        return max(8, self.input_size // max(scale, 1))

    def face_input_size(self, scale: int) -> int:
        """Aligned-crop size for photos from the wild (``--faces detect``): a trained input size."""
        return self.preferred_input_size(scale)

    def _note_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            if not self.options.quiet:
                print(f"{self.info.name}: {msg}", file=sys.stderr)

    # -- inference ---------------------------------------------------------------------------
    def _to_input(self, lr: Tensor) -> Tensor:
        s = self.input_size
        mode = self.options.input_resize
        if mode == "auto":
            mode = "bilinear" if self.model_config.get("format") == "official" else "bicubic"
        if lr.shape[-2:] == (s, s):
            return lr
        return F.interpolate(lr, size=(s, s), mode=mode, align_corners=False, antialias=True).clamp(0, 1)

    def _check_input(self, lr: Tensor) -> None:
        h, w = lr.shape[-2:]
        if h != w:
            self._note_once(f"square {w}x{h}", f"a {w}×{h} input is not square: it is stretched to the square model input "
                                      f"and the output back to scale × its size (aspect distorted; pSp expects "
                                      f"aligned square face crops)")
        elif h not in self.input_sizes():
            self._note_once(f"size {h}", f"{h}-px inputs are outside the sizes the model was trained for "
                                    f"({', '.join(map(str, self.input_sizes()))} px); results may be poor")

    def _check_detail(self, lr: Tensor, scale: int | None = None) -> None:
        """Say once when the input holds detail the plain output drops: from a quarter of the
        generator's size up (×4 and less, at 128 px), psp_sr re-draws the face from its prior and
        bicubic keeps the person better (model card); back-projection gives the detail back. At ×1
        it cannot (the output already has the input's size, :func:`restorekit.consistency.back_project`
        keeps it as drawn): that is said instead, once, whatever the input's size."""
        side = min(lr.shape[-2:])
        if scale == 1:
            # (keep_native_size: a generator-sized output of a smaller input is projected as at any scale)
            same_size = not self.options.keep_native_size or tuple(lr.shape[-2:]) == (self.resolution,) * 2
            self._note_once("x1", "at ×1 psp_sr re-draws the face through its prior (pSp's ×1: the generator's "
                                  "face nearest the input, not the input cleaned up)"
                                  + ("; consistency_steps has no effect at ×1 (the output already has the input's "
                                     "size)" if same_size else ""))
            return
        if self.consistency_steps() == 0 and 4 * side >= self.resolution:
            measured = (" (at ×2 and ×4 the shipped model is further from the person than bicubic)"
                        if self._is_shipped_model() else "")
            self._note_once("detail", f"{side}-px inputs show more than the prior keeps: psp_sr re-draws the face"
                                      f"{measured}; --opt consistency_steps=3 projects the output onto the input")

    def _is_shipped_model(self) -> bool:
        """Whether the loaded weights are the shipped default's bytes (its registry sha256): the
        model card's measurements describe that model only, not another one passed with --weights."""
        from restorekit.weights import get_spec

        try:
            pinned = {f.sha256 for f in get_spec(DEFAULT_MODEL_NAME).files if f.sha256}
        except UnknownNameError:
            return False
        return self.weights_info.get("sha256") in pinned

    def _keep_memory(self) -> None:
        if self.options.keep_memory:
            from restorekit.memory import keep_freed_memory_for

            keep_freed_memory_for(self.device, self.resolution)

    @torch.no_grad()
    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        scale, n_samples = int(scale), int(n_samples)
        if not self.options.keep_native_size:
            self.check_output_memory(lr, scale, n_samples)
        self.load()
        self._keep_memory()
        self._check_input(lr)
        self._check_detail(lr, scale)
        lr = lr.to(self.device, torch.float32)
        x = self._to_input(lr)
        if n_samples == 1:
            img, _ = self.model(x)
        else:
            seed = 0 if seed is None else int(seed)  # as pulse and psp_pulse: reproducible unless asked
            img, _ = self.model.mix(x, n_samples, seed=seed, latent_mask=self.options.mix_layers,
                                    mix_alpha=self.options.mix_alpha)
        self.last_reports = [{"native_size": self.resolution, "seed": seed} for _ in range(img.shape[0])]
        return self.finish(img, lr.repeat_interleave(n_samples, 0) if n_samples > 1 else lr, scale)

    def finish(self, img: Tensor, lr: Tensor, scale: int) -> Tensor:
        """Generator images (``N×3×R×R``) → the returned output: clamped, resized to ``scale ×`` the
        input (unless ``keep_native_size``), then ``consistency_steps`` back-projection steps onto ``lr``
        (one row per image, or one for all)."""
        from restorekit.consistency import back_project
        from restorekit.degradations import bicubic_resize

        out = img.clamp(0, 1)
        if not self.options.keep_native_size:
            h, w = lr.shape[-2:]
            out = bicubic_resize(out, (h * scale, w * scale)).clamp(0, 1)
        return back_project(out, lr, steps=self.consistency_steps())

    def consistency_steps(self) -> int:
        """The ``consistency_steps`` option, or the model's own (trained with; 0 when it says none)."""
        if self.options.consistency_steps is not None:
            return int(self.options.consistency_steps)
        return int(self.model_config.get("training", {}).get("consistency_steps") or 0)

    def bench_breakdown(self, lr: Tensor, scale: int, *, repeats: int = 2) -> dict[str, dict[str, Any]]:
        """Encoder and generator each timed against their own convolutions (:mod:`.conv_reference`)."""
        from .bench_psp import psp_breakdown

        self.load()
        self._keep_memory()
        return psp_breakdown(self.model, self._to_input(lr.to(self.device, torch.float32)), repeats=repeats)

    @torch.no_grad()
    def bench_parts(self, lr: Tensor, scale: int) -> dict[str, float]:
        """Milliseconds for the encoder (with input resize) and for the generator, one call each."""
        self.load()
        self._keep_memory()

        def sync() -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        x = lr.to(self.device, torch.float32)
        sync()
        t0 = time.perf_counter()
        w = self.model.encode(self._to_input(x))
        sync()
        t1 = time.perf_counter()
        self.model.decode(w)
        sync()
        t2 = time.perf_counter()
        return {"encoder": (t1 - t0) * 1000, "generator": (t2 - t1) * 1000}
