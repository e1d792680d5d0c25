"""Fixes from the audit of ``restorekit degrade``: the seed is recorded where a step draws from it,
whatever the spec's scale; a rerun in another format beside LR files made otherwise is refused;
the ``--ext jpg`` warning is said under ``-q`` too, by the main process only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.degradations import Bicubic, Chain, Noise, ScaleParams, SigmaParams, parse_spec
from restorekit.interfaces import Degradation
from restorekit.provenance import read_note
from restorekit.run_record import degrade_settings, draws_from_seed
from restorekit.sharding import Job

JPG_WARNING = "warning: --ext jpg re-encodes each LR at JPEG quality 95 after the spec"


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def hr_folder(path: Path, names: tuple[str, ...] = ("a",), side: int = 64) -> Path:
    """A folder of small random RGB PNGs, one per name."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path / f"{name}.png")
    return path


class Nearest(Degradation):
    """A plugin-like step that draws nothing: every scale-th pixel."""

    name: ClassVar[str] = "nearest_t"
    Params = ScaleParams

    def __call__(self, hr: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        s = int(self.params.scale)  # type: ignore[attr-defined]
        return hr[..., ::s, ::s].clone()


class Dropout(Degradation):
    """A plugin-like step that draws from the generator it is given."""

    name: ClassVar[str] = "dropout_t"
    Params = SigmaParams

    def __call__(self, hr: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        keep = torch.rand(hr.shape, generator=generator) > 0.5
        return hr * keep


class NoisyBicubic(Bicubic):
    """A plugin's subclass of a built-in step that draws: judged by its behaviour, not its parent."""

    def __call__(self, hr: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        out = super().__call__(hr, generator=generator)
        return (out + 0.01 * torch.randn(out.shape, generator=generator)).clamp(0, 1)


def test_the_seed_is_recorded_where_a_step_draws_whatever_the_scale() -> None:
    for spec in ("bicubic:64", "bicubic:33", "bicubic:8+bicubic:8", "blur:1+bicubic:64+jpeg:50",
                 "bicubic:64+bicubic:64+bicubic:64"):
        assert degrade_settings(parse_spec(spec), seed=7) == {"command": "degrade", "spec": spec}, spec
    for spec in ("noise:5", "bicubic:64+noise:5", "noise:1+bicubic:64+bicubic:64"):
        assert degrade_settings(parse_spec(spec), seed=7) == {"command": "degrade", "spec": spec, "seed": 7}, spec


def test_plugin_steps_are_probed_alone_whatever_the_chain_scale() -> None:
    big = Bicubic(ScaleParams(scale=64))
    assert not draws_from_seed(Nearest(ScaleParams(scale=64)))
    assert draws_from_seed(Dropout(SigmaParams(sigma=1)))
    assert draws_from_seed(NoisyBicubic(ScaleParams(scale=2))) and not draws_from_seed(big)
    assert draws_from_seed(Noise(SigmaParams(sigma=1)))
    assert "seed" not in degrade_settings(Chain([big, Nearest(ScaleParams(scale=64))]), seed=3)
    assert degrade_settings(Chain([big, big, Dropout(SigmaParams(sigma=1))]), seed=3)["seed"] == 3


def test_a_rerun_of_bicubic_64_with_another_seed_resumes(tmp_path: Path) -> None:
    hr, out = hr_folder(tmp_path / "hr", side=128), tmp_path / "s64"
    assert invoke("degrade", "--spec", "bicubic:64", "--input", hr, "--output", out, "-q").exit_code == 0
    note = read_note(out / "a.png")
    assert note is not None and note["spec"] == "bicubic:64" and "seed" not in note
    assert Image.open(out / "a.png").size == (2, 2)
    r = invoke("degrade", "--spec", "bicubic:64", "--input", hr, "--output", out, "--seed", "1")
    assert r.exit_code == 0 and "0 written, 1 skipped" in r.stderr, r.output
    # With noise the seed still counts at that scale.
    r = invoke("degrade", "--spec", "bicubic:64+noise:5", "--input", hr, "--output", tmp_path / "n64", "-q")
    assert r.exit_code == 0
    r = invoke("degrade", "--spec", "bicubic:64+noise:5", "--input", hr, "--output", tmp_path / "n64", "--seed", "1")
    assert r.exit_code == 2 and "(seed: 0 → 1)" in r.stderr, r.output


def test_another_format_made_with_other_settings_is_refused(tmp_path: Path) -> None:
    hr, out = hr_folder(tmp_path / "hr", ("a", "b")), tmp_path / "mix"
    assert invoke("degrade", "--spec", "bicubic:4", "--input", hr, "--output", out, "-q").exit_code == 0
    for extra in ([], ["--overwrite"]):  # (--overwrite would replace .webp files, not a.png)
        r = invoke("degrade", "--spec", "bicubic:8", "--input", hr, "--output", out, "--ext", "webp", *extra)
        assert r.exit_code == 2, r.output
        assert (f"{out}: 2 LR files of the same stems in another format (a.png, b.png) were made with other "
                "settings (spec: bicubic:4 → bicubic:8); this run's .webp files beside them") in r.stderr
        assert "remove them (--overwrite replaces only .webp files)" in r.stderr
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png", "b.png"]
    # The same settings in another format: the same LR, written.
    r = invoke("degrade", "--spec", "bicubic:4", "--input", hr, "--output", out, "--ext", "webp", "-q")
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), np.asarray(Image.open(out / "a.webp")))
    # A seed is compared where the spec draws from it; only the file made otherwise is named.
    one = hr_folder(tmp_path / "one", ("c",))
    assert invoke("degrade", "--spec", "noise:3", "--input", one, "--output", out, "-q").exit_code == 0
    r = invoke("degrade", "--spec", "noise:3", "--input", one, "--output", out, "--seed", "2", "--ext", "jpg")
    assert r.exit_code == 2 and "1 LR file of the same stem in another format (c.png) was made with other " \
        "settings (seed: 0 → 2); this run's .jpg files beside it" in r.stderr, r.output
    assert not (out / "c.jpg").exists()
    # Not compared: an input (lr/a.png, made by bicubic:4, degraded again beside itself) ...
    lr = tmp_path / "lr"
    assert invoke("degrade", "--spec", "bicubic:4", "--input", hr / "a.png", "--output", lr, "-q").exit_code == 0
    r = invoke("degrade", "--spec", "bicubic:2", "--input", lr / "*.png", "--output", lr, "--ext", "webp", "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(lr / "a.webp").size == (8, 8) and read_note(lr / "a.webp")["spec"] == "bicubic:2"
    # ... nor another program's file of the stem, which carries no record.
    other, o = hr_folder(tmp_path / "other", ("d",), side=16), tmp_path / "o"
    o.mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(o / "d.jpg")
    r = invoke("degrade", "--spec", "bicubic:4", "--input", other, "--output", o, "-q")
    assert r.exit_code == 0 and sorted(p.name for p in o.iterdir()) == ["d.jpg", "d.png"], r.output


def test_the_jpg_warning_is_said_under_quiet(tmp_path: Path) -> None:
    hr = hr_folder(tmp_path / "hr", side=16)
    r = invoke("degrade", "--spec", "bicubic:4", "--input", hr, "--output", tmp_path / "q", "--ext", "jpg", "-q")
    assert r.exit_code == 0 and r.stderr.count(JPG_WARNING) == 1, r.output
    r = invoke("degrade", "--spec", "bicubic:4", "--input", hr, "--output", tmp_path / "p", "--ext", "png", "-q")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output


class _OtherRank(Job):
    """A process of a job that is not its main one (a single process otherwise: nothing to meet)."""

    @property
    def is_main(self) -> bool:
        return False


def test_the_jpg_warning_is_said_by_the_main_process_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.sharding

    @contextmanager
    def other_rank(device: str) -> Iterator[Job]:
        yield _OtherRank()

    hr, out = hr_folder(tmp_path / "hr", side=16), tmp_path / "r1"
    out.mkdir()  # (the main process makes it)
    monkeypatch.setattr(restorekit.sharding, "job_for", other_rank)
    r = invoke("degrade", "--spec", "bicubic:4", "--input", hr, "--output", out, "--ext", "jpg")
    assert r.exit_code == 0 and (out / "a.jpg").is_file(), r.output
    assert "warning" not in r.stderr, r.stderr


def test_outputs_an_earlier_version_recorded_a_seed_for_are_resumed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier versions recorded --seed for chains over ×32 that draw nothing: a rerun with the same
    spec and seed was refused "(seed: 5 → None)"."""
    import restorekit.commands.degrade as degrade_mod

    hr, out = hr_folder(tmp_path / "hr", side=128), tmp_path / "s64"
    real = degrade_mod.degrade_settings
    monkeypatch.setattr(degrade_mod, "degrade_settings", lambda chain, seed: {**real(chain, seed=seed), "seed": seed})
    assert invoke("degrade", "--spec", "bicubic:64", "--input", hr, "--output", out, "--seed", "5", "-q").exit_code == 0
    assert read_note(out / "a.png")["seed"] == 5  # as the earlier version wrote it
    monkeypatch.setattr(degrade_mod, "degrade_settings", real)
    for seed, ext in (("5", "png"), ("7", "png"), ("5", "webp")):
        r = invoke("degrade", "--spec", "bicubic:64", "--input", hr, "--output", out, "--seed", seed, "--ext", ext)
        assert r.exit_code == 0, r.output
    r = invoke("degrade", "--spec", "bicubic:32", "--input", hr, "--output", out)
    assert r.exit_code == 2 and "spec: bicubic:64 → bicubic:32" in r.stderr, r.output
