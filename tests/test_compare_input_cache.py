"""compare's decoded-input cache holds to its byte limit while the LR files are made, not only
after: a folder of thousands of images must not be held in memory at once."""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from restorekit.degradations import parse_spec
from restorekit.harness import inputs as inputs_mod
from restorekit.images import save_image

PAIR_BYTES = (16 * 16 + 32 * 32) * 3 * 4  # one ×2 pair of a 32-px image, float32


def _hr_folder(tmp_path: Path, n: int, side: int = 32) -> Path:
    hr = tmp_path / "hr"
    hr.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        save_image(torch.rand(1, 3, side, side, generator=g), hr / f"{i:02d}.png")
    return hr


def test_the_cache_stays_within_its_limit_while_lr_files_are_made(tmp_path, monkeypatch):
    hr = _hr_folder(tmp_path, 10)
    monkeypatch.setattr(inputs_mod, "CACHE_BYTES", 3 * PAIR_BYTES)  # room for three pairs

    alive: list[weakref.ref] = []
    most = [0]
    real_from_pil, real_png_bytes = inputs_mod.from_pil, inputs_mod.png_bytes

    def from_pil(pil):  # the LR tensors the cache keeps
        t = real_from_pil(pil)
        alive.append(weakref.ref(t))
        return t

    def png_bytes(pil):  # once per image made: how many earlier LR tensors are still held (freed by refcount)
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return real_png_bytes(pil)

    monkeypatch.setattr(inputs_mod, "from_pil", from_pil)
    monkeypatch.setattr(inputs_mod, "png_bytes", png_bytes)
    made = inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "lr")
    assert len(made.pairs) == 10 and len(alive) == 10
    assert most[0] <= 3, most[0]  # was 9: every image kept until the loop ended
    assert made._cached_bytes <= 3 * PAIR_BYTES and len(made._cache) == 3


def test_each_pass_over_a_set_larger_than_the_cache_reads_what_fits_from_memory(tmp_path, monkeypatch):
    """Methods read the pairs in the same order, one pass each: a least-recently-used cache smaller
    than the set missed on every read of every pass (each pair evicted just before it was needed)."""
    hr = _hr_folder(tmp_path, 10)
    monkeypatch.setattr(inputs_mod, "CACHE_BYTES", 4 * PAIR_BYTES)
    made = inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "lr")
    reads: list[str] = []
    real_read = inputs_mod.read_image

    def read_image(path, **kw):
        reads.append(path.name)
        return real_read(path, **kw)

    monkeypatch.setattr(inputs_mod, "read_image", read_image)
    for _ in range(3):  # three methods, each over every pair
        got = [made.load(p) for p in made.pairs]
        assert [lr.shape[-1] for lr, _ in got] == [16] * 10
    # the first four pairs come from memory each pass; the other six are read (LR and HR) each pass
    assert len(reads) == 3 * 6 * 2, reads
    assert made._cached_bytes <= 4 * PAIR_BYTES


def test_lr_files_made_before_a_stop_are_reused_by_the_next_run(tmp_path, monkeypatch):
    """The LR manifest was written only once every LR file was made: compare stopped part-way
    through a large set made every LR file again on the next run."""
    hr = _hr_folder(tmp_path, 8)
    monkeypatch.setattr(inputs_mod, "MANIFEST_EVERY_S", 0.0)  # write after every LR file
    made: list[int] = []
    real_degrade = inputs_mod.degrade_hr

    def degrade_hr(*a, **kw):
        if len(made) == 5:
            raise KeyboardInterrupt  # the run is stopped while making the sixth
        made.append(1)
        return real_degrade(*a, **kw)

    monkeypatch.setattr(inputs_mod, "degrade_hr", degrade_hr)
    try:
        inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out")
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the stand-in stop did not happen")
    monkeypatch.setattr(inputs_mod, "degrade_hr", real_degrade)
    again: list[str] = []

    def counting(hr_t, *a, **kw):
        again.append(str(kw.get("where")))
        return real_degrade(hr_t, *a, **kw)

    monkeypatch.setattr(inputs_mod, "degrade_hr", counting)
    second = inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out")
    assert len(second.pairs) == 8 and not second.failures
    assert sorted(Path(w).stem for w in again) == ["05", "06", "07"], again


def test_lr_files_listed_by_other_core_code_are_made_again(tmp_path, monkeypatch):
    """A compare stopped before compare.json recorded its code left a manifest; resumed after an
    upgrade, its LR files (another version's built-in degradations) were reused as this code's."""
    hr = _hr_folder(tmp_path, 3, side=16)
    inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out", core_code="aaaa")
    made: list[str] = []
    real_degrade = inputs_mod.degrade_hr

    def counting(hr_t, *a, **kw):
        made.append(Path(str(kw.get("where"))).stem)
        return real_degrade(hr_t, *a, **kw)

    monkeypatch.setattr(inputs_mod, "degrade_hr", counting)
    inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out", core_code="aaaa")
    assert made == []  # the same code: reused
    inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out", core_code="bbbb")
    assert sorted(made) == ["00", "01", "02"]
    inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out", core_code="bbbb")
    assert sorted(made) == ["00", "01", "02"]  # and recorded as the new code's
