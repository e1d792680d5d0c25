"""What made an output is recorded inside it, and a rerun into the same folder with other settings
is refused (naming what changed) instead of leaving a folder of mixed results; the same settings,
``-q`` or another kernel resume it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from restorekit import __version__
from restorekit.cli import build_cli
from restorekit.faces.pipeline import settings_changed
from restorekit.images import read_image, save_image
from restorekit.interfaces import result_options
from restorekit.plugins import registry
from restorekit.provenance import MAX_EXIF_NOTE, read_note
from restorekit.run_record import changed_outputs, differences, run_settings


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def inputs(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        save_image(torch.rand(1, 3, 8, 8, generator=g), folder / f"in{i}.png")
    return folder


# -- the note inside the file ------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_a_note_round_trips_through_each_output_format(tmp_path, ext):
    image = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    note = {"method": "m", "scale": 4, "options": {"a": "é", "b": [1, 2.5, None]}}
    plain, noted = save_image(image, tmp_path / f"plain.{ext}"), save_image(image, tmp_path / f"noted.{ext}", note=note)
    assert read_note(noted) == {"restorekit": __version__, **note}
    assert read_note(plain) is None
    assert torch.equal(read_image(noted), read_image(plain))  # the pixels are the same


def test_files_of_others_carry_no_note(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("restorekit", json.dumps({"method": "m"}))  # our key, not our note (no version)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png", pnginfo=info)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("restorekit", "{not json")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png", pnginfo=info)
    (tmp_path / "c.png").write_bytes(b"not an image")
    exif = Image.Exif()
    exif[0x010E] = "A holiday photo"
    Image.new("RGB", (4, 4)).save(tmp_path / "d.jpg", exif=exif.tobytes())
    for name in ("a.png", "b.png", "c.png", "d.jpg", "missing.png"):
        assert read_note(tmp_path / name) is None, name


def test_a_note_too_long_for_exif_is_left_out_of_a_jpeg_not_the_image(tmp_path):
    note = {"options": {"text": "x" * MAX_EXIF_NOTE}}
    save_image(torch.full((1, 3, 4, 4), 0.5), tmp_path / "a.jpg", note=note)
    save_image(torch.full((1, 3, 4, 4), 0.5), tmp_path / "a.png", note=note)
    assert read_note(tmp_path / "a.jpg") is None
    assert read_note(tmp_path / "a.png") == {"restorekit": __version__, **note}


# -- run: recorded, resumed, refused -----------------------------------------------------------------------

def test_run_records_its_settings_and_the_input_in_each_output(tmp_path):
    src = inputs(tmp_path / "in")
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(tmp_path / "o"), "--ext", "jpg")
    assert r.exit_code == 0, r.output
    note = read_note(tmp_path / "o" / "in1.jpg")
    assert note == {"restorekit": __version__, "command": "run", "method": "bicubic", "scale": 2, "couple": False, "backend": "torch",
                    "options": {"antialias": True, "clamp": "clip"}, "input": "in1.png"}


def test_a_rerun_with_another_scale_is_refused_before_any_work_and_names_the_change(tmp_path):
    src, out = inputs(tmp_path / "in"), tmp_path / "o"
    assert invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out)).exit_code == 0
    (out / "in2.png").unlink()  # an interrupted run: one output missing
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = invoke("run", "bicubic", "--scale", "3", "--input", str(src), "--output", str(out))
    assert r.exit_code == 2
    assert (f"{out}: 2 of the outputs (in0.png, in1.png) were made with other settings (scale: 2 → 3); use another "
            "--output, or --overwrite to remake them") in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, in2 not made
    r = invoke("run", "bicubic", "--scale", "3", "--input", str(src), "--output", str(out), "--overwrite")
    assert r.exit_code == 0, r.output
    assert {read_note(p)["scale"] for p in out.iterdir()} == {3}
    assert read_image(out / "in0.png").shape[-1] == 24


def test_a_rerun_with_the_same_settings_resumes(tmp_path):
    src, out = inputs(tmp_path / "in"), tmp_path / "o"
    assert invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out)).exit_code == 0
    (out / "in2.png").unlink()
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out), "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["written"] == [str(out / "in2.png")] and len(doc["skipped"]) == 2


def test_an_option_or_method_change_is_named(tmp_path):
    src, out = inputs(tmp_path / "in"), tmp_path / "o"
    assert invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out)).exit_code == 0
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out), "--opt", "clamp=none")
    assert r.exit_code == 2 and "(--opt clamp: clip → none)" in r.stderr
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out), "--couple")
    assert r.exit_code == 2 and "(couple: False → True)" in r.stderr
    r = invoke("run", "psp_sr", "--scale", "2", "--input", str(src), "--output", str(out))
    assert r.exit_code == 2 and "(method: bicubic → psp_sr)" in r.stderr  # not every option of both


def test_outputs_without_a_note_are_taken_as_finished(tmp_path):
    """Another program's file, or an older restorekit's, under the output's name: skipped, as before."""
    src, out = inputs(tmp_path / "in", 1), tmp_path / "o"
    out.mkdir()
    Image.new("RGB", (5, 5)).save(out / "in0.png")
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out), "--json", "-q")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == [
        {"path": str(out / "in0.png"), "input": str(src / "in0.png"), "reason": "exists (--overwrite replaces it)"}]


