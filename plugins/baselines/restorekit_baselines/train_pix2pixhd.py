"""Training pix2pixHD for super-resolution on restorekit's shared training loop.

``restorekit train pix2pixhd --data DIR --out RUN`` trains on square crops of the images in
``DIR`` (:class:`restorekit.training.SRPairDataset`: the HR resized to ``size``, the input its
``F×`` bicubic downscale upscaled back to ``size``). One training step:

1. ``fake = G(lr_up)``;
2. discriminator step (its own Adam, :attr:`Pix2PixHDTrainConfig.lr_d`, on G's learning-rate
   schedule scaled by ``lr_d / lr``):
   ``½·(LSGAN(D(lr_up, hr), real) + LSGAN(D(lr_up, fake.detach()), fake))``;
3. generator loss, returned to the shared :class:`~restorekit.training.Trainer` which steps G:
   ``λ_gan·LSGAN(D(lr_up, fake), real) + λ_feat·FM + λ_vgg·VGG (+ λ_l1·L1 + λ_lpips·LPIPS)``,
   LSGAN summed over D's scales and FM averaged, as pix2pixHD. Unlike pix2pixHD, which takes both
   players' losses from one forward pass and steps G first, G's loss is taken against the D just
   updated (the shared loop steps G after this function returns, and a D stepped in place cannot
   stay in G's graph).

With ``lambda_gan = 0`` (and ``lambda_feat = 0``) there is no discriminator at all: the same
generator trained as a plain regression CNN, e.g. on L1 + LPIPS — the reference that shows what
a face prior adds over a CNN with the same data and budget.

The loss names in ``log.jsonl``: ``loss`` (G total), ``g_gan``, ``g_fm``, ``g_vgg``, ``g_l1``,
``d_real``, ``d_fake``, ``d_loss``, ``g_lpips`` and ``l1`` (the plain L1 to the target, for monitoring).
At the end the generator is exported to ``RUN/pix2pixhd.safetensors`` for the ``pix2pixhd``
method. The discriminator steps once per micro-batch (with ``grad_accum > 1`` it steps more
often than G). Multi-process (torchrun) runs are not supported yet: G and D share one
DistributedDataParallel wrapper across two backward passes, which this trainer refuses.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from restorekit.training import Betas, DataConfig, TrainConfig, Trainer, TrainingError, load_optimizer_state, psnr

from .pix2pixhd import (GeneratorConfig, MultiscaleDiscriminator, Pix2PixHDGenerator, VGGLoss,
                        feature_matching_loss, lsgan_loss, official_init, save_generator)

EXPORT_NAME = "pix2pixhd.safetensors"


def min_normed_side(size: int, n_layers: int, num_d: int) -> int:
    """The smallest side of a map any instance norm of :class:`MultiscaleDiscriminator` sees on
    ``size``-px inputs (a norm needs more than one pixel): scale ``i`` reads the input average-pooled
    ``i`` times (3×3, stride 2, padding 1: ``⌈s/2⌉``); its first 4×4 conv (stride 2, padding 2:
    ``⌊s/2⌋ + 1``) has no norm, the next ``n_layers − 1`` of that kind and a stride-1 one (``s + 1``) do."""
    side, normed = size, []
    for scale in range(num_d):
        if scale:
            side = (side + 1) // 2
        s = side // 2 + 1
        for _ in range(1, n_layers):
            s = s // 2 + 1
            normed.append(s)
        normed.append(s + 1)
    return min(normed)


class Pix2PixHDTrainConfig(TrainConfig):
    """pix2pixHD's defaults (Adam 2e-4, β = 0.5/0.999; λ_feat = λ_vgg = 10; 3 D scales of 3 layers, the
    paper's count: its code defaults to 2; every conv weight drawn from N(0, 0.02); the VGG fed the
    raw [-1, 1] image). Not its schedule by default: pix2pixHD keeps lr constant for ``niter`` epochs,
    then decays both players' lr linearly to 0 over ``niter_decay``; here the default is constant
    throughout, and ``lr_schedule = "linear"`` with ``lr_decay_start`` at the step where the decay
    begins (pix2pixHD's defaults: half of ``steps``) gives pix2pixHD's, for G and D alike.

    Checkpoints saved before ``init`` and ``vgg_input`` existed trained with PyTorch's default init
    and the ImageNet-normalised VGG input (:attr:`SETTINGS_BEFORE`): ``--resume`` continues them so."""

    size: int = Field(256, ge=16, description="square training size (input and target)")
    ngf: int = Field(64, ge=1)
    n_downsampling: int = Field(4, ge=0)
    n_blocks: int = Field(9, ge=0)
    n_local_enhancers: int = Field(0, ge=0)
    n_blocks_local: int = Field(3, ge=0)
    ndf: int = Field(64, ge=1)
    n_layers_d: int = Field(3, ge=1)
    num_d: int = Field(3, ge=1)
    lambda_feat: float = Field(10.0, ge=0)
    lambda_vgg: float = Field(10.0, ge=0)
    lambda_l1: float = Field(0.0, ge=0, description="extra pixel L1 (not in pix2pixHD; 0 = off)")
    lambda_gan: float = Field(1.0, ge=0, description="adversarial weight; 0 = no discriminator (plain CNN)")
    lambda_lpips: float = Field(0.0, ge=0, description="LPIPS weight (not in pix2pixHD; 0 = off)")
    lpips_backbone: Literal["alex", "vgg"] = "alex"
    allow_random_lpips: bool = Field(False, description="tests only: a random LPIPS backbone")
    lr_d: float | None = Field(None, gt=0, description="discriminator learning rate (default: lr)")
    vgg_weights: str = Field("lpips-vgg", description="VGG16 features: weights name or file")
    allow_random_vgg: bool = Field(False, description="tests only: a random VGG backbone instead of vgg_weights")
    vgg_input: Literal["official", "imagenet"] = Field(
        "official", description="what the VGG reads: the raw [-1, 1] image (pix2pixHD's) or ImageNet-normalised [0, 1]")
    init: Literal["official", "pytorch"] = Field(
        "official", description="fresh networks' weights: every conv N(0, 0.02) (pix2pixHD's) or PyTorch's default")
    # Overrides of the shared defaults.
    lr: float = Field(2e-4, gt=0)
    optimizer: Literal["adam", "ranger"] = "adam"
    betas: Betas | None = (0.5, 0.999)
    data: DataConfig = Field(default_factory=lambda: DataConfig(factors=[4]))

    SETTINGS_BEFORE: ClassVar[dict[str, Any]] = {**TrainConfig.SETTINGS_BEFORE, "init": "pytorch",
                                                  "vgg_input": "imagenet"}
    PATH_SETTINGS: ClassVar[dict[str, Literal["path", "name_or_path"]]] = {
        **TrainConfig.PATH_SETTINGS, "vgg_weights": "name_or_path",
    }

    @model_validator(mode="after")
    def _check_sizes(self) -> Pix2PixHDTrainConfig:
        m = 2 ** (self.n_downsampling + self.n_local_enhancers)
        if self.size % m:
            raise ValueError(f"size {self.size} must be a multiple of {m} (2^(n_downsampling + n_local_enhancers))")
        if self.lambda_gan == 0 and self.lambda_feat:
            raise ValueError("lambda_feat needs the discriminator: set lambda_feat = 0 with lambda_gan = 0")
        if self.lambda_gan + self.lambda_feat + self.lambda_vgg + self.lambda_l1 + self.lambda_lpips == 0:
            raise ValueError("every loss weight is 0: nothing to train")
        if self.lambda_gan and min_normed_side(self.size, self.n_layers_d, self.num_d) < 2:
            most = max(k for k in range(1, self.num_d) if min_normed_side(self.size, self.n_layers_d, k) >= 2)
            raise ValueError(f"num_d {self.num_d}: at size {self.size} the coarsest discriminator's instance "
                             f"norms would see 1×1 maps (n_layers_d {self.n_layers_d}); use num_d ≤ {most} or a "
                             f"larger size")
        if self.lambda_lpips:
            from restorekit.networks.lpips_net import MIN_SIDE

            if self.size < MIN_SIDE[self.lpips_backbone]:
                raise ValueError(f"lambda_lpips: LPIPS({self.lpips_backbone}) needs images of at least "
                                 f"{MIN_SIDE[self.lpips_backbone]} px a side; size is {self.size}")
        if self.amp and self.amp_dtype == "fp16":
            raise ValueError("pix2pixhd trains with bf16 autocast only (amp_dtype=bf16): the D step has no grad scaler")
        return self

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(ngf=self.ngf, n_downsampling=self.n_downsampling, n_blocks=self.n_blocks,
                               n_local_enhancers=self.n_local_enhancers, n_blocks_local=self.n_blocks_local)


class Pix2PixHDModel(nn.Module):
    """G and D in one module (what the trainer checkpoints); ``forward`` dispatches by name. Fresh
    networks, initialised as ``cfg.init`` says (a resumed run then loads its checkpoint over them)."""

    def __init__(self, cfg: Pix2PixHDTrainConfig) -> None:
        super().__init__()
        self.G = Pix2PixHDGenerator(cfg.generator_config())
        self.D = MultiscaleDiscriminator(3, cfg.ndf, cfg.n_layers_d, cfg.num_d)
        if cfg.init == "official":
            official_init(self)

    def forward(self, part: str, *args: Tensor) -> Any:
        if part == "G":
            return self.G(*args)
        if part == "D":
            return self.D(*args)
        raise ValueError(f"unknown part {part!r}")


def pix2pixhd_step(model: nn.Module, batch: dict[str, Any], cfg: Pix2PixHDTrainConfig, vgg: VGGLoss | None,
                   d_optimizer: torch.optim.Optimizer, lpips: nn.Module | None = None) -> dict[str, Tensor]:
    """One D update and the G losses for a batch (``lr_up``, ``hr`` in [0,1]); see the module docstring.

    ``model`` is a :class:`Pix2PixHDModel` (called as ``model("G", x)`` / ``model("D", cond, img)``).
    The returned ``loss`` is G's total; the caller backpropagates it and steps G. With
    ``cfg.lambda_gan == 0`` the discriminator is neither run nor stepped.
    """
    lr_up, hr = batch["lr_up"], batch["hr"]
    fake = model("G", lr_up)
    l1 = (fake - hr).abs().mean()
    g_lpips = lpips(fake, hr).mean() if lpips is not None and cfg.lambda_lpips else fake.new_zeros(())
    g_vgg = vgg(fake, hr) if vgg is not None and cfg.lambda_vgg else fake.new_zeros(())
    if cfg.lambda_gan == 0:
        loss = cfg.lambda_vgg * g_vgg + cfg.lambda_l1 * l1 + cfg.lambda_lpips * g_lpips
        return {"loss": loss, "g_vgg": g_vgg.detach(), "g_l1": (cfg.lambda_l1 * l1).detach(),
                "g_lpips": g_lpips.detach(), "l1": l1.detach()}
    # Discriminator.
    d_optimizer.zero_grad(set_to_none=True)
    d_real = lsgan_loss(model("D", lr_up, hr), True)
    d_fake = lsgan_loss(model("D", lr_up, fake.detach()), False)
    d_loss = 0.5 * (d_real + d_fake)
    d_loss.backward()
    d_optimizer.step()
    d_optimizer.zero_grad(set_to_none=True)
    # Generator (against the updated discriminator).
    pred_fake = model("D", lr_up, fake)
    with torch.no_grad():
        pred_real = model("D", lr_up, hr)
    g_gan = lsgan_loss(pred_fake, True)
    g_fm = feature_matching_loss(pred_fake, pred_real, cfg.n_layers_d) if cfg.lambda_feat else fake.new_zeros(())
    loss = (cfg.lambda_gan * g_gan + cfg.lambda_feat * g_fm + cfg.lambda_vgg * g_vgg + cfg.lambda_l1 * l1
            + cfg.lambda_lpips * g_lpips)
    return {"loss": loss, "g_gan": g_gan.detach(), "g_fm": g_fm.detach(), "g_vgg": g_vgg.detach(),
            "g_l1": (cfg.lambda_l1 * l1).detach(), "g_lpips": g_lpips.detach(), "d_real": d_real.detach(),
            "d_fake": d_fake.detach(), "d_loss": d_loss.detach(), "l1": l1.detach()}


class Pix2PixHDTrainer(Trainer):
    """The shared loop with pix2pixHD's two-player step; G is the loop's optimizer's."""

    name = "pix2pixhd"
    Config = Pix2PixHDTrainConfig
    config: Pix2PixHDTrainConfig
    model: Pix2PixHDModel

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> Pix2PixHDTrainer:
        """A trainer on the images under ``config.data.root`` (what ``restorekit train pix2pixhd`` calls)."""
        if not isinstance(config, Pix2PixHDTrainConfig):
            config = Pix2PixHDTrainConfig.model_validate(config.model_dump())
        if config.data.root is None:
            raise TrainingError("pix2pixhd: no training data (pass --data DIR or set data.root)")
        from restorekit.training import sr_datasets

        train_ds, val_ds = sr_datasets(config.data.root, config.size, config.data, seed=config.seed)
        return cls(config, train_ds, val_ds, quiet=quiet)

    def __init__(self, config: Pix2PixHDTrainConfig, train_data: Any, val_data: Any = None, *,
                 out: str | Path | None = None, quiet: bool = False, vgg: VGGLoss | None = None,
                 dist_info: Any = None) -> None:
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on config.seed only
            torch.manual_seed(config.seed)
            model = Pix2PixHDModel(config)
            if vgg is None and config.lambda_vgg:
                weights = None if config.allow_random_vgg else config.vgg_weights
                vgg = VGGLoss(weights, allow_random_vgg=config.allow_random_vgg, vgg_input=config.vgg_input)
            lpips = _build_lpips(config) if config.lambda_lpips else None
        if vgg is not None and vgg.vgg_input != config.vgg_input:
            raise TrainingError(f"pix2pixhd: the VGG loss given reads vgg_input={vgg.vgg_input!r}, "
                                f"the config says {config.vgg_input!r}")
        super().__init__(config, model, train_data, val_data, out=out, params=list(model.G.parameters()),
                         quiet=quiet, dist_info=dist_info)
        if self.dist.distributed:
            raise TrainingError("pix2pixhd: multi-process training is not supported yet; run one process")
        self.vgg = vgg.to(self.device) if vgg is not None else None
        self.lpips = lpips.to(self.device) if lpips is not None else None
        betas = config.betas or (0.5, 0.999)
        self.d_optimizer = torch.optim.Adam(self.model.D.parameters(), lr=config.lr_d or config.lr, betas=betas)

    def train_step(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.lr_schedule != "constant":  # D follows G's schedule, as pix2pixHD decays both
            for group in self.d_optimizer.param_groups:
                group["lr"] = self.lr_at(self.step) * (cfg.lr_d or cfg.lr) / cfg.lr
        return pix2pixhd_step(net, batch, self.config, self.vgg, self.d_optimizer, self.lpips)

    def validation_step(self, batch: dict[str, Any]) -> tuple[list[Tensor], dict[str, Tensor]]:
        fake = self.model.G(batch["lr_up"]).clamp(0, 1)
        return [batch["lr_up"], fake, batch["hr"]], {"psnr": psnr(fake, batch["hr"]),
                                                      "psnr_bicubic": psnr(batch["lr_up"], batch["hr"])}

    def set_train_mode(self) -> None:
        self.model.train()
        for frozen in (self.vgg, self.lpips):
            if frozen is not None:
                frozen.eval()

    def extra_state(self) -> dict[str, Any]:
        return {"d_optimizer": self.d_optimizer.state_dict(),
                "generator_config": asdict(self.model.G.cfg),
                "factors": list(self.config.data.factors), "input_size": self.config.size}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "d_optimizer" in state:
            load_optimizer_state(self.d_optimizer, state["d_optimizer"])

    def export(self, folder: Path) -> Path:
        return save_generator(self.model.G, Path(folder) / EXPORT_NAME, factors=list(self.config.data.factors),
                              input_size=self.config.size)


def _build_lpips(config: Pix2PixHDTrainConfig) -> nn.Module:
    """The frozen LPIPS loss on the offline backbone (random only when the config allows it)."""
    from restorekit.networks.lpips_net import build_lpips, lpips_from_registry

    net = (build_lpips(config.lpips_backbone, allow_random=True) if config.allow_random_lpips
           else lpips_from_registry(config.lpips_backbone))
    return net.eval().requires_grad_(False)


def build_trainer(config: Pix2PixHDTrainConfig, data: str | Path, *, quiet: bool = False) -> Pix2PixHDTrainer:
    """A trainer on the images under ``data`` (sets ``config.data.root``)."""
    config = config.model_copy(update={"data": config.data.model_copy(update={"root": str(data)})})
    return Pix2PixHDTrainer.build(config, quiet=quiet)


def load_trainer() -> type[Pix2PixHDTrainer]:
    """The loader ``restorekit.commands.train.add_trainer`` calls when the command runs."""
    return Pix2PixHDTrainer
