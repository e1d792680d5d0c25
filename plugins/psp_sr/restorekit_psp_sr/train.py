"""pSp super-resolution training (``restorekit train psp_sr``) on restorekit's shared trainer.

The paper's recipe (``--dataset_type=celebs_super_resolution``): a GradualStyle encoder into
W+ of a frozen, pretrained StyleGAN2 generator, starting from the generator's average latent;
inputs are HR faces downscaled by a random factor and upscaled back to the encoder's input size
(:class:`restorekit.training.SRPairDataset`); loss ``1·L2 + 0.8·LPIPS(alex) + 0.1·ID +
0.005·‖w − w_avg‖`` with the pixel losses on [-1, 1] images as pSp computes them
(``pixel_range="symmetric"``), on outputs average-pooled to 256 px when the generator is larger
(no pooling for generators of 256 px or less); Ranger, lr 1e-4, batch 8; the generator's noise
drawn afresh every step (``train_noise="random"``, pSp's ``randomize_noise``). Every weight is a
config field; a zero weight skips that loss (and its network).

Where the defaults are not pSp's: ``id_embedder`` is dlib's ResNet, not pSp's ArcFace IR-SE50,
while ``id_lambda`` stays the paper's 0.1 (see the field); ``data.factors`` is 1…16, pSp's
1…32 (add 32 for 256-px inputs that may come from 8 px); HR and inputs are resized with
bicubic, where pSp resizes with PIL bilinear (:mod:`restorekit.training.data`); half the
samples are flipped horizontally (``data.flip``), which pSp's SR transforms do not do.

With ``restyle_iterations`` the encoder is ReStyle's (:mod:`.psp`): it refines its codes in that
many passes, reading the input beside the current reconstruction, with the losses taken after
every pass (ReStyle trains pSp's encoder this way, five passes a batch). The step minimises the
mean of the pass losses where ReStyle back-propagates each pass's loss and sums the gradients:
the gradient is 1/passes as large, which Ranger's normalised step all but cancels.

The generator comes from ``generator`` (a weights name or a file): a rosinality ``.pt``
(``g_ema``), a restorekit StyleGAN2 ``.safetensors`` (what ``restorekit train stylegan2_ae``
exports), or a restorekit pSp model (its decoder). The result is exported as
``model.safetensors`` in restorekit's pSp format (:mod:`.method`), which ``psp_sr`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from restorekit.errors import RestorekitError, exception_line
from restorekit.interfaces import Loss
from restorekit.training import TrainConfig, Trainer, TrainingError, psnr, sr_datasets
from restorekit.weights import weights_file

if TYPE_CHECKING:
    from .psp import PSP


STYLEGAN2_FORMAT = "restorekit.stylegan2/1"


class PSPTrainConfig(TrainConfig):
    """``restorekit train psp_sr`` settings (on top of :class:`~restorekit.training.TrainConfig`)."""

    lr: float = Field(1e-4, gt=0)
    # -- model ---------------------------------------------------------------------------
    generator: str | None = Field(None, description="pretrained StyleGAN2: weights name or file (required)")
    init: str | None = Field(None, description="start the encoder from this pSp model (restorekit or official)")
    encoder_type: Literal["GradualStyleEncoder", "BackboneEncoder", "BackboneEncoderUsingLastLayerIntoW"] = Field(
        "GradualStyleEncoder", description="pSp's pyramid (paper), ReStyle's BackboneEncoder (every style from the "
                                           "last map), or pSp's single-W encoder")
    encoder_backbone: str = "ir_se50"
    backbone_weights: str | None = Field(None, description="IR-SE weights for the encoder body (pSp: ir-se50)")
    encoder_input_size: int = Field(256, ge=32)
    head_channels: int | None = Field(None, ge=1)
    start_from_latent_avg: bool = True
    restyle_iterations: int | None = Field(
        None, ge=1, le=20, description="ReStyle: the encoder refines its codes in this many passes, reading the "
                                       "input beside the current reconstruction, with a loss after each pass; "
                                       "the model infers with as many (None: pSp's one pass)")
    latent_avg_samples: int = Field(4096, ge=1, description="map(z) samples for w_avg when the file has none")
    impl: Literal["auto", "ref", "cuda"] = "auto"
    # -- losses (pSp's SR lambdas) ---------------------------------------------------------
    l2_lambda: float = Field(1.0, ge=0)
    lpips_lambda: float = Field(0.8, ge=0)
    id_lambda: float = Field(0.1, ge=0, description="ID-loss weight: 0.1 is the paper's, for its ArcFace-class "
                                                   "embedder (1 − cos ≈ 0.3–1 between faces); dlib's distances "
                                                   "are several times smaller, and the faces128 recipe uses 1.0 "
                                                   "with dlib_resnet")
    w_norm_lambda: float = Field(0.005, ge=0)
    lpips_backbone: Literal["alex", "vgg"] = "alex"
    id_embedder: str = "dlib_resnet"
    pixel_range: Literal["unit", "symmetric"] = "symmetric"
    loss_size: int = Field(256, ge=16, description="outputs larger than this are average-pooled to it for losses")
    consistency_steps: int = Field(0, ge=0, le=20,
                                   description="losses on the output back-projected onto its LR input in this many "
                                               "steps (restorekit.consistency), as psp_sr then infers by default: "
                                               "the encoder is trained for the details the input does not hold")
    consistency_same_size: Literal["output", "input"] = Field(
        "output", description="with consistency_steps, rows whose LR target has the output's own size (factor 1 "
                              "at loss_size = encoder_input_size): 'output' trains on the plain output, as "
                              "back-projection leaves it at ×1; 'input' replaces them by their LR target (no "
                              "gradient: what runs checkpointed before this setting trained with)")
    train_noise: Literal["random", "const"] = Field(
        "random", description="the generator's noise while training: drawn afresh every step from the run's "
                              "(seeded, checkpointed) random stream, as pSp trains, or its fixed maps "
                              "('const', what inference uses either way); a run checkpointed before this "
                              "setting existed trained with 'const' and `--resume` continues with it")
    # A run checkpointed before train_noise existed decoded with the fixed noise maps.
    SETTINGS_BEFORE: ClassVar[dict[str, Any]] = {**TrainConfig.SETTINGS_BEFORE, "train_noise": "const",
                                                 "consistency_same_size": "input"}
    # -- export ------------------------------------------------------------------------------
    model_name: str = "psp_sr"
    license: str = Field("unknown", description="license of the trained model (data + generator terms)")

    PATH_SETTINGS: ClassVar[dict[str, Literal["path", "name_or_path"]]] = {
        **TrainConfig.PATH_SETTINGS, "generator": "name_or_path", "init": "name_or_path",
        "backbone_weights": "name_or_path",
    }

    @field_validator("encoder_backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from .irse import BACKBONES

        if v not in BACKBONES:
            raise ValueError(f"unknown IR backbone '{v}'; known: {', '.join(sorted(BACKBONES))}")
        return v

    @field_validator("encoder_input_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        """The encoder's sizes (:mod:`.encoder`) checked here, before a run folder is made."""
        from .encoder import MAX_INPUT_SIZE

        if v > MAX_INPUT_SIZE or v & (v - 1):
            raise ValueError(f"must be a power of two from 32 to {MAX_INPUT_SIZE} (the encoder halves it)")
        return v

    @model_validator(mode="after")
    def _lpips_fits(self) -> PSPTrainConfig:
        """LPIPS compares outputs pooled to at most ``loss_size``: refuse a size its network cannot read."""
        if self.lpips_lambda:
            from restorekit.networks.lpips_net import MIN_SIDE

            if self.loss_size < MIN_SIDE[self.lpips_backbone]:
                raise ValueError(f"lpips_lambda: LPIPS({self.lpips_backbone}) needs images of at least "
                                 f"{MIN_SIDE[self.lpips_backbone]} px a side; loss_size is {self.loss_size}")
        return self


