"""The psp_sr method on tiny saved models: sizes, determinism, style mixing, weights errors, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.degradations import bicubic_resize
from restorekit.errors import RestorekitError, WeightsMissing
from restorekit.images import save_image
from restorekit.testing.conformance import check_method
from restorekit.testing.data import smooth_batch
from tiny_models import save_tiny, tiny_psp
from restorekit_psp_sr import method as method_mod
from restorekit_psp_sr.checkpoint_psp import save_psp_official
from restorekit_psp_sr.method import PSPSR, PSPModelError, PSPSROptions
from restorekit_psp_sr.psp import default_latent_mask




@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def make(model_file: Path, **opts: object) -> PSPSR:
    m = PSPSR(PSPSROptions(weights=str(model_file), impl="ref", **opts))
    m.load()
    return m


def test_output_size_scale_and_native_resolution(model_file: Path) -> None:
    m = make(model_file)
    assert m.input_sizes() == [32, 16, 8] and m.native_scales() == [1, 2, 4]
    assert m.preferred_input_size(2) == 16 and m.preferred_input_size(4) == 8
    lr = smooth_batch(2, 16, 16, seed=1)
    out = m.restore(lr, 2)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    # ×2 of a 16-px input is the generator's own 32 px: no resize, the model's clamped output.
    with torch.no_grad():
        ref, _ = m.model(bicubic_resize(lr, (32, 32)).clamp(0, 1))
    torch.testing.assert_close(out, ref.clamp(0, 1), rtol=0, atol=1e-6)
    out4 = m.restore(lr, 4)
    assert out4.shape == (2, 3, 64, 64)  # 32 px resized to 4 × 16
    torch.testing.assert_close(out4, bicubic_resize(ref.clamp(0, 1), (64, 64)).clamp(0, 1), rtol=0, atol=1e-6)
    assert torch.equal(m.restore(lr, 4), out4)  # deterministic
    native = make(model_file, keep_native_size=True).restore(smooth_batch(1, 8, 8), 4)
    assert native.shape == (1, 3, 32, 32)
    assert "license" in m.notes[0] and "8" in m.notes[1] and "resized" in m.notes[2]


def test_consistency_steps_make_the_output_downscale_to_the_input(model_file: Path) -> None:
    from restorekit.consistency import back_project, downscale_error

    lr = smooth_batch(2, 8, 8, seed=4)
    plain = make(model_file).restore(lr, 4)
    out = make(model_file, consistency_steps=3).restore(lr, 4)
    torch.testing.assert_close(out, back_project(plain, lr, steps=3), rtol=0, atol=1e-6)
    before, after = downscale_error(plain, lr), downscale_error(out, lr)
    assert bool((after < 0.05 * before).all()), (before, after)
    # The generator's native size is projected too (32 px onto the 8-px input).
    native = make(model_file, keep_native_size=True, consistency_steps=3).restore(lr, 4)
    assert native.shape == (2, 3, 32, 32) and bool((downscale_error(native, lr) < 0.05 * before).all())
    # Style-mixed samples (image-major) are each projected onto their own image's input.
    samples = make(model_file, consistency_steps=3).restore(lr, 4, seed=1, n_samples=3)
    plain_samples = make(model_file).restore(lr, 4, seed=1, n_samples=3)
    torch.testing.assert_close(samples, back_project(plain_samples, lr.repeat_interleave(3, 0), steps=3),
                               rtol=0, atol=1e-6)


def test_conformance(model_file: Path) -> None:
    check_method(PSPSR, options={"weights": str(model_file), "impl": "ref"}, scale=2,
                 lr=smooth_batch(2, 16, 16, seed=4))


def test_style_mixing_samples(model_file: Path) -> None:
    m = make(model_file)
    lr = smooth_batch(1, 16, 16, seed=2)
    a = m.restore(lr, 2, seed=7, n_samples=4)
    b = m.restore(lr, 2, seed=7, n_samples=4)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (a[i] - a[j]).abs().mean() > 1e-4, (i, j)
    assert not torch.equal(m.restore(lr, 2, seed=8, n_samples=4), a)
    # Seeds 2**32 apart drew the same styles (the CPU generator keeps 32 bits); below 2**32 as before.
    assert not torch.equal(m.restore(lr, 2, seed=7 + 2**32, n_samples=4), a)
    z = torch.randn(4, m.model.decoder.z_dim, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(m.model.random_latents(4, seed=7)[:, 0], m.model.decoder.map(z), rtol=0, atol=0)
    # No seed means seed 0, as for pulse and psp_pulse: two runs give the same samples.
    assert torch.equal(m.restore(lr, 2, n_samples=2), m.restore(lr, 2, seed=0, n_samples=2))
    # An image's samples do not depend on the other images of its batch (the faces of one photo).
    other = smooth_batch(1, 16, 16, seed=3)
    for batch, at in ((torch.cat([other, lr]), 1), (torch.cat([lr, other]), 0)):
        both = m.restore(batch, 2, seed=7, n_samples=4)
        torch.testing.assert_close(both[4 * at:4 * at + 4], a, rtol=0, atol=1e-6)
    # The samples share the input's coarse and middle styles; only the fine ones differ.
    x = bicubic_resize(lr, (32, 32)).clamp(0, 1)
    with torch.no_grad():
        _, w = m.model.mix(x, 4, seed=7)
        codes = m.model.encode(x)
    fine = default_latent_mask(m.model.n_styles)
    coarse = [i for i in range(m.model.n_styles) if i not in fine]
    assert fine == [4, 5, 6, 7] and coarse == [0, 1, 2, 3]  # 8 styles: round(8·8/18) = 4
    assert torch.equal(w[:, coarse], codes[:, coarse].expand(4, -1, -1))
    assert (w[0, fine] - w[1, fine]).abs().sum() > 0
    # mix_alpha blends: alpha 0 keeps the input's own styles, so all samples equal the plain output.
    keep = make(model_file, mix_alpha=0.0).restore(lr, 2, seed=7, n_samples=3)
    plain = m.restore(lr, 2)
    for i in range(3):
        torch.testing.assert_close(keep[i:i + 1], plain, rtol=0, atol=1e-6)
    # Styles the model does not have: refused when it loads, naming the option, not on each image.
    with pytest.raises(PSPModelError, match=r"mix_layers \[8, 99\]: this model has 8 styles \(0…7\)"):
        make(model_file, mix_layers=[3, 8, 99]).load()


def test_missing_weights_name_the_fix(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(method_mod, "WEIGHTS_DIR", tmp_path / "no_weights")
    # WeightsMissing (demo, compare and `plugin check` treat it as "not installed"), one line naming the fixes.
    with pytest.raises(WeightsMissing, match=r"restorekit weights pull --trust psp-celebs-super-resolution") as info:
        PSPSR().load()
    assert "psp_sr_faces128.safetensors is not in this installation" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(RestorekitError, match=r"nope\.safetensors: no such file$"):
        PSPSR(PSPSROptions(weights=str(tmp_path / "nope.safetensors"))).load()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(PSPModelError, match="not a readable safetensors"):
        PSPSR(PSPSROptions(weights=str(bad))).load()


def test_weights_info_and_non_square_inputs(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = make(model_file)
    info = m.weights_info
    assert info["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert info["license"] == "CC0-1.0" and info["name"] == "tiny"
    out = m.restore(smooth_batch(1, 16, 12, seed=3), 2)
    assert out.shape == (1, 3, 32, 24)
    m.restore(smooth_batch(1, 16, 12, seed=3), 2)
    err = capsys.readouterr().err
    assert err.count("not square") == 1  # said once per shape
    m.restore(smooth_batch(1, 20, 12, seed=3), 2)
    m.restore(smooth_batch(1, 20, 12, seed=3), 2)
    assert capsys.readouterr().err.count("a 12×20 input is not square") == 1  # another shape: said again
    quiet = make(model_file, quiet=True)  # run -q sets it
    quiet.restore(smooth_batch(1, 16, 12, seed=3), 2)
    assert torch.equal(quiet.restore(smooth_batch(1, 16, 12, seed=3), 2), out)
    assert capsys.readouterr().err == ""


def test_inputs_with_detail_the_prior_drops_name_back_projection(model_file: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # The tiny model draws 32 px: inputs from 8 px up (×4 and less) hold detail psp_sr re-draws.
    m = make(model_file)
    m.restore(smooth_batch(1, 4, 4, seed=3), 8)
    assert "consistency_steps" not in capsys.readouterr().err  # ×8 of 4 px: the prior's job
    m.restore(smooth_batch(1, 8, 8, seed=3), 4)
    m.restore(smooth_batch(1, 16, 16, seed=3), 2)
    err = capsys.readouterr().err
    assert err.count("8-px inputs show more than the prior keeps") == 1  # said once
    assert err.count("--opt consistency_steps=3") == 1
    make(model_file, consistency_steps=3).restore(smooth_batch(1, 16, 16, seed=3), 2)
    make(model_file, quiet=True).restore(smooth_batch(1, 16, 16, seed=3), 2)
    assert "consistency_steps" not in capsys.readouterr().err  # projected already; or quiet


def test_official_checkpoint_loads(model_file: Path, tmp_path: Path) -> None:
    model = tiny_psp(seed=3)
    pt = save_psp_official(model, tmp_path / "official.pt", opts={"resize_factors": "1,2", "start_from_latent_avg": True})
    m = PSPSR(PSPSROptions(weights=str(pt), impl="ref"))
    m.load()
    assert m.factors == [1, 2] and m.weights_info["format"] == "official"
    lr = smooth_batch(1, 16, 16, seed=5)
    with torch.no_grad():
        x = torch.nn.functional.interpolate(lr, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        ref, _ = model(x.clamp(0, 1))
    torch.testing.assert_close(m.restore(lr, 2), ref.clamp(0, 1), rtol=0, atol=1e-5)


def test_cli_run_and_bench(model_file: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(2):
        save_image(smooth_batch(1, 16, 16, seed=10 + i), src / f"face{i}.png")
    out = tmp_path / "out"
    r = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--weights", str(model_file), "--scale", "4", "--input",
                                         str(src), "--output", str(out), "--device", "cpu", "--opt", "impl=ref",
                                         "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["face0.png", "face1.png"]
    assert Image.open(out / "face0.png").size == (64, 64)
    r = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--weights", str(model_file), "--scale", "2", "--input",
                                         str(src / "face0.png"), "--output", str(tmp_path / "multi"), "--device",
                                         "cpu", "--n-samples", "2", "--seed", "1", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["face0_s0.png", "face0_s1.png"]
    r = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--weights", str(tmp_path / "missing.safetensors"),
                                         "--scale", "2", "--input", str(src), "--output", str(tmp_path / "x")])
    assert r.exit_code == 2 and f"{tmp_path / 'missing.safetensors'}: no such file" in r.output
    # keep_native_size is for Python callers: run and compare write and score scale × the input,
    # so they refuse it before any work instead of failing every image.
    for cmd in (["run", "psp_sr", "--input", str(src), "--output", str(tmp_path / "native")],
                ["compare", "--methods", "psp_sr", "--data", str(src), "--out", str(tmp_path / "cmp")]):
        r = CliRunner().invoke(build_cli(), [*cmd, "--scale", "4", "--device", "cpu", "--opt",
                                             ("" if cmd[0] == "run" else "psp_sr.") + "keep_native_size=true",
                                             "--opt", ("" if cmd[0] == "run" else "psp_sr.") + f"weights={model_file}"])
        assert r.exit_code == 2 and "keep_native_size=true returns the network's own size" in r.output, r.output
    assert not (tmp_path / "native").exists() and not (tmp_path / "cmp" / "compare.json").exists()
    r = CliRunner().invoke(build_cli(), ["bench", "method", "psp_sr", "--weights", str(model_file), "--scale", "2",
                                         "--batch", "1,2", "--repeat", "1", "--warmup", "0", "--device", "cpu",
                                         "--opt", "impl=ref", "--compare-to", "bicubic", "--compare-batch", "1,2",
                                         "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)  # notes (a 16-px input shows detail psp_sr re-draws) go to stderr
    assert res["input_size"] == 16 and [x["batch"] for x in res["results"]] == [1, 2]
    assert set(res["results"][0]["parts_ms"]) == {"encoder", "generator"}
    assert all(v > 0 for v in res["results"][0]["parts_ms"].values())
    assert set(res["speed_ratio"]) == {"1", "2"} and all(v > 0 for v in res["speed_ratio"].values())


def test_compare_quiet_silences_method_notes_and_reuses_results(model_file: Path, tmp_path: Path) -> None:
    # compare -q, as run -q, silences the methods' own notes (a 16×12 input is not square); the
    # notes change no result, so a later compare without -q reuses what -q stored, and says the note.
    src = tmp_path / "hr"
    for i in range(2):
        save_image(smooth_batch(1, 32, 24, seed=20 + i), src / f"face{i}.png")
    cmd = ["compare", "--methods", "psp_sr", "--data", str(src), "--out", str(tmp_path / "cmp"), "--scale", "2",
           "--device", "cpu", "--metrics", "psnr_rgb", "--opt", f"psp_sr.weights={model_file}", "--opt",
           "psp_sr.impl=ref"]
    r = CliRunner().invoke(build_cli(), [*cmd, "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "not square" not in r.stderr and r.stdout == ""
    r = CliRunner().invoke(build_cli(), cmd, catch_exceptions=False)
    assert r.exit_code == 0 and "not square" not in r.stderr, r.output  # nothing restored again
    doc = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert len(doc["images"]) == 2 and all(i["reused"] for i in doc["images"])
    r = CliRunner().invoke(build_cli(), [*cmd, "--fresh", "--json"], catch_exceptions=False)
    assert r.exit_code == 0 and r.stderr.count("not square") == 1, r.stderr  # no -q: said once
