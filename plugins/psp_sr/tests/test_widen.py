"""Widening a trained StyleGAN2 G and D: the same function, new channels that can learn, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from restorekit.training.trainer import TrainingError
from restorekit_psp_sr.discriminator import StyleGAN2Discriminator
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
from restorekit_psp_sr.train import load_generator
from restorekit_psp_sr.train_gan import GANTrainer
from restorekit_psp_sr.widen import WidenError, widen_state_dict

from test_train_gan import tiny_config, write_images

NARROW = {4: 16, 8: 16, 16: 8, 32: 4}
WIDE = {4: 16, 8: 16, 16: 12, 32: 8}


def scrambled(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (biases, noise strengths and all), as a trained network's are:
    freshly initialised zeros and ones would hide a wrongly placed block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 and p.numel() > 3 else 0.0))
    return module


def generator(channels: dict[int, int], style_dim: int = 16, seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    return StyleGAN2Generator(32, style_dim, n_mlp=2, channels=channels, impl="ref").eval()


def discriminator(channels: dict[int, int], seed: int = 0) -> StyleGAN2Discriminator:
    torch.manual_seed(seed)
    return StyleGAN2Discriminator(32, channels=channels, impl="ref").eval()


@pytest.mark.parametrize("wide_channels", [WIDE, {4: 24, 8: 20, 16: 12, 32: 8}])
def test_a_widened_generator_draws_the_same_images(wide_channels: dict[int, int]) -> None:
    narrow = scrambled(generator(NARROW), 1)
    wide = generator(wide_channels, seed=5)
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), wide))
    w = narrow.broadcast(narrow.map(torch.randn(3, 16, generator=torch.Generator().manual_seed(2))))
    noise = narrow.make_noise(3, torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = narrow.synthesize(w, noise=noise), wide.synthesize(w, noise=noise)
    assert a.abs().mean() > 0.1
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # The new channels are there and alive: their own weights are the wide network's random ones.
    new_rows = wide.convs[4].conv.weight[0, 4:]
    assert new_rows.shape[0] == 4 and new_rows.abs().mean() > 0.3


@pytest.mark.parametrize("wide_channels", [WIDE, {4: 24, 8: 20, 16: 12, 32: 8}])
def test_a_widened_discriminator_gives_the_same_logits(wide_channels: dict[int, int]) -> None:
    narrow = scrambled(discriminator(NARROW), 4)
    wide = discriminator(wide_channels, seed=6)
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), wide))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert a.abs().max() > 1e-2
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    if wide_channels[4] > NARROW[4]:  # the minibatch-stddev input stayed last, the new features feed nothing old
        head = wide.final_conv[0].weight
        torch.testing.assert_close(head[:16, -1] * wide.final_conv[0].scale,
                                   narrow.final_conv[0].weight[:, -1] * narrow.final_conv[0].scale)
        assert torch.all(head[:16, 16:24] == 0)


def test_the_zero_block_gets_gradients_so_training_can_connect_new_channels() -> None:
    narrow = scrambled(generator(NARROW), 1)
    wide = generator(WIDE, seed=5)
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), wide))
    conv = wide.convs[5].conv  # 32 px, 4 → 8 inputs and outputs
    assert torch.all(conv.weight[0, :4, 4:] == 0)
    w = wide.broadcast(wide.map(torch.randn(2, 16, generator=torch.Generator().manual_seed(2))))
    wide.synthesize(w).square().mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad[0, :4, 4:].abs().sum() > 0
    # And the old-to-old weights kept their effective value: stored × √(8/4) against the narrow scale.
    torch.testing.assert_close(conv.weight[0, :4, :4].detach() * conv.scale,
                               narrow.convs[5].conv.weight[0] * narrow.convs[5].conv.scale)


def test_widening_the_same_widths_is_a_copy() -> None:
    narrow = scrambled(generator(NARROW), 1)
    out = widen_state_dict(narrow.state_dict(), generator(NARROW, seed=9))
    assert all(torch.equal(out[k], v) for k, v in narrow.state_dict().items())


@pytest.mark.parametrize("other, match", [
    (lambda: generator(NARROW, style_dim=24), "style|cannot be widened"),  # a larger style: not a channel count
    (lambda: generator({4: 16, 8: 16, 16: 8, 32: 2}), "cannot be widened"),  # narrower at 32 px
    (lambda: StyleGAN2Generator(64, 16, n_mlp=2, channels={**NARROW, 64: 4}, impl="ref"), "not the same"),
    (lambda: generator({**NARROW}, seed=0).style, "not the same"),  # another module altogether
])
def test_what_cannot_be_widened_is_refused(other, match: str) -> None:
    with pytest.raises(WidenError, match=match):
        widen_state_dict(generator(NARROW).state_dict(), other())


def test_init_from_a_narrower_run_widens_it_and_trains_on(tmp_path: Path) -> None:
    faces = write_images(tmp_path / "faces")
    first = GANTrainer.build(tiny_config(faces, tmp_path / "a", steps=2), quiet=True)  # TINY: 16 px 8, 32 px 8
    first.fit()
    snap = tmp_path / "a" / "snapshot"
    wide = {4: 16, 8: 16, 16: 12, 32: 16}
    refused = GANTrainer.build(tiny_config(faces, tmp_path / "b", steps=3, channels=wide, init_from=str(snap)),
                               quiet=True)
    with pytest.raises(TrainingError, match="init_widen"):
        refused.init_weights(snap)
    second = GANTrainer.build(tiny_config(faces, tmp_path / "c", steps=3, channels=wide, init_from=str(snap),
                                          init_widen=True), quiet=True)
    second.init_weights(snap)
    assert second.nimg == 8 and second.D.channels[32] == 16
    narrow_ema = load_generator(str(snap / "generator.safetensors"), impl="ref")
    z = torch.randn(2, narrow_ema.z_dim, generator=torch.Generator().manual_seed(1))
    w = narrow_ema.broadcast(narrow_ema.map(z))
    with torch.no_grad():
        torch.testing.assert_close(second.G_ema.synthesize(w), narrow_ema.synthesize(w), atol=1e-5, rtol=1e-5)
    # G and its EMA share the new channels' starting values; the old ones differ as before.
    new_g, new_ema = second.G.convs[-1].conv.weight[0, 8:], second.G_ema.convs[-1].conv.weight[0, 8:]
    assert torch.equal(new_g, new_ema)
    result = second.fit()
    assert second.step == 3 and second.nimg == 8 + 1 * 4 and result  # the count goes on from the snapshot's step 2


def test_the_wide_cpu_recipe_is_cpu_toml_widened_at_the_top() -> None:
    from restorekit.training.config import load_config
    from restorekit_psp_sr.train_gan import GANConfig, GANModels

    recipes = Path(__file__).resolve().parents[1] / "recipes" / "prior128"
    base = load_config(GANConfig, recipes / "cpu.toml", out="o", data={"root": "d"})
    wide = load_config(GANConfig, recipes / "cpu_wide.toml", out="o", data={"root": "d"})
    assert base.channels is not None and wide.channels is not None
    assert {r for r in base.channels if wide.channels[r] != base.channels[r]} == {64, 128}
    assert wide.model_dump(exclude={"channels"}) == base.model_dump(exclude={"channels"})
    # Every network of cpu.toml's run widens into cpu_wide.toml's, and those into the GPU recipe's
    # (a GPU occasion may continue the CPU run rather than start from nothing).
    gpu = load_config(GANConfig, recipes / "gan.toml", out="o", data={"root": "d"})
    small, big, gpu_models = GANModels(base), GANModels(wide), GANModels(gpu)
    for name in ("G", "D", "G_ema"):
        widen_state_dict(getattr(small, name).state_dict(), getattr(big, name))
        widen_state_dict(getattr(big, name).state_dict(), getattr(gpu_models, name))
