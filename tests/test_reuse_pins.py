"""Results are reused only when what made them is the same: weights without a published sha256 are
pinned by the content this cache holds, a method's settings cover the code of the components its
options name, a metric's fingerprint covers the model files and library it declares, and ``run``
compares the input, the backend, the seed it used and the weights by content."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from click.testing import CliRunner

from restorekit import plugins
from restorekit.cli import build_cli
from restorekit.harness import runner
from restorekit.harness.runner import (CompareConfig, default_weights_pin, metric_fingerprint, option_files_pin,
                                       plan)
from restorekit.harness.store import Record
from restorekit.images import save_image
from restorekit.interfaces import Metric
from restorekit.plugins import registry
from restorekit.run_record import changed_outputs, differences, run_settings
from restorekit.weights.checksum import sha256_file

UNPINNED = "psp-celebs-super-resolution"  # no sha256 is published for it: imported with --trust


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def checkpoint(path: Path, value: float) -> Path:
    torch.save({"state_dict": {"w": torch.full((3,), value)}}, path)
    return path


def trust_import(file: Path) -> None:
    r = invoke("weights", "import", UNPINNED, str(file), "--trust")
    assert r.exit_code == 0, r.output


def replace_unpinned(file: Path) -> None:
    """What a user does to put other weights under the same name: forget the first-use hash, import."""
    assert invoke("weights", "forget", UNPINNED).exit_code == 0
    trust_import(file)


def settings(method: str, **options: Any) -> dict[str, Any]:
    cls = registry().method(method)
    return run_settings(cls, cls.Options(**options), scale=8, seed=None, n_samples=1, couple=False, backend="torch")


def earlier_output(folder: Path, stem: str, note: dict[str, Any]) -> Path:
    """An output as an earlier ``run`` left it: the settings and its input's name inside."""
    folder.mkdir(exist_ok=True)
    return save_image(torch.zeros(1, 3, 16, 16), folder / f"{stem}.png", note=note)


def one_input(tmp_path: Path, name: str = "face.png") -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    save_image(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), folder / name)
    return folder


# -- 1. weights without a published sha256 ---------------------------------------------------------------------


def test_unpinned_weights_are_pinned_by_the_content_this_cache_holds(tmp_path, rk_home):
    first, second = checkpoint(tmp_path / "a.pt", 0.0), checkpoint(tmp_path / "b.pt", 1.0)
    trust_import(first)
    cls = registry().method("psp_sr")
    assert option_files_pin(cls.Options(weights=UNPINNED)) == {"weights": sha256_file(first)}
    assert invoke("weights", "rm", UNPINNED).exit_code == 0  # not cached now: the first-use hash still says which
    assert option_files_pin(cls.Options(weights=UNPINNED)) == {"weights": sha256_file(first)}
    trust_import(first)
    before = settings("psp_sr", weights=UNPINNED)
    replace_unpinned(second)
    after = settings("psp_sr", weights=UNPINNED)
    assert after["option_files"] == {"weights": sha256_file(second)}
    assert differences(before, after) == ["the file of --opt weights: changed"]


def test_run_refuses_outputs_of_unpinned_weights_replaced_under_the_same_name(tmp_path, rk_home):
    trust_import(checkpoint(tmp_path / "a.pt", 0.0))
    src, out = one_input(tmp_path), tmp_path / "o"
    earlier_output(out, "face", {**settings("psp_sr", weights=UNPINNED), "input": "face.png"})
    args = ["run", "psp_sr", "--scale", "8", "--weights", UNPINNED, "--input", str(src), "--output", str(out)]
    r = invoke(*args)
    assert r.exit_code == 0 and "0 written, 1 skipped" in r.stderr  # the same weights: finished
    replace_unpinned(checkpoint(tmp_path / "b.pt", 1.0))
    r = invoke(*args)
    assert r.exit_code == 2 and "(the file of --opt weights: changed)" in r.stderr


def test_compare_does_not_reuse_results_of_replaced_unpinned_weights(tmp_path, rk_home):
    trust_import(checkpoint(tmp_path / "a.pt", 0.0))
    config = CompareConfig(methods=["psp_sr"], scale=8, data=str(tmp_path), out=tmp_path / "cmp",
                           opts={"psp_sr": {"weights": UNPINNED}}, metrics=["psnr_rgb"])
    before = plan(config).methods[0]
    assert plan(config).methods[0].settings_hash == before.settings_hash
    replace_unpinned(checkpoint(tmp_path / "b.pt", 1.0))
    after = plan(config).methods[0]
    assert after.settings["option_files"] == {"weights": sha256_file(tmp_path / "b.pt")}
    assert after.settings_hash != before.settings_hash


