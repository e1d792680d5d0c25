"""The GPU occasion's helpers (scripts/gpu/): the stage-2 encoder part that comes back from the
device (psp_parts.py) and the "done when" bars checked on the evaluation (check_bars.py)."""

from __future__ import annotations

import json
import math
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

from restorekit.weights import sha256_file
from restorekit_psp_sr.method import load_psp_model, save_psp_safetensors
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
from restorekit_psp_sr.train import load_generator, save_stylegan2_safetensors
from script_modules import script_module
from tiny_models import REPO, tiny_generator, tiny_psp_on

SCRIPTS = REPO / "scripts" / "gpu"
pytestmark = pytest.mark.skipif(not (SCRIPTS / "psp_parts.py").is_file(), reason="scripts/gpu is not here")


def script(name: str, folder: Path = SCRIPTS) -> ModuleType:
    """``folder/<name>.py`` imported once (monkeypatch restores what a test changes in it)."""
    return script_module(folder / f"{name}.py")


# -- psp_parts.py ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generator as the device returns it (fp16 snapshot) and a pSp model trained against it
    (read only: the tests write into their own folders)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    gen = save_stylegan2_safetensors(tiny_generator(3), tmp_path / "generator.safetensors", dtype=torch.float16)
    model = save_psp_safetensors(tiny_psp_on(load_generator(str(gen), impl="ref"), seed=4),
                                 tmp_path / "model.safetensors", factors=[1, 2, 4], license="unknown", name="t")
    return gen, model


def test_split_then_join_gives_the_model_back(trained: tuple[Path, Path], tmp_path: Path) -> None:
    parts = script("psp_parts")
    gen, model = trained
    part = parts.split(model, gen, tmp_path / "part.safetensors")
    with safe_open(str(part), framework="pt") as f:
        keys = list(f.keys())
        assert f.metadata()["generator_sha256"] == sha256_file(gen)
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    assert keys and not any(k.startswith("decoder.") for k in keys) and "latent_avg" in keys
    assert part.stat().st_size < model.stat().st_size / 2
    whole = parts.join(part, gen, tmp_path / "whole.safetensors")
    a, _ = load_psp_model(model, impl="ref")
    b, config = load_psp_model(whole, impl="ref")
    assert config["training"]["encoder_float16_from"] == "part.safetensors"
    for (k, va), (_, vb) in zip(a.decoder.state_dict().items(), b.decoder.state_dict().items()):
        assert torch.equal(va, vb), k  # the generator is exactly the one given
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ya, wa = a(x)
        yb, wb = b(x)
    assert float((wa - wb).norm() / wa.norm()) < 2e-3  # fp16 rounding of the encoder only
    assert float((ya - yb).abs().max()) < 0.05


def test_parts_refuse_a_different_generator(trained: tuple[Path, Path], tmp_path: Path) -> None:
    parts = script("psp_parts")
    gen, model = trained
    other = save_stylegan2_safetensors(tiny_generator(5), tmp_path / "other.safetensors", dtype=torch.float16)
    with pytest.raises(parts.PartsError, match="decoder differs"):
        parts.split(model, other, tmp_path / "p.safetensors")
    part = parts.split(model, gen, tmp_path / "part.safetensors")
    with pytest.raises(parts.PartsError, match="sha256"):
        parts.join(part, other, tmp_path / "w.safetensors")
    assert not (tmp_path / "p.safetensors").exists() and not (tmp_path / "w.safetensors").exists()
    assert parts.main(["join", str(model), str(gen), str(tmp_path / "x.safetensors")]) == 1  # not a part


# -- check_bars.py -----------------------------------------------------------------------------------
METRICS = {"psnr_y_crop": True, "ssim_y_crop": True, "lpips_alex_v0.1": False, "identity_dlib_dist": False,
           "lr_consistency": False}


