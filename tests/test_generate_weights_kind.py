"""generate --weights FILE of another kind used to say only "not a rosinality StyleGAN2 generator
state dict: key 'style.1.weight' is missing", naming neither the file nor what it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli

pytest.importorskip("restorekit_psp_sr")


def gen(weights: str, out: Path) -> tuple[int, list[str]]:
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--weights", weights,
                                         "--seeds", "0", "--output", str(out), "--device", "cpu"])
    return r.exit_code, [ln for ln in r.output.splitlines() if ln.strip()]


def test_a_safetensors_file_of_another_format_is_named_with_its_format(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    f = tmp_path / "p2p.safetensors"
    save_file({"model.0.weight": torch.zeros(2, 2)}, str(f), metadata={"format": "restorekit.pix2pixhd/1"})
    code, lines = gen(str(f), tmp_path / "out")
    assert code != 0 and len(lines) == 1, lines
    assert f"{f}: a restorekit.pix2pixhd/1 file, not a StyleGAN2 generator" in lines[0]
    assert not (tmp_path / "out").exists()
    # safetensors' own framework tag ("pt", as lpips-alex's file has) is no restorekit format.
    g = tmp_path / "other.safetensors"
    save_file({"net.0.weight": torch.zeros(2, 2)}, str(g), metadata={"format": "pt"})
    code, lines = gen(str(g), tmp_path / "out")
    assert code != 0 and len(lines) == 1 and f"{g}: a safetensors file of other tensors, not a StyleGAN2" in lines[0]


def test_a_pt_file_without_a_generator_is_named(tmp_path: Path) -> None:
    f = tmp_path / "classifier.pt"
    torch.save({"g_ema": {"fc.weight": torch.zeros(2, 2)}}, f)  # a generator entry of other tensors
    code, lines = gen(str(f), tmp_path / "out")
    assert code != 0 and len(lines) == 1 and f"{f}: not a StyleGAN2 generator" in lines[0], lines
