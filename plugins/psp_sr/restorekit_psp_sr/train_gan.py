"""Adversarial StyleGAN2 training (``restorekit train stylegan2``): the face prior pSp needs.

A generator trained without a discriminator learns an average face (two CPU runs of
``train stylegan2_ae`` measured that); only an adversarial loss teaches it what a face looks like
where the pixels do not say. This trainer follows StyleGAN2-ADA's small-resolution recipe with
DiffAugment instead of ADA (no tuning, differentiable, applied to real and fake images in both
players' steps):

* non-saturating logistic loss; lazy R1 on real images every ``r1_every`` D steps (weight
  ``r1_gamma/2·r1_every``; the gradient taken as StyleGAN2 takes it, :func:`r1_penalty`), added to that step's D loss: one optimizer step per batch, so Adam's
  learning rate and betas stay as set (StyleGAN2-ADA scales them by ``r1_every/(r1_every+1)``
  because it takes R1 as an extra optimizer step);
* style mixing with probability ``style_mixing`` (one cut per batch); random noise inputs;
* an exponential moving average of G (half-life ``ema_kimg`` thousand images, ramped up over
  the first ``ema_rampup`` of the images seen) — the generator that is exported;
* Adam (lr 0.0025, betas 0/0.99) for both players; no path-length regularisation, by choice:
  StyleGAN2-ADA's configs use it at every resolution (weight 2, every 4 G steps; off only for
  CIFAR), for smoother latent paths — left out here to spend the few minutes of a GPU on
  adversarial steps.

The discriminator is StyleGAN2's residual D (:mod:`.discriminator`), or with ``d_arch =
"projected"`` small patch heads on frozen ImageNet AlexNet features (:mod:`.projected_d`,
Projected GANs), which its authors report converges many times faster; ``scripts/gpu/run.sh``
can race the two on the same GPU minutes and keep the winner.

For a GPU lent for minutes: the whole training set lives on the device as one uint8 tensor (no
data loader), batches and flips are drawn there; bf16 autocast for both players' forward and
backward (R1's gradient penalty and the EMA stay in fp32; on CUDA R1's convolutions use TF32, which the
trainer allows for every fp32 convolution there) — convolutions and linear layers run in bf16, while
the bias, noise and activation steps between them add fp32 parameters and so stay in fp32 (a
precision margin kept on purpose; not measured against all-bf16); channels-last activations in D;
no host synchronisation except every ``log_every`` steps. ``time_limit`` ends the run with a checkpoint.

Snapshots every ``snapshot_minutes`` (and at the end) go to ``OUT/snapshot/`` and, when
``snapshot_dir`` is set, are mirrored there — a GPU run writes them into its output folder so a
run cut short still returns its latest generator: ``generator.safetensors`` (EMA, fp16,
restorekit StyleGAN2 format), ``samples.png`` (fixed latents, truncation 1 and 0.7),
``metrics.jsonl``, and ``resume_g.safetensors``/``resume_d.safetensors`` (fp16 weights of the
training G and D, what ``init_from`` continues from on another machine — its step and image
counts too, so that batches and random draws go on instead of replaying the snapshot run's first
steps; without Adam's state, which a GAN rebuilds in a few hundred steps). With ``init_widen`` the snapshot may come from a
run with fewer channels at some resolutions: its networks are widened to this config's without
changing what they compute (``widen.py``), so a run found too narrow goes on instead of starting over.

Checkpoints (``OUT/checkpoints/step_*.pt``, every ``ckpt_every`` steps and at the end) hold both
players, the EMA, both optimizers and every rank's RNG state (the CUDA generators' too), so ``--resume``
continues exactly: bit for bit on the CPU; on CUDA with the same batches and random draws, while cuDNN's
autotuned kernels (``cudnn.benchmark``) may round otherwise than the first process's did. A snapshot or
checkpoint is not written over the last one when the networks' weights are no longer finite (a diverged
run stops there instead, its last good files kept).
Under ``torchrun`` each rank draws its share of the batch and gradients are averaged across
ranks after each backward (no DDP wrapper: each player is stepped in a phase where the other is
frozen, which DDP's one-backward-per-forward model does not fit).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from restorekit.errors import ImageError, exception_line
from restorekit.images import IMAGE_EXTS, fs_error
from restorekit.seeds import mix_seed
from restorekit.training import Betas, TrainConfig, load_optimizer_state
from restorekit.training.data import BadImages, Split, list_images, oversample, sample_seed, split_files, unreadable
from restorekit.training.distributed import (DistInfo, all_gather_objects, barrier, init_distributed, mean_across,
                                             signal_across)
from restorekit.training.trainer import (CKPT_DIR, CKPT_FORMAT, LogFiles, TrainingDiverged, TrainingError,
                                         amp_enabled, atomic_save, check_run_folders, check_stop_steps, checkpoint_path,
                                         prune_checkpoints, restoring, resume_checkpoint, rng_state, resume_warning,
                                         run_subfolder, seed_everything, set_rng_state, start_log, trim_log,
                                         warn_changed_settings, warn_optimizer_changes)

if TYPE_CHECKING:
    from .stylegan2 import StyleGAN2Generator

TRAINER_NAME = "stylegan2"
#: The run folder's snapshot subfolder; like ``checkpoints/``, refused when it is a symbolic link.
SNAPSHOT_DIR = "snapshot"


class GANConfig(TrainConfig):
    """``restorekit train stylegan2`` settings; ``steps`` counts G steps of ``batch_size`` images."""

    steps: int = Field(10_000, ge=1)
    batch_size: int = Field(32, ge=2, description="images per step across all processes")
    optimizer: Literal["adam"] = "adam"
    lr: float = Field(0.0025, gt=0, description="G's learning rate")
    lr_d: float | None = Field(None, gt=0, description="D's learning rate (default: lr)")
    betas: Betas | None = (0.0, 0.99)
    eps: float | None = Field(1e-8, gt=0)
    amp: bool = Field(True, description="bf16 autocast on CUDA, and on the CPU with amp_cpu (R1 and the EMA "
                                        "stay fp32; amp_cpu: 1.35× the images/s at prior128/cpu.toml's size here)")
    compile: bool = Field(False, description="torch.compile G's synthesis and D's passes (R1's stays eager: "
                                             "no double backward): 1.5× the images/s at prior128/cpu.toml's size "
                                             "on 2 CPU cores; the first steps take about 1.5 minutes to compile")
    # -- generator ---------------------------------------------------------------------------
    resolution: int = 128
    style_dim: int = Field(512, ge=8)
    n_mlp: int = Field(2, ge=1)
    channel_multiplier: int = Field(1, ge=1)
    channel_max: int = Field(512, ge=4)
    channels: dict[int, int] | None = Field(
        None, description="explicit width per resolution (4…resolution) for G; D mirrors it unless d_channels")
    lr_mlp: float = Field(0.01, gt=0, description="the mapping network's learning-rate multiplier")
    impl: Literal["auto", "ref", "cuda"] = "ref"
    # -- discriminator ------------------------------------------------------------------------
    d_arch: Literal["stylegan2", "projected"] = Field(
        "stylegan2", description="StyleGAN2's residual D, or patch heads on frozen AlexNet features (Projected GAN)")
    d_backbone: str = Field("lpips-alex", description="projected D: the frozen AlexNet (weights name or file)")
    d_head_width: int = Field(128, ge=8, description="projected D: width of each scale's patch head")
    allow_random_backbone: bool = Field(False, description="tests only: a random AlexNet for the projected D")
    d_channels: dict[int, int] | None = None
    mbstd_group: int = Field(4, ge=1)
    channels_last: bool = Field(True, description="channels-last activations in D on CUDA")
    # -- losses and regularisation ---------------------------------------------------------------
    r1_gamma: float = Field(0.1, ge=0, description="R1 weight γ (≈ 0.0002·res²/batch in StyleGAN2-ADA)")
    r1_every: int = Field(16, ge=1, description="lazy R1: every this many D steps")
    style_mixing: float = Field(0.9, ge=0, le=1)
    augment: str = Field("color,translation,cutout", description="DiffAugment policy ('' = none)")
    xflip: bool = Field(True, description="mirror training faces at random (doubles the data)")
    ema_kimg: float = Field(10.0, ge=0, description="G EMA half-life in thousands of images (0 = no EMA)")
    ema_rampup: float | None = Field(0.05, ge=0, description="EMA half-life ≤ this × images seen")
    # -- data --------------------------------------------------------------------------------
    data_on_device: bool = Field(True, description="keep the uint8 training set on the training device")
    load_workers: int = Field(8, ge=1, description="threads decoding the training images at start")
    # -- snapshots ------------------------------------------------------------------------------
    snapshot_minutes: float = Field(2.0, gt=0, description="wall-clock minutes between snapshots")
    snapshot_dir: str | None = Field(None, description="also write each snapshot here (e.g. a GPU job's $OUT)")
    n_sample_grid: int = Field(16, ge=1, le=64)
    init_from: str | None = Field(None, description="start from a snapshot folder's resume_g/resume_d weights; its "
                                                    "step and image counts go on (steps counts from its step)")
    init_widen: bool = Field(False, description="init_from a run with fewer channels at some resolutions: widen "
                                                "its G, D and EMA to this config, computing what they computed "
                                                "(new channels start disconnected from the old; see widen.py)")
    # -- export --------------------------------------------------------------------------------
    model_name: str = "stylegan2"
    license: str = "unknown"

    RESUME_EXEMPT: ClassVar[dict[str, str]] = {
        **TrainConfig.RESUME_EXEMPT,
        "snapshot_minutes": "when snapshots are written (wall clock); the training state is the same",
        "snapshot_dir": "where snapshots are mirrored (a GPU job's own output folder, new each call)",
        "load_workers": "threads that decode the same images into the same tensor at start",
        "data_on_device": "where the uint8 training set is held; batches are drawn by the same indices",
        "compile": "the same computation, compiled (fused kernels round floats differently, as threads do)",
    }
    PATH_SETTINGS: ClassVar[dict[str, Literal["path", "name_or_path"]]] = {
        **TrainConfig.PATH_SETTINGS, "d_backbone": "name_or_path", "snapshot_dir": "path", "init_from": "path",
    }

    #: Settings every trainer has that this one does not use, with what it does instead: a value
    #: other than the default is refused rather than accepted and ignored (a checkpoint's is dropped
    #: on resume: :data:`TrainConfig.UNUSED`).
    UNUSED: ClassVar[dict[str, str]] = {
        "lr_schedule": "the learning rates are constant, as StyleGAN2's",
        "lr_decay_start": "the learning rates are constant, as StyleGAN2's",
        "lr_final_ratio": "the learning rates are constant, as StyleGAN2's",
        "weight_decay": "Adam without weight decay, as StyleGAN2's",
        "grad_clip": "no gradient clipping, as StyleGAN2's",
        "amp_dtype": "autocast is bf16 (amp = false turns it off)",
        "val_every": "snapshot_minutes sets when samples and metrics are written",
        "num_workers": "the training set is decoded once, by load_workers threads",
        "data.flip": "xflip mirrors training faces",
        "data.factors": "a GAN is trained on whole faces, not on degraded pairs",
        "data.quantize": "a GAN is trained on whole faces, not on degraded pairs",
        "data.cache": "the whole training set is held in memory (data_on_device)",
        "data.max_val_images": "the validation faces are the realism reference, all of them",
    }

    @model_validator(mode="after")
    def _check(self) -> "GANConfig":
        if self.grad_accum != 1:
            raise ValueError("stylegan2: grad_accum is not supported (raise batch_size instead)")
        defaults, data_defaults = TrainConfig.model_construct(), type(self.data).model_construct()
        for key, instead in self.UNUSED.items():
            where, name = (self.data, key[5:]) if key.startswith("data.") else (self, key)
            default = getattr(data_defaults if where is self.data else defaults, name)
            if getattr(where, name) != default:
                raise ValueError(f"stylegan2 does not use {key} ({instead}); leave it out")
        if self.resolution not in (32, 64, 128, 256, 512, 1024):
            raise ValueError(f"resolution must be a power of two in 32…1024, got {self.resolution}")
        levels = [2 ** k for k in range(2, self.resolution.bit_length())]  # 4 … resolution
        for name in ("channels", "d_channels"):
            widths = getattr(self, name)
            if widths is not None and (sorted(widths) != levels or any(w < 1 for w in widths.values())):
                raise ValueError(f"{name} must give a positive width for each of {levels} (resolution "
                                 f"{self.resolution}), got {dict(sorted(widths.items()))}")
        from .diffaugment import parse_policy

        parse_policy(self.augment)
        return self


# -- data ---------------------------------------------------------------------------------------
def _load_one(path: Path, resolution: int) -> Tensor:
    from PIL import Image

    from restorekit.images import read_image

    try:  # the fast path: an 8-bit RGB file at the training size, upright as stored
        with Image.open(path) as im:
            if im.mode == "RGB" and im.size == (resolution, resolution) and im.getexif().get(0x0112, 1) == 1:
                import numpy as np

                return torch.from_numpy(np.asarray(im, dtype="uint8").copy()).permute(2, 0, 1)
    except Exception:  # unreadable, cut short, too large…: read_image below names the file and what is wrong
        pass
    from restorekit.degradations import bicubic_resize
    from restorekit.training.data import center_square

    img = center_square(read_image(path))
    img = bicubic_resize(img, (resolution, resolution)).clamp(0, 1)
    return img[0].mul(255).round().to(torch.uint8)


def load_face_tensor(files: list[Path], resolution: int, workers: int = 8, bad_images: BadImages = "skip",
                     *, warn: bool = True) -> Tensor:
    """``N×3×R×R`` uint8: each file centre-cropped to a square and resized (antialiased bicubic).
    A file that cannot be read is left out with a warning (``"skip"``; ``warn=False``: silently,
    on all but one DDP rank) or stops the load (``"stop"``), naming it either way."""
    if not files:
        raise TrainingError("no training images")
    import warnings

    from PIL import Image

    # pillow warns (raw, without the file) when the fast path opens a very large image; read_image,
    # which such a file then goes to, judges its size itself and names it.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    def one(path: Path) -> Tensor | ImageError:
        try:
            return _load_one(path, resolution)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = list(pool.map(one, files))
    for item in loaded:
        if isinstance(item, ImageError):
            line = unreadable(item, bad_images)
            if warn:
                print(f"warning: {line}", file=sys.stderr, flush=True)
    images = [t for t in loaded if isinstance(t, Tensor)]
    if not images:
        raise TrainingError(f"none of the {len(files)} training images can be read")
    return torch.stack(images)


def training_files(cfg: GANConfig) -> tuple[list[Path], list[Path]]:
    """``(train, val)`` files under ``cfg.data.root`` with the split and oversampling applied."""
    root = cfg.data.root
    if root is None:
        raise TrainingError("stylegan2: no training data (pass --data DIR)")
    files = list_images(root)
    if not files:
        raise TrainingError(f"{root}: no image files ({', '.join(IMAGE_EXTS)})")
    train, val = split_files(files, root, split_file=cfg.data.split_file, holdout_fraction=cfg.data.holdout_fraction)
    if not train:
        raise TrainingError(f"{root}: the split leaves no training images")
    return oversample(train, root, cfg.data.repeat), val


def epoch_order(seed: int, epoch: int, size: int) -> Tensor:
    """The order in which epoch ``epoch`` visits the ``size`` training images: a permutation that
    depends on ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(size, generator=g)


