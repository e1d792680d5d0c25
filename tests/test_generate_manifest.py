"""generate names images by seed: a rerun with other settings into the same folder used to write
nothing (exit 0, "written": []) and leave the old images as if they were the new ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli

pytest.importorskip("restorekit_psp_sr")


def written(text: str) -> list[str]:
    return json.loads(text[text.index("{"):])["written"]


def gen(out: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", "0-1", "--output",
                                         str(out), "--device", "cpu", "--json", *args])
    return r.exit_code, (r.stdout if r.exit_code == 0 else r.output)


def test_other_settings_into_the_same_folder_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    code, text = gen(out, "--truncation", "0.7")
    assert code == 0, text
    manifest = json.loads((out / "generate.json").read_text())
    assert manifest["settings"]["truncation"] == 0.7 and manifest["images"] == ["seed0000.png", "seed0001.png"]
    assert len(manifest["settings"]["weights_state_sha256"]) == 64
    before = (out / "seed0000.png").read_bytes()
    # The same settings: the images are kept (skipped), as before.
    code, text = gen(out, "--truncation", "0.7")
    assert code == 0 and written(text) == []
    # Another truncation: refused before any work, in one line naming the difference.
    code, text = gen(out, "--truncation", "0.5")
    err = [ln for ln in text.splitlines() if "other settings" in ln]
    assert code == 2 and len(err) == 1 and str(out) in err[0] and "truncation 0.7 → 0.5" in err[0]
    assert (out / "seed0000.png").read_bytes() == before
    # --overwrite replaces them and records the new settings.
    code, text = gen(out, "--truncation", "0.5", "--overwrite")
    assert code == 0 and len(written(text)) == 2
    assert (out / "seed0000.png").read_bytes() != before
    assert json.loads((out / "generate.json").read_text())["settings"]["truncation"] == 0.5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_images_the_manifest_does_not_list_are_not_taken_for_new_ones(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    (out / "seed0001.png").write_bytes(b"made by something else")
    code, text = gen(out)
    assert code == 2 and "seed0001.png" in text and "--overwrite" in text
    assert not (out / "generate.json").exists() and not (out / "seed0000.png").exists()
    code, text = gen(out, "--overwrite")
    assert code == 0 and json.loads((out / "generate.json").read_text())["images"] == ["seed0000.png",
                                                                                       "seed0001.png"]


@pytest.mark.parametrize("saved", [True, False])
def test_a_run_killed_around_writing_an_image_does_not_block_a_plain_rerun(tmp_path: Path, monkeypatch, saved) -> None:
    """The image is listed before it is written: killed after writing it, the rerun keeps it; killed
    before, the rerun makes it (listed but missing). Neither is an image of unknown settings."""
    import restorekit.commands.generate as generate

    real = generate.save_image

    def killed(img, path):
        if path.name == "seed0001.png":
            if saved:
                real(img, path)
            raise KeyboardInterrupt
        return real(img, path)

    out = tmp_path / "gen"
    with monkeypatch.context() as m:
        m.setattr(generate, "save_image", killed)
        code, _ = gen(out)
    assert code != 0 and (out / "seed0001.png").exists() == saved
    assert json.loads((out / "generate.json").read_text())["images"] == ["seed0000.png", "seed0001.png"]
    code, text = gen(out)
    assert code == 0, text
    assert written(text) == ([] if saved else [str(out / "seed0001.png")])
    assert (out / "seed0001.png").is_file()


def test_a_folder_made_before_the_manifest_is_refused_saying_so(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    code, text = gen(out)
    assert code == 0, text
    (out / "generate.json").unlink()  # as generate wrote folders before it kept a manifest
    code, text = gen(out)
    lines = [ln for ln in text.splitlines() if "generate.json" in ln]
    assert code == 2 and len(lines) == 1, text
    assert f"{out}: has no generate.json" in lines[0] and "made before" in lines[0]
    assert "another --output" in lines[0] and "--overwrite" in lines[0]


def test_an_overwrite_killed_before_the_new_image_leaves_no_old_image_listed_as_new(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """--overwrite with other settings, killed between listing an image and writing it: the image of
    the old settings must not stay under the new settings' manifest (the plain rerun would keep it)."""
    import restorekit.commands.generate as generate

    out = tmp_path / "gen"
    assert gen(out, "--truncation", "0.7")[0] == 0
    old = (out / "seed0001.png").read_bytes()
    real = generate.save_image

    def killed(img, path):
        if path.name == "seed0001.png":
            raise KeyboardInterrupt
        return real(img, path)

    with monkeypatch.context() as m:
        m.setattr(generate, "save_image", killed)
        code, _ = gen(out, "--truncation", "0.3", "--overwrite")
    assert code != 0
    assert json.loads((out / "generate.json").read_text())["settings"]["truncation"] == 0.3
    assert not (out / "seed0001.png").exists()
    code, text = gen(out, "--truncation", "0.3")
    assert code == 0 and written(text) == [str(out / "seed0001.png")]
    assert (out / "seed0001.png").read_bytes() != old
