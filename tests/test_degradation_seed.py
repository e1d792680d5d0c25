"""A degradation's noise for an image depends on its pixels and --seed only: not on its file name,
the other inputs (which can change its output name) or their order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.degradations import parse_spec
from restorekit.harness.inputs import degradation_seed, degrade_hr
from restorekit.seeds import SEED_MAX, mix_seed


def _img(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)


def test_seed_follows_pixels_and_seed_not_names() -> None:
    a = torch.from_numpy(_img(1)).permute(2, 0, 1)[None].float() / 255
    b = a.clone()
    b[0, 0, 0, 0] += 1 / 255
    assert degradation_seed(a) == degradation_seed(a.clone())
    assert len({degradation_seed(a), degradation_seed(b), degradation_seed(a, 1)}) == 3
    chain = parse_spec("noise:10+bicubic:4")
    assert torch.equal(degrade_hr(a, chain, 4, where="x")[1], degrade_hr(a.clone(), chain, 4, where="y")[1])
    assert not torch.equal(degrade_hr(a, chain, 4, where="x")[1], degrade_hr(a, chain, 4, where="x", seed=1)[1])


def test_mix_seed_is_in_range_and_unrelated_for_neighbours() -> None:
    values = {mix_seed(s, k) for s in range(8) for k in range(8)}
    assert len(values) == 64 and all(0 <= v <= SEED_MAX for v in values)
    assert mix_seed(1, 0) != mix_seed(0, 1)
    assert mix_seed(SEED_MAX, 3) != mix_seed(0, 3)  # the top of the range is not folded onto 0


def test_degrade_gives_an_image_the_same_noise_whichever_files_come_with_it(tmp_path: Path) -> None:
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(_img(seed)).save(tmp_path / folder / "img.png")
    alone = tmp_path / "alone.txt"
    alone.write_text(f"{tmp_path / 'a' / 'img.png'}\n", encoding="utf-8")
    both = tmp_path / "both.txt"
    both.write_text(f"{tmp_path / 'a' / 'img.png'}\n{tmp_path / 'b' / 'img.png'}\n", encoding="utf-8")
    outs = {}
    for name, lst in (("alone", alone), ("both", both)):
        r = CliRunner().invoke(build_cli(), ["degrade", "--spec", "noise:10+bicubic:4", "--input", f"@{lst}",
                                             "--output", str(tmp_path / name), "--json"])
        assert r.exit_code == 0, r.output
        outs[name] = json.loads(r.stdout)["written"]
    assert [Path(p).name for p in outs["alone"]] == ["img.png"]
    assert sorted(Path(p).name for p in outs["both"]) == ["a__img.png.png", "b__img.png.png"]  # renamed
    assert np.array_equal(np.asarray(Image.open(tmp_path / "alone" / "img.png")),
                          np.asarray(Image.open(tmp_path / "both" / "a__img.png.png")))


def test_compare_does_not_extend_a_folder_made_by_other_core_code(hr_folder: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Methods, metrics and the LR files run through restorekit's own code (resizing, degradations):
    a folder made by other core code is refused, not mixed with new results."""
    import restorekit.harness.runner as runner

    args = ["compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr_folder), "--out",
            str(tmp_path / "out"), "--metrics", "psnr_rgb", "--device", "cpu", "--limit", "2"]
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    recorded = json.loads((tmp_path / "out" / "compare.json").read_text(encoding="utf-8"))
    core = runner.code_fingerprint("restorekit")
    assert recorded["inputs"]["core_code"] == core and recorded["methods"]["bicubic"]["core_code"] == core
    real = runner.code_fingerprint
    monkeypatch.setattr(runner, "code_fingerprint",
                        lambda m: "0" * 16 if m.split(".")[0] == "restorekit" else real(m))
    r = CliRunner().invoke(build_cli(), args[:-2])
    assert r.exit_code == 2 and "made by other restorekit code" in r.output, r.output


def test_a_switch_to_lr_dir_is_named_as_such_not_as_other_code(hr_folder: Path, tmp_path: Path) -> None:
    """--lr-dir runs record no core_code (restorekit made no LR): a rerun that swaps --degradation
    for --lr-dir is refused for its source, not for code that did not change."""
    args = ["compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr_folder), "--out",
            str(tmp_path / "out"), "--metrics", "psnr_rgb", "--device", "cpu", "--limit", "2"]
    assert CliRunner().invoke(build_cli(), args).exit_code == 0
    lr = tmp_path / "lr"
    r = CliRunner().invoke(build_cli(), ["degrade", "--spec", "bicubic:4", "--input", str(hr_folder), "--output", str(lr)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(build_cli(), args + ["--lr-dir", str(lr)])
    assert r.exit_code == 2 and "source: degradation:bicubic:4 → lr-dir:" in r.output, r.output
    assert "other restorekit code" not in r.output


def test_a_weights_pin_in_one_record_only_is_left_to_the_options() -> None:
    """compare, as run: a folder whose method recorded the default's pin (made before a method run
    with its own weights stopped recording it) is compared on the options, which name the weights."""
    from restorekit.harness.outdir import differences

    inputs = {"data": "/d", "scale": 4, "source": "degradation:bicubic:4", "core_code": "c"}
    own = {"options": {"weights": "own.safetensors"}, "option_files": {"weights": "1" * 64}}
    old = {"inputs": inputs, "methods": {"p": {**own, "default_weights": {"p-faces": ["a" * 64]}}}}
    assert differences(old, {"inputs": inputs, "methods": {"p": own}}) == []
    changed = {"inputs": inputs, "methods": {"p": {**own, "default_weights": {"p-faces": ["b" * 64]}}}}
    assert differences(old, changed) == ["p.default_weights.p-faces: ['" + "a" * 64 + "'] → ['" + "b" * 64 + "']"]