def save_stylegan2_safetensors(generator: Any, path: str | Path, *, license: str = "unknown", name: str = "",
                               training: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                               root: Path | None = None) -> Path:
    """A StyleGAN2 generator as ``.safetensors``: rosinality tensor names, ``latent_avg`` when
    known, and metadata ``format = restorekit.stylegan2/1`` + ``config`` (JSON architecture).
    ``dtype=torch.float16`` halves the file (loading converts back to float32). ``root``: as
    :func:`restorekit.images.atomic_write_bytes`' (a run folder whose subfolders are not followed
    when links)."""
    from restorekit.images import atomic_write_bytes
    from restorekit.weights.st_bytes import safetensors_bytes

    from .method import generator_config

    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in generator.state_dict().items()}
    if generator.latent_avg.numel():
        tensors["latent_avg"] = generator.latent_avg.detach().to("cpu", dtype).reshape(-1).contiguous().clone()
    config = {"generator": generator_config(generator), "license": license, "name": name, "training": training or {}}
    p = Path(path)
    atomic_write_bytes(p, safetensors_bytes(tensors, {"format": STYLEGAN2_FORMAT, "config": json.dumps(config)}),
                       root=root)
    return p


def load_generator(spec: str, **kwargs: Any) -> Any:
    """A frozen :class:`~.stylegan2.StyleGAN2Generator` from a weights name or file (see module doc)."""
    path = weights_file(spec)
    if path.suffix != ".safetensors":
        from .rosinality import load_rosinality

        return load_rosinality(path, **kwargs)
    from safetensors import safe_open

    from .method import PSP_FORMAT, build_fitting, build_generator, load_psp_safetensors

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own errors on a cut-short or foreign file
        raise RestorekitError(f"{path}: not a readable safetensors file ({exception_line(exc)})") from None
    fmt = meta.get("format")
    if fmt == PSP_FORMAT:
        model, _ = load_psp_safetensors(path, **kwargs)
        g = model.decoder
        g.set_latent_avg(model.latent_avg[0])
        return g
    la = tensors.pop("latent_avg", None)
    if fmt == STYLEGAN2_FORMAT:
        try:
            cfg = json.loads(meta["config"])["generator"]
            g = build_fitting(lambda: build_generator(cfg, **kwargs), tensors, path, "generator")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RestorekitError(f"{path}: its generator config is incomplete or invalid "
                                  f"({exception_line(exc)})") from None
        g.load_state_dict(tensors, strict=True)
        if la is not None:
            g.set_latent_avg(la)
        return g.eval()
    from .rosinality import generator_from_state_dict

    return generator_from_state_dict(tensors, latent_avg=la, source=path, **kwargs)