def results_doc(values: dict[str, dict[str, list[float]]], ms: dict[str, float]) -> dict:
    """A compare results.json with the parts check_bars reads: ``values[method][metric]`` per image
    (a method's means over its non-NaN values, as compare's aggregate; null where it has none)."""
    images = [f"img{i}" for i in range(len(next(iter(next(iter(values.values())).values()))))]
    methods, rows = [], []
    for m, per in values.items():
        finite = {k: [x for x in v if not math.isnan(x)] for k, v in per.items()}
        agg = {k: {"mean": sum(v) / len(v) if v else None} for k, v in finite.items()}
        methods.append({"name": m, "device": "cpu (test)", "aggregate": {
            "images": len(images), "ok": len(images), "failed": 0, "metrics": agg, "runtime_ms": {"mean": ms[m]},
            "runtime_is_warmup": False}})
        for i, img in enumerate(images):
            rows.append({"method": m, "image": img, "seed": None, "settings": "s", "input": "i", "status": "ok",
                         "metrics": {k: v[i] for k, v in per.items()}})
    return {"methods": methods, "metrics": [{"name": k, "higher_is_better": v} for k, v in METRICS.items()],
            "images": rows, "exit_code": 0}


def method_values(dist: list[float], lpips: float, lrc: float) -> dict[str, list[float]]:
    n = len(dist)
    return {"psnr_y_crop": [20.0] * n, "ssim_y_crop": [0.6] * n, "lpips_alex_v0.1": [lpips] * n,
            "identity_dlib_dist": dist, "lr_consistency": [lrc] * n}


def shipped_generator_sha256() -> str:
    entry = tomllib.loads((REPO / "registry" / "weights" / "stylegan2-faces128.toml").read_text(encoding="utf-8"))
    return entry["files"][0]["sha256"]


def write_finish_folder(w: Path, *, psp_dist: list[float], face_share: float, pulse_ms: float,
                        base: list[float] | None = None, val_faces: int = 4) -> Path:
    """finish.sh's work folder as check_bars reads it: the runs hold 4 faces (img0-img3, the first two
    FFHQ's), ``val.txt`` lists ``val_faces`` and ``val_pulse.txt`` 4, realism.json is of the shipped
    generator (32 samples at truncation 0.7)."""
    base = base or [0.60, 0.62, 0.64, 0.66]
    for k in (8, 4):
        run = w / f"eval_x{k}"
        run.mkdir(parents=True)
        doc = results_doc({"bicubic": method_values(base, 0.55, 3e-4), "pix2pixhd": method_values(base, 0.3, 8e-3),
                           "psp_sr": method_values(psp_dist, 0.30, 1e-2)}, {"bicubic": 0.2, "pix2pixhd": 14, "psp_sr": 30})
        (run / "results.json").write_text(json.dumps(doc))
    run = w / "eval_pulse_x8"
    run.mkdir()
    doc = results_doc({"psp_pulse": method_values([0.50] * 4, 0.4, 2.0e-3), "pulse": method_values([0.58] * 4, 0.4, 1.6e-3),
                       "psp_sr": method_values(psp_dist, 0.3, 1e-2), "bicubic": method_values(base, 0.55, 3e-4)},
                      {"psp_pulse": 2000, "pulse": pulse_ms, "psp_sr": 30, "bicubic": 0.2})
    (run / "results.json").write_text(json.dumps(doc))
    found = round(face_share * 32)
    (w / "realism.json").write_text(json.dumps({"faces": {"detector": "mtcnn", "n": 32, "found": found,
                                                          "truncation": 0.7, "share": found / 32},
                                                "generator_sha256": shipped_generator_sha256()}))
    (w / "val_ffhq.txt").write_text("/x/ffhq128/img0.webp\n/x/ffhq128/img1.webp\n")
    (w / "val.txt").write_text("".join(f"/x/{'ffhq128' if i < 2 else 'aaf128'}/img{i}.webp\n" for i in range(val_faces)))
    (w / "val_pulse.txt").write_text("".join(f"/x/aaf128/img{i}.webp\n" for i in range(4)))
    return w


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """``path``'s JSON changed in place by ``change``."""
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def method_of(doc: dict, name: str) -> dict:
    return next(m for m in doc["methods"] if m["name"] == name)


def test_check_bars_all_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = write_finish_folder(tmp_path, psp_dist=[0.55, 0.58, 0.70, 0.60], face_share=0.875, pulse_ms=8000)
    assert script("check_bars").main([str(w)]) == 0
    out = capsys.readouterr().out
    assert "**FAIL**" not in out and out.count("| pass |") == 8
    assert "28/32 = 88%" in out
    assert "| 75% (3 of 4 faces; 0 left out: no value for either) |" in out  # 3 of 4 faces closer than bicubic
    assert "-0.250" in out  # LPIPS 0.30 − 0.55
    assert "1.25×" in out  # LR-consistency 2.0e-3 / 1.6e-3
    assert "| 75% / 100% / 50% |" in out  # win all / FFHQ (img0, img1) / AAF (img2, img3)
    assert ("| dlib distance ↓ | win vs bicubic (all / FFHQ / AAF) | LR-consistency ↓ | ms/face |" in out)  # the card's order
    assert "267×" in out  # PULSE 8000 ms / psp_sr 30 ms


