"""Long runs: what grows with the run must grow linearly, and what a killed run leaves must not stay.

- ``generate`` rewrote its whole manifest before every image: quadratic in the seeds (100,000
  seeds: hours and ~100 GB written). It now appends one journal line per image.
- ``run``/``degrade``/``generate`` never removed the temp file a kill -9 left mid-write.
- An error said mid-run was printed onto the progress bar's line (two consoles).
- The sign test's p-value underflowed to 0 at a few thousand images.
- ``degrade``'s end line did not say why files were skipped, as ``run``'s does.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from torch import nn

from restorekit import cli
from restorekit.cli import build_cli
from restorekit.images import save_image

HERE = Path(__file__).resolve().parent


class TinyGenerator(nn.Module):
    """A generator small enough to make hundreds of 8-px images in a second."""

    z_dim = style_dim = 4
    n_styles = 2
    resolution = 8

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.m = nn.Parameter(torch.randn(4, 4, generator=g))
        self.basis = nn.Parameter(torch.randn(4, 3, 8, 8, generator=g))

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.m)

    def mean_latent(self) -> torch.Tensor:
        return self.map(torch.randn(64, 4, generator=torch.Generator().manual_seed(0))).mean(0)

    def synthesize(self, w_plus: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.einsum("nd,dchw->nchw", w_plus.mean(1), self.basis))


def use_tiny_generator(generate: Any, patch: Any) -> None:
    """Make ``generate --generator tiny`` build :class:`TinyGenerator` (``patch(obj, name, value)``)."""
    patch(generate, "check_generator", lambda name: None)
    patch(generate, "build_generator", lambda *a, **k: TinyGenerator().eval())


def gen(out: Path, seeds: str, *args: str) -> tuple[int, dict[str, Any] | str]:
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "tiny", "--seeds", seeds, "--output", str(out),
                                         "--device", "cpu", "--json", *args])
    return r.exit_code, (json.loads(r.stdout[r.stdout.index("{"):]) if r.exit_code == 0 else r.output)


@pytest.fixture
def tiny(monkeypatch):
    import restorekit.commands.generate as generate

    use_tiny_generator(generate, monkeypatch.setattr)
    return generate


def listed(out: Path) -> list[str]:
    return json.loads((out / "generate.json").read_text())["images"]


# ------------------------------------------------------------------------------------------------
# 1. generate's manifest: linear cost, and consistent after a kill


def test_generate_writes_bytes_linear_in_the_seeds(tiny, tmp_path: Path, monkeypatch) -> None:
    """Everything written to list the images (manifest rewrites and journal lines) grows linearly:
    the old per-image rewrite of the whole list wrote ~35× more for 8× the seeds."""
    counts = {"bytes": 0, "rewrites": 0}
    real_atomic = tiny.atomic_write_bytes

    def atomic(path: Path, data: bytes, **kw: Any) -> None:
        counts["bytes"] += len(data)
        counts["rewrites"] += 1
        real_atomic(path, data, **kw)

    real_append = getattr(tiny, "open_append", None)

    class Counted:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: Any) -> int:
            n = self.f.write(data)
            counts["bytes"] += n
            return n

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    monkeypatch.setattr(tiny, "atomic_write_bytes", atomic)
    monkeypatch.setattr(tiny, "open_append", lambda *a, **k: Counted(real_append(*a, **k)), raising=False)
    cost, rewrites = {}, {}
    for n in (20, 160):
        counts.update(bytes=0, rewrites=0)
        out = tmp_path / f"g{n}"
        code, doc = gen(out, f"0-{n - 1}")
        assert code == 0, doc
        assert len(doc["written"]) == n and listed(out) == [f"seed{s:04d}.png" for s in range(n)]
        assert not (out / ".generate.journal").exists()  # folded at the end
        cost[n], rewrites[n] = counts["bytes"], counts["rewrites"]
    assert cost[160] / cost[20] < 10, cost  # linear (8× the seeds); the old rewrite per image: ~40×
    assert rewrites == {20: 2, 160: 2}  # before the first image, and at the end: not once per image


KILLED_RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {here!r})
    import test_long_runs as t
    import restorekit.commands.generate as generate
    from restorekit.cli import main
    t.use_tiny_generator(generate, setattr)
    real = generate.save_image

    def save(img, path, **kw):
        if path.name == "seed0005.png":
            if {saved!r}:
                real(img, path, **kw)
            os._exit(9)  # as kill -9: no cleanup, no fold
        return real(img, path, **kw)

    generate.save_image = save
    sys.argv = ["restorekit", "generate", "--generator", "tiny", "--seeds", "0-7", "--output", {out!r}, "-q",
                "--device", "cpu"]
    main()
""")