def build_losses(cfg: PSPTrainConfig) -> dict[str, Loss]:
    """The weighted losses the config enables (weight 0: left out, its network never built)."""
    from restorekit.losses import L2Loss, LPIPSLoss, WNormLoss

    losses: dict[str, Loss] = {}
    if cfg.l2_lambda > 0:
        losses["l2"] = L2Loss(cfg.l2_lambda, value_range=cfg.pixel_range)
    if cfg.lpips_lambda > 0:
        losses["lpips"] = LPIPSLoss(cfg.lpips_lambda, backbone=cfg.lpips_backbone)
    if cfg.id_lambda > 0:
        from .identity_loss import IdentityLoss

        losses["id"] = IdentityLoss(cfg.id_lambda, embedder=cfg.id_embedder)
    if cfg.w_norm_lambda > 0:
        losses["w_norm"] = WNormLoss(cfg.w_norm_lambda)
    if not losses:
        raise RestorekitError("psp_sr training: every loss weight is 0")
    return losses


@torch.no_grad()
def fold_latent_avg(encoder: Any, latent_avg: Tensor) -> None:
    """Make an encoder of absolute W+ codes output residuals to ``latent_avg`` (same function
    once ``latent_avg`` is added back), by subtracting it from the output layers' biases."""
    from .encoder import BackboneEncoderUsingLastLayerIntoW

    heads = [encoder.linear] if isinstance(encoder, BackboneEncoderUsingLastLayerIntoW) else \
        [s.linear for s in encoder.styles]
    avg = latent_avg.reshape(-1, latent_avg.shape[-1])
    for i, lin in enumerate(heads):
        if lin.bias is None:
            raise RestorekitError("cannot fold latent_avg into an output layer without bias")
        lin.bias.sub_(avg[min(i, avg.shape[0] - 1)].to(lin.bias) / lin.lr_mul)