def batch_indices(size: int, *, seed: int, step: int, rank: int, n: int, world: int) -> Tensor:
    """The data-set indices of rank ``rank``'s ``n`` images at ``step``: the global batch of
    ``n·world`` images is the next stretch of a shuffled pass over the data (a new shuffle every
    epoch), and each rank takes its own disjoint part of it — every image once per epoch, as
    StyleGAN2-ADA's sampler, not drawn with replacement."""
    start = (step * world + rank) * n
    positions = torch.arange(start, start + n)
    epochs = positions // size
    out = torch.empty(n, dtype=torch.long)
    for e in epochs.unique().tolist():  # one epoch, or two where the batch crosses a boundary
        here = epochs == e
        out[here] = epoch_order(seed, int(e), size)[positions[here] % size]
    return out


def draw_batch(data: Tensor, *, seed: int, step: int, rank: int, n: int, xflip: bool,
               device: torch.device, world: int = 1) -> Tensor:
    """``n`` training images in [0,1] for ``(step, rank)`` of a ``world``-process run
    (:func:`batch_indices`); indices and flips are a function of ``(seed, step, rank, world)``
    only, which is what makes resuming exact."""
    idx = batch_indices(len(data), seed=seed, step=step, rank=rank, n=n, world=world)
    g = torch.Generator().manual_seed(sample_seed(seed, step, rank))
    flip = torch.rand(n, generator=g) < 0.5 if xflip else torch.zeros(n, dtype=torch.bool)
    if data.device.type == "cuda":
        # From pinned memory (torch's caching host allocator): an asynchronous copy, so the host
        # does not wait for the previous step's kernels every step, as a pageable copy may.
        idx, flip = idx.pin_memory(), flip.pin_memory()
    x = data[idx.to(data.device, non_blocking=True)].to(device, non_blocking=True).float().div_(255)
    f = flip.to(device, non_blocking=True).view(n, 1, 1, 1)
    return torch.where(f, x.flip(-1), x)