# -- what is recorded and compared ------------------------------------------------------------------------

def test_result_neutral_options_are_real_fields_and_left_out():
    reg = registry()
    for name in reg.names("methods"):
        opts_cls = reg.method(name).Options
        assert opts_cls.result_neutral <= set(opts_cls.model_fields), name
    pulse = reg.method("pulse").Options(quiet=True, steps=3)
    assert {"quiet", "keep_memory"} <= set(type(pulse).model_fields) and not {"quiet", "keep_memory"} & set(
        result_options(pulse))
    assert result_options(pulse)["steps"] == 3
    assert {"impl", "optimize", "keep_memory", "quiet"} == reg.method("psp_pulse").Options.result_neutral


def test_differences_compare_what_decides_results():
    old = {"method": "pulse", "scale": 8, "seed": 1, "options": {"steps": 10, "quiet": False}}
    assert differences(old, {**old, "options": {"steps": 10}}, ignore_options=frozenset({"quiet"})) == []
    assert differences(old, {**old, "options": {"steps": 10}}) == ["--opt quiet: False → —"]
    assert differences(old, {**old, "seed": 2, "backend": "onnxruntime"}) == ["seed: 1 → 2", "backend: None → onnxruntime"]
    assert differences({**old, "default_weights": {"w": ["a" * 64]}}, {**old, "default_weights": {"w": ["b" * 64]}}
                       ) == ["default weights w: changed"]


def test_a_weights_file_is_recorded_by_name_and_pinned_by_content(tmp_path):
    cls = registry().method("psp_sr")
    weights = tmp_path / "private" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"first")
    first = run_settings(cls, cls.Options(weights=str(weights)), scale=8, seed=5, n_samples=1, couple=False,
                         backend="torch")
    assert first["options"]["weights"] == "model.safetensors" and "private" not in json.dumps(first)
    # The embedded default is not what runs: a re-shipped default does not make these outputs stale.
    assert "default_weights" not in first
    default = run_settings(cls, cls.Options(), scale=8, seed=5, n_samples=1, couple=False, backend="torch")
    assert list(default["default_weights"]) == ["psp-sr-faces128"]
    from restorekit.weights import resolve

    default_file = resolve("psp-sr-faces128")
    named = run_settings(cls, cls.Options(weights="psp-sr-faces128"), scale=8, seed=5, n_samples=1, couple=False,
                         backend="torch")
    # The default by its name: pinned once, as the file of --opt weights (a re-shipped default shows there).
    assert "default_weights" not in named
    assert named["option_files"]["weights"] == default["default_weights"]["psp-sr-faces128"][0]
    # The same file by another spelling (its registered name, a copy elsewhere): not another setting.
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(default_file.read_bytes())
    by_file = run_settings(cls, cls.Options(weights=str(copy)), scale=8, seed=5, n_samples=1, couple=False,
                           backend="torch")
    assert by_file["options"]["weights"] != named["options"]["weights"] and differences(named, by_file) == []
    untrained = run_settings(cls, cls.Options(random_weights=True, resolution=32), scale=8, seed=5, n_samples=1,
                             couple=False, backend="torch")
    assert "default_weights" not in untrained  # no weights at all
    assert differences({**first, "default_weights": default["default_weights"]}, first) == []  # older notes
    assert "seed" not in first  # one psp_sr sample does not depend on it
    assert "seed" in run_settings(cls, cls.Options(weights=str(weights)), scale=8, seed=5, n_samples=2,
                                  couple=False, backend="torch")
    weights.write_bytes(b"retrained")
    second = run_settings(cls, cls.Options(weights=str(weights)), scale=8, seed=5, n_samples=1, couple=False,
                          backend="torch")
    assert differences(first, second) == ["the file of --opt weights: changed"]
    out = tmp_path / "a.png"
    save_image(torch.zeros(1, 3, 4, 4), out, note=first)
    assert changed_outputs([out, tmp_path / "missing.png"], second) == ([out], ["the file of --opt weights: changed"])
    assert changed_outputs([out], first) is None