def test_unpinned_default_and_metric_weights_follow_the_cached_content(tmp_path, rk_home):
    class Info:
        default_weights = UNPINNED

    class WithDefault:
        info = Info()

    class UsesWeights(Metric):
        name: ClassVar[str] = "uses_unpinned"
        higher_is_better: ClassVar[bool] = True
        requires_weights: ClassVar[tuple[str, ...]] = (UNPINNED,)

        def __call__(self, pred, target, *, lr=None, scale=1):  # type: ignore[no-untyped-def]
            return torch.zeros(len(pred), dtype=torch.float64)

    trust_import(checkpoint(tmp_path / "a.pt", 0.0))
    assert default_weights_pin(WithDefault) == {UNPINNED: [sha256_file(tmp_path / "a.pt")]}  # type: ignore[arg-type]
    scored_with = metric_fingerprint(UsesWeights, "d", "1")
    replace_unpinned(checkpoint(tmp_path / "b.pt", 1.0))
    assert default_weights_pin(WithDefault) == {UNPINNED: [sha256_file(tmp_path / "b.pt")]}  # type: ignore[arg-type]
    assert metric_fingerprint(UsesWeights, "d", "1") != scored_with


# -- 2. the code of what a method's options name ----------------------------------------------------------------

GENERATOR_PLUGIN = '''
from restorekit.hookspecs import hookimpl


def build_gain(gain: float = 1.0):
    return GAIN * gain


GAIN = {gain}


@hookimpl
def register_generators(register):
    register("gain3p", build_gain)
'''

USER_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Options
from restorekit.plugins import registry


class UserOptions(Options):
    generator: str = "gain3p"


class User(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="user3p", summary="scales by a registered generator's gain")
    Options = UserOptions

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        gain = registry().get("generators", self.options.generator).create({{}})
        out = torch.nn.functional.interpolate(lr.float(), scale_factor=scale, mode="nearest") * gain
        return out.clamp(0, 1)


@hookimpl
def register_methods(register):
    register(User)