# -- the two players ----------------------------------------------------------------------------
class GANModels(nn.Module):
    """G, D and the EMA of G — everything a checkpoint holds besides the optimizers."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        from .discriminator import StyleGAN2Discriminator
        from .stylegan2 import StyleGAN2Generator

        self.G = StyleGAN2Generator(cfg.resolution, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier,
                                    channel_max=cfg.channel_max, lr_mlp=cfg.lr_mlp, impl=cfg.impl,
                                    channels=cfg.channels)
        self.D: nn.Module
        if cfg.d_arch == "projected":
            from .projected_d import build_projected_discriminator

            self.D = build_projected_discriminator(cfg.resolution, None if cfg.allow_random_backbone else cfg.d_backbone,
                                                   allow_random=cfg.allow_random_backbone, head_width=cfg.d_head_width)
        else:
            d_channels = cfg.d_channels or ({r: c for r, c in self.G.channels.items()} if cfg.channels else None)
            self.D = StyleGAN2Discriminator(cfg.resolution, cfg.channel_multiplier, channel_max=cfg.channel_max,
                                            channels=d_channels, mbstd_group=cfg.mbstd_group, impl=cfg.impl)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)


def mixed_styles(G: StyleGAN2Generator, batch: int, style_mixing: float, device: torch.device) -> Tensor:
    """W+ for ``batch`` fresh latents, with StyleGAN2's style mixing (no host synchronisation)."""
    z = torch.randn(2, batch, G.z_dim, device=device)
    w = G.map(z.flatten(0, 1)).view(2, batch, -1)
    n = G.n_styles
    if style_mixing <= 0:
        return G.broadcast(w[0])
    cut = torch.randint(1, n, (), device=device)
    cut = torch.where(torch.rand((), device=device) < style_mixing, cut, torch.full_like(cut, n))
    first = (torch.arange(n, device=device) < cut).view(1, n, 1)
    return torch.where(first, w[0].unsqueeze(1), w[1].unsqueeze(1))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema ← beta·ema + (1 − beta)·model`` for parameters; buffers copied."""
    ep: list[Tensor] = list(ema.parameters())
    mp = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ep, mp, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def r1_penalty(d: Callable[[Tensor], Tensor], real: Tensor) -> tuple[Tensor, Tensor]:
    """R1, the mean squared gradient norm of ``d`` at ``real`` ([0,1] images), and ``d``'s logits.

    In StyleGAN2's units: the gradient with respect to the [-1, 1] image its discriminator takes
    (ours maps [0,1] to [-1,1] inside), a quarter of the squared norm with respect to [0,1] pixels —
    so that ``r1_gamma`` means what it means there (0.0002·res²/batch and its configs)."""
    x = real.detach().requires_grad_(True)
    out = d(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean() / 4, out


def ema_beta(cfg: GANConfig, nimg: int) -> float:
    """StyleGAN2-ADA's EMA decay for one step at ``nimg`` images seen."""
    if cfg.ema_kimg <= 0:
        return 0.0
    half_life = cfg.ema_kimg * 1000
    if cfg.ema_rampup is not None:
        half_life = min(half_life, max(nimg, 1) * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / max(half_life, 1e-8))


