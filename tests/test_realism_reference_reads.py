"""realism hashes each reference file once per run, whatever the number of feature spaces, and
the cache key is the one earlier versions wrote (their cached statistics stay valid)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from restorekit.harness import realism as R
from restorekit.harness.realism import evaluate
from restorekit.images import save_image


class MeanSpace(R.FeatureSpace):
    """Per-channel means and a pooled 2×2 grid: a cheap space with a network to hash."""

    dim = 15

    def __init__(self, name: str) -> None:
        super().__init__("cpu")
        self.name, self.summary = name, name
        self.net = nn.AdaptiveAvgPool2d(2)

    def network(self) -> nn.Module:
        return self.net

    def _features(self, images: Tensor) -> Tensor:
        return torch.cat([images.mean((2, 3)), self.net(images).flatten(1)], 1)


def test_each_reference_file_is_hashed_once_for_all_spaces(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "ref"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        save_image(torch.rand(1, 3, 16, 16, generator=g), folder / f"{i}.png")
    spaces = [MeanSpace("a"), MeanSpace("b"), MeanSpace("c")]
    hashed: list[Path] = []
    real = evaluate._content_digest  # (a file is hashed by its open descriptor: a FIFO is never read)

    def counting(path, *args, **kwargs):
        hashed.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(evaluate, "_content_digest", counting)
    first = R.reference_statistics(folder, spaces, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in hashed) == [f"{i}.png" for i in range(5)]  # was 3 reads of each
    hashed.clear()
    again = R.reference_statistics(folder, spaces, cache_dir=tmp_path / "cache")  # all cached
    assert len(hashed) == 5 and set(again) == {"a", "b", "c"}
    torch.testing.assert_close(torch.from_numpy(again["b"].mu), torch.from_numpy(first["b"].mu))


def test_the_cache_key_is_unchanged(tmp_path: Path) -> None:
    paths = []
    for i, data in enumerate([b"one", b"two", b"three"]):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(data)
    space = MeanSpace("a")
    h = hashlib.sha256(space.identity.encode())
    for d in sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths):
        h.update(d.encode())
    assert R.reference_key(paths, space) == h.hexdigest()
    assert R.reference_key(paths, space, digests=R.file_digests(paths)) == h.hexdigest()
