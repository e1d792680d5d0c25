"""compare's decoded-input cache holds to its byte limit while the LR files are made, not only
after: a folder of thousands of images must not be held in memory at once."""

from __future__ import annotations

import gc
import weakref

import torch

from restorekit.degradations import parse_spec
from restorekit.harness import inputs as inputs_mod
from restorekit.images import save_image


def test_the_cache_stays_within_its_limit_while_lr_files_are_made(tmp_path, monkeypatch):
    hr = tmp_path / "hr"
    hr.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        save_image(torch.rand(1, 3, 32, 32, generator=g), hr / f"{i:02d}.png")
    pair_bytes = (16 * 16 + 32 * 32) * 3 * 4
    monkeypatch.setattr(inputs_mod, "CACHE_BYTES", 3 * pair_bytes)  # room for three pairs

    alive: list[weakref.ref] = []
    most = [0]
    real_from_pil, real_png_bytes = inputs_mod.from_pil, inputs_mod.png_bytes

    def from_pil(pil):  # the LR tensors the cache keeps
        t = real_from_pil(pil)
        alive.append(weakref.ref(t))
        return t

    def png_bytes(pil):  # once per image made: how many earlier LR tensors are still held
        gc.collect()
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return real_png_bytes(pil)

    monkeypatch.setattr(inputs_mod, "from_pil", from_pil)
    monkeypatch.setattr(inputs_mod, "png_bytes", png_bytes)
    made = inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "lr")
    assert len(made.pairs) == 24 and len(alive) == 24
    assert most[0] <= 3, most[0]  # was 23: every image kept until the loop ended
    assert made._cached_bytes <= 3 * pair_bytes and len(made._cache) == 3
    lr, hr_t = made.load(made.pairs[-1])  # the newest pairs are the ones kept
    assert lr.shape[-1] == 16 and hr_t.shape[-1] == 32
