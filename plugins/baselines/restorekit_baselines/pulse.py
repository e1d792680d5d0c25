"""PULSE (Menon et al., CVPR 2020): self-supervised upsampling by latent-space search.

For each low-resolution input, PULSE looks for a generator image whose antialiased bicubic
downscale matches the input (downscale MSE below ``eps``), searching the generator's
gaussianised W+ (or Z) on spheres with GEOCROSS regularisation; see
:mod:`restorekit_baselines.spherical` for the optimiser. Any generator registered under the
``generators`` kind serves (``generator`` option); only :class:`restorekit.interfaces.Generator`
is used. Different seeds and samples give different faces that all downscale to the input.

The generator makes ``R×R`` faces; restorekit's ``--scale K`` means ``K×`` the input, so the
result is resized (antialiased bicubic) to ``K·h × K·w`` when that differs from ``R×R``, with a
one-time note (``keep_native_size=true`` keeps ``R×R`` and breaks that contract on purpose).

Each report's ``eps_reached`` and ``downscale_mse_searched`` are about the searched face as
returned (clamped to [0,1], at the output size: :func:`~restorekit_baselines.spherical.output_image`),
not the generator's raw image, whose pixels may lie past [0,1]; ``downscale_mse`` is the returned
output's after ``consistency_steps`` (equal to ``downscale_mse_searched`` when that is 0). Both are
:func:`restorekit.consistency.downscale_error`, on the float output before it is written in 8 bits.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from torch import Tensor

from restorekit import progress
from restorekit.consistency import back_project, downscale_error
from restorekit.errors import RestorekitError
from restorekit.interfaces import Generator, Method, MethodInfo, Options, OptionsModel
from restorekit.memory import keep_freed_memory_for
from restorekit.options import Float32, WeightsRef
from restorekit.seeds import mix_seed

from .spherical import (
    GaussianFit, OptimiseConfig, OptimiseResult, fit_gaussian, optimise_latents, output_image,
)


#: What PULSE searches by default: the ``stylegan2`` generator's own default, the 128-px face prior
#: shipped in restorekit-psp-sr (pSp's FFHQ StyleGAN2: ``--weights stylegan2-ffhq-config-f``; PULSE itself
#: searched StyleGAN v1's FFHQ 1024-px synthesis network).
DEFAULT_STYLEGAN2_WEIGHTS = "stylegan2-faces128"


class PulseOptions(Options):
    result_neutral: ClassVar[frozenset[str]] = frozenset({"keep_memory", "quiet"})

    generator: str = Field("stylegan2", description="registered generator (`restorekit plugins` lists them)")
    generator_weights: WeightsRef = Field(
        None, validation_alias=AliasChoices("generator_weights", "weights"),
        description="weights name or file for the generator (`run pulse --weights` sets it; default: the "
                    "factory's own default — for stylegan2 the shipped stylegan2-faces128, else an error naming "
                    "the fix)")
    allow_unsafe: bool = Field(False, description="let the generator unpickle a weights file holding Python objects "
                                                  "beyond tensors (rosinality training checkpoints): only for a "
                                                  "file you trust")
    random_generator: bool = Field(False, description="tests only: an untrained generator (the factory's "
                                                      "random_weights=true where it has that option)")
    keep_memory: bool = Field(True, description="CPU, generators of 256 px and more: keep freed memory in the "
                                                "process for the next step instead of returning it to the kernel "
                                                "(glibc; process-wide; restorekit.memory)")

    @field_validator("generator_options", mode="before")
    @classmethod
    def _parse_options(cls, v: Any) -> Any:
        """Accept a JSON object string, as ``--opt generator_options='{"resolution": 256}'`` gives."""
        if isinstance(v, str):
            try:
                return json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object, e.g. '{{\"resolution\": 256}}' ({exc.msg})") from None
        return v

    @field_validator("generator_options", mode="after")
    @classmethod
    def _typed_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Read the options by the generator's own options model (``"false"`` is False, not a truthy string)."""
        # Each of these has pulse's own option, which the run records (its weights pin, "untrained"):
        # given inside generator_options it reached the generator while the record named the default.
        if "allow_unsafe" in v:
            raise ValueError("set allow_unsafe as pulse's own option (it reaches the generator), "
                             "not inside generator_options")
        if "random_weights" in v:
            raise ValueError("set random_generator=true as pulse's own option (it reaches the generator as "
                             "random_weights), not random_weights inside generator_options")
        generator = info.data.get("generator")
        if not v or not isinstance(generator, str):
            return v
        from restorekit.options import validate, weights_option
        from restorekit.plugins import registry

        try:
            model = registry().get("generators", generator).options_model()
            opts = validate(model, v, label=f"generator '{generator}'")
        except RestorekitError as exc:
            raise ValueError(str(exc)) from None
        key = weights_option(model)  # checked once read, so that an alias of the weights option is caught too
        if key is not None and key in opts.model_fields_set:
            raise ValueError(f"set the generator's weights with pulse's own generator_weights (run --weights), "
                             f"not {key!r} inside generator_options")
        return {k: getattr(opts, k) for k in opts.model_fields_set}
    generator_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the generator factory (checked by its options model)")
    latent: Literal["w+", "z"] = Field("w+", description="search space: gaussianised W+ (PULSE) or Z")
    tile_latent: bool = Field(False, description="one latent for all layers (no GEOCROSS)")
    steps: int = Field(100, ge=1, le=100_000, description="optimisation steps per try")
    eps: float = Field(2e-3, ge=0, description="stop when the downscale MSE (in [0,1] units) is below this")
    tries: int = Field(1, ge=1, le=100, description="restarts with new seeds for samples that miss eps")
    learning_rate: Float32 = Field(0.4, gt=0, description="peak Adam learning rate")
    schedule: Literal["fixed", "linear1cycle", "linear1cycledrop"] = Field(
        "linear1cycledrop", description="learning-rate schedule over `steps` (PULSE's)")
    l2_weight: Float32 = Field(100.0, ge=0, description="weight of the downscale MSE")
    l1_weight: Float32 = Field(0.0, ge=0, description="weight of the downscale mean absolute error")
    geocross_weight: Float32 = Field(0.05, ge=0, description="weight of GEOCROSS between layer latents")
    noise: Literal["trainable", "fixed", "const", "zero"] = Field(
        "trainable", description="noise inputs: optimised (lowest layers) on spheres, random fixed, "
                                 "the generator's constant buffers, or zero")
    trainable_noise_layers: int = Field(5, ge=0, description="how many of the lowest noise layers to optimise")
    # PULSE also zeroes the last noise map (bad_noise_layers=17); that is not done here, and measured on
    # ten faces it changes nothing (dlib distance 0.7723 either way, LR-MSE 0.0027 vs 0.0026).
    gaussian_fit_samples: int = Field(100_000, ge=2, le=10_000_000,
                                      description="mapped samples for the W gaussianisation (PULSE: 10⁶)")
    mapping_slope: float = Field(0.2, gt=0, lt=1, description="slope of the mapping's final leaky ReLU")
    keep_native_size: bool = Field(False, description="return the generator's R×R output instead of scale×input")
    consistency_steps: int = Field(0, ge=0, le=100,
                                   description="back-projection steps that make the output downscale to the input "
                                               "(restorekit.consistency); 0: the searched face as is, as in the paper")
    quiet: bool = Field(False, description="no progress bar or notes")


