"""A StyleGAN2 generator without a GAN: train it as the decoder of an autoencoder
(``restorekit train stylegan2_ae``).

No StyleGAN2 weights ship in any package, so restorekit's embedded pSp model gets its generator
from this non-adversarial stage, which runs on a CPU: a GradualStyle encoder maps a face into
W+, the StyleGAN2 generator (architecture unchanged, rosinality names) decodes it, and both are
trained with ``L1 + 0.8·LPIPS`` (optionally L2) between the reconstruction and the face.

Two additions keep the result usable by pSp afterwards:

- the mapping network is trained too, by moment matching: the per-dimension mean and standard
  deviation of ``map(z)`` for normal ``z`` are pulled (``map_lambda``) to those of the
  encoder's codes (detached), so that random ``z`` land where faces are encoded and pSp's
  style mixing (fine styles from ``map(z)``) gives plausible variations;
- an exponential moving average of the codes' mean becomes the generator's ``latent_avg``
  (pSp's starting point).

Exports, under the run folder: ``generator.safetensors`` (restorekit StyleGAN2 format, the
``generator`` of ``restorekit train psp_sr``) and ``autoencoder.safetensors`` (a restorekit pSp
file with factor 1, usable as ``init`` of the SR stage so its encoder starts from one that
already inverts the generator).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from restorekit.interfaces import Loss
from restorekit.training import Betas, TrainConfig, Trainer, TrainingError, psnr, sr_datasets

if TYPE_CHECKING:
    from .encoder import GradualStyleEncoder
    from .stylegan2 import StyleGAN2Generator


class AEConfig(TrainConfig):
    """``restorekit train stylegan2_ae`` settings."""

    optimizer: Literal["adam", "ranger"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: Betas | None = (0.9, 0.99)
    # -- generator architecture (rosinality StyleGAN2) ------------------------------------
    resolution: int = 128
    style_dim: int = Field(256, ge=8)
    n_mlp: int = Field(4, ge=1)
    channel_multiplier: int = Field(1, ge=1)
    channel_max: int = Field(256, ge=4)
    channels: dict[int, int] | None = Field(
        None, description="explicit width per resolution (4…resolution), replacing the multiplier/max table")
    lr_mlp: float = 0.01
    impl: Literal["auto", "ref", "cuda"] = "auto"
    generator_init: str | None = Field(None, description="start the generator from these weights (name or file)")
    # -- encoder ------------------------------------------------------------------------------
    encoder_backbone: str = "ir_se_light"
    encoder_input_size: int | None = Field(None, ge=32, description="default: the resolution")
    head_channels: int | None = Field(128, ge=1)
    # -- losses ---------------------------------------------------------------------------
    l1_lambda: float = Field(1.0, ge=0)
    l2_lambda: float = Field(0.0, ge=0)
    lpips_lambda: float = Field(0.8, ge=0)
    lpips_backbone: Literal["alex", "vgg"] = "alex"
    map_lambda: float = Field(0.1, ge=0, description="moment matching of map(z) to the encoder's codes")
    latent_ema: float = Field(0.999, ge=0, lt=1)
    # -- export ---------------------------------------------------------------------------
    model_name: str = "stylegan2_ae"
    license: str = "unknown"

    PATH_SETTINGS: ClassVar[dict[str, Literal["path", "name_or_path"]]] = {
        **TrainConfig.PATH_SETTINGS, "generator_init": "name_or_path",
    }


class StyleGAN2AutoEncoder(nn.Module):
    """Encoder into W+, StyleGAN2 decoder; ``forward`` also maps ``z`` so that every trained
    parameter is used inside one call (what DistributedDataParallel needs)."""

    codes_mean: Tensor  # buffers
    codes_seen: Tensor

    def __init__(self, encoder: GradualStyleEncoder, generator: StyleGAN2Generator) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = generator
        self.register_buffer("codes_mean", torch.zeros(generator.n_styles, generator.style_dim))
        self.register_buffer("codes_seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(reconstruction in [0,1], W+ codes, map(z) or None)``."""
        codes = self.encoder.encode(x)
        image = self.decoder.synthesize(codes)
        w_z = self.decoder.map(z) if z is not None else None
        return image, codes, w_z

    @torch.no_grad()
    def update_codes_mean(self, codes: Tensor, decay: float) -> None:
        batch_mean = codes.detach().float().mean(0)
        if int(self.codes_seen) == 0:
            self.codes_mean.copy_(batch_mean)
        else:
            self.codes_mean.lerp_(batch_mean, 1 - decay)
        self.codes_seen += 1


def moment_loss(w_z: Tensor, codes: Tensor) -> Tensor:
    """Squared distance between per-dimension mean and std of ``map(z)`` and of the codes
    (all styles pooled), summed over dimensions; the codes side carries no gradient."""
    target = codes.detach().reshape(-1, codes.shape[-1]).float()
    w = w_z.float()
    mean_t, std_t = target.mean(0), target.std(0)
    return (w.mean(0) - mean_t).square().sum() + (w.std(0) - std_t).square().sum()


