"""A discriminator on frozen pretrained features (Projected GAN, Sauer et al. 2021).

Projected GANs reach a given image quality many times faster than a discriminator trained from
scratch: small discriminators judge images in the feature space of a frozen ImageNet network,
seen through fixed random projections that mix its channels and its scales so no single feature
can be exploited. The frozen backbone available offline here is the ImageNet AlexNet of LPIPS
(``lpips-alex``; torchvision's ``features.{0,3,6,8,10}``):

* the image (``[0, 1]``) is resized to 224 px, ImageNet-normalised and passed through AlexNet up
  to relu1, relu2, relu3 and relu5 (55, 27, 13 and 13 px);
* cross-channel mixing: a fixed random 1×1 conv per tap; cross-scale mixing: each tap adds the
  (upsampled) mixed tap below it and passes a fixed random 3×3 conv — all frozen, like the
  backbone (they are registered buffers, not parameters);
* one trainable discriminator per tap: spectrally normalised 4×4 stride-2 convs with leaky
  ReLU down to about 4×4, then a 1×1 conv to one logit per patch.

``forward`` returns the patch logits of every scale, flattened and concatenated (``N×P``); the
GAN losses average over them. No R1 penalty is needed (the Projected GAN paper uses none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

#: AlexNet ``features`` conv layers: (index, in, out, kernel, stride, padding).
_ALEX = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1), (8, 384, 256, 3, 1, 1),
         (10, 256, 256, 3, 1, 1))
TAP_CHANNELS = (64, 192, 384, 256)  # relu1, relu2, relu3, relu5
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class FrozenAlexNet(nn.Module):
    """AlexNet's convolutional trunk (torchvision layout), frozen, returning four taps."""

    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, state: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({str(i): nn.Conv2d(cin, cout, k, stride=s, padding=p)
                                    for i, cin, cout, k, s, p in _ALEX})
        if state is not None:
            own = {f"convs.{i}.{kind}": state[f"features.{i}.{kind}"] for i, *_ in _ALEX for kind in ("weight", "bias")}
            self.load_state_dict(own)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        c = self.convs
        r1 = F.relu(c["0"](x))
        r2 = F.relu(c["3"](F.max_pool2d(r1, 3, 2)))
        r3 = F.relu(c["6"](F.max_pool2d(r2, 3, 2)))
        r5 = F.relu(c["10"](F.relu(c["8"](r3))))
        return [r1, r2, r3, r5]


def _random_conv(cin: int, cout: int, k: int, g: torch.Generator) -> Tensor:
    """A fixed random conv weight with variance-preserving (Kaiming, fan-in) scale."""
    return torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5


class RandomProjection(nn.Module):
    """Fixed cross-channel (1×1) and cross-scale (upsample + add + 3×3) mixing of the taps."""

    def __init__(self, channels: tuple[int, ...] = TAP_CHANNELS, widths: tuple[int, ...] = (64, 128, 256, 256),
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.widths = widths
        for i, (cin, cout) in enumerate(zip(channels, widths)):
            self.register_buffer(f"ccm{i}", _random_conv(cin, cout, 1, g))
            if i < len(widths) - 1:
                self.register_buffer(f"csm{i}", _random_conv(cout, cout, 3, g))
                self.register_buffer(f"up{i}", _random_conv(widths[i + 1], cout, 1, g))

    def forward(self, taps: list[Tensor]) -> list[Tensor]:
        mixed = [F.conv2d(t, getattr(self, f"ccm{i}").to(t.dtype)) for i, t in enumerate(taps)]
        out = [mixed[-1]]
        for i in range(len(mixed) - 2, -1, -1):
            below = F.conv2d(out[0], getattr(self, f"up{i}").to(out[0].dtype))
            below = F.interpolate(below, size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, F.conv2d(mixed[i] + below, getattr(self, f"csm{i}").to(below.dtype), padding=1))
        return out


class PatchHead(nn.Module):
    """A small trainable discriminator on one projected scale: stride-2 convs to ~4×4, 1×1 to logits."""

    def __init__(self, channels: int, size: int, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, s = channels, size
        while s > 6:
            layers += [spectral_norm(nn.Conv2d(c, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c, s = width, s // 2
        layers += [spectral_norm(nn.Conv2d(c, width, 3, padding=1)), nn.LeakyReLU(0.2),
                   spectral_norm(nn.Conv2d(width, 1, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class ProjectedDiscriminator(nn.Module):
    """Frozen AlexNet → fixed random projections → one trainable patch head per scale."""

    def __init__(self, resolution: int, backbone: Mapping[str, Tensor] | None = None, *, head_width: int = 128,
                 projection_seed: int = 0) -> None:
        super().__init__()
        self.resolution = resolution
        self.backbone = FrozenAlexNet(backbone)
        self.project = RandomProjection(seed=projection_seed)
        sizes = (55, 27, 13, 13)
        self.heads = nn.ModuleList(PatchHead(w, s, head_width) for w, s in zip(self.project.widths, sizes))
        self.pretrained = backbone is not None

    def forward(self, image: Tensor) -> Tensor:
        """``N×3×R×R`` in [0,1] → ``N×P`` patch logits (every scale, concatenated)."""
        if image.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(f"discriminator expects {self.resolution}×{self.resolution} images, "
                             f"got {tuple(image.shape[-2:])}")
        feats = self.project(self.backbone(image))
        return torch.cat([h(f) for h, f in zip(self.heads, feats)], dim=1)


def build_projected_discriminator(resolution: int, weights: str | os.PathLike[str] | None = "lpips-alex", *,
                                  allow_random: bool = False, head_width: int = 128) -> ProjectedDiscriminator:
    """A projected discriminator on the ``lpips-alex`` ImageNet AlexNet (a name or a file).

    A random backbone (``weights=None``) defeats the purpose — pretrained features — so it is
    refused unless ``allow_random`` (tests only).
    """
    from restorekit.errors import RestorekitError

    if weights is None:
        if not allow_random:
            raise RestorekitError("projected discriminator: refusing a random AlexNet (pass weights, e.g. "
                                  "'lpips-alex'; allow_random is for tests only)")
        return ProjectedDiscriminator(resolution, None, head_width=head_width)
    from restorekit.networks.lpips_net import read_weights_file

    from restorekit.weights import weights_file

    # A registered name even beside a same-named file (./NAME is the file), else an existing file.
    state = read_weights_file(weights_file(weights), "alex")
    return ProjectedDiscriminator(resolution, state, head_width=head_width)


__all__ = ["FrozenAlexNet", "PatchHead", "ProjectedDiscriminator", "RandomProjection", "build_projected_discriminator"]