def test_faces_sidecars_of_older_runs_with_neutral_options_still_resume(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"method": "pulse", "scale": 2, "options": {"steps": 2, "quiet": False}}))
    now = {"method": "pulse", "scale": 2, "options": {"steps": 2}}
    assert settings_changed(tmp_path, ["p"], now, ignore_options=frozenset({"quiet"})) is None
    assert settings_changed(tmp_path, ["p"], {**now, "options": {"steps": 3}},
                            ignore_options=frozenset({"quiet"})) == (["p"], ["--opt steps: 2 → 3"])


def test_faces_sidecars_pin_the_weights_by_content(tmp_path):
    """A re-shipped default model (or a model retrained into the same file) is not the one that made
    the outputs: the sidecar records the weights' sha256 and a rerun names the change."""
    photo = tmp_path / "photo.png"
    save_image(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(2)), photo)
    args = ["run", "psp_sr", "--faces", "detect", "--detector", "dlib_hog", "--scale", "2", "--input", str(photo),
            "--output", str(tmp_path / "o"), "-q"]
    r = invoke(*args)
    if r.exit_code == 2 and "dlib" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.exit_code == 0, r.output
    side_path = tmp_path / "o" / "photo.png.json"
    side = json.loads(side_path.read_text())
    [sha] = side["default_weights"]["psp-sr-faces128"]
    assert len(sha) == 64
    assert invoke(*args).exit_code == 0  # the same model: resumed
    side["default_weights"]["psp-sr-faces128"] = ["0" * 64]
    side_path.write_text(json.dumps(side))
    r = invoke(*args)
    assert r.exit_code == 2 and "(default weights psp-sr-faces128: changed)" in r.stderr


def test_degrade_records_its_spec_and_refuses_another_into_the_same_folder(tmp_path):
    src, out = inputs(tmp_path / "in"), tmp_path / "lr"
    assert invoke("degrade", "--spec", "bicubic:2", "--input", str(src), "--output", str(out), "-q").exit_code == 0
    note = read_note(out / "in0.png")
    assert note == {"restorekit": __version__, "command": "degrade", "spec": "bicubic:2", "input": "in0.png"}
    r = invoke("degrade", "--spec", "bicubic:2", "--input", str(src), "--output", str(out), "--seed", "7", "-q")
    assert r.exit_code == 0  # bicubic draws nothing from the seed: the same outputs, resumed
    r = invoke("degrade", "--spec", "bicubic:4", "--input", str(src), "--output", str(out))
    assert r.exit_code == 2 and "(spec: bicubic:2 → bicubic:4)" in r.stderr
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out))
    assert r.exit_code == 2 and "(made by restorekit degrade, not run)" in r.stderr


