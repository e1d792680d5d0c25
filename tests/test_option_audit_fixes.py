"""Options a user types, as an audit found them mishandled: --weights silently replaced an --opt
that named other weights (the run recorded only one); an option given by its name and an alias
was called unknown; a learning rate beyond float32 passed validation and failed every image
mid-run; compare's option errors named the base method, not the variant the --opt named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.methods import method_class, method_values, validate_options
from restorekit.options import OptionError
from restorekit.testing.data import smooth_image


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


@pytest.fixture
def face(tmp_path: Path) -> Path:
    p = tmp_path / "a.png"
    Image.fromarray(smooth_image(16, 16, 0)).save(p)
    return p


def test_weights_and_an_opt_naming_other_weights_are_refused(face: Path, tmp_path: Path) -> None:
    pulse = method_class("pulse")
    with pytest.raises(OptionError, match=r"^pulse: --weights A and --opt generator_weights=B name different "
                                          r"weights; give one$"):
        method_values(pulse, ["generator_weights=B"], "A")
    with pytest.raises(OptionError, match=r"^pulse: --weights A and --opt weights=B name different"):
        method_values(pulse, ["weights=B"], "A")  # (its alias)
    assert method_values(pulse, ["weights=A", "steps=2"], "A") == {"steps": "2", "generator_weights": "A"}
    for args in (["run", "psp_sr", "--scale", "4", "--input", str(face), "--output", str(tmp_path / "o")],
                 ["generate", "--generator", "stylegan2", "--seeds", "0", "--out", str(tmp_path / "g")]):
        r = invoke(*args, "--weights", "psp-sr-faces128" if args[0] == "run" else "stylegan2-faces128",
                   "--opt", "weights=other.safetensors")
        assert r.exit_code == 2 and "name different weights; give one" in r.output, r.output
        assert not (tmp_path / "o").exists() and not (tmp_path / "g").exists()


def test_an_option_given_by_its_name_and_an_alias_says_so() -> None:
    with pytest.raises(OptionError, match=r"^pulse: 'weights' and 'generator_weights' both set option "
                                          r"'generator_weights'; give one$"):
        validate_options(method_class("pulse"), {"weights": "A", "generator_weights": "B"})


@pytest.mark.parametrize("method, option", [("pulse", "learning_rate"), ("pulse", "l2_weight"),
                                            ("psp_pulse", "learning_rate"), ("psp_pulse", "anchor_lambda")])
def test_a_number_beyond_float32_is_refused_when_validated(method: str, option: str) -> None:
    with pytest.raises(OptionError, match=rf"^{method}: option '{option}': Value error, 1e\+300 is beyond "
                                          r"float32's range \(±3\.403e\+38\)"):
        validate_options(method_class(method), {option: "1e300"})
    assert getattr(validate_options(method_class(method), {option: "3e38"}), option) == 3e38


def test_compare_names_the_variant_whose_option_is_wrong(tmp_path: Path) -> None:
    data = tmp_path / "hr"
    data.mkdir()
    Image.fromarray(smooth_image(32, 32, 0)).save(data / "a.png")
    r = invoke("compare", "--methods", "bicubic,bicubic@a", "--scale", "2", "--data", str(data), "--out",
               str(tmp_path / "c"), "--opt", "bicubic@a.clamp=nonee", "-q")
    assert r.exit_code == 2 and "bicubic@a: option 'clamp': Input should be 'clip' or 'none'" in r.output, r.output


def test_a_generators_weights_given_by_an_alias_inside_pulses_generator_options_are_refused() -> None:
    """The refusal looked for the weights option's own name among the keys as typed, so a
    generator whose weights option is reached by the alias ``weights`` let other weights through
    while the run's record pinned the shipped default."""
    from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

    from restorekit.plugins import Factory, registry

    class AliasedOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        checkpoint: str | None = Field(None, validation_alias=AliasChoices("checkpoint", "weights"))
        resolution: int = 16

    reg, name = registry(), "aliased_weights_gen"
    reg.add("generators", name, Factory(name, lambda **kw: None, "test", AliasedOptions), "tests")
    try:
        pulse = method_class("pulse").Options
        for key in ("weights", "checkpoint"):
            with pytest.raises(ValidationError, match=r"set the generator's weights with pulse's own "
                                                      r"generator_weights \(run --weights\), not 'checkpoint'"):
                pulse(generator=name, generator_options={key: "other.safetensors"})
        assert pulse(generator=name, generator_options={"resolution": "32"}).generator_options == {"resolution": 32}
    finally:
        del reg.items["generators"][name]
        del reg.owner["generators"][name]