@pytest.mark.parametrize("saved", [False, True])
def test_generate_killed_mid_run_is_resumed_from_its_journal(tiny, tmp_path: Path, saved: bool) -> None:
    """A process killed outright (nothing folded) leaves the manifest and its journal; the rerun folds
    the journal first: the image listed but missing is made, the ones written are kept, none unknown."""
    out = tmp_path / "gen"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", KILLED_RUN.format(here=str(HERE), saved=saved, out=str(out))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 9, r.stderr
    assert listed(out) == ["seed0000.png"]  # written once, before the first image
    journal = (out / tiny.JOURNAL).read_text().splitlines()
    assert [json.loads(ln) for ln in journal[1:]] == [f"seed{s:04d}.png" for s in range(1, 6)]
    assert (out / "seed0005.png").exists() == saved and not (out / "seed0006.png").exists()
    # A line cut off by the kill mid-append (its image not written yet) is left out, not an error.
    with open(out / tiny.JOURNAL, "a") as f:
        f.write('"seed00')
    code, doc = gen(out, "0-7")
    assert code == 0, doc
    assert doc["written"] == [str(out / f"seed{s:04d}.png") for s in range(5 if not saved else 6, 8)]
    assert len(doc["skipped"]) == (5 if not saved else 6)
    assert listed(out) == [f"seed{s:04d}.png" for s in range(8)]
    assert not (out / tiny.JOURNAL).exists()


def test_a_left_journal_is_folded_even_when_the_rerun_writes_nothing(tiny, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert gen(out, "0-3")[0] == 0
    settings = json.loads((out / "generate.json").read_text())["settings"]
    # As a killed run leaves it: the manifest lists the first image, the journal the others.
    (out / "generate.json").write_text(json.dumps({"format": "restorekit.generate/1", "settings": settings,
                                                   "images": ["seed0000.png"]}))
    (out / tiny.JOURNAL).write_text(json.dumps({"format": tiny.JOURNAL_FORMAT, "settings": settings}) + "\n"
                                    + "".join(json.dumps(f"seed{s:04d}.png") + "\n" for s in (1, 2, 3)))
    code, doc = gen(out, "0-3")
    assert code == 0 and doc["written"] == [] and len(doc["skipped"]) == 4, doc
    assert listed(out) == [f"seed{s:04d}.png" for s in range(4)] and not (out / tiny.JOURNAL).exists()


def test_a_journal_of_other_settings_lists_nothing(tiny, tmp_path: Path) -> None:
    """Names a journal lists under settings the manifest does not record are not taken as made with
    the manifest's: those images stay unknown (refused without --overwrite)."""
    out = tmp_path / "gen"
    assert gen(out, "0-1")[0] == 0
    settings = json.loads((out / "generate.json").read_text())["settings"]
    (out / "generate.json").write_text(json.dumps({"format": "restorekit.generate/1", "settings": settings,
                                                   "images": ["seed0000.png"]}))
    (out / tiny.JOURNAL).write_text(json.dumps({"format": tiny.JOURNAL_FORMAT,
                                                "settings": {**settings, "truncation": 0.1}}) + "\n"
                                    + json.dumps("seed0001.png") + "\n")
    code, text = gen(out, "0-1")
    assert code == 2 and "seed0001.png" in text and "--overwrite" in text
    assert listed(out) == ["seed0000.png"] and not (out / tiny.JOURNAL).exists()


# ------------------------------------------------------------------------------------------------
# 2. temp files a killed write left


def plant_temps(out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    old, fresh = out / ".x.png.a1b2c3d4.part", out / ".y.png.e5f6g7h8.part"
    old.write_bytes(b"\0" * 1000)
    fresh.write_bytes(b"\0" * 1000)
    then = time.time() - 120
    os.utime(old, (then, then))  # two minutes old: its writer was killed
    return old, fresh


def test_output_held_sweeps_temp_files_a_killed_write_left(tmp_path: Path) -> None:
    from restorekit.batch import output_held

    out = tmp_path / "out"
    old, fresh = plant_temps(out)
    keep = out / ".notes.txt"
    keep.write_text("the user's")
    os.utime(keep, (time.time() - 3600,) * 2)
    with output_held(out, "run"):
        assert not old.exists()  # swept once the folder is held
        assert fresh.exists()  # a write possibly under way: left
    assert keep.exists() and fresh.exists()


def test_degrade_rerun_removes_the_temp_file_a_kill_left(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)), src / "a.png")
    out = tmp_path / "lr"
    old, fresh = plant_temps(out)
    r = CliRunner().invoke(build_cli(), ["degrade", "--input", str(src), "--output", str(out), "--spec", "bicubic:4"])
    assert r.exit_code == 0, r.output
    assert (out / "a.png").is_file() and not old.exists() and fresh.exists()