def _build_generator(name: str, weights: str | None, extra: dict[str, Any], device: torch.device,
                     allow_unsafe: bool = False, random_weights: bool = False) -> Generator:
    """Build a registered generator by name through its options model, passing ``weights``,
    ``allow_unsafe`` (only when consented), ``random_weights`` (only when asked for, to a factory
    that has it: one whose default is trained weights) and ``device`` when it takes them."""
    from restorekit.options import weights_option
    from restorekit.plugins import registry

    factory = registry().get("generators", name)
    model = factory.options_model()
    values = dict(extra)
    if weights is not None:
        key = weights_option(model)
        if key is None:
            raise RestorekitError(f"pulse: generator '{name}' takes no weights option (generator_weights={weights!r})")
        values[key] = weights
    if random_weights and "random_weights" in model.model_fields:
        values["random_weights"] = True
    if allow_unsafe:
        if "allow_unsafe" not in model.model_fields:
            raise RestorekitError(f"pulse: generator '{name}' has no allow_unsafe option")
        values["allow_unsafe"] = True
    device_arg = {"device": device} if "device" in model.model_fields and "device" not in values else {}
    try:
        gen = factory.create(values, label=f"pulse: generator '{name}'", **device_arg)
    except (TypeError, ValueError) as exc:  # the factory's check of its arguments (a config unlike its weights)
        said = " ".join(str(exc).split())
        raise RestorekitError(f"pulse: generator '{name}' rejected its options {sorted(values)}: {said} "
                              "(change --opt generator_options, or pick generator_weights that match them)") from None
    if not isinstance(gen, Generator):
        raise RestorekitError(f"pulse: generator '{name}' built a {type(gen).__name__}, "
                              "not a restorekit.interfaces.Generator")
    return gen.to(device).eval()


def _sample_rngs(seed: int, attempt: int, samples: list[int]) -> list[torch.Generator]:
    """One generator per sample of one try, seeded from ``(seed, attempt, sample index)``: a sample's
    start and noise do not depend on the image's position in the batch, on ``n_samples``, or on
    which other samples a try repeats."""
    return [torch.Generator().manual_seed(mix_seed(seed, attempt, k)) for k in samples]


