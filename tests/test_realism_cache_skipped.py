"""The reference-statistics cache hid unreadable reference files on the second run: the first run
said "left out" and exited 1, the second read the cache, said nothing and exited 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restorekit.errors import RestorekitError
from restorekit.harness import realism as R
from restorekit.testing.data import smooth_image


def test_files_left_out_are_replayed_from_the_cache(tmp_path: Path) -> None:
    alex = R.build_space("alex", allow_random=True)
    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(smooth_image(32, 32, i)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    first: list[str] = ["an earlier line"]
    a = R.reference_statistics(folder, [alex], cache_dir=cache, skipped=first)
    assert len(first) == 2 and "broken.png" in first[1] and a["alex_conv5"].n == 4
    again: list[str] = []
    calls = []
    orig = alex._features
    alex._features = lambda x: calls.append(1) or orig(x)  # type: ignore[method-assign]
    b = R.reference_statistics(folder, [alex], cache_dir=cache, skipped=again)
    assert calls == [] and again == first[1:]  # read from the cache, the same line
    np.testing.assert_array_equal(a["alex_conv5"].mu, b["alex_conv5"].mu)
    # A caller that lets no file be left out gets the error, as without the cache.
    with pytest.raises(RestorekitError, match="broken.png"):
        R.reference_statistics(folder, [alex], cache_dir=cache)
    # A clean set replays nothing.
    (folder / "broken.png").unlink()
    clean: list[str] = []
    R.reference_statistics(folder, [alex], cache_dir=cache, skipped=clean)
    R.reference_statistics(folder, [alex], cache_dir=cache, skipped=clean)
    assert clean == []


def test_a_cache_written_before_left_out_files_were_recorded_is_computed_again(tmp_path: Path) -> None:
    alex = R.build_space("alex", allow_random=True)
    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(32, 32, i)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    R.reference_statistics(folder, [alex], cache_dir=cache, skipped=[])
    (f,) = cache.glob("*.npz")
    with np.load(f) as z:  # as the old code wrote it: no "skipped"
        old = {k: z[k] for k in z.files if k != "skipped"}
    np.savez(f, **old)
    lines: list[str] = []
    R.reference_statistics(folder, [alex], cache_dir=cache, skipped=lines)
    assert len(lines) == 1 and "broken.png" in lines[0]
