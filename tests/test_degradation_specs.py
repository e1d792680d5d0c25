"""Degradation specs: what plugins' steps are counts for compare's --out and LR folders and for
degrade's reruns; the grammar's edges ('+' in values, steps without values, control characters,
long specs, letter case, whole numbers written as decimals); noise on black-and-white images;
dtypes; equality and repr by spec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from pydantic import Field

from restorekit.cli import build_cli
from restorekit.degradations import MAX_SPEC_LENGTH, parse_spec, spec_number
from restorekit.errors import RestorekitError
from restorekit.interfaces import Degradation, Options

from plugin_sources import GAMMA_PLUGIN

def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def _edit_plugin(site: Path, offset: str) -> None:
    """Change the plugin's code under the same version (an editable install, a re-release), and
    make the next run load it afresh."""
    import sys

    from restorekit import plugins
    from restorekit.harness.runner import code_fingerprint

    path = site / "thirdparty_gamma.py"
    path.write_text(path.read_text().replace("OFFSET = 0.0", f"OFFSET = {offset}  # edited"))
    sys.modules.pop("thirdparty_gamma", None)
    code_fingerprint.cache_clear()
    plugins.reset()


@pytest.fixture
def gamma_site(plugin_site):
    from restorekit import plugins
    from restorekit.harness.runner import code_fingerprint

    code_fingerprint.cache_clear()
    yield plugin_site("thirdparty-gamma", "thirdparty_gamma", GAMMA_PLUGIN)
    code_fingerprint.cache_clear()
    plugins.reset()


def _compare(data: Path, out: Path, *extra: object):
    return invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", data, "--out", out, "--limit", "1",
                  "--degradation", "gamma3p:2+bicubic:2", "--metrics", "psnr_rgb", "--device", "cpu", "-q", *extra)


def test_compare_refuses_a_folder_whose_plugin_step_changed_and_keys_its_lr_files_by_it(hr_folder, tmp_path,
                                                                                      gamma_site):
    """Only restorekit's own code was fingerprinted: LR files (and results) made by a plugin's
    step were reused after its code changed, the folder's numbers silently mixing two versions."""
    out = tmp_path / "cmp"
    r = _compare(hr_folder, out)
    assert r.exit_code == 0, r.output
    recorded = json.loads((out / "compare.json").read_text())["inputs"]["degradation_plugins"]
    assert set(recorded) == {"gamma3p"}
    assert recorded["gamma3p"]["distribution"] == "thirdparty-gamma" and recorded["gamma3p"]["version"] == "0.3.1"
    assert len(recorded["gamma3p"]["code"]) == 16
    [before] = (out / "inputs").iterdir()
    lr_before = (before / "img0.png").read_bytes()
    assert _compare(hr_folder, out).exit_code == 0  # the same code: the folder is this run's

    _edit_plugin(gamma_site, "1.0")
    r = _compare(hr_folder, out)
    assert r.exit_code == 2
    assert "the code of degradation step 'gamma3p' changed — its plugin upgraded or edited" in r.stderr
    assert [p.name for p in (out / "inputs").iterdir()] == [before.name]  # nothing was made

    r = _compare(hr_folder, out, "--fresh")
    assert r.exit_code == 0, r.output
    [after] = (out / "inputs").iterdir()
    assert after.name != before.name  # the LR folder's key names the step's code
    assert (after / "img0.png").read_bytes() != lr_before  # made by the new code
    manifest = json.loads((after / "manifest.json").read_text())
    assert manifest["degradation_plugins"]["gamma3p"]["code"] != recorded["gamma3p"]["code"]


def test_lr_folder_key_of_built_in_steps_is_unchanged_and_plugin_code_changes_it():
    from restorekit.harness.inputs import lr_folder_key

    assert lr_folder_key("bicubic:4", 4) == hashlib.sha256(b"bicubic:4|4").hexdigest()[:12]  # folders made before
    assert lr_folder_key("bicubic:4", 4, {}) == lr_folder_key("bicubic:4", 4)
    a = {"g": {"plugin": "p", "distribution": "d", "version": "1", "code": "aaaa"}}
    b = {"g": {**a["g"], "code": "bbbb"}}
    assert len({lr_folder_key("g:1+bicubic:4", 4, a), lr_folder_key("g:1+bicubic:4", 4, b),
                lr_folder_key("g:1+bicubic:4", 4)}) == 3


