"""StyleGAN2's custom ops, each with a pure-PyTorch reference and a lazily built CUDA kernel.

``impl="auto"`` (default) uses the kernel for CUDA tensors when it builds and the reference
otherwise (warning once); ``"cuda"`` insists on the kernel; ``"ref"`` always uses PyTorch.
Nothing is compiled at import.
"""

from ._ext import Impl, OpsBuildError, load_extension
from .fused_bias_act import SQRT2, FusedLeakyReLU, bias_act_ref, fused_bias_act
from .upfirdn2d import upfirdn2d, upfirdn2d_ref

__all__ = ["Impl", "OpsBuildError", "load_extension", "SQRT2", "FusedLeakyReLU", "bias_act_ref",
           "fused_bias_act", "upfirdn2d", "upfirdn2d_ref"]