def test_check_bars_names_each_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = write_finish_folder(tmp_path, psp_dist=[0.65, 0.66, 0.70, 0.60], face_share=0.75, pulse_ms=3000)
    assert script("check_bars").main([str(w)]) == 1
    out = capsys.readouterr().out
    failed = [line.split(" | ")[0].lstrip("| ") for line in out.splitlines() if "**FAIL**" in line]
    assert failed == ["generator: samples with a face (mtcnn, truncation 0.7)",
                      "×8 psp_sr vs bicubic: mean dlib distance (paired faces)",
                      "×8 psp_sr closer to the person than bicubic",
                      "×8 psp_pulse time / PULSE's"]


def test_check_bars_reports_the_back_projected_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = write_finish_folder(tmp_path, psp_dist=[0.55, 0.58, 0.70, 0.60], face_share=0.875, pulse_ms=8000)
    assert script("check_bars").main([str(w)]) == 0
    assert "consistency steps" not in capsys.readouterr().out  # without the _cs3 runs: no such lines
    run = w / "eval_pulse_x8_cs3"
    run.mkdir()
    base = [0.60, 0.62, 0.64, 0.66]
    doc = results_doc({"psp_pulse": method_values([0.50, 0.52, 0.50, 0.52], 0.2, 2e-5),
                       "pulse": method_values([0.58] * 4, 0.2, 3e-5),
                       "psp_sr": method_values([0.51, 0.50, 0.53, 0.54], 0.2, 3e-5),
                       "bicubic": method_values(base, 0.55, 3e-4)},
                      {"psp_pulse": 2000, "pulse": 8000, "psp_sr": 30, "bicubic": 0.2})
    (run / "results.json").write_text(json.dumps(doc))
    assert script("check_bars").main([str(w)]) == 0  # informational: the bars are the defaults'
    out = capsys.readouterr().out
    # psp_pulse 0.510 against psp_sr 0.520: 3 of 4 faces closer, mean difference −0.010
    assert "psp_pulse 0.510, psp_sr 0.520, PULSE 0.580; psp_pulse − psp_sr -0.010" in out
    assert "closer on 75% of 4 faces" in out
    assert out.count("| bar |") == 1 and "| ×8, 4 faces, 3 consistency steps |" in out


def test_check_bars_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert script("check_bars").main([str(tmp_path)]) == 2
    assert "eval_x8/results.json: missing" in capsys.readouterr().err


PASSING = {"psp_dist": [0.55, 0.58, 0.70, 0.60], "face_share": 0.875, "pulse_ms": 8000}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """check_bars's stderr, asserted to be one line and nothing on stdout (no half-written bars.md)."""
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    return err


