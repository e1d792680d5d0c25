"""Import and export of rosinality/stylegan2-pytorch generator checkpoints.

Two layouts exist: converted official weights ``{"g_ema": sd, "latent_avg": [512]}`` (what pSp
loads) and rosinality's training checkpoints ``{"g", "d", "g_ema", "g_optim", "d_optim",
"args", "ada_aug_p"}``. Files are opened with ``torch.load(weights_only=True)``; training
checkpoints carry an ``argparse.Namespace`` in ``"args"`` and fail that check, so they load
only when the caller passes ``allow_unsafe=True`` (the user's explicit consent to unpickle).
The architecture (resolution, style_dim, n_mlp, channel_multiplier) is read off the tensors.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from restorekit.errors import RestorekitError, UnsafeFileError

from .stylegan2 import BLUR_KERNEL, StyleGAN2Generator, channels_for

GENERATOR_KEYS = ("g_ema", "g")


class CheckpointError(RestorekitError):
    """A checkpoint does not hold a generator this importer understands."""


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator as read off its state dict."""

    resolution: int
    style_dim: int
    n_mlp: int
    channel_multiplier: int
    channel_max: int = 512
    # Explicit widths, when they follow no channel_multiplier/channel_max table.
    channels: tuple[tuple[int, int], ...] | None = None

    def build(self, **kwargs: Any) -> StyleGAN2Generator:
        if self.channels is not None:
            kwargs.setdefault("channels", dict(self.channels))
        return StyleGAN2Generator(self.resolution, self.style_dim, self.n_mlp,
                                  self.channel_multiplier, channel_max=self.channel_max, **kwargs)


