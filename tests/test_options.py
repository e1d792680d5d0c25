"""Typed ``key=value`` options: values are read by the receiving model, never guessed from the string."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from restorekit.cli import build_cli
from restorekit.errors import PluginError
from restorekit.options import (OptionError, coerce_values, model_from_signature, parse_bool, parse_pairs, validate,
                                weights_option)
from restorekit.plugins import PluginRecord, Registry, _register_plugin
from restorekit.training.config import ConfigError, TrainConfig, apply_overrides, validate_config


@pytest.mark.parametrize(("text", "value"), [("true", True), ("TRUE", True), ("1", True), ("Yes", True),
                                             ("false", False), ("False", False), ("0", False), ("NO", False),
                                             (" no ", False)])
def test_bool_words(text: str, value: bool) -> None:
    assert parse_bool("flag", text) is value


@pytest.mark.parametrize("text", ["maybe", "on", "off", "t", "y", "2", "", "truee"])
def test_other_words_are_errors_naming_key_and_words(text: str) -> None:
    with pytest.raises(OptionError) as exc:
        parse_bool("allow_unsafe", text)
    assert "'allow_unsafe'" in str(exc.value) and "true/false/1/0/yes/no" in str(exc.value)


def test_parse_pairs() -> None:
    assert parse_pairs(["a=1", "mix-alpha=0.5", "x=a=b"]) == {"a": "1", "mix_alpha": "0.5", "x": "a=b"}
    with pytest.raises(OptionError, match="expected key=value"):
        parse_pairs(["novalue"])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flag: bool = False
    maybe_flag: bool | None = None
    count: int = 1
    ratio: float | None = None
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    layers: list[int] | None = None
    extra: dict[str, int] = Field(default_factory=dict)


def test_values_follow_field_types() -> None:
    got = coerce_values(_Model, {"flag": "no", "maybe_flag": "none", "count": "3", "ratio": "null", "name": "0",
                                 "layers": "[8, 9]", "extra": '{"a": 2}'})
    # strings stay strings for str fields ("0" is a name, not False); numbers are left to pydantic
    assert got == {"flag": False, "maybe_flag": None, "count": "3", "ratio": None, "name": "0",
                   "layers": [8, 9], "extra": {"a": 2}}
    m = validate(_Model, got, label="m")
    assert (m.flag, m.count, m.name, m.layers, m.extra) == (False, 3, "0", [8, 9], {"a": 2})


def test_validation_errors_are_one_line() -> None:
    with pytest.raises(OptionError, match=r"^m: option 'mode': Input should be 'a' or 'b' \(got 'c'\)$"):
        validate(_Model, {"mode": "c"}, label="m")
    with pytest.raises(OptionError, match=r"^m: unknown option 'cout' \(did you mean 'count'\?\); known: flag, "):
        validate(_Model, {"cout": "1"}, label="m")
    with pytest.raises(OptionError, match=r"^m: option 'flag' takes true/false/1/0/yes/no"):
        validate(_Model, {"flag": "maybe"}, label="m")


def _factory(*, resolution: int = 256, weights: str | Path | None = None, impl: Literal["auto", "ref"] = "auto",
             allow_unsafe: bool = False, untyped=0.5, **rest: object) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"resolution": resolution, "weights": weights, "impl": impl, "allow_unsafe": allow_unsafe,
            "untyped": untyped, **rest}


def test_model_from_signature() -> None:
    model = model_from_signature(_factory, "my_gen")
    assert list(model.model_fields) == ["resolution", "weights", "impl", "allow_unsafe", "untyped"]  # no **rest
    assert model.model_fields["untyped"].annotation is float  # from the default
    assert weights_option(model) == "weights"
    opts = validate(model, {"allow_unsafe": "false", "resolution": "64", "untyped": "2"}, label="g")
    assert opts.allow_unsafe is False and opts.resolution == 64 and opts.untyped == 2.0
    with pytest.raises(OptionError, match="unknown option 'colour'"):
        validate(model, {"colour": "red"}, label="g")
    with pytest.raises(OptionError, match="'impl'.*'auto' or 'ref'"):
        validate(model, {"impl": "cuda"}, label="g")


def _plugin(kind: str, *register_args: object, **register_kw: object) -> object:
    class P:
        pass

    def hook(register):  # type: ignore[no-untyped-def]
        register(*register_args, **register_kw)

    setattr(P, f"register_{kind}", staticmethod(hook))
    return P


def test_factory_without_options_model_gets_one() -> None:
    reg = Registry()
    _register_plugin(reg, _plugin("generators", "gen_a", _factory, summary="a"), PluginRecord("p", "d", "1"))
    factory = reg.get("generators", "gen_a")
    model = factory.options_model()
    assert issubclass(model, BaseModel) and "allow_unsafe" in model.model_fields
    assert factory.options_model() is model  # derived once
    built = factory.create({"allow_unsafe": "false", "resolution": "32"}, extra_arg=1)
    # only the options the user set reach the factory, typed; extra keyword arguments pass as given
    assert built == {"resolution": 32, "weights": None, "impl": "auto", "allow_unsafe": False, "untyped": 0.5,
                     "extra_arg": 1}
    assert factory.create({"allow_unsafe": "YES"})["allow_unsafe"] is True
    with pytest.raises(OptionError, match="gen_a: option 'allow_unsafe' takes true/false/1/0/yes/no"):
        factory.create({"allow_unsafe": "maybe"})


def test_factory_with_explicit_options_model() -> None:
    class GenOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        resolution: Literal[32, 64] = 32

    reg = Registry()
    _register_plugin(reg, _plugin("generators", "gen_b", lambda **kw: kw, options=GenOptions),
                     PluginRecord("p", "d", "1"))
    f = reg.get("generators", "gen_b")
    assert f.options_model() is GenOptions and f.create({"resolution": "64"}) == {"resolution": 64}
    with pytest.raises(PluginError, match="pydantic model class"):
        _register_plugin(Registry(), _plugin("generators", "gen_c", _factory, options=dict),
                         PluginRecord("p", "d", "1"))


def test_train_set_reads_by_setting_type() -> None:
    data = apply_overrides({}, ["amp=No", "data.flip=0", "data.factors=[1,4]", "optimizer=adam", "out=2024",
                                "grad_clip=none", "lr=1e-3", 'lr_schedule="cosine"'], TrainConfig)
    cfg = validate_config(TrainConfig, data)
    assert (cfg.amp, cfg.data.flip, cfg.data.factors, cfg.optimizer, cfg.out, cfg.grad_clip, cfg.lr,
            cfg.lr_schedule) == (False, False, [1, 4], "adam", "2024", None, 1e-3, "cosine")
    for bad in ("amp=maybe", "data.flip=on"):
        with pytest.raises(ConfigError, match=r"'(amp|data\.flip)' takes true/false/1/0/yes/no"):
            apply_overrides({}, [bad], TrainConfig)


def test_cli_bool_options_are_usage_errors(tmp_path: Path, hr_folder: Path) -> None:
    runner = CliRunner()
    cli = build_cli()
    img = next(hr_folder.iterdir())
    r = runner.invoke(cli, ["run", "bicubic", "--scale", "2", "--input", str(img), "--output", str(tmp_path / "o"),
                            "--opt", "antialias=maybe"])
    assert r.exit_code == 2 and "bicubic: option 'antialias' takes true/false/1/0/yes/no" in r.output
    r = runner.invoke(cli, ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder),
                            "--out", str(tmp_path / "rep"), "--opt", "bicubic.antialias=nah"])
    assert r.exit_code == 2 and "'antialias' takes true/false/1/0/yes/no" in r.output
    # A valid spelling works end to end: antialias=No is False (upscaling: the same pixels either way).
    r = runner.invoke(cli, ["run", "bicubic", "--scale", "2", "--input", str(img), "--output", str(tmp_path / "o"),
                            "--opt", "antialias=No", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / f"{img.stem}.png").is_file()


def test_a_typo_is_refused_even_by_a_model_that_does_not_forbid_extra_keys(hr_folder: Path, tmp_path: Path) -> None:
    # A plugin's options model may be a plain pydantic BaseModel (registration accepts one), whose
    # default is to ignore unknown keys: `--opt amout=2` then ran with the default amount, silently.
    class Lenient(BaseModel):
        amount: float = Field(1.0, description="strength")
        size: int = Field(2, alias="s", description="an aliased field")

    with pytest.raises(OptionError, match=r"plug: unknown option 'amout' \(did you mean 'amount'\?\); known: amount, size"):
        validate(Lenient, {"amout": "2"}, label="plug")
    assert validate(Lenient, {"amount": "2", "s": "3"}, label="plug").model_dump() == {"amount": 2.0, "size": 3}

    class Open(BaseModel):  # a model that asks for extra keys keeps them
        model_config = ConfigDict(extra="allow")

    assert validate(Open, {"anything": "1"}, label="open").model_extra == {"anything": "1"}


class _Named(BaseModel):
    weights: str | None = None
    label: str = "x"


@pytest.mark.parametrize("text", ["none", "None", "NONE", " none "])
def test_none_clears_optional_string_fields_too(text: str) -> None:
    """`none` clears every optional value, `str | None` ones (weights names, paths) included; a file
    literally named none is given as ./none, and a plain `str` field keeps the word."""
    assert coerce_values(_Named, {"weights": text, "label": text}) == {"weights": None, "label": text}
    assert coerce_values(_Named, {"weights": "./none"}) == {"weights": "./none"}


def test_run_opt_weights_none_uses_the_default_weights(tmp_path: Path, rk_home: Path) -> None:
    from PIL import Image

    from restorekit.plugins import registry

    if "psp_sr" not in registry().names("methods"):
        pytest.skip("psp_sr plugin not installed")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), (120, 90, 60)).save(tmp_path / "in" / "f.png")
    r = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--scale", "8", "--input", str(tmp_path / "in"),
                                         "--output", str(tmp_path / "out"), "--opt", "weights=none"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "psp_sr: weights psp-sr-faces128 (the embedded default;" in r.stderr
    assert (tmp_path / "out" / "f.png").is_file()
