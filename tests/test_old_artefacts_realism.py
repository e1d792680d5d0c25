"""Reference-statistics cache files of earlier restorekit versions, built by hand as they were
written: statistics computed by other code (the image decoding, the feature spaces) are computed
again, never read back as this code's."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from restorekit.harness import realism as R
from restorekit.harness.realism import spaces as S
from restorekit.images import save_image


class MeanSpace(R.FeatureSpace):
    dim = 3

    def __init__(self) -> None:
        super().__init__("cpu")
        self.name, self.summary = "means", "means"
        self.net = nn.Identity()

    def network(self) -> nn.Module:
        return self.net

    def _features(self, images: Tensor) -> Tensor:
        return images.mean((2, 3))


def _reference(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "ref"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        save_image(torch.rand(1, 3, 16, 16, generator=g), folder / f"{i}.png")
    return sorted(folder.iterdir())


def _old_cache_file(cache: Path, name: str, identity: str, paths: list[Path], *, skipped: bool = True) -> Path:
    """``<space>-<key[:24]>.npz`` as realism wrote it (key: sha256 of the space's identity — name and
    the hash of its weights and preprocessing version "1" — then the files' sorted sha256), holding
    statistics other code computed (here: all zeros)."""
    h = hashlib.sha256(identity.encode())
    for d in sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths):
        h.update(d.encode())
    key = h.hexdigest()
    buf = io.BytesIO()
    extra = {"skipped": np.array([], dtype=np.str_)} if skipped else {}
    np.savez(buf, mu=np.zeros(3), sigma=np.zeros((3, 3)), n=np.int64(len(paths)), space=np.str_(identity),
             key=np.str_(key), **extra)
    cache.mkdir(exist_ok=True)
    f = cache / f"{name}-{key[:24]}.npz"
    f.write_bytes(buf.getvalue())
    return f


def test_statistics_cached_by_other_code_are_computed_again(tmp_path: Path) -> None:
    """The key named the space's weights and a hand-kept version, not the code that decoded the
    files and computed the features: a cache file of an earlier restorekit (whose image decoding
    has since changed, e.g. for 17- to 32-bit grey and float grey) was read back as this code's."""
    paths = _reference(tmp_path)
    space = MeanSpace()
    old_identity = f"means:{S._hash_module(space.network(), 'means', '1')}"
    cache = tmp_path / "cache"
    stale = _old_cache_file(cache, "means", old_identity, paths)
    got = R.reference_statistics(paths, [space], cache_dir=cache)["means"]
    want = R.reference_statistics(paths, [space])["means"]
    np.testing.assert_allclose(got.mu, want.mu)
    assert not np.allclose(got.mu, 0)
    assert stale.is_file()  # the user's cache file is left as it was (another key)
    assert space.identity != old_identity


def test_the_lpips_spaces_name_the_code_too() -> None:
    alex = object.__new__(S.LpipsBackboneSpace)  # (its identity only: no AlexNet built)
    alex._identity, alex.name, alex.input_size = None, "alex_conv5", 128
    alex._scaling, alex._net = nn.Identity(), nn.Conv2d(3, 2, 1)
    old = f"alex_conv5@128:{S._hash_module(alex.network(), 'alex_conv5', '128', '1')}"
    first = alex.identity
    assert first != old and first.startswith("alex_conv5@128:")
    alex._identity = None
    assert alex.identity == first  # stable within a version


def test_statistics_of_this_code_are_reused(tmp_path: Path) -> None:
    paths = _reference(tmp_path)
    space = MeanSpace()
    cache = tmp_path / "cache"
    R.reference_statistics(paths, [space], cache_dir=cache)
    calls: list[int] = []
    orig = space._features
    space._features = lambda x: calls.append(1) or orig(x)  # type: ignore[method-assign]
    R.reference_statistics(paths, [space], cache_dir=cache)
    assert calls == []


def test_a_cache_file_from_before_skipped_files_were_recorded_is_computed_again(tmp_path: Path) -> None:
    paths = _reference(tmp_path)
    space = MeanSpace()
    cache = tmp_path / "cache"
    _old_cache_file(cache, "means", space.identity, paths, skipped=False)
    got = R.reference_statistics(paths, [space], cache_dir=cache)["means"]
    assert not np.allclose(got.mu, 0)