def test_degrade_end_line_says_why_files_were_skipped_as_run_does(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)), src / "a.png")
    args = ["degrade", "--input", str(src), "--output", str(tmp_path / "lr"), "--spec", "bicubic:4"]
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0 and "1 written, 0 skipped (exist; --overwrite replaces), 0 failed" in r.output, r.output
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0 and "0 written, 1 skipped (exist; --overwrite replaces), 0 failed" in r.output, r.output


def test_generate_rerun_removes_the_temp_file_a_kill_left(tiny, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert gen(out, "0-1")[0] == 0
    old, fresh = plant_temps(out)
    code, doc = gen(out, "0-1")
    assert code == 0 and not old.exists() and fresh.exists()


# ------------------------------------------------------------------------------------------------
# 3. errors said mid-run go above the progress bar


def terminal(monkeypatch) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=buf, force_terminal=True, width=100, highlight=False,
                                                    soft_wrap=True))
    return buf


def error_starts_a_line(text: str) -> bool:
    """Whether the error line is printed after the bar's line was cleared (or a line break)."""
    i = text.index("error:")
    before = text[:i].replace("\x1b[31m", "")
    return before.endswith("\r\x1b[2K") or before.endswith("\n")


def test_progress_bar_shares_the_console_errors_are_printed_on(monkeypatch) -> None:
    from restorekit.batch import progress_bar

    buf = terminal(monkeypatch)
    with progress_bar(3, "degrade", False) as advance:
        advance("a.png")
        cli.error_line("b.png: broken")
        advance("b.png")
        advance("c.png")
    text = buf.getvalue()
    assert "degrade" in text and "0/3" in text, repr(text)  # the bar is drawn where errors go
    assert error_starts_a_line(text), repr(text)


def test_torchrun_progress_bar_shares_the_console_errors_are_printed_on(monkeypatch) -> None:
    from restorekit.sharding import Job

    class Store:
        def __init__(self) -> None:
            self.n: dict[str, int] = {}

        def add(self, key: str, by: int) -> int:
            self.n[key] = self.n.get(key, 0) + by
            return self.n[key]

    buf = terminal(monkeypatch)
    with Job(store=Store()).progress(3, "run", False) as advance:
        advance("a.png")
        cli.error_line("b.png: broken")
        advance("b.png")
    text = buf.getvalue()
    assert "run (1 processes)" in text, repr(text)
    assert error_starts_a_line(text), repr(text)


# ------------------------------------------------------------------------------------------------
# 4. the sign test's p-value never reads 0


@pytest.mark.parametrize("better,worse", [(3000, 0), (0, 3000), (2990, 10), (30_000, 0), (29_000, 1000)])
def test_sign_test_p_is_never_zero_for_a_finite_sample(better: int, worse: int) -> None:
    from restorekit.harness import paired

    p = paired.sign_test_p(better, worse)
    assert 0 < p < 1e-300, p  # it was 0.0: certainty, which no finite sample gives
    assert p == paired.P_FLOOR == sys.float_info.min  # a float, an upper bound of the true p
    assert paired.paired_stat({f"i{k}": 1.0 for k in range(better + worse)},
                              {f"i{k}": 0.0 if k < better else 2.0 for k in range(better + worse)},
                              higher_is_better=True).p == p


def test_sign_test_p_above_the_floor_is_unchanged() -> None:
    from restorekit.harness.paired import sign_test_p

    assert sign_test_p(1000, 0) == 2 / 2**1000  # ≈ 1.9e-301: a float, kept as it is
    assert sign_test_p(10, 0) == 0.001953125