'''


def test_compare_sees_the_code_of_a_component_another_plugin_provides(hr_folder, tmp_path, plugin_site):
    import sys

    site = plugin_site("thirdparty-gain", "thirdparty_gain", GENERATOR_PLUGIN.format(gain="0.5"))
    plugin_site("thirdparty-user", "thirdparty_user", USER_PLUGIN.format())
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "user3p", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
            "--metrics", "psnr_rgb", "--device", "cpu", "-q"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args).exit_code == 0  # unchanged: reused
    # The generator's plugin is edited (the method's own is not): its results are another code's.
    (site / "thirdparty_gain.py").write_text(textwrap.dedent(GENERATOR_PLUGIN.format(gain="0.25  # halved")))
    sys.modules.pop("thirdparty_gain", None)
    plugins.reset()
    runner.code_fingerprint.cache_clear()  # (a new process hashes the files again)
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert "the code of user3p's generators:gain3p changed" in r.stderr
    assert invoke(*args, "--fresh").exit_code == 0
    doc = json.loads((out / "results.json").read_text())
    assert not any(i["reused"] for i in doc["images"])
    recorded = json.loads((out / "compare.json").read_text())["methods"]["user3p"]
    assert recorded["components"]["generators:gain3p"]["distribution"] == "thirdparty-gain"


def test_pulse_settings_cover_its_generators_plugin(tmp_path):
    pytest.importorskip("restorekit_baselines")
    p = plan(CompareConfig(methods=["pulse"], scale=8, data=str(tmp_path), out=tmp_path / "cmp",
                           metrics=["psnr_rgb"]))
    [component] = p.methods[0].settings["components"].values()
    assert component["plugin"] == registry().owner["generators"]["stylegan2"]
    assert component["code"] == runner.code_fingerprint("restorekit_psp_sr")


# -- 3. identity_dlib's model files and dlib -----------------------------------------------------------------


def test_identity_dlib_is_scored_again_after_its_model_files_or_dlib_change(tmp_path, monkeypatch):
    from restorekit.faces import dlib_models
    from restorekit.faces.identity_dlib import IdentityDlib

    models = tmp_path / "models"
    models.mkdir()
    landmarks, descriptor = models / "shape_predictor_5_face_landmarks.dat", \
        models / "dlib_face_recognition_resnet_model_v1.dat"
    landmarks.write_bytes(b"landmarks one")
    descriptor.write_bytes(b"descriptor one")
    monkeypatch.setenv("RESTOREKIT_DLIB_MODELS", str(models))
    monkeypatch.setattr(dlib_models, "version", lambda dist: "20.0.1", raising=False)
    first = metric_fingerprint(IdentityDlib, "restorekit", "0.1.0")
    assert metric_fingerprint(IdentityDlib, "restorekit", "0.1.0") == first
    stored = Record("m", "img", None, "h", "i", "ok", metrics={"identity_dlib": 0.9},
                    metric_versions={"identity_dlib": first})
    descriptor.write_bytes(b"descriptor two, retrained")
    now = metric_fingerprint(IdentityDlib, "restorekit", "0.1.0")
    assert now != first
    state = runner.MetricState("identity_dlib", IdentityDlib, "restorekit", "restorekit", "0.1.0",
                               instance=IdentityDlib(), fingerprint=now)
    assert runner.stale_metrics(stored, [state]) == [state]  # the stored value is scored again
    landmarks.write_bytes(b"landmarks two")
    assert metric_fingerprint(IdentityDlib, "restorekit", "0.1.0") not in (first, now)
    before_upgrade = metric_fingerprint(IdentityDlib, "restorekit", "0.1.0")
    monkeypatch.setattr(dlib_models, "version", lambda dist: "20.0.2")
    assert metric_fingerprint(IdentityDlib, "restorekit", "0.1.0") != before_upgrade
    assert IdentityDlib.dependencies() == ["dlib-bin 20.0.2", f"{landmarks.name}={sha256_file(landmarks)}",
                                           f"{descriptor.name}={sha256_file(descriptor)}"]


# -- 4. to 7. what run compares ------------------------------------------------------------------------------


def test_an_output_made_from_another_input_is_not_finished(tmp_path):
    note = {**settings("bicubic"), "input": "00000.png"}
    out = earlier_output(tmp_path, "00000", note)
    assert changed_outputs([out], settings("bicubic")) is None  # no input said: as before
    assert changed_outputs([out], settings("bicubic"), inputs={out: {"input": "00000.png"}}) is None
    assert changed_outputs([out], settings("bicubic"), inputs={out: {"input": "00000.jpg"}}) == (
        [out], ["input: 00000.png → 00000.jpg"])
    # By content where both records hold it: the same name is no proof.
    same_name = {**note, "input_sha256": "a" * 64}
    assert differences(same_name, {**same_name, "input_sha256": "b" * 64}) == [
        "input: 00000.png → 00000.png (other content)"]
    assert differences(same_name, {**note, "input": "renamed.png", "input_sha256": "a" * 64}) == []


def test_an_omitted_seed_is_the_seed_zero_it_ran_with(tmp_path):
    pytest.importorskip("restorekit_baselines")
    without = settings("pulse")
    assert without["seed"] is None
    assert differences(without, {**without, "seed": 0}) == []
    assert differences({**without, "seed": 0}, without) == []
    assert differences(without, {**without, "seed": 1}) == ["seed: None → 1"]
    src, out = one_input(tmp_path), tmp_path / "o"
    earlier_output(out, "face", {**without, "input": "face.png"})
    r = invoke("run", "pulse", "--scale", "8", "--seed", "0", "--input", str(src), "--output", str(out))
    assert r.exit_code == 0 and "0 written, 1 skipped" in r.stderr, r.output
    r = invoke("run", "pulse", "--scale", "8", "--seed", "2", "--input", str(src), "--output", str(out))
    assert r.exit_code == 2 and "(seed: None → 2)" in r.stderr


def test_the_default_weights_named_or_given_as_their_file_are_the_default(tmp_path):
    from restorekit.weights import resolve

    default = settings("psp_sr")
    shipped = resolve("psp-sr-faces128")
    by_name, by_path = settings("psp_sr", weights="psp-sr-faces128"), settings("psp_sr", weights=str(shipped))
    for named in (by_name, by_path):
        assert differences(default, named) == [] and differences(named, default) == []
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"retrained")
    assert differences(default, settings("psp_sr", weights=str(other))) == [
        "--opt weights: None → other.safetensors"]
    src, out = one_input(tmp_path), tmp_path / "o"
    earlier_output(out, "face", {**default, "input": "face.png"})
    r = invoke("run", "psp_sr", "--scale", "8", "--weights", "psp-sr-faces128", "--input", str(src),
               "--output", str(out))
    assert r.exit_code == 0 and "0 written, 1 skipped" in r.stderr, r.output


def test_pulses_default_generator_weights_by_name_are_its_default():
    pytest.importorskip("restorekit_baselines")
    assert differences(settings("pulse"), settings("pulse", generator_weights="stylegan2-faces128")) == []


def test_a_rerun_on_another_backend_is_refused(tmp_path):
    src, out = one_input(tmp_path), tmp_path / "o"
    earlier_output(out, "face", {**settings("psp_sr"), "input": "face.png"})
    r = invoke("run", "psp_sr", "--scale", "8", "--backend", "onnxruntime", "--input", str(src), "--output", str(out))
    assert r.exit_code == 2 and "(backend: torch → onnxruntime)" in r.stderr, r.output
    r = invoke("run", "psp_sr", "--scale", "8", "--input", str(src), "--output", str(out))
    assert r.exit_code == 0 and "0 written, 1 skipped" in r.stderr


def test_run_refuses_an_output_made_from_another_input_of_the_same_stem(tmp_path: Path) -> None:
    """``run --input lr2`` then ``--input other`` (other/00000.jpg, another face) into one folder:
    '0 written, 1 skipped' — the output of 00000.png taken for that of 00000.jpg."""
    for name, level in (("a/face.png", 0.2), ("b/face.jpg", 0.7)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        save_image(torch.full((1, 3, 8, 8), level), tmp_path / name)
    out = tmp_path / "out"
    assert invoke("run", "bicubic", "--scale", "2", "--input", str(tmp_path / "a"), "--output", str(out), "-q"
                  ).exit_code == 0
    again = invoke("run", "bicubic", "--scale", "2", "--input", str(tmp_path / "a"), "--output", str(out))
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output
    other = invoke("run", "bicubic", "--scale", "2", "--input", str(tmp_path / "b"), "--output", str(out))
    assert other.exit_code == 2 and "input: face.png → face.jpg" in other.output, other.output


def test_face_photo_sidecars_compare_the_seed_used_and_weights_by_content() -> None:
    """``run --faces detect`` reruns compare sidecars, which still refused seed None → 0 and the
    default weights named explicitly, as ``run``'s notes did."""
    from restorekit.faces.reruns import sidecar_differences
    from restorekit.weights import resolve

    default, named = settings("psp_sr"), settings("psp_sr", weights=str(resolve("psp-sr-faces128")))
    side = {**default, "detector": "mtcnn", "background": "bicubic", "seed": None, "faces": []}
    assert sidecar_differences(side, {**named, "detector": "mtcnn", "background": "bicubic", "seed": 0}) == []
    assert sidecar_differences(side, {**default, "detector": "mtcnn", "background": "bicubic", "seed": 1}) == [
        "seed: None → 1"]


def test_degrade_refuses_an_output_made_from_another_input_of_the_same_stem(tmp_path: Path) -> None:
    """As run: an LR of a.png was skipped as the finished LR of b/a.jpg."""
    for name, level in (("a/face.png", 0.2), ("b/face.jpg", 0.7)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        save_image(torch.full((1, 3, 16, 16), level), tmp_path / name)
    out = tmp_path / "lr"
    assert invoke("degrade", "--spec", "bicubic:2", "--input", str(tmp_path / "a"), "--output", str(out), "-q"
                  ).exit_code == 0
    again = invoke("degrade", "--spec", "bicubic:2", "--input", str(tmp_path / "a"), "--output", str(out))
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output
    other = invoke("degrade", "--spec", "bicubic:2", "--input", str(tmp_path / "b"), "--output", str(out))
    assert other.exit_code == 2 and "input: face.png → face.jpg" in other.output, other.output


def test_an_older_outputs_unknown_pin_is_not_a_change() -> None:
    """Outputs recorded before the cached file's hash was pinned hold "?" (or None): a rerun now,
    pinning the sha256, refused them as 'the file of --opt weights: changed'."""
    sha = "a" * 64
    old = {"method": "psp_sr", "scale": 8, "options": {"weights": UNPINNED}, "option_files": {"weights": "?"},
           "default_weights": {"x": [None]}}
    now = {**old, "option_files": {"weights": sha}, "default_weights": {"x": [sha]}}
    assert differences(old, now) == []
    assert differences({**old, "option_files": {"weights": "b" * 64}}, now) == ["the file of --opt weights: changed"]