def test_degrade_does_not_skip_outputs_made_by_other_code_of_a_plugin_step(hr_folder, tmp_path, gamma_site):
    """degrade compared only the spec and seed: outputs of the old code were skipped as finished."""
    out = tmp_path / "lr"
    args = ["degrade", "--spec", "gamma3p:2+bicubic:2", "--input", hr_folder, "--output", out, "-q"]
    assert invoke(*args).exit_code == 0
    first = (out / "img0.png").read_bytes()
    assert invoke(*args).exit_code == 0  # the same code: a resumed run skips them
    assert (out / "img0.png").read_bytes() == first

    _edit_plugin(gamma_site, "1.0")
    r = invoke(*args)
    assert r.exit_code == 2
    assert "the code of degradation step 'gamma3p' changed" in r.stderr and "--overwrite" in r.stderr
    assert (out / "img0.png").read_bytes() == first
    assert invoke(*args, "--overwrite").exit_code == 0
    assert (out / "img0.png").read_bytes() != first


class _LevelParams(Options):
    level: float = Field(gt=0, le=1e9, description="a large-range parameter (a photon count)")


class _Shot(Degradation):
    name: ClassVar[str] = "shot"
    Params = _LevelParams

    def __call__(self, hr, *, generator=None):
        return hr

    def spec(self) -> str:
        return f"shot:{spec_number(self.params.level)}"


class _NoParams(Options):
    pass


class _Grey(Degradation):
    name: ClassVar[str] = "grey"
    Params = _NoParams

    def __call__(self, hr, *, generator=None):
        return hr.mean(1, keepdim=True).expand_as(hr).contiguous()

    def spec(self) -> str:
        return "grey"


KINDS = {"shot": _Shot, "grey": _Grey, "bicubic": type(parse_spec("bicubic:2").steps[0])}


def test_spec_number_writes_exponents_without_plus_so_large_values_read_back():
    """'%g' wrote 1e+06, and '+' joins steps: the spec of shot:1000000 did not parse back."""
    assert [spec_number(v) for v in (1e6, 2.5e6, 1e16, 1e20, 123456.0, 1e-5)] == \
        ["1e06", "2.5e06", "1e16", "1e20", "123456", "1e-05"]
    chain = parse_spec("shot:1000000+bicubic:2", KINDS)
    assert chain.spec() == "shot:1e06+bicubic:2"
    assert parse_spec(chain.spec(), KINDS).steps[0].params.level == 1e6


@pytest.mark.parametrize("spec,msg", [
    ("shot:1e+6+bicubic:2", "'1e+6': '+' joins steps, so an exponent takes none: write '1e6'"),
    ("shot:2.5E+3", "'2.5E+3': '+' joins steps, so an exponent takes none: write '2.5E3'"),
    ("bicubic:+4", "step 'bicubic:+4': a value takes no '+' sign ('+' joins steps): write 'bicubic:4'"),
    ("grey:1", "step 'grey' takes no value (write 'grey')"),  # was an IndexError
])
def test_plus_in_values_and_values_of_steps_without_parameters_are_one_clear_line(spec, msg):
    with pytest.raises(RestorekitError) as err:
        parse_spec(spec, KINDS)
    assert msg in str(err.value) and str(err.value).startswith(f"degradation spec '{spec}'")
    assert "\n" not in str(err.value)


def test_a_step_without_parameters_needs_no_value():
    assert parse_spec("grey+bicubic:2", KINDS).spec() == "grey+bicubic:2"
    assert parse_spec("grey:+bicubic:2", KINDS).spec() == "grey+bicubic:2"


@pytest.mark.parametrize("spec,code", [("bicubic:4\njpeg:60", "U+000A at position 9"),
                                       ("bicubic:4\r", "U+000D"), ("blur:1\u2028", "U+2028"),
                                       ("bi\u200bcubic:4", "U+200B")])
def test_control_characters_are_refused_in_one_line(spec, code):
    with pytest.raises(RestorekitError) as err:
        parse_spec(spec)
    msg = str(err.value)
    assert code in msg and "a spec is one line" in msg
    assert msg.isprintable()  # the character itself is not echoed (a newline split the message)


def test_echoed_specs_are_cut_and_long_specs_refused():
    long_name = "x" * 500
    with pytest.raises(RestorekitError) as err:
        parse_spec(f"bicubic:4+{long_name}:1")
    assert len(str(err.value)) < 300 and "…" in str(err.value)  # the whole spec was echoed, twice
    with pytest.raises(RestorekitError, match="is 1001 characters long; at most 1000"):
        parse_spec("blur:" + "1" * (MAX_SPEC_LENGTH - 5) + "+")
    assert MAX_SPEC_LENGTH == 1000


def test_serve_takes_no_longer_spec_than_parse_spec():
    from restorekit.web.jobs import JobSettings, read_settings

    assert JobSettings.model_fields["degradation"].metadata[0].max_length == MAX_SPEC_LENGTH
    base = {"upload": "u", "methods": ["bicubic"], "scale": 2}
    assert read_settings({**base, "degradation": "b" * MAX_SPEC_LENGTH}).degradation
    with pytest.raises(RestorekitError, match="degradation"):
        read_settings({**base, "degradation": "b" * (MAX_SPEC_LENGTH + 1)})