def test_degrade_with_noise_records_the_seed(tmp_path):
    src, out = inputs(tmp_path / "in"), tmp_path / "lr"
    args = ["degrade", "--spec", "noise:5+bicubic:2", "--input", str(src), "--output", str(out), "-q"]
    assert invoke(*args, "--seed", "3").exit_code == 0
    assert read_note(out / "in0.png")["seed"] == 3
    assert invoke(*args, "--seed", "3").exit_code == 0
    r = invoke(*args, "--seed", "4")
    assert r.exit_code == 2 and "(seed: 3 → 4)" in r.stderr


def test_a_rerun_of_a_finished_folder_reads_no_input_and_builds_no_method(tmp_path, monkeypatch):
    src, out = inputs(tmp_path / "in"), tmp_path / "o"
    assert invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out)).exit_code == 0
    import restorekit.commands.run as run_mod

    probed: list[str] = []
    real = run_mod.check_inputs
    monkeypatch.setattr(run_mod, "check_inputs", lambda items, **kw: probed.extend(str(i.path) for i in items)
                        or real(items, **kw))
    monkeypatch.setattr(run_mod, "build_method", lambda *a, **k: pytest.fail("built the method"))
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out))
    assert r.exit_code == 0 and probed == []
    assert "0 written, 3 skipped (exist; --overwrite replaces), 0 failed" in r.stderr


def test_a_file_named_inside_a_dict_option_is_pinned_and_recorded_by_name(tmp_path):
    """A dict option may name a file (pulse's generator_options once named the generator's weights;
    pulse refuses that now, naming generator_weights): that path reached every output."""
    cls = registry().method("pulse")
    gen = tmp_path / "private" / "gen.pt"
    gen.parent.mkdir()
    gen.write_bytes(b"weights")
    opts = cls.Options.model_construct(**{**cls.Options().model_dump(),
                                          "generator_options": {"weights": str(gen), "impl": "ref"}})
    settings = run_settings(cls, opts, scale=8, seed=1, n_samples=1, couple=False, backend="torch")
    assert settings["options"]["generator_options"] == {"weights": "gen.pt", "impl": "ref"}
    assert list(settings["option_files"]) == ["generator_options.weights"]
    assert str(tmp_path) not in json.dumps(settings)


def test_a_finished_folder_of_several_samples_is_skipped_whole(tmp_path):
    src, out = inputs(tmp_path / "in"), tmp_path / "o"
    args = ["run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out), "--n-samples", "2"]
    assert invoke(*args, "-q").exit_code == 0
    r = invoke(*args, "--json", "-q")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["skipped"]) == 6 and json.loads(r.stdout)["written"] == []


class _CoinFlip:
    """A step drawing one discrete choice: two seeds often agree on it."""

    params = object()  # no scale

    def __call__(self, hr, *, generator=None):
        return hr.flip(-1) if float(torch.rand(1, generator=generator)) < 0.5 else hr

    def spec(self):
        return "coinflip"


def test_degrade_takes_a_chain_with_a_discrete_random_step_as_seeded():
    from restorekit.degradations import Chain, parse_spec
    from restorekit.run_record import degrade_settings

    chain = Chain([_CoinFlip()])  # type: ignore[list-item]
    assert degrade_settings(chain, seed=5)["seed"] == 5
    assert "seed" not in degrade_settings(parse_spec("blur:1.5+bicubic:4+jpeg:60"), seed=5)
    big = parse_spec("bicubic:64+bicubic:64")  # built-in seedless steps, whatever the total scale
    assert "seed" not in degrade_settings(big, seed=5)


def test_a_rerun_with_nothing_to_do_reports_the_same_json_keys(tmp_path):
    """The rerun builds no method, so it names no device (null), but its summary has every key."""
    args = ["run", "bicubic", "--scale", "2", "--input", str(inputs(tmp_path / "in")), "--output", str(tmp_path / "out"),
            "--json", "-q"]
    first, again = (json.loads(invoke(*args).stdout) for _ in range(2))
    assert set(first) == set(again) and first["device"] == "cpu" and again["device"] is None
    assert len(first["written"]) == 3 and len(again["skipped"]) == 3