def build_psp(cfg: PSPTrainConfig) -> Any:
    """Encoder (fresh, or from ``init``/``backbone_weights``) + the frozen generator + w_avg."""
    from .encoder import build_gradual_style_encoder
    from .psp import DEFAULT_RECON_RESIZE, PSP, RESTYLE_IMAGE_NC

    if cfg.generator is None and cfg.init is None:
        raise RestorekitError("psp_sr training needs a pretrained StyleGAN2: set `generator` (weights name or "
                              "file), e.g. --set generator=stylegan2-ffhq-config-f")
    init = None
    if cfg.init is not None:
        from .method import load_psp_model

        init, _ = load_psp_model(weights_file(cfg.init), impl=cfg.impl)
    if cfg.generator is not None:
        generator = load_generator(cfg.generator, impl=cfg.impl)
    elif init is not None:
        generator = init.decoder
    input_nc = 2 * RESTYLE_IMAGE_NC if cfg.restyle_iterations is not None else 3
    encoder = build_gradual_style_encoder(generator.n_styles, generator.style_dim, backbone=cfg.encoder_backbone,
                                          input_size=cfg.encoder_input_size, head_channels=cfg.head_channels,
                                          learn_in_w=cfg.encoder_type == "BackboneEncoderUsingLastLayerIntoW",
                                          pyramid=cfg.encoder_type != "BackboneEncoder", input_nc=input_nc)
    if cfg.backbone_weights is not None:
        from restorekit.weights import load_state_dict

        sd = with_input_channels(dict(load_state_dict(cfg.backbone_weights)), input_nc)
        own = encoder.state_dict()
        body = {k: v for k, v in sd.items() if k.startswith(("input_layer.", "body.")) and k in own
                and own[k].shape == v.shape}
        if not body:
            raise RestorekitError(f"backbone_weights {cfg.backbone_weights}: no input_layer./body. tensor fits "
                                  f"the {cfg.encoder_backbone} encoder")
        encoder.load_state_dict(body, strict=False)
    if init is not None:
        if init.encoder.input_nc > input_nc:
            raise RestorekitError(f"psp_sr training: init {cfg.init}: its encoder reads {init.encoder.input_nc} "
                                  f"channels, this config's {input_nc} (a ReStyle model, 6, continues with "
                                  f"restyle_iterations set)")
        try:
            encoder.load_state_dict(with_input_channels(init.encoder.state_dict(), input_nc), strict=True)
        except RuntimeError as exc:
            raise RestorekitError(f"psp_sr training: init {cfg.init}: its encoder is not this config's "
                                  f"({str(exc).splitlines()[0]})") from None
        latent_avg = init.latent_avg
        if cfg.start_from_latent_avg:
            # The encoder's absolute codes unchanged, as residuals to latent_avg: generator='s own
            # average when given (init may come from an earlier snapshot of it, and W-norm should
            # measure from this one's centre), else init's.
            if cfg.generator is not None:
                latent_avg = generator.mean_latent(n=cfg.latent_avg_samples).to(init.latent_avg)
            old = init.latent_avg if init.start_from_latent_avg else torch.zeros_like(init.latent_avg)
            dim = latent_avg.shape[-1]
            fold_latent_avg(encoder, latent_avg.reshape(-1, dim) - old.reshape(-1, dim))
    else:
        latent_avg = generator.mean_latent(n=cfg.latent_avg_samples)
    # A ReStyle init (an imported official one pools its reconstructions) goes on reading them as it learnt to.
    recon = init.restyle_recon_resize if init is not None and init.restyle_iterations is not None else None
    return PSP(encoder, generator, latent_avg, start_from_latent_avg=cfg.start_from_latent_avg,
               restyle_iterations=cfg.restyle_iterations, restyle_recon_resize=recon or DEFAULT_RECON_RESIZE)