@pytest.mark.parametrize("name", ["BICUBIC", "Bicubic", "bIcUbIc"])
def test_did_you_mean_ignores_letter_case(name):
    with pytest.raises(RestorekitError, match=rf"unknown step '{name}' \(did you mean 'bicubic'\?\)"):
        parse_spec(f"{name}:4")


@pytest.mark.parametrize("spec,want", [("bicubic:1e0", "bicubic:1"), ("bicubic:4.0", "bicubic:4"),
                                       ("jpeg:1e2", "jpeg:100"), ("jpeg:6e1", "jpeg:60"), ("bicubic:04", "bicubic:4"),
                                       ("blur:1e1", "blur:10"), ("noise:0.1e1", "noise:1")])
def test_integers_take_every_form_of_a_whole_number(spec, want):
    assert parse_spec(spec).spec() == want


@pytest.mark.parametrize("spec,msg", [("bicubic:4.5", "'4.5' is not a whole number"),
                                      ("jpeg:6.55e1", "'6.55e1' is not a whole number"),
                                      ("blur:1e400", "'1e400' is out of range"),
                                      ("bicubic:1e400", "'1e400' is out of range"),
                                      ("bicubic:1e3", "less than or equal to 64")])
def test_numbers_that_are_not_whole_or_finite_are_named(spec, msg):
    with pytest.raises(RestorekitError, match=msg):
        parse_spec(spec)


def test_noise_keeps_a_black_and_white_image_black_and_white():
    """Noise was drawn per channel: a grey HR got a colour-speckled LR (compare's black-and-white
    rule, channels within 1/255, then no longer applied to it)."""
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, 24, 24, generator=g).expand(2, 3, 24, 24).contiguous()
    out = parse_spec("noise:10")(grey, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert 8 < (out - grey).std().item() * 255 < 12  # still noise of the asked sigma
    # One plane per image, from the generator, in order; a colour image in the batch keeps three.
    mixed = torch.cat([grey[:1], torch.rand(1, 3, 24, 24, generator=g)])
    out = parse_spec("noise:5")(mixed, generator=torch.Generator().manual_seed(2))
    want = torch.Generator().manual_seed(2)
    plane, colour = torch.randn((1, 1, 24, 24), generator=want), torch.randn((1, 3, 24, 24), generator=want)
    assert torch.allclose(out[:1], (mixed[:1] + plane * 5 / 255).clamp(0, 1), atol=1e-7, rtol=0)
    assert torch.allclose(out[1:], (mixed[1:] + colour * 5 / 255).clamp(0, 1), atol=1e-7, rtol=0)
    # Through a whole chain, including the JPEG round trip.
    lr = parse_spec("blur:1+bicubic:2+noise:5+jpeg:60")(grey[:1], generator=torch.Generator().manual_seed(3))
    assert torch.equal(lr[:, 0], lr[:, 1]) and torch.equal(lr[:, 1], lr[:, 2])


@pytest.mark.parametrize("spec", ["blur:1.5", "jpeg:60", "noise:5", "bicubic:2", "blur:1+bicubic:2+noise:3+jpeg:50"])
def test_steps_keep_the_input_dtype(spec):
    """blur raised on float64 (a float32 kernel); jpeg gave float32 back."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = parse_spec(spec)(x, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.float64
    single = parse_spec(spec)(x.float(), generator=torch.Generator().manual_seed(1))
    assert single.dtype == torch.float32
    if "noise" not in spec:  # (noise draws float64 numbers of its own)
        assert torch.allclose(out.float(), single, atol=1e-5 if "jpeg" not in spec else 1 / 255 + 1e-6)


def test_jpeg_in_float64_gives_exact_levels():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = parse_spec("jpeg:90")(x)
    assert out.dtype == torch.float64 and torch.equal(out, (out * 255).round() / 255)  # k/255 in float64


def test_steps_and_chains_compare_and_show_by_spec():
    assert parse_spec("blur:1.5") == parse_spec(" blur : 1.50 ")
    assert parse_spec("blur:1.5") != parse_spec("blur:2") and parse_spec("blur:1") != parse_spec("noise:1")
    assert parse_spec("blur:1.5").steps[0] == parse_spec("blur:1.5").steps[0]
    assert parse_spec("noise:1").steps[0] != parse_spec("blur:1").steps[0]
    assert len({parse_spec("jpeg:60+bicubic:2"), parse_spec("jpeg:60.0+bicubic:2.0")}) == 1
    assert repr(parse_spec("blur:1.5+bicubic:4")) == "Chain('blur:1.5+bicubic:4')"
    assert repr(parse_spec("jpeg:60").steps[0]) == "Jpeg('jpeg:60')"
