"""``psp_pulse``: pSp's speed and identity with PULSE's faithfulness to the input.

pSp (``psp_sr``) encodes a face into W+ in one pass, but its output need not downscale to the
input; PULSE searches W+ until it does, but from a random start, so it needs many steps and
lands on an arbitrary face among those that fit. ``psp_pulse`` starts PULSE's search at the pSp
encoder's estimate and keeps it nearby:

1. Encode the LR face with the psp_sr model (same ``weights`` option, default embedded model,
   input resize rule and ``--scale`` convention as ``psp_sr``: this class subclasses
   :class:`~restorekit_psp_sr.method.PSPSR`) → ``w_pSp``.
2. With Adam, for at most ``steps`` updates, minimise per sample

   ``downscale_mse(out, LR) + anchor_lambda · mean(((w − w_start) / σ_W)²)
   + lpips_lambda · LPIPS_alex(downscale(out), LR) + geocross_lambda · GEOCROSS(whitened w)``

   where ``out`` is the output as returned (the generator image resized to ``scale × input``
   unless ``keep_native_size``), the downscale is restorekit's antialiased bicubic (the
   ``bicubic:K`` degradation's, differentiable; :func:`restorekit.optim.latent.downscale_mse`,
   shared with PULSE), ``σ_W`` the per-dimension standard deviation of the generator's W (so
   ``anchor_lambda`` and ``learning_rate`` do not depend on the generator's W scale: the
   search variable is the offset ``δ = (w − w_start)/σ_W``, starting at 0). The gradients are
   this objective's, on the unclamped image; the stop and the choice of iterate score the face as
   it is returned instead (clamped to [0,1], resized to the output size, clamped again:
   :func:`as_returned`), since a generator draws pixels past [0,1] whose clamp raises the downscale
   MSE. A sample stops when that downscale MSE is below ``eps`` (PULSE's 2e-3) and keeps that
   iterate; otherwise the iterate with the lowest objective, its data term so measured, is kept
   (never worse than the start in it, so the downscale MSE of the kept face is at most pSp's when
   LPIPS and GEOCROSS are off).
   ``optimise_noise`` also optimises the lowest ``noise_layers`` noise maps, starting from the
   generator's constant buffers and kept on their spheres as in PULSE.
3. The kept face, resized to the output size, is projected onto the input in ``consistency_steps``
   back-projection steps (:func:`restorekit.consistency.back_project`, default 3; 0 returns the
   searched face): the search can only reach faces the generator draws, and on a prior that
   lacks a person's hair colour, lighting or background the remaining difference is in exactly
   the low frequencies the input holds. The report's ``downscale_mse`` is the returned output's;
   ``downscale_mse_searched`` (and ``downscale_mse_psp``, the start's) the searched face's as it
   would be returned without the projection, the one ``eps_reached`` is about, as PULSE's report
   (equal to ``downscale_mse`` with ``consistency_steps=0``). At ×1 the downscale is the
   identity: the search fits a face of the prior to the input itself, and back-projection leaves
   the output as drawn (``consistency_steps`` has no effect; a note says so).
4. ``n_samples > 1``: before the search, each sample's fine styles are mixed with the W of a
   random ``z`` drawn from ``seed`` (psp_sr's style mixing: ``mix_layers``, ``mix_alpha``), and
   each is anchored to its own mixed start, so the samples stay distinct faces that all fit.

Why plain Adam on W+ and not PULSE's spheres: PULSE's latents are Gaussian samples, which
concentrate on the sphere of radius √D, so the sphere is where realistic faces are. pSp's codes
are encoder outputs whose (whitened) norms vary per layer and carry the face: projecting them
onto that sphere would change the face before the first step, and pinning each layer to its
start radius would forbid moves the anchor term already prices. The anchor plays the sphere's
role (it keeps the search among realistic faces, here the encoder's). GEOCROSS is off by default
for a related reason: pSp's W+ layers differ by design and GEOCROSS would pull them together;
``geocross_lambda = 5e-4`` matches PULSE's weighting (0.05 against a data weight of 100).

LPIPS compares the downscaled output with the LR input and needs LR sides ≥ 31 px (AlexNet's
receptive field); smaller inputs skip it with a one-time note. Its weights (``lpips-alex``) are
loaded only when ``lpips_lambda > 0``.

Randomness: only ``n_samples > 1`` draws (the mixing ``z``), from ``seed`` (``None`` means 0),
the same draws for every image of a batch, so results do not depend on batch composition.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from restorekit import progress
from restorekit.degradations import bicubic_resize
from restorekit.interfaces import MethodInfo, OptionsModel
from restorekit.optim.latent import (
    GaussianFit, LatentAdam, Schedule, downscale_mse, fit_gaussian, geocross, lr_factor, project_to_sphere,
    sphere_radius,
)
from restorekit.options import Float32

from .method import DEFAULT_MODEL_NAME, PSPSR, PSPSROptions
from .psp import default_latent_mask, mix_styles

#: LPIPS(alex) needs images of at least this many pixels a side.
LPIPS_MIN_SIDE = 31


class PSPPulseOptions(PSPSROptions):
    """Options of ``psp_pulse`` (``psp_sr``'s, plus the search)."""

    # 50 steps at a peak rate of 0.1 on PULSE's one-cycle schedule: on the adversarial 128-px prior
    # (358 kimg; ×8, 47 validation faces, recipes/prior128/README.md) the best of eleven settings within
    # half of PULSE's time — LR-consistency 1.3× PULSE's at 40% of its time, against 1.9× for 30 fixed
    # steps at 0.05; the schedule's warm-up spares the overshoot of a fixed 0.1 (Adam's first steps move
    # every coordinate by the full rate).
    steps: int = Field(50, ge=0, le=100_000, description="at most this many Adam updates per image (0: pSp only)")
    eps: float = Field(2e-3, ge=0, description="stop a sample when its downscale MSE ([0,1] units) is below this")
    learning_rate: Float32 = Field(0.1, gt=0, description="peak Adam learning rate, in units of W's per-dimension "
                                                        "std")
    schedule: Schedule = Field("linear1cycledrop",
                               description="learning-rate schedule over `steps` (PULSE's schedules)")
    anchor_lambda: Float32 = Field(0.05, ge=0, description="weight of mean(((w − w_pSp)/σ_W)²), keeping the face "
                                                         "near the encoder's estimate")
    lpips_lambda: Float32 = Field(0.0, ge=0, description="weight of LPIPS(alex) between the downscaled output and "
                                                       "the input (needs lpips-alex weights and inputs ≥ 31 px)")
    geocross_lambda: Float32 = Field(0.0, ge=0, description="weight of GEOCROSS on the gaussianised W+ "
                                                          "(PULSE's weighting: 5e-4)")
    gaussian_fit_samples: int = Field(20_000, ge=2, le=1_000_000,  # drawn in one piece: z_dim floats a sample
                                      description="mapped samples for σ_W and the W gaussianisation")
    optimise_noise: bool = Field(False, description="also optimise the lowest noise maps (on their spheres)")
    noise_layers: int = Field(5, ge=0, description="how many of the lowest noise maps optimise_noise optimises")
    # On the 47 faces of the bars, 3 steps lower the mean dlib distance from 0.627 to 0.574 and LPIPS-alex
    # from 0.235 to 0.193 (recipes/prior128/README.md); the search alone cannot reach what the prior cannot draw.
    consistency_steps: int | None = Field(
        3, ge=0, le=100, description="back-projection steps after the search that make the output downscale to "
                                     "the input (restorekit.consistency); 0: the searched face as is; None: as "
                                     "many as the model was trained with")


@dataclass
class SearchResult:
    """Per-row outcome of :func:`search_w_plus`."""

    w_plus: Tensor  # N×L×D: the kept iterate
    noise: list[Tensor] | None  # its noise maps (None: the generator's constant buffers)
    images: Tensor  # N×3×R×R generator images of the kept iterate (unclamped)
    mse: Tensor  # N: downscale MSE of the kept iterate as returned (as_returned: clamped, at out_size)
    start_mse: Tensor  # N: that of the start
    objective: Tensor  # N: objective of the kept iterate, its data term ``mse``
    steps: list[int]  # Adam updates applied before the sample stopped (or all of them)
    reached: list[bool]  # eps reached
    history: list[list[float]]  # per evaluation: the N downscale MSEs (as ``mse``)


def as_returned(images: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Generator ``images`` as :meth:`PSPPulse.restore` returns them before any projection: clamped
    to [0,1], resized (antialiased bicubic) to ``out_size`` and clamped again (the resize rings)."""
    return bicubic_resize(images.clamp(0, 1), out_size).clamp(0, 1)


def search_w_plus(decoder: Any, lr: Tensor, start: Tensor, w_std: Tensor, *, out_size: tuple[int, int],
                  steps: int, eps: float, learning_rate: float, schedule: Schedule = "fixed",
                  anchor_lambda: float = 0.0, lpips: Any = None, lpips_lambda: float = 0.0,
                  fit: GaussianFit | None = None, geocross_lambda: float = 0.0,
                  optimise_noise: bool = False, noise_layers: int = 5) -> SearchResult:
    """Optimise W+ from ``start`` (``N×L×D``) so that each row's output downscales to ``lr``.

    ``lr``: ``N×3×h×w`` (or ``1×3×h×w`` for all rows) in [0,1]. The output is the generator
    image resized (antialiased bicubic) to ``out_size``; see the module docstring for the
    objective. ``lpips`` is a callable ``(a, b) -> N`` distances (e.g. LPIPSDistance) or None;
    ``fit`` is needed when ``geocross_lambda > 0``. The decoder's parameters get no gradients.
    Stopping at ``eps`` and the kept iterate go by the output as returned (:func:`as_returned`).
    """
    if geocross_lambda > 0 and fit is None:
        raise ValueError("search_w_plus: geocross_lambda > 0 needs a GaussianFit")
    n = start.shape[0]
    target = lr.detach().float()
    start = start.detach().float()
    sigma = w_std.detach().float().reshape(1, 1, -1)
    delta = torch.zeros_like(start, requires_grad=True)
    noise: list[Tensor] | None = None
    trainable: list[Tensor] = []
    if optimise_noise:
        noise = []
        for i, buf in enumerate(decoder.noise_buffers()):
            t = buf.detach().expand(n, *buf.shape[1:]).clone()
            if i < noise_layers:
                t.requires_grad_(True)
                trainable.append(t)
            noise.append(t)
    radii = [sphere_radius(t.detach()) for t in trainable]
    params = [delta, *trainable]
    # torch.optim.Adam's update without torch.optim.Optimizer, whose first use imports torch._dynamo (seconds).
    opt = LatentAdam(params, lr=learning_rate)

    def evaluate() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """W+, image, the returned face's downscale MSE and objective (to keep by), and the
        objective to step on (its data term on the unclamped image, which passes every gradient)."""
        w = start + delta * sigma
        img = decoder.synthesize(w, noise=noise) if noise is not None else decoder.synthesize(w)
        out = bicubic_resize(img, out_size)
        mse = downscale_mse(out, target)
        rest = anchor_lambda * delta.pow(2).mean((1, 2))
        if lpips is not None and lpips_lambda > 0:
            small = bicubic_resize(out, (target.shape[-2], target.shape[-1]))
            rest = rest + lpips_lambda * lpips(small, target.expand_as(small))
        if geocross_lambda > 0:
            assert fit is not None
            rest = rest + geocross_lambda * geocross(fit.from_w(w))
        with torch.no_grad():
            score = downscale_mse(as_returned(img, out_size), target)
        return w, img, score, score + rest.detach(), mse + rest

    requires = [p.requires_grad for p in decoder.parameters()]
    for p in decoder.parameters():
        p.requires_grad_(False)
    reached = [False] * n
    taken = [steps] * n
    history: list[list[float]] = []
    done = torch.zeros(n, dtype=torch.bool, device=start.device)
    try:
        w, img, mse, obj, loss = evaluate()
        best_w, best_img = w.detach().clone(), img.detach().clone()
        best_mse, best_obj = mse.detach().clone(), obj.detach().clone()
        best_noise = [t.detach().clone() for t in noise] if noise is not None else None
        start_mse = mse.detach().clone()
        for step in range(steps + 1):
            with torch.no_grad():
                history.append(mse.detach().cpu().tolist())
                # Rows already done keep the iterate at which they reached eps.
                better = (obj.detach() < best_obj) & ~done
                hit = (mse.detach() < eps) & ~done
                keep = better | hit
                best_w[keep] = w.detach()[keep]
                best_img[keep] = img.detach()[keep]
                best_mse = torch.where(keep, mse.detach(), best_mse)
                best_obj = torch.where(keep, obj.detach(), best_obj)
                if best_noise is not None and noise is not None:
                    for b, t in zip(best_noise, noise):
                        b[keep] = t.detach()[keep]
                for i in hit.nonzero().flatten().tolist():
                    reached[i] = True
                    taken[i] = step
                done |= hit
            if step == steps or bool(done.all()):
                break
            progress.report("psp_pulse", step, steps)  # a caller following the restore may cancel here
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.lr = learning_rate * lr_factor(schedule, step, max(steps, 1))  # as LambdaLR would set it
            opt.step()
            with torch.no_grad():
                for t, r in zip(trainable, radii):
                    t.copy_(project_to_sphere(t, r))
            # Rows that reached eps may keep moving (rows are independent: the objective is a sum
            # of per-row terms and Adam acts per element), but their kept iterate is frozen.
            w, img, mse, obj, loss = evaluate()
    finally:
        for p, r in zip(decoder.parameters(), requires):
            p.requires_grad_(r)
    return SearchResult(w_plus=best_w, noise=best_noise, images=best_img, mse=best_mse, start_mse=start_mse,
                        objective=best_obj, steps=taken, reached=reached, history=history)


class PSPPulse(PSPSR):
    """pSp's W+ estimate, refined for a few steps until its output downscales to the input."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="psp_pulse",
        summary="pSp encoding refined by PULSE's downscale-consistency search, anchored to the encoder's W+, "
                "then back-projected onto the input",
        task="super-resolution",
        license="Apache-2.0",
        paper="Richardson et al., Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation, "
              "CVPR 2021 (arXiv:2008.00951); Menon et al., PULSE: Self-Supervised Photo Upsampling via Latent "
              "Space Exploration of Generative Models, CVPR 2020 (arXiv:2003.03808)",
        # n_samples > 1 draws the mixed fine styles from `seed`; one sample does not depend on it.
        deterministic=False,
        single_sample_deterministic=True,
        scales=None,
        input_kind="aligned_face",
        default_weights=DEFAULT_MODEL_NAME,
    )
    Options: ClassVar[type[OptionsModel]] = PSPPulseOptions
    options: PSPPulseOptions

    def __init__(self, options: OptionsModel | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(options, device)
        self.w_std: Tensor | None = None
        self.fit: GaussianFit | None = None
        self.lpips: Any = None
        #: W+ of the last restore()'s outputs (image-major rows), and the encoder's W+ they started from.
        self.last_w_plus: Tensor | None = None
        self.last_w_psp: Tensor | None = None

    def load(self) -> None:
        if self.w_std is not None:
            return
        super().load()
        o = self.options
        dec = self.model.decoder
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            z = torch.randn(o.gaussian_fit_samples, dec.z_dim, generator=g).to(self.device)
            w = torch.cat([dec.map(c) for c in z.split(8192)])
            self.w_std = w.std(0).clamp_min(1e-6)
        if o.geocross_lambda > 0:
            self.fit = fit_gaussian(dec, o.gaussian_fit_samples)
        if o.lpips_lambda > 0:
            from restorekit.networks.lpips_net import lpips_from_registry

            self.lpips = lpips_from_registry("alex").to(self.device)
        self.notes = [n.replace("psp_sr:", "psp_pulse:", 1) for n in self.notes]
        self.notes.append(f"psp_pulse: up to {o.steps} Adam steps per image on W+ (eps {o.eps:g}, anchor "
                          f"{o.anchor_lambda:g}, lpips {o.lpips_lambda:g}, geocross {o.geocross_lambda:g}), then "
                          f"{self.consistency_steps()} back-projection steps onto the input"
                          + (" (none at ×1 to an input of the generator's size)" if o.keep_native_size
                             else " (none at ×1)"))

    def _note_once(self, key: str, msg: str) -> None:
        self._note(key, msg)

    def _note(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.notes.append(f"psp_pulse: {msg}")
            if not self.options.quiet:
                print(f"psp_pulse: {msg}", file=sys.stderr)

    def _starts(self, w_psp: Tensor, n_samples: int, seed: int) -> Tensor:
        """``n_samples`` start codes for one image: pSp's, or with mixed fine styles."""
        codes = w_psp.expand(n_samples, -1, -1).contiguous()
        if n_samples == 1:
            return codes
        o = self.options
        mask = default_latent_mask(self.model.n_styles) if o.mix_layers is None else list(o.mix_layers)
        inject = self.model.random_latents(n_samples, seed=seed, device=codes.device)
        return mix_styles(codes, inject, mask, o.mix_alpha)

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        """pSp's estimate refined per image; see the module docstring. ``seed=None`` means 0."""
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        scale, n_samples = int(scale), int(n_samples)
        if not self.options.keep_native_size:
            self.check_output_memory(lr, scale, n_samples)
        self.load()
        self._check_input(lr)
        if scale == 1:  # the search's downscale is the identity, and back-projection keeps the output as drawn
            # (unless keep_native_size keeps a generator-sized output of a smaller input: projected as at any scale)
            same_size = not self.options.keep_native_size or tuple(lr.shape[-2:]) == (self.resolution,) * 2
            self._note("x1", "at ×1 psp_pulse re-draws the face through its prior (pSp's ×1): the search finds the "
                             "prior's face nearest the input itself, not the input cleaned up"
                             + ("; consistency_steps has no effect at ×1 (the output already has the input's size)"
                                if same_size else ""))
        self._keep_memory()  # every search step allocates the generator's activations and gradients again
        assert self.w_std is not None
        o = self.options
        seed = 0 if seed is None else int(seed)
        n, h, w = lr.shape[0], lr.shape[-2], lr.shape[-1]
        res = self.resolution
        out_size = (res, res) if o.keep_native_size else (h * scale, w * scale)
        use_lpips = self.lpips is not None and o.lpips_lambda > 0
        lpips_note = "used" if use_lpips else "off"
        if use_lpips and min(h, w) < LPIPS_MIN_SIDE:
            use_lpips = False
            lpips_note = f"skipped (input {h}×{w} < {LPIPS_MIN_SIDE} px)"
            self._note("lpips", f"LPIPS(alex) needs inputs of at least {LPIPS_MIN_SIDE} px a side; skipped for "
                                f"{h}×{w} inputs")
        outs: list[Tensor] = []
        w_out: list[Tensor] = []
        w_psp_all: list[Tensor] = []
        reports: list[dict[str, Any]] = []
        # restorekit run/compare call restore under no_grad; the search needs gradients.
        with torch.inference_mode(False), torch.enable_grad():
            for i in range(n):
                t0 = time.perf_counter()
                x = lr[i:i + 1].detach().to(self.device, torch.float32).clone()
                with torch.no_grad():
                    w_psp = self.model.encode(self._to_input(x))
                starts = self._starts(w_psp, n_samples, seed)
                r = search_w_plus(
                    self.model.decoder, x, starts, self.w_std, out_size=out_size, steps=o.steps, eps=o.eps,
                    learning_rate=o.learning_rate, schedule=o.schedule, anchor_lambda=o.anchor_lambda,
                    lpips=self.lpips if use_lpips else None, lpips_lambda=o.lpips_lambda, fit=self.fit,
                    geocross_lambda=o.geocross_lambda, optimise_noise=o.optimise_noise,
                    noise_layers=o.noise_layers)
                with torch.no_grad():
                    out = self.finish(r.images, x, scale)
                    final = downscale_mse(out, x)
                    dist = ((r.w_plus - starts) / self.w_std).pow(2).mean((1, 2)).sqrt()
                secs = time.perf_counter() - t0
                outs.append(out.detach())
                w_out.append(r.w_plus)
                w_psp_all.append(w_psp.expand(n_samples, -1, -1))
                for k in range(n_samples):
                    reports.append({
                        "image": i, "sample": k, "seed": seed, "steps": r.steps[k], "max_steps": o.steps,
                        "eps": o.eps, "eps_reached": bool(r.reached[k]),
                        "downscale_mse": float(final[k]), "downscale_mse_psp": float(r.start_mse[k]),
                        "downscale_mse_searched": float(r.mse[k]),
                        "w_distance_rms_std": float(dist[k]), "lpips": lpips_note,
                        "seconds": secs / n_samples, "native_size": res,
                        "weights": self.weights_info.get("name"),
                        "weights_license": self.weights_info.get("license"),
                    })
        self.last_reports = reports
        self.last_w_plus = torch.cat(w_out)
        self.last_w_psp = torch.cat(w_psp_all)
        return torch.cat(outs).float()