def build_autoencoder(cfg: AEConfig) -> StyleGAN2AutoEncoder:
    from .encoder import GradualStyleEncoder
    from .stylegan2 import StyleGAN2Generator

    if cfg.generator_init is not None:
        from .train import load_generator

        g = load_generator(cfg.generator_init, impl=cfg.impl)
    else:
        g = StyleGAN2Generator(cfg.resolution, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier,
                               channel_max=cfg.channel_max, lr_mlp=cfg.lr_mlp, impl=cfg.impl,
                               channels=cfg.channels)
    for p in g.parameters():
        p.requires_grad_(True)
    if cfg.map_lambda == 0:  # nothing reaches the mapping network: frozen, or DDP waits for its gradients
        for p in g.style.parameters():
            p.requires_grad_(False)
    enc = GradualStyleEncoder(g.n_styles, g.style_dim, backbone=cfg.encoder_backbone,
                              input_size=cfg.encoder_input_size or g.resolution, head_channels=cfg.head_channels)
    return StyleGAN2AutoEncoder(enc, g)


def build_ae_losses(cfg: AEConfig) -> dict[str, Loss]:
    from restorekit.losses import L1Loss, L2Loss, LPIPSLoss

    losses: dict[str, Loss] = {}
    if cfg.l1_lambda > 0:
        losses["l1"] = L1Loss(cfg.l1_lambda)
    if cfg.l2_lambda > 0:
        losses["l2"] = L2Loss(cfg.l2_lambda)
    if cfg.lpips_lambda > 0:
        losses["lpips"] = LPIPSLoss(cfg.lpips_lambda, backbone=cfg.lpips_backbone)
    return losses


class AETrainer(Trainer):
    """Trains encoder, generator and mapping network together (see the module docstring)."""

    name: ClassVar[str] = "stylegan2_ae"  # type: ignore[misc]
    Config: ClassVar[type[TrainConfig]] = AEConfig  # type: ignore[misc]
    config: AEConfig
    model: StyleGAN2AutoEncoder

    def __init__(self, config: AEConfig, model: StyleGAN2AutoEncoder, train_data: Any, val_data: Any = None, *,
                 losses: dict[str, Loss] | None = None, **kwargs: Any) -> None:
        super().__init__(config, model, train_data, val_data, **kwargs)
        self.losses = losses if losses is not None else build_ae_losses(config)
        if not self.losses and config.map_lambda == 0:
            raise ValueError("stylegan2_ae: every loss weight is 0")

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> "AETrainer":
        assert isinstance(config, AEConfig)
        root = config.data.root
        if root is None:  # (before the networks are built)
            raise TrainingError("stylegan2_ae: no training data (pass --data DIR or set data.root)")
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on config.seed only
            torch.manual_seed(config.seed)
            model = build_autoencoder(config)
        res = model.decoder.resolution
        train, val = sr_datasets(root, model.encoder.input_size, config.data, hr_size=res,
                                 seed=config.seed)
        return cls(config, model, train, val, quiet=quiet)

    def train_step(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, y = batch["lr_up"], batch["hr"]
        z = torch.randn(x.shape[0], self.model.decoder.z_dim, device=x.device) if self.config.map_lambda > 0 else None
        image, codes, w_z = net(x, z)
        image = image.float()
        out: dict[str, Tensor] = {}
        total = image.new_zeros(())
        for key, loss in self.losses.items():
            v = loss(image, y)
            out[key] = v.detach()
            total = total + loss.weight * v
        if w_z is not None:
            m = moment_loss(w_z, codes)
            out["map"] = m.detach()
            total = total + self.config.map_lambda * m
        self.model.update_codes_mean(codes, self.config.latent_ema)
        out["loss"] = total
        return out

    def validation_step(self, batch: dict[str, Any]) -> tuple[list[Tensor], dict[str, Tensor]]:
        x, y = batch["lr_up"], batch["hr"]
        image, _, _ = self.model(x)
        image = image.float().clamp(0, 1)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(x.shape[0], self.model.decoder.z_dim, generator=g).to(x.device)
        sample = self.model.decoder.synthesize(self.model.decoder.broadcast(self.model.decoder.map(z)))
        metrics = {"psnr": psnr(image, y), "l1": (image - y).abs().flatten(1).mean(1)}
        return [x, image, y, sample.float().clamp(0, 1)], metrics

    def export(self, folder: Path) -> Path:
        from .method import save_psp_safetensors
        from .psp import PSP
        from .train import save_stylegan2_safetensors

        cfg = self.config
        g = self.model.decoder
        avg = self.model.codes_mean.mean(0)
        g.set_latent_avg(avg)
        training = {"steps": self.step, "losses": {k: float(v.weight) for k, v in self.losses.items()},
                    "map_lambda": cfg.map_lambda, "val": self.last_val}
        path = save_stylegan2_safetensors(g, folder / "generator.safetensors", license=cfg.license,
                                          name=cfg.model_name, training=training)
        ae = PSP(self.model.encoder, g, self.model.codes_mean.clone(), start_from_latent_avg=False)
        save_psp_safetensors(ae, folder / "autoencoder.safetensors", factors=[1], license=cfg.license,
                             name=f"{cfg.model_name}_encoder", training={**training, "stage": "autoencoder"})
        return path


def load_trainer() -> type[AETrainer]:
    return AETrainer