def with_input_channels(state_dict: dict[str, Tensor], input_nc: int) -> dict[str, Tensor]:
    """An encoder state dict whose stem reads ``input_nc`` channels: a 3-channel stem (pSp's, or an
    IR-SE backbone's) widened with zero weights for the added inputs — a ReStyle encoder built
    from it reads the reconstruction not at all at first, and learns to (its gradient is not zero)."""
    key = "input_layer.0.weight"
    w = state_dict.get(key)
    if w is None or w.shape[1] >= input_nc:
        return state_dict
    extra = w.new_zeros(w.shape[0], input_nc - w.shape[1], *w.shape[2:])
    return {**state_dict, key: torch.cat([w, extra], dim=1)}


class PSPTrainer(Trainer):
    """Trains pSp's encoder against a frozen StyleGAN2 generator (see the module docstring)."""

    name: ClassVar[str] = "psp_sr"  # type: ignore[misc]
    Config: ClassVar[type[TrainConfig]] = PSPTrainConfig  # type: ignore[misc]
    config: PSPTrainConfig
    model: PSP

    def __init__(self, config: PSPTrainConfig, model: Any, train_data: Any, val_data: Any = None, *,
                 losses: dict[str, Loss] | None = None, **kwargs: Any) -> None:
        for p in model.decoder.parameters():
            p.requires_grad_(False)
        super().__init__(config, model, train_data, val_data, params=list(model.encoder.parameters()), **kwargs)
        self.losses = losses if losses is not None else build_losses(config)
        res = int(model.decoder.resolution)
        self.loss_size: int | None = config.loss_size if res > config.loss_size else None

    @classmethod
    def hr_size(cls, config: PSPTrainConfig, resolution: int) -> int:
        return min(resolution, config.loss_size)

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> "PSPTrainer":
        assert isinstance(config, PSPTrainConfig)
        root = config.data.root
        if root is None:  # (before the networks are built)
            raise TrainingError("psp_sr: no training data (pass --data DIR or set data.root)")
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on config.seed only
            torch.manual_seed(config.seed)
            model = build_psp(config)
        train, val = sr_datasets(root, config.encoder_input_size, config.data,
                                 hr_size=cls.hr_size(config, model.decoder.resolution), seed=config.seed)
        return cls(config, model, train, val, quiet=quiet)

    def set_train_mode(self) -> None:
        self.model.train()
        self.model.decoder.eval()

    def compute_losses(self, y_hat: Tensor, y: Tensor, latents: Tensor) -> dict[str, Tensor]:
        """Weighted total under ``loss`` and each unweighted term under its name."""
        out: dict[str, Tensor] = {}
        total = y_hat.new_zeros(())
        ctx = {"latents": latents, "latent_avg": self.model.latent_avg if self.model.start_from_latent_avg else None}
        for key, loss in self.losses.items():
            value = loss(y_hat, y, **ctx)
            out[key] = value.detach()
            total = total + loss.weight * value
        out["loss"] = total
        return out

    def train_step(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The losses after every pass (pSp makes one; with ReStyle each pass's gradient reaches
        only its own step); ``loss`` is their mean, the named terms the last pass's, so a log
        reads what the model infers."""
        y_hat, latents = net(batch["lr_up"], resize_output=self.loss_size, all_passes=True,
                             noise_mode=self.config.train_noise)
        y = batch["hr"]
        if y_hat.shape[-2:] != y.shape[-2:]:
            raise RestorekitError(f"psp_sr training: output {tuple(y_hat.shape[-2:])} vs target "
                                  f"{tuple(y.shape[-2:])}; the dataset's hr_size must be min(resolution, loss_size)")
        if self.config.consistency_steps:
            lr = self.lr_targets(y, batch["factor"])
            y_hat = [project_by_factor(im, lr, self.config.consistency_steps, self.config.consistency_same_size)
                     for im in y_hat]
        passes = [self.compute_losses(im.float(), y, w.float()) for im, w in zip(y_hat, latents)]
        out = dict(passes[-1])
        out["loss"] = torch.stack([p["loss"] for p in passes]).mean()
        return out

    def lr_targets(self, hr: Tensor, factors: Any) -> dict[int, tuple[Tensor, Tensor]]:
        """Per factor in the batch: ``(rows, LR)``, the LR remade from the HR target as the dataset
        makes the input (:func:`restorekit.training.data.degrade_lr`): exactly the input's LR where
        the HR target is the image itself."""
        from restorekit.training.data import degrade_lr

        f = torch.as_tensor(factors).reshape(-1)
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for k in sorted({int(v) for v in f.tolist()}):
            rows = (f == k).nonzero().flatten().to(hr.device)
            out[k] = (rows, degrade_lr(hr[rows].float(), k, self.config.encoder_input_size,
                                       quantize=self.config.data.quantize))
        return out

    def validation_step(self, batch: dict[str, Any]) -> tuple[list[Tensor], dict[str, Tensor]]:
        y_hat, _ = self.model(batch["lr_up"], resize_output=self.loss_size)
        if self.config.consistency_steps:
            y_hat = project_by_factor(y_hat.float(), self.lr_targets(batch["hr"], batch["factor"]),
                                      self.config.consistency_steps, self.config.consistency_same_size)
        y_hat = y_hat.float().clamp(0, 1)
        y = batch["hr"]
        metrics = {"psnr": psnr(y_hat, y), "l2": (y_hat - y).square().flatten(1).mean(1)}
        return [batch["lr_up"], y_hat, y], metrics

    def extra_state(self) -> dict[str, Any]:
        """The last validation's metrics: the export records them, and a run resumed at its final
        step (or past its last validation) runs none before exporting."""
        return {"last_val": dict(self.last_val)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Checkpoints written before ``last_val`` was kept leave it empty, as they did."""
        self.last_val = {str(k): float(v) for k, v in state.get("last_val", {}).items()}

    def export(self, folder: Path) -> Path:
        from .method import save_psp_safetensors

        cfg = self.config
        training = {"hr_size": self.hr_size(cfg, self.model.decoder.resolution), "steps": self.step,
                    "batch_size": cfg.batch_size * cfg.grad_accum * self.dist.world_size,
                    "optimizer": cfg.optimizer, "lr": cfg.lr,
                    "losses": {k: float(v.weight) for k, v in self.losses.items()},
                    "pixel_range": cfg.pixel_range, "generator": cfg.generator, "val": self.last_val,
                    "restyle_iterations": cfg.restyle_iterations, "consistency_steps": cfg.consistency_steps,
                    "train_noise": cfg.train_noise}
        return save_psp_safetensors(self.model, folder / "model.safetensors", factors=cfg.data.factors,
                                    license=cfg.license, name=cfg.model_name, training=training)


def project_by_factor(images: Tensor, lr: dict[int, tuple[Tensor, Tensor]], steps: int,
                      same_size: Literal["output", "input"] = "output") -> Tensor:
    """``images`` with each row back-projected onto its LR (:meth:`PSPTrainer.lr_targets`), differentiably.
    Rows whose LR has their own size are left as they are (``same_size="output"``, as
    :func:`~restorekit.consistency.back_project` leaves ×1), or (``"input"``, the formula runs
    trained with before ``consistency_same_size`` existed) put through the projection's update
    ``x + (lr − x)`` ``steps`` times: their LR itself, passing no gradient."""
    from restorekit.consistency import back_project

    out = images
    for rows, target in lr.values():
        part = images[rows]
        if same_size == "input" and part.shape[-2:] == target.shape[-2:]:
            goal = target.to(device=part.device, dtype=part.dtype)
            for _ in range(steps):
                part = part + (goal - part)
        else:
            part = back_project(part, target, steps=steps, clamp=False)
        out = out.index_copy(0, rows, part)
    return out


def load_trainer() -> type[PSPTrainer]:
    """For ``add_trainer`` (imports stay lazy until the command runs)."""
    return PSPTrainer