def test_check_bars_refuses_runs_with_failed_faces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Failed images are left out of every figure: the bars would pass on the faces that worked."""
    w = write_finish_folder(tmp_path, **PASSING)

    def fail_two(doc: dict) -> None:
        for row in doc["images"][-2:]:  # psp_sr's last two faces
            row["status"], row["metrics"] = "failed", {}
        method_of(doc, "psp_sr")["aggregate"].update(ok=2, failed=2)
        doc["exit_code"] = 1

    edit_json(w / "eval_x8" / "results.json", fail_two)
    assert script("check_bars").main([str(w)]) == 2
    err = one_error_line(capsys)
    assert "eval_x8: psp_sr failed on 2 of 4 faces" in err
    # A compare that did not exit 0, whatever the aggregates say, is refused too.
    edit_json(w / "eval_x8" / "results.json", lambda d: method_of(d, "psp_sr")["aggregate"].update(failed=0))
    edit_json(w / "eval_pulse_x8" / "results.json", lambda d: d.update(exit_code=0))
    assert script("check_bars").main([str(w)]) == 2
    assert "eval_x8: compare exited 1" in one_error_line(capsys)


def test_check_bars_counts_closer_over_every_measured_face(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """img0 closer, img1 no face in psp_sr's output (not closer), img2 a tie (not a win), img3 no face in
    either (left out): 1 of 3, where the paired win share (ties half, NaN dropped) gave 75%."""
    nan = math.nan
    w = write_finish_folder(tmp_path, psp_dist=[0.55, nan, 0.64, nan], base=[0.60, 0.62, 0.64, nan],
                            face_share=0.875, pulse_ms=8000)
    assert script("check_bars").main([str(w)]) == 1
    out = capsys.readouterr().out
    assert ("| ×8 psp_sr closer to the person than bicubic | 33% (1 of 3 faces; 1 without a face in psp_sr's output "
            "count as not closer; 1 left out: no value for either) | ≥ 50% | **FAIL** |") in out
    assert "| -0.025 [" in out and "], n 2 | < 0 | pass |" in out  # the mean difference: the 2 paired faces
    assert "| 33% / 50% / 0% |" in out  # the table's win column counts alike: FFHQ img0, img1; AAF img2 (img3 out)


def test_check_bars_refuses_figures_of_other_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bars = script("check_bars")
    w = write_finish_folder(tmp_path / "w", **PASSING)
    realism = w / "realism.json"
    edit_json(realism, lambda d: d["faces"].update(n=3, found=3, share=1.0, truncation=1.0))
    assert bars.main([str(w)]) == 2
    assert "faces counted on 3 samples at truncation 1.0, the bar needs 32 at 0.7" in one_error_line(capsys)
    edit_json(realism, lambda d: d["faces"].update(n=32, found=30, share=30 / 32, truncation=0.7)
              or d.update(generator_sha256="0" * 64))
    assert bars.main([str(w)]) == 2
    assert f"sha256 {'0' * 64}, not the shipped stylegan2-faces128" in one_error_line(capsys)
    # Measured on the returned file, which was shipped (re-encoded) as the registry's file: accepted.
    (w / "shipped-generator.json").write_text(json.dumps({"source_sha256": "0" * 64,
                                                          "sha256": shipped_generator_sha256()}))
    assert bars.main([str(w)]) == 0
    capsys.readouterr()
    # The runs must hold every face of their list, unless --partial (then never exit 0).
    w = write_finish_folder(tmp_path / "limited", **PASSING, val_faces=6)
    assert bars.main([str(w)]) == 2
    assert "eval_x8: 4 faces, but val.txt lists 6" in one_error_line(capsys)
    assert bars.main([str(w), "--partial"]) == 3
    out = capsys.readouterr().out
    lines = out.split("\n\n")[0].splitlines()[3:]  # the bar lines after the generator's
    assert len(lines) == 7 and all("(partial: " in line for line in lines)
    assert sum("(partial: 4 of 6 faces)" in line for line in lines) == 3  # the x8 bars; the PULSE run's: 4 of 4
    assert "| ×8 (16 → 128 px), 4 faces (partial: 4 of 6 faces) |" in out


def test_check_bars_null_or_unreadable_values_are_missing_data(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bars = script("check_bars")
    cases = {
        "runtime": (lambda w: edit_json(w / "eval_pulse_x8" / "results.json",
                                        lambda d: method_of(d, "psp_pulse")["aggregate"]["runtime_ms"].update(mean=None)),
                    "eval_pulse_x8: psp_pulse's mean runtime is null"),
        "metric": (lambda w: edit_json(w / "eval_x4" / "results.json",  # not a bar's run: a card table's
                                       lambda d: method_of(d, "pix2pixhd")["aggregate"]["metrics"]["psnr_y_crop"]
                                       .update(mean=None)),
                   "eval_x4: pix2pixhd's mean psnr_y_crop is null"),
        "faces": (lambda w: edit_json(w / "realism.json", lambda d: d.update(faces=None)),
                  'realism.json: no face share ("faces": null'),
        "json": (lambda w: (w / "eval_x4" / "results.json").write_text("{"), "cannot read the inputs (JSONDecodeError"),
    }
    for name, (spoil, message) in cases.items():
        w = write_finish_folder(tmp_path / name, **PASSING)
        spoil(w)
        assert bars.main([str(w)]) == 2, name
        assert message in one_error_line(capsys), name


def test_check_bars_names_a_missing_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def drop(name: str) -> Callable[[dict], object]:
        return lambda d: d.update(methods=[m for m in d["methods"] if m["name"] != name],
                                  images=[r for r in d["images"] if r["method"] != name])

    for run, method in (("eval_x8", "psp_sr"), ("eval_pulse_x8", "psp_pulse")):
        w = write_finish_folder(tmp_path / run, **PASSING)
        edit_json(w / run / "results.json", drop(method))
        assert script("check_bars").main([str(w)]) == 2
        assert f"{run}: no method {method} in results.json" in one_error_line(capsys)


def test_check_bars_labels_the_tables_with_what_they_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bars = script("check_bars")
    w = write_finish_folder(tmp_path, **PASSING)
    assert bars.main([str(w)]) == 0
    out = capsys.readouterr().out
    assert "| ×8 (16 → 128 px), 4 faces |" in out and "| ×8, 4 faces |" in out and "47 faces" not in out
    assert "ms/face: mean per call, warm-up left out, batch 1" in out and "(warm-up)" not in out
    # One call per method: the time is the warm-up's, and the table and the timing bars say so.
    edit_json(w / "eval_pulse_x8" / "results.json",
              lambda d: [m["aggregate"].update(runtime_is_warmup=True) for m in d["methods"]])
    assert bars.main([str(w)]) == 0
    out = capsys.readouterr().out
    assert "| 2000 (warm-up) |" in out and "(where marked, the only call: the warm-up)" in out
    assert "(2.00 s vs 8.00 s a face; the warm-up call only)" in out


def top_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` (the top-level scripts, beside ``scripts/gpu``)."""
    return script(name, REPO / "scripts")


