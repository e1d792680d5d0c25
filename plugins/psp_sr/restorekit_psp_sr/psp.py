"""pSp (pixel2style2pixel): an encoder into W+ and a fixed StyleGAN2 generator that decodes it.

``PSP.forward(x)`` takes faces in [0, 1] at any size, brings them to the encoder's input size
(256 px for the paper's models; bilinear, antialiased when shrinking, like the official PIL
resize), encodes them to W+ offsets, adds ``latent_avg`` (``start_from_latent_avg``) and
decodes. It returns the generator's [0, 1] image (unclamped, native resolution unless
``resize_output`` asks for an average-pooled size, as pSp pools to 256 for its losses) and the
W+ codes.

Iterative refinement (ReStyle, Alaluf et al., ICCV 2021): with ``restyle_iterations`` set, the
encoder reads the input beside the current reconstruction (``input_nc`` 6: input, then
reconstruction, both at the encoder's input size in [-1, 1]) and returns a step in W+ from the
current codes. Pass 1 starts from ``latent_avg`` and its image, ``G(latent_avg)``; each pass adds
the encoder's step and decodes. Between passes the image and the codes are detached, as ReStyle
trains: the gradient of a pass's loss reaches the encoder through that pass's step only. Unlike a
one-pass pSp encoder, which must jump from any input to its code at once, each pass sees what its
code draws and corrects it.

How the generator's image (``G(latent_avg)`` and each pass's) reaches the encoder's size is the
model's ``restyle_recon_resize``, fixed by how it was trained: ``"antialiased_bilinear"``
(:func:`~.encoder.resize_input`, restorekit's training and the default) or ``"adaptive_avg_pool"``
(:func:`~.encoder.pool_input`: the official ReStyle code's ``face_pool``, which imported official
ReStyle checkpoints use: at 1024 → 256 px a 4×4 box average, where the antialiased bilinear
filter is a wider triangle). The two differ on fine detail; an encoder reads reconstructions as
it was trained to.

Multi-modal synthesis (:meth:`PSP.mix`, after pSp's ``scripts/style_mixing.py``): the codes
of the styles in ``latent_mask`` are replaced by (or, with ``mix_alpha``, blended towards) the
W vector of a random ``z``, mapped by the generator and repeated over all styles. The default
mask is the fine styles: the official ``8..17`` of 18, scaled to ``round(8·n/18)..n-1`` for a
generator with ``n`` styles, so the coarse and medium styles (pose, shape) stay the input's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restorekit.interfaces import Encoder, Generator
from restorekit.seeds import torch_seed

from .encoder import BackboneEncoderUsingLastLayerIntoW, pool_input, resize_input

if TYPE_CHECKING:
    from .checkpoint_psp import PSPOptions

NoiseMode = Literal["const", "random"]
#: How a ReStyle model brings the generator's images to its encoder's input size (module docstring).
ReconResize = Literal["antialiased_bilinear", "adaptive_avg_pool"]
RECON_RESIZES: tuple[ReconResize, ...] = ("antialiased_bilinear", "adaptive_avg_pool")
#: restorekit's own ReStyle training resize; what a model file that names none means.
DEFAULT_RECON_RESIZE: ReconResize = "antialiased_bilinear"
#: Channels of the images a ReStyle encoder reads twice (input and reconstruction): RGB.
RESTYLE_IMAGE_NC = 3


def passes(n: int) -> int:
    """A count of ReStyle passes, checked: at least one."""
    if n < 1:
        raise ValueError(f"ReStyle needs at least one pass; got {n}")
    return int(n)


def default_latent_mask(n_styles: int) -> list[int]:
    """The fine styles mixed by default: official ``8..17`` of 18, scaled to ``n_styles``."""
    start = max(1, min(n_styles - 1, round(8 * n_styles / 18)))
    return list(range(start, n_styles))


class PSP(nn.Module):
    """Encoder + generator + ``latent_avg``, with pSp's forward and style mixing.

    ``latent_avg``: ``n_styles×style_dim`` (or ``1×style_dim`` for a learn-in-W encoder), a
    ``style_dim`` vector (repeated), or ``None`` to use ``generator.mean_latent()``.
    ``restyle_iterations``: ``None`` for pSp's one pass; else the number of ReStyle passes (the
    encoder must read 6 channels, and codes start from ``latent_avg``).
    ``restyle_recon_resize``: how the passes bring reconstructions to the encoder's size (see the
    module docstring; a one-pass model reads none, and keeps the default).
    """

    latent_avg: Tensor

    def __init__(self, encoder: Encoder, generator: Generator, latent_avg: Tensor | None = None, *,
                 start_from_latent_avg: bool = True, restyle_iterations: int | None = None,
                 restyle_recon_resize: ReconResize = DEFAULT_RECON_RESIZE) -> None:
        super().__init__()
        if encoder.n_styles != generator.n_styles or encoder.style_dim != generator.style_dim:
            raise ValueError(f"encoder gives {encoder.n_styles}×{encoder.style_dim} codes but the generator "
                             f"takes {generator.n_styles}×{generator.style_dim}")
        self.encoder = encoder
        self.decoder = generator
        self.learn_in_w = isinstance(encoder, BackboneEncoderUsingLastLayerIntoW)
        self.start_from_latent_avg = start_from_latent_avg
        rows = 1 if self.learn_in_w else generator.n_styles
        if latent_avg is None:
            latent_avg = generator.mean_latent()
        latent_avg = latent_avg.detach().float().reshape(-1, generator.style_dim)
        if latent_avg.shape[0] == 1:
            latent_avg = latent_avg.repeat(rows, 1)
        if latent_avg.shape[0] != rows:
            raise ValueError(f"latent_avg has {latent_avg.shape[0]} rows; expected 1 or {rows}")
        self.register_buffer("latent_avg", latent_avg.clone())
        self.restyle_iterations: int | None = None
        if restyle_iterations is not None:
            if encoder.input_nc != 2 * RESTYLE_IMAGE_NC:
                raise ValueError(f"a ReStyle encoder reads the input and the current reconstruction "
                                 f"({2 * RESTYLE_IMAGE_NC} channels); this one reads {encoder.input_nc}")
            if not start_from_latent_avg:
                raise ValueError("ReStyle's passes start from latent_avg: start_from_latent_avg must be true")
            self.restyle_iterations = passes(restyle_iterations)
        if restyle_recon_resize not in RECON_RESIZES:
            raise ValueError(f"restyle_recon_resize {restyle_recon_resize!r} is not one of {', '.join(RECON_RESIZES)}")
        self.restyle_recon_resize: ReconResize = restyle_recon_resize
        # The official training options when imported from a pSp checkpoint.
        self.official_opts: PSPOptions | None = None

    @property
    def n_styles(self) -> int:
        return int(self.decoder.n_styles)

    @property
    def input_size(self) -> int:
        return int(getattr(self.encoder, "input_size", 256))

    def set_restyle_iterations(self, n: int) -> None:
        """How many ReStyle passes :meth:`encode` and :meth:`forward` make (a ReStyle model only)."""
        if self.restyle_iterations is None:
            raise ValueError("this model encodes in one pass (pSp); it was not trained for ReStyle's passes")
        self.restyle_iterations = passes(n)

    def _average_codes(self) -> Tensor:
        """``latent_avg`` as one W+ code, ``1×n_styles×style_dim``."""
        return self.latent_avg.expand(self.n_styles, -1)[None]

    def average_image(self, n: int, *, noise_mode: NoiseMode = "const") -> Tensor:
        """``G(latent_avg)``, ``n`` rows: what ReStyle's first pass sees as the reconstruction."""
        return self.decode(self._average_codes(), noise_mode=noise_mode).expand(n, -1, -1, -1)

    def _reconstruction_input(self, image: Tensor) -> Tensor:
        """A generator image in [0, 1] at the encoder's input size (``restyle_recon_resize``)."""
        if self.restyle_recon_resize == "adaptive_avg_pool":
            return pool_input(image, self.input_size)
        return resize_input(image, self.input_size)

    def refine(self, x: Tensor, iterations: int | None = None, *, noise_mode: NoiseMode = "const",
               decode_last: bool = True) -> list[tuple[Tensor, Tensor | None]]:
        """ReStyle's passes over faces ``x`` in [0, 1]: ``[(w_plus, image), …]``, one per pass.

        ``image`` is the generator's native output for that pass's codes (``None`` for the last
        pass when ``decode_last`` is false: :meth:`encode` needs only its codes), decoded with
        ``noise_mode``; the average image the first pass reads always has the fixed noise.
        """
        if self.restyle_iterations is None:
            raise ValueError("refine: this model encodes in one pass (pSp), not with ReStyle's passes")
        n = passes(self.restyle_iterations if iterations is None else iterations)
        size = self.input_size
        target = resize_input(x, size) * 2 - 1
        codes = self._average_codes().expand(x.shape[0], -1, -1)
        # (the first pass's reconstruction with the fixed noise maps, as ReStyle makes it, whatever
        # ``noise_mode`` the passes decode with: one average image, not a new draw per batch)
        image: Tensor | None = self.average_image(x.shape[0])
        steps: list[tuple[Tensor, Tensor | None]] = []
        for t in range(n):
            assert image is not None
            seen = self._reconstruction_input(image.detach().to(target.dtype)) * 2 - 1
            step = self.encoder(torch.cat([target, seen], dim=1))
            if self.learn_in_w:
                step = step.unsqueeze(1).expand(-1, self.n_styles, -1)
            codes = codes.detach() + step
            image = self.decode(codes, noise_mode=noise_mode) if decode_last or t < n - 1 else None
            steps.append((codes, image))
        return steps

    def encode(self, x: Tensor) -> Tensor:
        """Faces ``N×C×H×W`` in [0, 1] to W+ codes ``N×n_styles×style_dim`` (``latent_avg`` added;
        a ReStyle model's after all its passes)."""
        if self.restyle_iterations is not None:
            return self.refine(x, decode_last=False)[-1][0]
        codes = self.encoder(resize_input(x, self.input_size) * 2 - 1)
        if self.start_from_latent_avg:
            codes = codes + (self.latent_avg[0] if self.learn_in_w else self.latent_avg)
        if self.learn_in_w:
            codes = codes.unsqueeze(1).expand(-1, self.n_styles, -1)
        return codes

    def decode(self, w_plus: Tensor, *, noise_mode: NoiseMode = "const", resize_output: int | None = None) -> Tensor:
        """W+ codes to [0, 1] images (unclamped); ``resize_output`` average-pools to that size."""
        return self._pooled(self.decoder.synthesize(w_plus, noise_mode=noise_mode), resize_output)

    @staticmethod
    def _pooled(image: Tensor, size: int | None) -> Tensor:
        if size is not None and image.shape[-1] != size:
            image = F.adaptive_avg_pool2d(image, size)
        return image

    def forward(self, x: Tensor, *, noise_mode: NoiseMode = "const", resize_output: int | None = None,
                latent_mask: Sequence[int] | None = None, inject_latent: Tensor | None = None,
                alpha: float | None = None, all_passes: bool = False) -> tuple[Tensor, Tensor]:
        """``(image, w_plus)`` for faces ``x`` in [0, 1].

        With ``latent_mask`` the listed styles take ``inject_latent``'s (``N×n_styles×style_dim``)
        values, or ``alpha·inject + (1−alpha)·code`` when ``alpha`` is given (official semantics).
        ``all_passes``: every ReStyle pass's result, stacked on a new first dimension (one row for
        a one-pass model) — ReStyle's training takes a loss after each pass, in one forward call
        as data-parallel training needs.
        """
        if self.restyle_iterations is not None and latent_mask is None:
            steps = self.refine(x, noise_mode=noise_mode)
            images = [self._pooled(image, resize_output) for _, image in steps if image is not None]
            if all_passes:
                return torch.stack(images), torch.stack([codes for codes, _ in steps])
            return images[-1], steps[-1][0]
        if all_passes:
            if latent_mask is not None:
                raise ValueError("all_passes and latent_mask exclude each other")
            image, w_plus = self(x, noise_mode=noise_mode, resize_output=resize_output)
            return image[None], w_plus[None]
        w_plus = self.encode(x)
        if latent_mask is not None:
            if inject_latent is None:
                raise ValueError("latent_mask needs inject_latent")
            w_plus = mix_styles(w_plus, inject_latent, latent_mask, alpha)
        return self.decode(w_plus, noise_mode=noise_mode, resize_output=resize_output), w_plus

    @torch.no_grad()
    def random_latents(self, n: int, *, seed: int | None = None, device: torch.device | None = None) -> Tensor:
        """``n×n_styles×style_dim``: ``map(z)`` of ``n`` normal ``z`` (CPU generator, seeded), repeated.
        The seed goes through :func:`restorekit.seeds.torch_seed`: the CPU generator keeps 32 bits,
        so seeds 2**32 apart drew the same styles."""
        g = torch.Generator()
        if seed is None:
            g.seed()
        else:
            g.manual_seed(torch_seed(seed))
        z = torch.randn(n, self.decoder.z_dim, generator=g)
        device = device if device is not None else self.latent_avg.device
        w = self.decoder.map(z.to(device))
        return w.unsqueeze(1).expand(-1, self.n_styles, -1)

    def mix(self, x: Tensor, n_samples: int, *, seed: int | None = None, latent_mask: Sequence[int] | None = None,
            mix_alpha: float | None = None, noise_mode: NoiseMode = "const",
            resize_output: int | None = None) -> tuple[Tensor, Tensor]:
        """Multi-modal outputs: ``n_samples`` per image, fine styles from random ``z`` (image-major).

        Returns ``(images, w_plus)`` of ``N·n_samples`` rows; the samples of image 0 come first.
        Every image of the batch gets the same ``n_samples`` draws, so an image's samples do not
        depend on the others in its batch (the faces of one photo); the same ``seed`` gives the
        same outputs.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}")
        mask = default_latent_mask(self.n_styles) if latent_mask is None else list(latent_mask)
        codes = self.encode(x)
        n = codes.shape[0]
        codes = codes.repeat_interleave(n_samples, dim=0)
        inject = self.random_latents(n_samples, seed=seed, device=codes.device).repeat(n, 1, 1)
        w_plus = mix_styles(codes, inject, mask, mix_alpha)
        # A few rows at a time: the generator's activations grow with the batch, the images alone do not
        # (10,000 samples of a 128-px face are 2 GB of images, and had needed more than 24 GB in one pass).
        images = [self.decode(w_plus[i:i + MIX_DECODE_ROWS], noise_mode=noise_mode, resize_output=resize_output)
                  for i in range(0, w_plus.shape[0], MIX_DECODE_ROWS)]
        return torch.cat(images) if len(images) > 1 else images[0], w_plus


#: Rows :meth:`PSP.mix` sends through the generator at once.
MIX_DECODE_ROWS = 16


def mix_styles(codes: Tensor, inject: Tensor, mask: Sequence[int], alpha: float | None = None) -> Tensor:
    """Replace (``alpha=None``) or blend (``alpha·inject + (1−alpha)·codes``) the styles in ``mask``."""
    n_styles = codes.shape[1]
    bad = [i for i in mask if not 0 <= i < n_styles]
    if bad:
        raise ValueError(f"latent_mask indices {bad} out of range for {n_styles} styles")
    if inject.shape != codes.shape:
        raise ValueError(f"inject_latent has shape {tuple(inject.shape)}; expected {tuple(codes.shape)}")
    sel = torch.zeros(n_styles, dtype=torch.bool, device=codes.device)
    sel[list(mask)] = True
    target = inject if alpha is None else alpha * inject + (1 - alpha) * codes
    return torch.where(sel[None, :, None], target, codes)