def _file_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` metadata of a ``.safetensors`` file (``restorekit.pix2pixhd/1`` …), else None."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt", device="cpu") as f:
            fmt = (f.metadata() or {}).get("format")
    except Exception:  # noqa: BLE001 - unreadable: say nothing of its format
        return None
    return str(fmt) if fmt else None


class NotAGenerator(CheckpointError):
    """Tensors that hold no StyleGAN2 generator. ``source``: the file they came from, when the
    caller said; a caller that knows it later gets the error naming it from :meth:`with_source`."""

    def __init__(self, detail: str, source: str | os.PathLike[str] | None = None) -> None:
        self.detail = detail
        self.source = None if source is None else str(source)
        if self.source is None:
            msg = f"not a rosinality StyleGAN2 generator state dict: {detail}"
        else:
            fmt = _file_format(self.source)
            if fmt and "/" in fmt:  # restorekit's own formats: restorekit.pix2pixhd/1 …
                what = f"a {fmt} file, not a StyleGAN2 generator"
            elif self.source.endswith(".safetensors"):  # safetensors' framework tag ("pt") says nothing
                what = "a safetensors file of other tensors, not a StyleGAN2 generator"
            else:
                what = "not a StyleGAN2 generator"
            msg = f"{self.source}: {what} ({detail})"
        super().__init__(msg)

    def with_source(self, source: str | os.PathLike[str]) -> "NotAGenerator":
        return NotAGenerator(self.detail, source)


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Tensor]:
    if not prefix:
        return {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and isinstance(v, Tensor)}


def infer_config(sd: Mapping[str, Tensor], *, source: str | os.PathLike[str] | None = None) -> StyleGAN2Config:
    """Resolution, style_dim, n_mlp and channel widths from a rosinality state dict (read from the
    file ``source``, named in the error when it holds no generator)."""
    for need in ("style.1.weight", "input.input", "conv1.conv.weight"):
        if need not in sd:
            raise NotAGenerator(f"key '{need}' is missing", source)
    style_dim = int(sd["style.1.weight"].shape[1])
    mlp = [int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k))]
    n_mlp = max(mlp)
    if sorted(mlp) != list(range(1, n_mlp + 1)):
        raise CheckpointError(f"mapping layers style.N are not contiguous: {sorted(mlp)}")
    n_rgb = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    resolution = 2 ** (n_rgb + 2)
    if resolution < 32 or resolution > 1024:
        raise CheckpointError(f"unsupported StyleGAN2 resolution {resolution} ({n_rgb} to_rgbs layers)")
    widths = {4: int(sd["input.input"].shape[1])}
    for i in range(n_rgb):
        key = f"convs.{2 * i}.conv.weight"
        if key not in sd:
            raise CheckpointError(f"StyleGAN2 state dict: key '{key}' is missing")
        widths[2 ** (i + 3)] = int(sd[key].shape[1])
    maxes = sorted({widths[4], max(widths.values())})
    for cmax in maxes:
        for cm in (2, 1, 4, 8):  # config-f first when capped widths make several fit
            if all(channels_for(r, cm, cmax) == c for r, c in widths.items()):
                return StyleGAN2Config(resolution, style_dim, n_mlp, cm, cmax)
    # Widths outside the rosinality table (e.g. restorekit's CPU-sized models): keep them explicit.
    return StyleGAN2Config(resolution, style_dim, n_mlp, 1, max(widths.values()),
                           channels=tuple(sorted(widths.items())))


def generator_from_state_dict(sd: Mapping[str, Any], *, prefix: str = "", latent_avg: Tensor | None = None,
                              source: str | os.PathLike[str] | None = None, **kwargs: Any) -> StyleGAN2Generator:
    """Build a generator whose architecture matches ``sd`` and load it strictly.

    ``prefix`` selects a sub-dict (pSp's ``"decoder."``). The FIR kernel buffers are derived
    constants: they may be absent, but when present must equal StyleGAN2's ``[1,3,3,1]`` filter.
    ``source``: the file ``sd`` was read from, named (with its safetensors ``format``) when it
    holds no generator (:class:`NotAGenerator`).
    """
    sd = _strip(sd, prefix)
    if not sd:
        raise NotAGenerator(f"no tensors{' under prefix ' + repr(prefix) if prefix else ''}", source)
    cfg = infer_config(sd, source=source)
    g = cfg.build(**kwargs)
    own = g.state_dict()
    kernels = {k for k in own if k.endswith(".blur.kernel") or k.endswith(".upsample.kernel")}
    missing = sorted(set(own) - set(sd) - kernels)
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"StyleGAN2 state dict ({cfg}) does not match: " + "; ".join(parts))
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"StyleGAN2 state dict has tensors of the wrong shape: {wrong[:4]}")
    for k in kernels & set(sd):
        if not torch.allclose(sd[k].float().cpu(), own[k].float(), atol=1e-6):
            raise CheckpointError(f"'{k}' is not StyleGAN2's {list(BLUR_KERNEL)} filter; "
                                  "other blur kernels are not supported")
    full = {k: (sd[k] if k in sd else own[k]) for k in own}
    g.load_state_dict(full, strict=True)
    if latent_avg is not None:
        g.set_latent_avg(latent_avg)
    return g.eval()


def _reason(exc: BaseException) -> str:
    """The informative first line of a ``torch.load`` failure."""
    msg = str(exc).split("WeightsUnpickler error:")[-1].strip()
    return msg.splitlines()[0] if msg else type(exc).__name__


def _holds_objects(path: Path, exc: BaseException) -> bool:
    """Whether a file that failed ``weights_only`` loading did so because its pickle names Python
    objects beyond tensors (rather than being damaged or no checkpoint at all)."""
    from restorekit.weights import unsafe_globals

    msg = str(exc)
    return ("Unsupported global" in msg or "add_safe_globals" in msg or "allowlisted" in msg
            or bool(unsafe_globals(path)))


#: Modules of the official StyleGAN2-ADA / StyleGAN3 code whose objects their network pickles hold.
_NVLABS_MODULES = ("dnnlib", "torch_utils", "training.networks")


def _network_pickle(path: Path) -> list[str]:
    """The official-code classes a plain (not zip) pickle names: a StyleGAN2-ADA/StyleGAN3 ``.pkl``."""
    import zipfile

    from restorekit.weights import pickle_globals

    try:
        if zipfile.is_zipfile(path) or path.read_bytes()[:1] != b"\x80":
            return []
    except OSError:
        return []
    return sorted(g for g in pickle_globals(path) if g.startswith(_NVLABS_MODULES))


def read_checkpoint(path: str | os.PathLike[str], *, allow_unsafe: bool = False) -> dict[str, Any]:
    """``torch.load`` a checkpoint on CPU without running code, unless ``allow_unsafe``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    nvlabs = _network_pickle(p)
    if nvlabs:
        raise CheckpointError(
            f"{p}: a StyleGAN2-ADA/StyleGAN3 network pickle ({', '.join(nvlabs[:3])}…): its networks are objects "
            "of the official code, which restorekit never unpickles (that runs code); where you trust the file, "
            "convert its G_ema to rosinality's format ({'g_ema': state_dict, 'latent_avg': ...}) and pass "
            "that .pt")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError; a damaged file: KeyError, struct.error…
        if not _holds_objects(p, exc):  # corrupt or not a checkpoint: unpickling it would not help
            raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({_reason(exc)})") from None
        if not allow_unsafe:
            raise UnsafeFileError(
                f"{p}: holds pickled Python objects beyond tensors (rosinality training checkpoints "
                "store an argparse Namespace under 'args'), and loading them can run code; pass "
                "--opt allow_unsafe=true (Python: allow_unsafe=True) only for a file you trust, or re-save it as "
                "{'g_ema': state_dict, 'latent_avg': ...}") from None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file fails here in many ways
            raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({_reason(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_rosinality(path: str | os.PathLike[str], *, key: str | None = None,
                    allow_unsafe: bool = False, **kwargs: Any) -> StyleGAN2Generator:
    """A :class:`StyleGAN2Generator` from a rosinality ``.pt`` file (``g_ema`` by default).

    ``key`` picks another entry (``"g"``); a bare state dict is accepted too. The file's
    ``latent_avg`` (if any) becomes the generator's :meth:`~StyleGAN2Generator.mean_latent`.
    ``kwargs`` go to the generator (e.g. ``impl``).
    """
    ckpt = read_checkpoint(path, allow_unsafe=allow_unsafe)
    if key is not None:
        if key not in ckpt:
            raise CheckpointError(f"{path}: no '{key}' entry (has {sorted(map(str, ckpt))[:8]})")
        sd = ckpt[key]
    elif any(k in ckpt for k in GENERATOR_KEYS):
        sd = ckpt[next(k for k in GENERATOR_KEYS if k in ckpt)]
    elif "style.1.weight" in ckpt:
        sd = ckpt
    else:
        raise CheckpointError(f"{path}: no generator found (expected 'g_ema' or 'g'; has "
                              f"{sorted(map(str, ckpt))[:8]})")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: the generator entry is a {type(sd).__name__}, not a state dict")
    la = ckpt.get("latent_avg") if sd is not ckpt else None
    return generator_from_state_dict(sd, latent_avg=la if isinstance(la, Tensor) else None, source=path, **kwargs)


def save_rosinality(generator: StyleGAN2Generator, path: str | os.PathLike[str],
                    latent_avg: Tensor | None = None) -> Path:
    """Write ``{"g_ema": state_dict, "latent_avg": ...}`` (the converted-official layout).

    ``latent_avg`` defaults to the generator's own when it has one; the write is atomic.
    """
    from restorekit.images import atomic_write_bytes

    sd = {k: v.detach().cpu().contiguous().clone() for k, v in generator.state_dict().items()}
    ckpt: dict[str, Any] = {"g_ema": sd}
    if latent_avg is None and generator.latent_avg.numel():
        latent_avg = generator.latent_avg
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().cpu().reshape(-1).clone()
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p
