"""IR and IR-SE residual backbones (ArcFace's "improved residual" units, Deng et al. 2019).

Module and parameter names mirror the layout of TreB1eN's InsightFace_Pytorch, which both the
ArcFace ``model_ir_se50.pth`` file and pSp's encoders use, so their state dicts load by name:

- a unit is ``shortcut_layer`` (``MaxPool2d(1, stride)`` when the width is unchanged, else a
  strided 1×1 conv + BN: keys ``shortcut_layer.0``, ``shortcut_layer.1``) plus ``res_layer``
  ``[BN, conv3×3, PReLU, conv3×3 (strided), BN, (SE)]`` (keys ``res_layer.0`` … ``res_layer.5``);
- the SE gate is ``fc1``/``fc2`` bias-free 1×1 convs with reduction 16;
- a backbone is ``input_layer`` (conv3×3 + BN + PReLU) followed by ``body``, a flat
  ``nn.Sequential`` of units; the first unit of every stage has stride 2.

Depth is a :class:`BackboneConfig`: ``ir_se50`` (3, 4, 14, 3 units, widths 64-512: the paper's)
and CPU-sized ``ir_se_light`` (1, 1, 2, 1 units, widths 16-128) and ``ir_se_small`` (the same units,
widths 32-256).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class BlockSpec:
    """One residual unit: input width, output width (``depth``) and stride."""

    in_channel: int
    depth: int
    stride: int


@dataclass(frozen=True)
class BackboneConfig:
    """A backbone shape: units and width per stage, SE gating on/off, SE reduction."""

    units: tuple[int, ...] = (3, 4, 14, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    se: bool = True
    se_reduction: int = 16

    def __post_init__(self) -> None:
        if len(self.units) != len(self.widths) or not self.units:
            raise ValueError(f"backbone needs one width per stage; got units={self.units} widths={self.widths}")
        if any(u < 1 for u in self.units) or any(w < 1 for w in self.widths):
            raise ValueError(f"backbone units and widths must be positive; got {self.units}, {self.widths}")
        if sum(self.units) > 512:  # IR-SE152 has 50 units; a file's config may claim anything
            raise ValueError(f"backbone of {sum(self.units)} units is out of range (at most 512)")
        if any(a == b for a, b in zip(self.widths, self.widths[1:])):
            # Stage boundaries are read back from width changes when importing a state dict.
            raise ValueError(f"consecutive stages must differ in width; got widths={self.widths}")
        if self.se and any(w // self.se_reduction < 1 for w in self.widths):
            raise ValueError(f"SE reduction {self.se_reduction} is larger than a stage width {self.widths}")

    @property
    def stem_width(self) -> int:
        return self.widths[0]

    @property
    def out_width(self) -> int:
        return self.widths[-1]

    def blocks(self) -> list[BlockSpec]:
        """All units in order; each stage starts with a stride-2 unit, as in InsightFace."""
        specs: list[BlockSpec] = []
        prev = self.widths[0]
        for n, width in zip(self.units, self.widths):
            specs.append(BlockSpec(prev, width, 2))
            specs.extend(BlockSpec(width, width, 1) for _ in range(n - 1))
            prev = width
        return specs

    def stage_ends(self) -> list[int]:
        """Index in ``body`` of the last unit of each stage (pSp taps 6, 20, 23 for IR-SE50)."""
        ends, total = [], 0
        for n in self.units:
            total += n
            ends.append(total - 1)
        return ends


# Named depths. 50/100/152 are InsightFace's; "light" is restorekit's CPU-sized variant.
BACKBONES: dict[str, BackboneConfig] = {
    "ir_se50": BackboneConfig((3, 4, 14, 3)),
    "ir_se100": BackboneConfig((3, 13, 30, 3)),
    "ir_se152": BackboneConfig((3, 8, 36, 3)),
    "ir50": BackboneConfig((3, 4, 14, 3), se=False),
    "ir100": BackboneConfig((3, 13, 30, 3), se=False),
    "ir152": BackboneConfig((3, 8, 36, 3), se=False),
    "ir_se_light": BackboneConfig((1, 1, 2, 1), (16, 32, 64, 128), se=True, se_reduction=8),
    # light's units at twice its widths: 2.4× its encoder time (a 64-px batch of 4, fwd + bwd, one
    # thread: 131 ms against 55), about 1.25× a stage-2 step of prior128 on two cores.
    "ir_se_small": BackboneConfig((1, 1, 2, 1), (32, 64, 128, 256), se=True, se_reduction=8),
}


def backbone_config(spec: str | BackboneConfig) -> BackboneConfig:
    """A config from a name in :data:`BACKBONES` or a config itself."""
    if isinstance(spec, BackboneConfig):
        return spec
    try:
        return BACKBONES[spec]
    except KeyError:
        raise ValueError(f"unknown IR backbone '{spec}'; known: {', '.join(sorted(BACKBONES))}") from None


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: global pool, 1×1 reduce, ReLU, 1×1 expand, sigmoid, scale."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class IRBlock(nn.Module):
    """An IR unit (``bottleneck_IR``), or IR-SE (``bottleneck_IR_SE``) when ``se_reduction`` is set."""

    def __init__(self, in_channel: int, depth: int, stride: int, se_reduction: int | None = 16) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module
        if in_channel == depth:
            # A 1×1 max-pool is a parameter-free strided subsample.
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se_reduction is not None:
            layers.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(input_nc: int, width: int) -> nn.Sequential:
    """The stem: 3×3 conv (no bias), BN, PReLU — ``input_layer.{0,1,2}``."""
    return nn.Sequential(nn.Conv2d(input_nc, width, (3, 3), 1, 1, bias=False),
                         nn.BatchNorm2d(width), nn.PReLU(width))


def make_body(cfg: BackboneConfig) -> nn.Sequential:
    """The flat sequence of residual units — ``body.N``."""
    red = cfg.se_reduction if cfg.se else None
    return nn.Sequential(*[IRBlock(b.in_channel, b.depth, b.stride, red) for b in cfg.blocks()])


def infer_backbone_config(state_dict: Mapping[str, Tensor], prefix: str = "") -> BackboneConfig:
    """Read a :class:`BackboneConfig` back from ``body.N`` weights (stages = runs of equal width).

    Raises ``ValueError`` naming the problem when the keys do not describe an IR backbone.
    """
    n_blocks = 0
    while f"{prefix}body.{n_blocks}.res_layer.1.weight" in state_dict:
        n_blocks += 1
    if n_blocks == 0:
        raise ValueError(f"no IR backbone units found (expected keys '{prefix}body.N.res_layer.1.weight')")
    depths = [int(state_dict[f"{prefix}body.{i}.res_layer.1.weight"].shape[0]) for i in range(n_blocks)]
    units: list[int] = []
    widths: list[int] = []
    for d in depths:
        if widths and widths[-1] == d:
            units[-1] += 1
        else:
            units.append(1)
            widths.append(d)
    se_key = f"{prefix}body.0.res_layer.5.fc1.weight"
    se = se_key in state_dict
    reduction = 16
    if se:
        reduction = depths[0] // int(state_dict[se_key].shape[0])
    return BackboneConfig(tuple(units), tuple(widths), se=se, se_reduction=reduction)


def bn_keys(prefix: str, *, affine: bool = True, with_num_batches: bool = True) -> list[str]:
    """State-dict keys of one BatchNorm layer in InsightFace/pSp checkpoints."""
    keys = [f"{prefix}.weight", f"{prefix}.bias"] if affine else []
    keys += [f"{prefix}.running_mean", f"{prefix}.running_var"]
    return keys + ([f"{prefix}.num_batches_tracked"] if with_num_batches else [])


def official_body_keys(cfg: BackboneConfig, *, with_num_batches: bool = True) -> list[str]:
    """Keys of the IR/IR-SE stem and body (``input_layer.*``, ``body.N.*``), written out from the
    official layout independently of the modules, so importers and tests can check checkpoints."""
    def bn(p: str) -> list[str]:
        return bn_keys(p, with_num_batches=with_num_batches)

    keys = ["input_layer.0.weight", *bn("input_layer.1"), "input_layer.2.weight"]
    for i, b in enumerate(cfg.blocks()):
        p = f"body.{i}"
        if b.in_channel != b.depth:
            keys += [f"{p}.shortcut_layer.0.weight", *bn(f"{p}.shortcut_layer.1")]
        keys += [*bn(f"{p}.res_layer.0"), f"{p}.res_layer.1.weight", f"{p}.res_layer.2.weight",
                 f"{p}.res_layer.3.weight", *bn(f"{p}.res_layer.4")]
        if cfg.se:
            keys += [f"{p}.res_layer.5.fc1.weight", f"{p}.res_layer.5.fc2.weight"]
    return keys