def _allreduce_grads(params: list[nn.Parameter], dist: DistInfo) -> None:
    """Average gradients over ranks (one flat all-reduce)."""
    if not dist.distributed:
        return
    import torch.distributed as tdist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


# -- the trainer --------------------------------------------------------------------------------
def uses_channels_last(device: torch.device, cfg: GANConfig) -> bool:
    """Whether D's weights and inputs are held channels-last: on CUDA with ``channels_last`` (cuDNN's
    bf16 convolutions want that layout); a CPU run keeps the usual one."""
    return device.type == "cuda" and cfg.channels_last


def nonfinite_players(players: dict[str, nn.Module]) -> list[str]:
    """The names of ``players`` whose parameters hold a NaN or an infinity (one host sync for all)."""
    names = [name for name, m in players.items() if any(True for _ in m.parameters())]
    if not names:
        return []
    flags = torch.stack([torch.stack([p.detach().isfinite().all() for p in players[name].parameters()]).all()
                         for name in names])
    return [name for name, ok in zip(names, flags.tolist()) if not ok]


def _exported_step(path: Path) -> int | None:
    """The training step an exported generator file records (None: no file, or none recorded)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        steps = json.loads(meta.get("config", "{}")).get("training", {}).get("steps")
    except Exception:  # missing, cut short, foreign (safetensors raises its own errors)
        return None
    return steps if isinstance(steps, int) else None

class GANTrainer:
    """Adversarial training of a StyleGAN2 generator (see the module docstring)."""

    name: ClassVar[str] = TRAINER_NAME
    Config: ClassVar[type[GANConfig]] = GANConfig

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> "GANTrainer":
        """A trainer on the faces under ``config.data.root`` (what ``restorekit train stylegan2`` calls)."""
        cfg = config if isinstance(config, GANConfig) else GANConfig.model_validate(config.model_dump())
        train, val = training_files(cfg)
        return cls(cfg, train, val, quiet=quiet)

    def __init__(self, config: GANConfig, train_files: list[Path], val_files: list[Path] | None = None, *,
                 quiet: bool = False, dist_info: DistInfo | None = None) -> None:
        cfg = self.config = config
        if cfg.out is None:
            raise TrainingError("no output folder: pass --out")
        self.out = Path(cfg.out)
        self.logs = LogFiles()  # log.jsonl and the snapshots' metrics.jsonl, each opened once (rank 0 writes)
        self.quiet = quiet
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        if cfg.batch_size % self.dist.world_size:
            raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by {self.dist.world_size} processes")
        self.local_batch = cfg.batch_size // self.dist.world_size
        self.val_files = list(val_files or [])
        self.train_files = list(train_files)
        #: Recorded in checkpoints: a resume on other data is told so, one that would train on the
        #: run's validation faces refused (:class:`~restorekit.training.Split`).
        self.split = Split.of(self.train_files, self.val_files, config.data.root) if config.data.root else None
        with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed only
            torch.manual_seed(cfg.seed)
            self.models = GANModels(cfg).to(self.device)
        self.channels_last = uses_channels_last(self.device, cfg)
        if self.channels_last:
            self.models.D.to(memory_format=torch.channels_last)
        self.G, self.D, self.G_ema = self.models.G, self.models.D, self.models.G_ema
        betas = cfg.betas or (0.0, 0.99)
        eps = cfg.eps or 1e-8
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas, eps=eps)
        # D's trainable parameters (a projected D also holds a frozen backbone that never trains).
        # R1 joins the main D step when due (no extra optimizer step): no lazy-interval scaling.
        self.d_params = [p for p in self.D.parameters() if p.requires_grad]
        self.opt_D = torch.optim.Adam(self.d_params, lr=cfg.lr_d or cfg.lr, betas=betas, eps=eps)
        self.use_amp = amp_enabled(cfg, self.device)
        # What the training steps call: the networks, or their compiled forms (same parameters).
        self._synthesize: Any = self.G.synthesize
        self._d: Any = self.D
        if cfg.compile:
            from torch._inductor import config as inductor_config

            # The noise inside synthesis drawn by torch's own generator, as in eager mode: the same
            # draws for the same seed (inductor's own random kernels would draw others).
            inductor_config.fallback_random = True
            self._synthesize, self._d = torch.compile(self.G.synthesize), torch.compile(self.D)
        if self.device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels; TF32 for fp32 parts
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.step = 0
        self.nimg = 0
        self.elapsed_before = 0.0
        self.data: Tensor | None = None
        self.last_logs: dict[str, float] = {}
        self.last_logs_step: int | None = None  # the step whose log line last_logs is
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        self.grid_z = torch.randn(cfg.n_sample_grid, self.G.z_dim, generator=g)

    # -- pieces ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _augment(self, x: Tensor) -> Tensor:
        if not self.config.augment:
            return x
        from .diffaugment import diff_augment

        return diff_augment(x, self.config.augment)

    def _d_input(self, x: Tensor) -> Tensor:
        x = self._augment(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def load_data(self) -> Tensor:
        if self.data is None:
            t0 = time.monotonic()
            data = load_face_tensor(self.train_files, self.config.resolution, self.config.load_workers,
                                    self.config.data.bad_images, warn=self.dist.is_main)
            self.data = data.to(self.device) if self.config.data_on_device else data.pin_memory() \
                if self.device.type == "cuda" else data
            left_out = len(self.train_files) - len(data)
            self._say(f"stylegan2: {len(data)} training images ({data.numel() / 2**20:.0f} MiB uint8) "
                      f"loaded in {time.monotonic() - t0:.1f} s" + (f"; {left_out} unreadable, left out" if left_out else ""))
        return self.data

    def _say(self, text: str) -> None:
        if self.dist.is_main and not self.quiet:
            print(text, flush=True)

    def train_step(self) -> dict[str, Tensor]:
        """One D step (with R1 when due) and one G step; detached losses (no host sync)."""
        cfg, dev, n = self.config, self.device, self.local_batch
        assert self.data is not None
        real = draw_batch(self.data, seed=cfg.seed, step=self.step, rank=self.dist.rank, n=n, xflip=cfg.xflip,
                          device=dev, world=self.dist.world_size)
        logs: dict[str, Tensor] = {}
        # -- discriminator ------------------------------------------------------------------
        for p in self.d_params:
            p.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = self._synthesize(mixed_styles(self.G, n, cfg.style_mixing, dev), noise_mode="random")
        with self._autocast():
            logits_fake = self._d(self._d_input(fake.float()))
            logits_real = self._d(self._d_input(real))
            loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.float().backward()
        logs.update(loss_d=loss_d.detach().float(), logit_real=logits_real.detach().float().mean(),
                    logit_fake=logits_fake.detach().float().mean(),
                    real_sign=logits_real.detach().float().sign().mean())
        if cfg.r1_gamma > 0 and self.step % cfg.r1_every == 0:
            r1, out = r1_penalty(lambda x: self.D(self._d_input(x)), real)  # fp32: a second-order quantity
            (r1 * (cfg.r1_gamma / 2 * cfg.r1_every) + out.mean() * 0).backward()
            logs["r1"] = r1.detach()
        _allreduce_grads(self.d_params, self.dist)
        self.opt_D.step()
        # -- generator -----------------------------------------------------------------------
        for p in self.d_params:
            p.requires_grad_(False)
        with self._autocast():
            fake = self._synthesize(mixed_styles(self.G, n, cfg.style_mixing, dev), noise_mode="random")
            loss_g = F.softplus(-self._d(self._d_input(fake.float()))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.float().backward()
        _allreduce_grads(list(self.G.parameters()), self.dist)
        self.opt_G.step()
        self.nimg += cfg.batch_size
        update_ema(self.G_ema, self.G, ema_beta(cfg, self.nimg))
        self.step += 1
        logs["loss_g"] = loss_g.detach().float()
        return logs

    # -- snapshots, checkpoints, export ----------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """``1×3×…`` grid: the fixed latents at truncation 1 (top rows) and 0.7 (bottom rows)."""
        from restorekit.training.trainer import image_grid

        g = self.G_ema
        z = self.grid_z.to(self.device)
        w = g.map(z)
        center = g.style(torch.randn(4096, g.z_dim, generator=torch.Generator().manual_seed(0)).to(self.device)).mean(0)
        rows = []
        for psi in (1.0, 0.7):
            ww = torch.lerp(center, w, psi)
            rows.append(g.synthesize(g.broadcast(ww)).float().clamp(0, 1).cpu())
        per_row = max(1, math.isqrt(len(z)))
        cols = [torch.cat([r[i::per_row] for r in rows]) for i in range(per_row)]
        return image_grid(cols, max_rows=2 * math.ceil(len(z) / per_row))

    def _export_generator(self, path: Path, *, dtype: torch.dtype = torch.float16, root: Path | None = None) -> Path:
        """The EMA generator as a StyleGAN2 safetensors file; its config's ``training.steps`` is
        this step (:func:`_exported_step`). ``root``: ``path`` lies below this run folder, whose
        subfolders are not written through when links (as :func:`atomic_save`'s ``root``)."""
        from .train import save_stylegan2_safetensors

        g = copy.deepcopy(self.G_ema).float().cpu()
        g.set_latent_avg(g.mean_latent(n=10_000, seed=0))
        training = {"trainer": TRAINER_NAME, "steps": self.step, "kimg": round(self.nimg / 1000, 3),
                    "batch_size": self.config.batch_size, "augment": self.config.augment,
                    "r1_gamma": self.config.r1_gamma, "seconds": round(self._elapsed(), 1),
                    "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"}
        return save_stylegan2_safetensors(g, path, license=self.config.license, name=self.config.model_name,
                                          training=training, dtype=dtype, root=root)

    def _save_weights(self, module: nn.Module, path: Path, meta: dict[str, str], *, root: Path | None = None) -> None:
        from restorekit.images import atomic_write_bytes
        from restorekit.weights.st_bytes import safetensors_bytes

        tensors = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in module.state_dict().items()}
        atomic_write_bytes(path, safetensors_bytes(tensors, meta), root=root)

    def snapshot(self) -> dict[str, Any]:
        """Write the snapshot files to ``OUT/snapshot`` (and ``snapshot_dir``); rank 0 only.
        ``OUT/snapshot`` is written through the folder opened from ``OUT`` without following a
        link: one swapped for a link is refused (``FileSystemError`` naming it), not written into.
        Networks whose weights are not finite are refused (:meth:`_refuse_diverged`): the last
        snapshot stays — on a GPU call, the generator that comes back."""
        if not self.dist.is_main:
            return {}
        from restorekit.images import atomic_write_bytes, save_image
        from restorekit.safe_open import read_plain

        t0 = time.monotonic()
        folder = self.out / SNAPSHOT_DIR
        self._refuse_diverged("snapshot", folder)
        # The losses are the last log line's (every log_every steps), named by its step.
        record = {"step": self.step, "kimg": round(self.nimg / 1000, 3), "seconds": round(self._elapsed(), 1),
                  "losses_at_step": self.last_logs_step, **self.last_logs}
        meta = {"format": "restorekit.stylegan2-train-weights/1", "step": str(self.step), "nimg": str(self.nimg),
                "config": json.dumps(self.config.saved_settings())}
        files = ("generator.safetensors", "samples.png", "resume_g.safetensors", "resume_d.safetensors")
        self._export_generator(folder / files[0], root=self.out)
        save_image(self.sample_grid(), folder / files[1], root=self.out)
        self._save_weights(self.G, folder / files[2], meta, root=self.out)
        self._save_weights(self.D, folder / files[3], meta, root=self.out)
        mirrors = [Path(self.config.snapshot_dir)] if self.config.snapshot_dir else []
        data: dict[str, bytes | None] = {}
        if mirrors:  # the mirror gets the same bytes, written once: read back from the folder opened
            snap = run_subfolder(self.out, SNAPSHOT_DIR, create=True)
            assert snap is not None
            with snap:
                for name in files:
                    try:
                        data[name] = read_plain(snap.at(name), dir_fd=snap.fd)
                    except OSError as exc:
                        raise fs_error(exc, folder / name, action="read") from None
        for target in [folder, *mirrors]:
            if target != folder:
                for name in files:
                    if (content := data.get(name)) is None:
                        raise TrainingError(f"{folder / name}: gone before it was copied to {target}")
                    atomic_write_bytes(target / name, content)
            self.logs.append(target / "metrics.jsonl", record, root=self.out if target == folder else None)
        self._say(f"stylegan2: snapshot at step {self.step} ({record['kimg']} kimg) in {time.monotonic() - t0:.1f} s")
        self.snapshot_step = self.step
        return record

    def init_weights(self, folder: str | Path) -> None:
        """Load G and D from a snapshot folder, and G's EMA from its ``generator.safetensors`` —
        or, when that file is left out (it costs a GPU call 8 MB of carry), as a copy of G."""
        from safetensors.torch import load_file

        from .train import load_generator
        from .widen import WidenError, widen_state_dict

        f = Path(folder)
        for name in ("resume_g.safetensors", "resume_d.safetensors"):
            if not (f / name).is_file():
                raise TrainingError(f"init_from {f}: no {name} (a `restorekit train stylegan2` snapshot folder)")
        def read(name: str) -> dict[str, Tensor]:
            try:
                return {k: v.float() for k, v in load_file(str(f / name)).items()}
            except Exception as exc:  # safetensors' own errors on a cut-short file
                raise TrainingError(f"init_from {f / name}: not a readable safetensors file "
                                    f"({exception_line(exc)})") from None

        g, d = read("resume_g.safetensors"), read("resume_d.safetensors")
        ema = load_generator(str(f / "generator.safetensors")).state_dict() \
            if (f / "generator.safetensors").is_file() else g
        try:
            if self.config.init_widen:
                g, d = widen_state_dict(g, self.G), widen_state_dict(d, self.D)
            self.G.load_state_dict(g)
            if self.config.init_widen:  # the EMA's new channels are G's: both start from the same network
                ema = widen_state_dict(ema, self.G)
            self.D.load_state_dict(d)
            self.G_ema.load_state_dict(ema)
        except (RuntimeError, WidenError) as exc:
            hint = "" if self.config.init_widen else " (init_widen = true grows a narrower run's channels)"
            raise TrainingError(f"init_from {f}: weights do not fit this config's networks{hint}: "
                                f"{str(exc).splitlines()[0]}") from None
        from safetensors import safe_open

        with safe_open(str(f / "resume_g.safetensors"), "pt") as sf:
            meta = sf.metadata() or {}
        # The count goes on, so that batches and the random draws seeded below continue where the
        # snapshot's run was, instead of replaying its first steps.
        self.nimg, self.step = int(meta.get("nimg", "0")), int(meta.get("step", "0"))

    def _refuse_diverged(self, what: str, where: Path) -> None:
        """Raise when G, D or the EMA holds a NaN or an infinity: the training diverged (the loss check
        runs every ``log_every`` steps only, while snapshots follow the wall clock and a time limit may
        end the run between two checks), and files written now would replace the last good ones."""
        bad = nonfinite_players({"G": self.G, "D": self.D, "EMA": self.G_ema})
        if bad:
            held = where.is_dir() and any(where.iterdir())
            raise TrainingDiverged(f"step {self.step}: the weights of {', '.join(bad)} are not finite (the training "
                                   f"diverged); no {what} written" + (f", what {where} holds is kept" if held else ""))

    def save_checkpoint(self) -> Path | None:
        self._refuse_diverged("checkpoint", self.out / CKPT_DIR)  # every rank, before the collective below
        rngs = all_gather_objects(self.dist, rng_state())
        if not self.dist.is_main:
            return None
        path = checkpoint_path(self.out, self.step)
        atomic_save({"format": CKPT_FORMAT, "trainer": self.name, "step": self.step, "nimg": self.nimg,
                     "model": self.models.state_dict(), "optimizer": self.opt_G.state_dict(),
                     "optimizer_d": self.opt_D.state_dict(), "rng": rngs, "world_size": self.dist.world_size,
                     "config": self.config.saved_settings(), "elapsed": self._elapsed(), "extra": {},
                     "split": self.split.record() if self.split is not None else None},
                    path, root=self.out)
        prune_checkpoints(self.out, self.config.keep_ckpts, protect=path)
        return path

    def resume(self, path: str | Path | None = None) -> int:
        p, ckpt = resume_checkpoint(self.out, path, self.name, warn=self.dist.is_main)
        changed = self.split.check_resume(ckpt.get("split"), int(ckpt["step"])) if self.split is not None else None
        with restoring(p, ckpt, self.config):
            self.models.load_state_dict(ckpt["model"])
            g_changes = load_optimizer_state(self.opt_G, ckpt["optimizer"])
            d_changes = load_optimizer_state(self.opt_D, ckpt["optimizer_d"])
        warn_changed_settings(p, ckpt, self.config, main=self.dist.is_main, world_size=self.dist.world_size)
        if not resume_warning(p, ckpt, self.config):  # unchanged settings: the trainer's own change, say it
            warn_optimizer_changes(p, "G's optimizer", g_changes, main=self.dist.is_main)
            warn_optimizer_changes(p, "D's optimizer", d_changes, main=self.dist.is_main)
        if changed and self.dist.is_main:
            print(changed, file=sys.stderr, flush=True)
        self.step, self.nimg = int(ckpt["step"]), int(ckpt["nimg"])
        self.elapsed_before = float(ckpt.get("elapsed", 0.0))
        rngs = ckpt["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:
            seed_everything(self.config.seed + 1000 * self.step + self.dist.rank)
        return self.step

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._start if hasattr(self, "_start") else 0.0)

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.logs.append(self.out / "log.jsonl", record)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, resume: bool | str | Path = False, time_limit: float | None = None,
            until: int | None = None) -> dict[str, Any]:
        """Train to ``config.steps`` G steps (or ``until``/``time_limit`` seconds, with a checkpoint);
        the run's log files are closed when it ends (however it ends)."""
        with self.logs:
            return self._fit(resume=resume, time_limit=time_limit, until=until)

    def _fit(self, *, resume: bool | str | Path = False, time_limit: float | None = None,
             until: int | None = None) -> dict[str, Any]:
        from restorekit.training import StopFlag

        cfg = self.config
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            check_run_folders(self.out, (CKPT_DIR, SNAPSHOT_DIR))  # a link there: refused before any write
        log = self.out / "log.jsonl"
        if resume:
            self.resume(None if resume is True else resume)
        self.logs.close()  # (a log replaced whole now is opened again by the next record)
        start_log(self.out, log, resumed_at=self.step if resume else None, main=self.dist.is_main)
        if resume and self.dist.is_main:  # the snapshot rows past the checkpoint are written again
            trim_log(self.out / SNAPSHOT_DIR / "metrics.jsonl", self.step, root=self.out)
            if cfg.snapshot_dir:  # (the mirror is the user's own choice of folder, taken as given)
                trim_log(Path(cfg.snapshot_dir) / "metrics.jsonl", self.step)
        if not resume:
            if cfg.init_from:
                self.init_weights(cfg.init_from)
            # From a snapshot (init_from) at step > 0: other latents, noise and augmentation than its run's.
            seed = cfg.seed if self.step == 0 else mix_seed(cfg.seed, self.step) % 2**63
            seed_everything(seed + self.dist.rank)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed + self.dist.rank)
        check_stop_steps(self.step, cfg.steps, until)
        self.load_data()
        barrier(self.dist)
        self.G.train()
        self.D.train()
        self._start = time.monotonic()
        last_snapshot = self._start
        window: dict[str, Tensor] = {}
        n_window, first, t_window = 0, self.step, self._start
        stopped, last_ckpt = False, None
        with StopFlag() as stop:
            while self.step < cfg.steps:
                logs = self.train_step()
                for k, v in logs.items():
                    window[k] = window[k] + v if k in window else v
                    if k == "r1":
                        window["_r1_n"] = window.get("_r1_n", torch.zeros((), device=v.device)) + 1
                n_window += 1
                now = time.monotonic()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    r1_n = window.pop("_r1_n", None)
                    avg = {k: float(v) / (float(r1_n) if k == "r1" and r1_n is not None else n_window)
                           for k, v in window.items()}
                    if not all(math.isfinite(v) for v in avg.values()):
                        raise TrainingDiverged(f"step {self.step}: a loss is not finite ({avg})")
                    avg = mean_across(self.dist, avg)
                    rate = n_window * cfg.batch_size / max(now - t_window, 1e-9)
                    window, n_window, t_window = {}, 0, now
                    self.last_logs, self.last_logs_step = avg, self.step
                    rec = {"kind": "train", "step": self.step, "kimg": round(self.nimg / 1000, 3), **avg,
                           "images_per_s": round(rate, 1), "s_per_kimg": round(1000 / max(rate, 1e-9), 2),
                           "time": round(self._elapsed(), 1)}
                    self._log(rec)
                    self._say("stylegan2: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in rec.items() if k != "kind"))
                elapsed = now - self._start
                at_limit = (time_limit is not None and elapsed >= time_limit) or (until is not None and self.step >= until)
                halt = mean_across(self.dist, {"halt": float(stop.set or at_limit)})["halt"] > 0
                if now - last_snapshot >= cfg.snapshot_minutes * 60:
                    self.snapshot()
                    last_snapshot = time.monotonic()
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or halt:
                    last_ckpt = self.save_checkpoint() or last_ckpt
                if halt:
                    stopped = True
                    break
        finished = self.step >= cfg.steps
        exported = None
        model_file = self.out / "generator.safetensors"
        # After training, or when a resumed run finds its model missing (an export that failed).
        if self.dist.is_main and (self.step > first or (self.step > 0 and not model_file.is_file())):
            if getattr(self, "snapshot_step", None) != self.step:
                self.snapshot()
            exported = self._export_generator(model_file, dtype=torch.float32)
        elif self.dist.is_main and finished and _exported_step(model_file) == self.step:
            exported = model_file  # a resume at the step a stopped run exported at: that file is the model
        signum = signal_across(self.dist, stop.signum)
        barrier(self.dist)
        return {"rank": self.dist.rank, "world_size": self.dist.world_size, "step": self.step, "steps": cfg.steps,
                "kimg": round(self.nimg / 1000, 3), "finished": finished, "stopped_early": stopped,
                "signal": signum,
                "out": str(self.out), "checkpoint": str(last_ckpt) if last_ckpt else None,
                "exported": str(exported) if exported else None, "losses": self.last_logs,
                "seconds": round(time.monotonic() - self._start, 3)}


def load_trainer() -> type[GANTrainer]:
    """The loader ``restorekit.commands.train.add_trainer`` calls when the command runs."""
    return GANTrainer


__all__ = ["GANConfig", "GANModels", "GANTrainer", "batch_indices", "draw_batch", "ema_beta", "epoch_order",
           "load_face_tensor", "mixed_styles", "nonfinite_players", "r1_penalty", "training_files", "update_ema",
           "uses_channels_last"]
