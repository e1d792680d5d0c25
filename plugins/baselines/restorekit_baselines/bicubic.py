"""Bicubic interpolation: the reference every SR method must beat."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from restorekit.degradations import bicubic_resize
from restorekit.interfaces import Method, MethodInfo, Options


class BicubicOptions(Options):
    antialias: bool = Field(True, description="PIL-convention antialiased kernel (no effect when upscaling)")
    clamp: Literal["clip", "none"] = Field("clip", description="clip the result to [0,1]")


class Bicubic(Method):
    """Upscale by ``scale`` with the Keys cubic kernel (a = −0.5), PIL's convention."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="bicubic",
        summary="Bicubic interpolation (Keys a=-0.5, PIL convention) — the baseline of every SR paper",
        license="Apache-2.0",
        paper="Keys 1981, Cubic convolution interpolation for digital image processing",
        deterministic=True,
    )
    Options = BicubicOptions
    options: BicubicOptions

    @torch.no_grad()
    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        scale, n_samples = int(scale), int(n_samples)
        self.check_output_memory(lr, scale, n_samples)
        # float32 whatever the input's float type (the image convention; float16 has no CPU kernel).
        out = bicubic_resize(lr.to(self.device, torch.float32), (lr.shape[-2] * scale, lr.shape[-1] * scale))
        if self.options.clamp == "clip":
            out = out.clamp(0, 1)
        self.last_reports = [{} for _ in range(lr.shape[0])]
        return out.repeat_interleave(n_samples, dim=0) if n_samples > 1 else out
