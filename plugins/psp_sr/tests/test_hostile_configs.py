"""A model file's config that claims a network the file does not hold (a few bytes claiming
billions of parameters) is refused with one line naming the file, before anything is allocated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from restorekit.errors import RestorekitError
from restorekit_psp_sr import stylegan2
from restorekit_psp_sr.method import PSP_FORMAT, PSPModelError, load_psp_safetensors
from restorekit_psp_sr.train import STYLEGAN2_FORMAT, load_generator, save_stylegan2_safetensors
from tiny_models import save_tiny, tiny_generator

ENCODER = {"backbone": {"units": [1, 1, 2, 1], "widths": [16, 32, 64, 128], "se": True, "se_reduction": 8},
           "n_styles": 12, "style_dim": 100_000, "input_nc": 3, "input_size": 64, "type": "GradualStyleEncoder",
           "head_channels": 64, "coarse_ind": 3, "middle_ind": 7}
GENERATOR = {"resolution": 128, "style_dim": 100_000, "n_mlp": 2, "channel_multiplier": 1, "channel_max": 512}


@pytest.fixture
def built_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The default device each StyleGAN2 generator was built on."""
    devices: list[str] = []
    real = stylegan2.StyleGAN2Generator.__init__

    def record(self: object, *args: object, **kwargs: object) -> None:
        devices.append(torch.empty(0).device.type)
        real(self, *args, **kwargs)

    monkeypatch.setattr(stylegan2.StyleGAN2Generator, "__init__", record)
    return devices


def test_a_psp_file_claiming_huge_networks_is_refused_on_the_meta_device(tmp_path: Path,
                                                                        built_on: list[str]) -> None:
    path = tmp_path / "claims.safetensors"
    save_file({"latent_avg": torch.zeros(1)}, str(path),
              metadata={"format": PSP_FORMAT, "config": json.dumps({"encoder": ENCODER, "generator": GENERATOR})})
    with pytest.raises(PSPModelError, match=r"tensors do not match the stored architecture \(missing encoder\.") as e:
        load_psp_safetensors(path, impl="ref")
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert built_on == []  # refused at the encoder, before any generator was built
    # A file whose encoder fits but whose decoder claims more: the generator is only ever probed.
    good = save_tiny(tmp_path / "tiny.safetensors")
    built_on.clear()
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["generator"]["style_dim"] = 100_000
    lying = tmp_path / "lying.safetensors"
    save_file(tensors, str(lying), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(PSPModelError, match=r"lying.safetensors: .*decoder\..* is \(.*\), the config says"):
        load_psp_safetensors(lying, impl="ref")
    assert built_on == ["meta"]


def test_a_generator_file_claiming_a_huge_network_is_refused_on_the_meta_device(tmp_path: Path,
                                                                                built_on: list[str]) -> None:
    path = tmp_path / "g.safetensors"
    save_file({"x": torch.zeros(1)}, str(path),
              metadata={"format": STYLEGAN2_FORMAT, "config": json.dumps({"generator": GENERATOR})})
    with pytest.raises(RestorekitError, match=r"g.safetensors: tensors do not match the stored architecture"):
        load_generator(str(path), impl="ref")
    assert built_on == ["meta"]
    many = tmp_path / "many.safetensors"
    save_file({"x": torch.zeros(1)}, str(many),
              metadata={"format": STYLEGAN2_FORMAT, "config": json.dumps({"generator": {**GENERATOR, "n_mlp": 10**6}})})
    with pytest.raises(RestorekitError, match=r"many.safetensors: its generator config .* n_mlp 1000000 is out of range"):
        load_generator(str(many), impl="ref")
    # A genuine file still loads (built twice: probed, then for real).
    g = tiny_generator(1)
    real = save_stylegan2_safetensors(g, tmp_path / "real.safetensors", license="CC0-1.0")
    built_on.clear()
    assert load_generator(str(real), impl="ref").resolution == g.resolution
    assert built_on[:2] == ["meta", "cpu"]


def test_backbones_of_absurd_depth_are_refused() -> None:
    from restorekit_psp_sr.irse import BackboneConfig

    with pytest.raises(ValueError, match="out of range"):
        BackboneConfig((1000, 1, 1, 1))


@pytest.mark.parametrize("change, message", [({"n_styles": 100_000}, "n_styles must be 1 to 64"),
                                             ({"input_size": 2 ** 20}, "input_size must be a power of two")])
@pytest.mark.parametrize("kind", ["GradualStyleEncoder", "BackboneEncoder", "BackboneEncoderUsingLastLayerIntoW"])
def test_an_encoder_config_claiming_countless_heads_is_refused_at_once(tmp_path: Path, kind: str, change: dict,
                                                                       message: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Building on the meta device allocates no tensors but still makes every module: 100,000 heads
    took minutes and GiBs of Python objects before the shapes could be compared. Refused before
    any part of the encoder is made."""
    from restorekit_psp_sr import encoder as enc_module

    made: list[int] = []
    real = enc_module.make_body
    monkeypatch.setattr(enc_module, "make_body", lambda cfg: made.append(1) or real(cfg))
    encoder = {**ENCODER, "type": kind, "style_dim": 16, **change}
    path = tmp_path / "heads.safetensors"
    save_file({"latent_avg": torch.zeros(1)}, str(path),
              metadata={"format": PSP_FORMAT, "config": json.dumps({"encoder": encoder, "generator": GENERATOR})})
    with pytest.raises(PSPModelError, match=message):
        load_psp_safetensors(path, impl="ref")
    assert made == []