# -- ../inversion_ceiling.py -------------------------------------------------------------------------
def test_the_ceiling_fit_recovers_an_image_the_generator_can_make() -> None:
    ceiling = top_script("inversion_ceiling")
    gen = tiny_generator(5).eval().requires_grad_(False)
    w_avg = gen.mean_latent(256)
    torch.manual_seed(1)
    w_true = gen.broadcast(gen.map(torch.randn(1, gen.z_dim)))
    with torch.no_grad():
        target = gen.synthesize(w_true).clamp(0, 1)
        start = gen.synthesize(gen.broadcast(w_avg.view(1, -1))).clamp(0, 1)
    no_lpips = lambda a, b: torch.zeros(a.shape[0])  # noqa: E731 (the pixel term alone)
    best = ceiling.fit(gen, target, w_avg, no_lpips, steps=60, lr=0.05)
    assert best.shape == target.shape and 0 <= float(best.min()) and float(best.max()) <= 1
    before, after = float((start - target).square().mean()), float((best - target).square().mean())
    assert after < 0.2 * before, (before, after)
    assert not w_avg.requires_grad and all(not p.requires_grad for p in gen.parameters())  # nothing else moved


def test_the_ceiling_fit_seeks_identity_when_given_an_identity_term() -> None:
    """``--identity``: the term is added to the pixel loss, so the fit moves towards what it measures."""
    ceiling = top_script("inversion_ceiling")
    gen = tiny_generator(5).eval().requires_grad_(False)
    w_avg = gen.mean_latent(256)
    torch.manual_seed(2)
    with torch.no_grad():
        target = gen.synthesize(gen.broadcast(gen.map(torch.randn(1, gen.z_dim)))).clamp(0, 1)
    top = lambda x: x[..., : x.shape[-2] // 2, :].mean((-1, -2))  # noqa: E731 (a stand-in "identity": the top half's colour)
    ident = lambda a, b: (top(a) - top(b)).square().sum()  # noqa: E731
    no_lpips = lambda a, b: torch.zeros(a.shape[0])  # noqa: E731
    plain = ceiling.fit(gen, target, w_avg, no_lpips, steps=15, lr=0.05)
    sought = ceiling.fit(gen, target, w_avg, no_lpips, steps=15, lr=0.05, identity=lambda a, b: 100 * ident(a, b))
    assert float(ident(sought, target)) < 0.5 * float(ident(plain, target))


# -- ../mirrored_identity.py -------------------------------------------------------------------------
def test_mirrored_identity_flips_output_and_face_together(tmp_path: Path) -> None:
    """A judge that looks at the left half only: the mirrored figure is the right half's."""
    from restorekit.images import save_image

    mirrored = top_script("mirrored_identity")
    face = torch.full((3, 16, 16), 0.2)
    face[:, :, 8:] = 0.8
    out = face.clone()
    out[:, :, 8:] = 0.6  # wrong on the right half only, by 0.2
    (tmp_path / "o").mkdir()
    save_image(out, tmp_path / "o" / "a.png")
    left = lambda x, t: (x[..., :8] - t[..., :8]).abs().mean((-1, -2, -3))  # noqa: E731
    d = mirrored.distances(tmp_path / "o", {"a": face, "b": face}, left)
    assert set(d) == {"a"}
    plain, flipped = d["a"]
    assert plain == pytest.approx(0.0, abs=1e-6) and flipped == pytest.approx(0.2, abs=0.01)  # not 0.4, 0.6: both flipped


def test_mirrored_identity_counts_only_faces_both_methods_have() -> None:
    mirrored = top_script("mirrored_identity")
    nan = float("nan")
    method = {"a": (0.4, 0.6), "b": (0.7, nan), "c": (0.5, 0.5)}
    base = {"a": (0.5, 0.5), "b": (0.6, 0.6), "c": (0.6, 0.4), "d": (0.1, 0.1)}
    s = mirrored.summarise(method, base)
    assert s["plain"] == {"faces": 3, "mean": pytest.approx(1.6 / 3), "baseline_mean": pytest.approx(1.7 / 3),
                          "closer_than_baseline": 2}
    assert s["mirrored"] == {"faces": 2, "mean": pytest.approx(0.55), "baseline_mean": pytest.approx(0.45),
                             "closer_than_baseline": 0}


# -- ../psp_warm_start.py ----------------------------------------------------------------------------
def small_generator(seed: int = 0) -> StyleGAN2Generator:
    """A 32-px generator (8 styles of 16): the encoder's own input size, so that a warm-start step
    spends its time on the encoder rather than on drawing faces."""
    torch.manual_seed(seed)
    return StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()


@pytest.fixture()
def warm_setup(tmp_path: Path) -> tuple[Path, Path]:
    """A small generator file and a stage-2 recipe shaped for it."""
    gen = save_stylegan2_safetensors(small_generator(3), tmp_path / "generator.safetensors")
    recipe = tmp_path / "stage2.toml"
    recipe.write_text('encoder_backbone = "ir_se_light"\nencoder_input_size = 32\nhead_channels = 16\n'
                      'start_from_latent_avg = true\nlatent_avg_samples = 256\nimpl = "ref"\nmodel_name = "tiny"\n'
                      'license = "CC0-1.0"\n[data]\nfactors = [1, 2, 4]\n')
    return gen, recipe


def run_warm_start(module: ModuleType, gen: Path, recipe: Path, out: Path, *extra: str) -> None:
    argv = ["psp_warm_start.py", "--generator", str(gen), "--config", str(recipe), "--out", str(out),
            "--batch", "8", "--threads", "1", *extra]
    old, sys.argv = sys.argv, argv
    try:
        module.main()
    finally:
        sys.argv = old


# How far a warm start must bring ``code_error`` below its own starting encoder's (after/before; the script
# seeds the fresh encoder with --seed, 0). Measured at the tests' settings over generator seeds 0-9, encoder
# seeds 0-2 and four draws of the held-out faces: 0.69-0.85 in one pass, 0.78-0.91 with ReStyle's two. With
# the encoder's gradient cut, or lr 0, it rises instead (1.04-1.07 in one pass, 1.1-1.3 with ReStyle: only
# the batch-norm statistics move).
WARM_START_BAR = 0.93
RESTYLE_WARM_START_BAR = 0.97


def code_error(model: torch.nn.Module, module: ModuleType) -> float:
    """The encoder's W+ error on 64 of the generator's faces it never saw (factor 1)."""
    rng = torch.Generator().manual_seed(123)
    with torch.no_grad():
        gen = model.decoder
        codes = module.draw_codes(gen, 64, 0.5, rng)
        x = module.degraded(gen.synthesize(codes).clamp(0, 1), [1], model.input_size, rng)
        return float((model.encode(x) - codes).square().mean())


def test_warm_start_learns_the_generators_codes_and_stage2_can_start_from_it(warm_setup, tmp_path: Path) -> None:
    gen, recipe = warm_setup
    module = top_script("psp_warm_start")
    out = tmp_path / "warm.safetensors"
    gen_sha = sha256_file(gen)
    run_warm_start(module, gen, recipe, out, "--steps", "120")  # the script's lr, 1e-3
    model, info = load_psp_model(out, impl="ref")
    assert info["training"]["warm_start"]["steps"] == 120
    assert not out.with_name(out.name + ".part").exists()  # its checkpoint is gone once the file is whole
    from restorekit.training.config import load_config
    from restorekit_psp_sr.train import PSPTrainConfig, build_psp

    torch.manual_seed(0)
    fresh = build_psp(load_config(PSPTrainConfig, recipe, overrides=[f"generator={gen}"])).eval()
    before, after = code_error(fresh, module), code_error(model.eval(), module)
    assert after < WARM_START_BAR * before, (before, after)
    # stage 2 starts from it: same encoder, same generator
    cfg = load_config(PSPTrainConfig, recipe, overrides=[f"generator={gen}", f"init={out}"])
    started = build_psp(cfg)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(started.encoder.state_dict()[k], v), k
    assert sha256_file(gen) == gen_sha  # the generator file is read, never written


def test_warm_start_of_a_restyle_encoder_regresses_every_pass(warm_setup, tmp_path: Path) -> None:
    """On a 64-px generator read by the 32-px encoder (as the shipped 128/64 pair): the passes'
    reconstructions are shrunk to the encoder's size."""
    _, recipe = warm_setup
    gen = save_stylegan2_safetensors(tiny_generator(3), tmp_path / "generator64.safetensors")
    module = top_script("psp_warm_start")
    out = tmp_path / "warm.safetensors"
    run_warm_start(module, gen, recipe, out, "--steps", "96", "--set", "restyle_iterations=2")
    model, info = load_psp_model(out, impl="ref")
    assert model.restyle_iterations == 2 and info["encoder"]["input_nc"] == 6
    from restorekit.training.config import load_config
    from restorekit_psp_sr.train import PSPTrainConfig, build_psp

    torch.manual_seed(0)
    fresh = build_psp(load_config(PSPTrainConfig, recipe, overrides=[f"generator={gen}", "restyle_iterations=2"]))
    before, after = code_error(fresh.eval(), module), code_error(model.eval(), module)
    assert after < RESTYLE_WARM_START_BAR * before, (before, after)
    # The loss is the mean over the passes of each pass's W+ error.
    rng = torch.Generator().manual_seed(5)
    with torch.no_grad():
        codes = module.draw_codes(model.decoder, 4, 0.5, rng)
        x = model.decoder.synthesize(codes).clamp(0, 1)
        per_pass = [float((w - codes).square().mean()) for w, _ in model.refine(x)]
        assert float(module.code_loss(model, x, codes)) == pytest.approx(sum(per_pass) / 2, rel=1e-5)


def test_warm_start_resumes_exactly(warm_setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen, recipe = warm_setup
    module = top_script("psp_warm_start")
    run_warm_start(module, gen, recipe, tmp_path / "whole.safetensors", "--steps", "6")

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the run ends after its step-4 checkpoint, before the file is written

    cut = tmp_path / "cut.safetensors"
    monkeypatch.setattr(module, "save_psp_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        run_warm_start(module, gen, recipe, cut, "--steps", "6", "--save-every", "4")
    assert cut.with_name(cut.name + ".part").is_file() and not cut.exists()
    monkeypatch.undo()
    module = top_script("psp_warm_start")
    run_warm_start(module, gen, recipe, cut, "--steps", "6", "--save-every", "4")
    a, _ = load_psp_model(tmp_path / "whole.safetensors", impl="ref")
    b, _ = load_psp_model(cut, impl="ref")
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(b.encoder.state_dict()[k], v), k


# -- ../encoder_spread.py ------------------------------------------------------------------------------
class _FixedCodes(torch.nn.Module):
    """A stand-in pSp: returns given codes whatever the input (to pin the measure's two ends)."""

    def __init__(self, decoder: torch.nn.Module, codes: torch.Tensor) -> None:
        super().__init__()
        self.decoder, self.codes, self.input_size = decoder, codes, 32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes[: x.shape[0]]


def test_encoder_spread_is_one_for_the_generators_own_codes_and_zero_for_one_face() -> None:
    spread = top_script("encoder_spread")
    gen = tiny_generator(2)
    faces = torch.rand(200, 3, 64, 64)
    own = _FixedCodes(gen, spread.generator_codes(gen, 200, seed=9))  # other draws of the same distribution
    ratios = spread.spread_ratios(own, faces, [1, 4], n_reference=2000)
    assert set(ratios) == {"x1", "x4"} and len(ratios["x1"]) == len(gen.convs) + 2  # conv1, convs, mean
    assert all(0.85 < r < 1.15 for r in ratios["x1"].values()), ratios
    one = _FixedCodes(gen, spread.generator_codes(gen, 1, seed=3).expand(200, -1, -1))
    assert all(r < 1e-4 for r in spread.spread_ratios(one, faces, [1])["x1"].values())
    half = _FixedCodes(gen, gen.mean_latent(256) + 0.5 * (own.codes - gen.mean_latent(256)))
    # The modulation is affine: codes pulled halfway to the average spread half as much.
    torch.testing.assert_close(torch.tensor(spread.spread_ratios(half, faces, [1], n_reference=2000)["x1"]["mean"]),
                               torch.tensor(0.5 * ratios["x1"]["mean"]), rtol=1e-4, atol=1e-4)


def test_encoder_spread_reads_a_real_model_file(trained: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.images import save_image

    spread = top_script("encoder_spread")
    _, model = trained
    for i in range(3):
        face = torch.rand(1, 3, 80, 80, generator=torch.Generator().manual_seed(i))
        save_image(face, tmp_path / "faces" / f"{i}.png")
    out = tmp_path / "spread.json"
    monkeypatch.setattr(sys, "argv", ["encoder_spread.py", str(model), "--data", str(tmp_path / "faces"),
                                      "--factors", "1,2", "--json", str(out)])
    spread.main()
    doc = json.loads(out.read_text())
    assert doc["faces"] == 3 and set(doc["ratios"]) == {"x1", "x2"}
    assert all(v >= 0 for r in doc["ratios"].values() for v in r.values())
    assert "mean" in capsys.readouterr().out


def test_stage_two_from_an_encoder_of_an_earlier_snapshot_keeps_its_codes(warm_setup, tmp_path: Path) -> None:
    """init= trained against one generator, generator= a later one (the prior trained on): the encoder
    returns the same absolute codes, now as residuals to the new generator's average."""
    from restorekit.training.config import load_config
    from restorekit_psp_sr.train import PSPTrainConfig, build_psp

    gen, recipe = warm_setup
    module = top_script("psp_warm_start")
    first = tmp_path / "first.safetensors"
    run_warm_start(module, gen, recipe, first, "--steps", "3")
    later = small_generator(3)
    with torch.no_grad():  # the mapping moved on, as it does between snapshots
        for p in later.style.parameters():
            p.add_(0.05 * torch.randn_like(p))
    later_file = save_stylegan2_safetensors(later, tmp_path / "later.safetensors")
    old, _ = load_psp_model(first, impl="ref")
    cfg = load_config(PSPTrainConfig, recipe, overrides=[f"generator={later_file}", f"init={first}"])
    new = build_psp(cfg).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(new.encode(x), old.eval().encode(x), rtol=1e-4, atol=1e-4)
    want = load_generator(str(later_file), impl="ref").mean_latent(n=cfg.latent_avg_samples)
    centre = lambda model: model.latent_avg.reshape(-1, want.shape[-1])[0]  # noqa: E731
    torch.testing.assert_close(centre(new), want)
    assert not torch.allclose(centre(new), centre(old))


# -- the recipes a GPU occasion runs -------------------------------------------------------------------
def test_gpu_recipes_run_on_pytorch_ops_not_the_untested_kernels() -> None:
    """The CUDA kernels have never run on a GPU: the occasion's runs use the PyTorch ops, and the
    race ranks its snapshots with them (run.sh builds and tests the kernels beside, in a folder
    of their own)."""
    from restorekit.training.config import load_config
    from restorekit_psp_sr.train import PSPTrainConfig
    from restorekit_psp_sr.train_gan import GANConfig

    recipes = REPO / "plugins" / "psp_sr" / "recipes" / "prior128"
    assert load_config(GANConfig, recipes / "gan.toml", out="o", data={"root": "d"}).impl == "ref"
    stage2 = load_config(PSPTrainConfig, recipes / "stage2_gpu.toml", out="o", data={"root": "d"},
                         generator="g.safetensors")
    assert stage2.impl == "ref"
    assert 'impl="ref"' in (SCRIPTS / "race.py").read_text(encoding="utf-8")
    run = (SCRIPTS / "run.sh").read_text(encoding="utf-8")
    assert 'TORCH_EXTENSIONS_DIR="$WORK/ext_tests"' in run and "timeout -s INT" in run
