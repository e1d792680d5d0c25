"""What a kill between two writes leaves behind: each case is the state after the first write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from restorekit import weights as W
from restorekit.errors import IntegrityError, RestorekitError
from restorekit.harness.outdir import has_outputs
from restorekit.harness.realism.evaluate import _cached_skipped, load_statistics, save_statistics
from restorekit.harness.realism.frechet import FeatureStats
from restorekit.training.trainer import trim_log
from test_weights import ckpt_bytes, home, spec_for, specs  # noqa: F401 (fixtures)


def test_trusted_import_records_first_use_before_the_manifest(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after one of the two records: the first-use hash must be the one that survived,
    or `weights rm` would forget the only record and let another file in with --trust."""
    first, other = tmp_path / "first.pt", tmp_path / "other.pt"
    first.write_bytes(ckpt_bytes(1, 500))
    other.write_bytes(ckpt_bytes(2, 500))
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # stands for the kill between the two writes

    with monkeypatch.context() as m:
        m.setattr(W.cache, "write_manifest", killed)
        with pytest.raises(KeyboardInterrupt):
            W.import_file("nohash", first, trust=True)
    W.remove("nohash")
    with pytest.raises(IntegrityError, match="this cache took"):
        W.import_file("nohash", other, trust=True)


def test_a_cut_short_realism_cache_entry_reads_as_unreadable(tmp_path: Path) -> None:
    good = save_statistics(tmp_path / "s.npz", FeatureStats(np.zeros(3), np.eye(3), 5), space="x", key="k")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(RestorekitError, match="not a realism statistics file"):
        load_statistics(cut, key="k")
    assert _cached_skipped(cut) is None  # recomputed and overwritten by the caller
    assert load_statistics(good, key="k").n == 5


def test_a_leftover_temp_file_is_not_an_output(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "m"
    folder.mkdir(parents=True)
    (folder / ".img0.png.abc123de.part").write_bytes(b"half")
    assert not has_outputs(tmp_path, "m")
    (folder / ".a.png").write_bytes(b"png")  # an input named .a.png: a real output, hidden or not
    assert has_outputs(tmp_path, "m")
    (folder / ".a.png").unlink()
    (folder / "img0.png").write_bytes(b"png")
    assert has_outputs(tmp_path, "m")


def test_trim_log_replaces_the_log_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill while the trimmed log is written keeps the old log, not a truncated one."""
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    log.write_text("\n".join(lines) + "\n{\"step\": 6, \"lo", encoding="utf-8")
    before = log.read_bytes()
    import os

    real_replace = os.replace

    def killed(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trim_log(log, 3)
    assert log.read_bytes() == before
    monkeypatch.setattr(os, "replace", real_replace)
    trim_log(log, 3)
    assert log.read_text(encoding="utf-8") == "".join(ln + "\n" for ln in lines[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


def test_a_compare_or_train_folder_loses_only_its_own_leftover_temp_files(tmp_path: Path) -> None:
    """compare's --out (once accepted) and train's run folder: the temp files a write cut short by a
    kill left (.NAME.<8 random>.part), in the folders restorekit writes, older than a minute (another
    rank's write in progress is younger). A user's own files, even named *.part, stay."""
    import os
    import time

    from restorekit.images import is_temp_name, sweep_temp_files
    from restorekit.training.trainer import run_folder_lock

    assert is_temp_name(".img0.png.a8b1k2z_.part") and not is_temp_name(".film.mkv.part")
    nested = tmp_path / "val"
    deep = nested / "user"
    deep.mkdir(parents=True)
    old = [tmp_path / ".log.jsonl.k2j3x9a1.part", nested / ".img0.png.a8b1k2z_.part"]
    young = nested / ".img1.png.q9z8w7v6.part"
    kept = [nested / "img0.png", tmp_path / "notes.part", tmp_path / ".film.mkv.part", nested / ".hidden",
            deep / ".img2.png.a8b1k2z_.part"]  # not a folder restorekit writes
    for p in [*old, young, *kept]:
        p.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for p in [*old, *kept]:
        os.utime(p, (hour_ago, hour_ago))
    with run_folder_lock(tmp_path):
        assert not any(p.exists() for p in old)
        assert young.exists() and all(p.exists() for p in kept)
    assert sweep_temp_files([tmp_path / "missing"]) == 0


def test_compare_sweeps_only_once_the_folder_is_accepted(hr_folder: Path, tmp_path: Path) -> None:
    import os
    import time

    from click.testing import CliRunner

    from restorekit.cli import build_cli

    out = tmp_path / "out"
    args = ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
            "--metrics", "psnr_rgb", "--device", "cpu"]
    assert CliRunner().invoke(build_cli(), args).exit_code == 0
    left = out / "outputs" / "bicubic" / ".img0.png.zz11yy22.part"
    left.write_bytes(b"half")
    hour_ago = time.time() - 3600
    os.utime(left, (hour_ago, hour_ago))
    refused = CliRunner().invoke(build_cli(), [*args[:5], "4", *args[6:]])  # another scale: refused
    assert refused.exit_code == 2 and left.exists()
    assert CliRunner().invoke(build_cli(), args).exit_code == 0
    assert not left.exists()