#: The smallest aligned crop :meth:`Pulse.face_input_size` asks for (smaller: the pipeline's default).
MIN_FACE_CROP = 8

#: Seed of torch's CPU generator while the generator is built (inside a fork of it): the layers of
#: an untrained generator (``random_generator=true``) are the same in every process.
RANDOM_GENERATOR_SEED = 0


class Pulse(Method):
    """PULSE face super-resolution by spherical latent search in a pretrained generator."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="pulse",
        summary="PULSE: search a face generator's latent space for images that downscale to the input",
        license="Apache-2.0",
        paper="Menon et al., PULSE: Self-Supervised Photo Upsampling via Latent Space Exploration "
              "of Generative Models, CVPR 2020, https://arxiv.org/abs/2003.03808",
        deterministic=False,
        # The default generator's default (shipped, not pulled); another `generator` brings its own.
        default_weights=DEFAULT_STYLEGAN2_WEIGHTS,
        input_kind="aligned_face",
    )
    Options = PulseOptions
    options: PulseOptions

    def __init__(self, options: OptionsModel | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(options, device)
        self.generator: Generator | None = None
        self.fit: GaussianFit | None = None
        self.notes: list[str] = []
        self._noted: set[tuple[int, int, int]] = set()
        #: W+ of the last restore()'s outputs (image-major rows, ``generator.synthesize`` input).
        self.last_w_plus: Tensor | None = None

    def load(self) -> None:
        if self.generator is not None:
            return
        o = self.options
        weights = o.generator_weights
        if o.random_generator and weights is not None:
            raise RestorekitError("pulse: random_generator=true and generator_weights exclude each other")
        # No weights: the factory's default (stylegan2: the shipped prior, announced in its notes).
        # Building the generator initialises its layers from torch's global RNG (before any weights
        # replace them): fork it (CPU), so a caller's torch.manual_seed(…) sequence is not moved by a load.
        # Inside the fork the CPU generator is seeded, so an untrained generator (random_generator=true)
        # is the same in every process: its results are as reproducible as a trained one's.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(RANDOM_GENERATOR_SEED)
            gen = _build_generator(o.generator, weights, o.generator_options, self.device, o.allow_unsafe,
                                   random_weights=o.random_generator)
        if o.latent == "w+":
            self.fit = fit_gaussian(gen, o.gaussian_fit_samples, slope=o.mapping_slope)
        self.generator = gen
        self.notes = [n if n.startswith("pulse:") else f"pulse: {n}" for n in getattr(gen, "notes", [])]
        self.notes += [f"pulse: '{o.generator}' makes {gen.resolution}×{gen.resolution} faces; outputs are "
                      "resized to scale×input (antialiased bicubic) unless keep_native_size=true (from Python)"]

    def config(self) -> OptimiseConfig:
        """The optimiser settings these options stand for."""
        o = self.options
        return OptimiseConfig(
            steps=o.steps, learning_rate=o.learning_rate, schedule=o.schedule, eps=o.eps,
            l2_weight=o.l2_weight, l1_weight=o.l1_weight, geocross_weight=o.geocross_weight,
            latent=o.latent, tile_latent=o.tile_latent, noise=o.noise,
            trainable_noise_layers=o.trainable_noise_layers)

    def face_input_size(self, scale: int) -> int | None:
        """Aligned-crop size for photos (``--faces detect``): the generator's resolution ÷ ``scale``
        where it divides, so that the search is held to the crop at the generator's own size (a
        128-px prior at ×8 reads 16-px crops, not 32-px ones searched at ×4 and upscaled after);
        otherwise the pipeline's default."""
        self.load()
        assert self.generator is not None
        res = int(self.generator.resolution)
        return res // scale if res % scale == 0 and res // scale >= MIN_FACE_CROP else None

    def _note_resize(self, res: int, h: int, w: int) -> None:
        """Once per output size, unless ``quiet`` (``run -q`` and ``compare -q`` set it): sizes are width×height, as
        restorekit writes them everywhere. ``run`` has said the rule once already (:attr:`notes`)."""
        key = (res, h, w)
        if key in self._noted:
            return
        self._noted.add(key)
        if not self.options.quiet:
            print(f"pulse: resizing the generator's {res}×{res} output to {w}×{h} (scale×input, "
                  "antialiased bicubic); keep_native_size=true (from Python) keeps it", file=sys.stderr)

    def _progress(self, label: str):  # type: ignore[no-untyped-def]
        """A rich progress bar on stderr showing the current downscale MSE, or None."""
        if self.options.quiet or not sys.stderr.isatty() or not progress.draws_bars():
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("mse {task.fields[mse]}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True), label

    def _optimise(self, target: Tensor, seed: int, label: str,
                  out_size: tuple[int, int]) -> tuple[OptimiseResult, list[int], list[int], float]:
        """Optimise every row of ``target``; rows that miss eps restart with new seeds. Iterates are
        scored at ``out_size``, the size :meth:`restore` returns them at."""
        assert self.generator is not None
        cfg = self.config()
        n = target.shape[0]
        tries = [1] * n
        total_steps = [0] * n
        t0 = time.perf_counter()
        best: OptimiseResult | None = None
        todo = list(range(n))
        for attempt in range(self.options.tries):
            rows = torch.tensor(todo, device=target.device)
            rng = _sample_rngs(seed, attempt, todo)
            stage = f"{label} try {attempt + 1}"
            bar = self._progress(stage)

            def step_done(step: int, mse: Tensor, _stage: str = stage) -> None:
                # restorekit.progress: a caller that follows this restore hears each step (and may
                # cancel it here, between two steps).
                progress.report(_stage, step, cfg.steps)

            if bar is None:
                res = optimise_latents(self.generator, target[rows], config=cfg, fit=self.fit, rng=rng,
                                       progress=step_done, out_size=out_size)
            else:
                prog, desc = bar
                with prog:
                    task = prog.add_task(desc, total=cfg.steps, mse="…")

                    def report(step: int, mse: Tensor, _p=prog, _t=task) -> None:
                        _p.update(_t, completed=step, mse=f"{float(mse.max()):.2e}")
                        step_done(step, mse)

                    res = optimise_latents(self.generator, target[rows], config=cfg, fit=self.fit, rng=rng,
                                           progress=report, out_size=out_size)
            for j, i in enumerate(todo):
                tries[i] = attempt + 1
                total_steps[i] += res.steps[j]
            if best is None:
                best = res
            else:
                for j, i in enumerate(todo):
                    if float(res.mse[j]) < float(best.mse[i]):
                        best.images[i] = res.images[j]
                        best.w_plus[i] = res.w_plus[j]
                        best.mse[i] = res.mse[j]
                        best.loss[i] = res.loss[j]
                        best.steps[i] = res.steps[j]
                    best.reached[i] = best.reached[i] or res.reached[j]
            todo = [i for i in todo if not best.reached[i]]
            if not todo:
                break
        assert best is not None
        return best, tries, total_steps, time.perf_counter() - t0

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        """Search a face for every input and sample; see the module docstring.

        ``seed=None`` means seed 0, so runs are reproducible unless a seed is asked for.
        """
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        scale, n_samples = int(scale), int(n_samples)
        if not self.options.keep_native_size:
            self.check_output_memory(lr, scale, n_samples)
        self.load()
        assert self.generator is not None
        seed = 0 if seed is None else int(seed)
        n, h, w = lr.shape[0], lr.shape[-2], lr.shape[-1]
        out_h, out_w = h * scale, w * scale
        res = self.generator.resolution
        out_size = (res, res) if self.options.keep_native_size else (out_h, out_w)
        if self.options.keep_memory:
            # Each step frees and allocates the generator's activations and gradients again: without
            # this every step faults them in afresh (1024 px: 4.9 → 2.6 s per step here).
            keep_freed_memory_for(self.device, res)
        outs: list[Tensor] = []
        latents: list[Tensor] = []
        reports: list[dict[str, Any]] = []
        # The search needs gradients even when the caller runs under inference_mode / no_grad.
        with torch.inference_mode(False), torch.enable_grad():
            if self.fit is not None:
                self.fit = GaussianFit(self.fit.mean.clone(), self.fit.std.clone(), self.fit.slope)
            for i in range(n):
                target = lr[i:i + 1].detach().clone().to(self.device).float().expand(n_samples, -1, -1, -1)
                result, tries, total_steps, secs = self._optimise(target.contiguous(), seed, f"pulse {i + 1}/{n}",
                                                                  out_size)
                if out_size != (res, res):
                    self._note_resize(res, out_h, out_w)
                images = output_image(result.images, out_size)  # the image the search scored
                images = back_project(images.detach(), target, steps=self.options.consistency_steps)
                outs.append(images.detach())
                latents.append(result.w_plus.detach())
                returned = downscale_error(images.detach(), target)  # the output's, after any projection
                for k in range(n_samples):
                    reports.append({
                        "image": i, "sample": k, "seed": seed, "tries": tries[k],
                        "steps": result.steps[k], "total_steps": total_steps[k],
                        "eps_reached": bool(result.reached[k]), "eps": self.options.eps,
                        "downscale_mse": float(returned[k]), "downscale_mse_searched": float(result.mse[k]),
                        "final_loss": float(result.loss[k]),
                        "seconds": secs / n_samples, "generator": self.options.generator,
                        "generator_resolution": res,
                    })
        self.last_reports = reports
        self.last_w_plus = torch.cat(latents)
        return torch.cat(outs).float()
