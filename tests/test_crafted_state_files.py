"""State files restorekit reads back (a training log on resume and at the end of a run, compare's
inputs manifest and compare.json, a faces sidecar) written otherwise than restorekit writes them —
cut short, hand-edited, or planted by another user of a shared folder: each is a line ignored or a
one-line refusal, never a crash ("unexpected TypeError", an OverflowError)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli


# -- training logs ----------------------------------------------------------------------------------
def test_trim_log_drops_lines_whose_step_is_not_a_whole_number(tmp_path: Path) -> None:
    from restorekit.training.trainer import trim_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": "7"}\n{"step": null}\n{"step": true}\n[1, 2]\n'
                   '{"step": 1e999}\n{"step": 3, "loss": 0.5}\n{"step": 9}\n{"kind": "note"}\n')
    trim_log(log, 5)
    assert log.read_text().splitlines() == ['{"step": 1, "loss": 1.0}', '{"step": 3, "loss": 0.5}', '{"kind": "note"}']


def test_the_loss_plot_skips_lines_it_cannot_place(tmp_path: Path) -> None:
    from restorekit.training.plot import plot_losses, read_series

    log = tmp_path / "log.jsonl"
    big = "9" * 400  # an int no float holds
    log.write_text('{"kind": "train", "step": 1, "loss": 1.0}\n'
                   '{"kind": "train", "step": 1e999, "loss": 0.9}\n'
                   '{"kind": "train", "step": "2", "loss": 0.8}\n'
                   '{"kind": "train", "loss": 0.8}\n'
                   '[1]\n"text"\n'
                   f'{{"kind": "train", "step": {big}, "loss": 0.8}}\n'
                   f'{{"kind": "train", "step": 3, "loss": 0.5, "l2": {big}, "flag": true}}\n'
                   '{"kind": "train", "step": 4.0, "loss": 0.25}\n'
                   '{"kind": "train", "step": 5, "lo')  # cut short by a kill
    assert read_series(log) == {"loss": [(1, 1.0), (3, 0.5), (4, 0.25)]}
    png = plot_losses(log, tmp_path / "loss.png")
    assert png is not None and png.is_file()


def test_a_log_that_is_not_valid_utf8_still_plots(tmp_path: Path) -> None:
    from restorekit.training.plot import read_series

    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"kind": "train", "step": 1, "loss": 1.0}\n\xff\xfe garbage\n')
    assert read_series(log) == {"loss": [(1, 1.0)]}


# -- compare: the inputs manifest and compare.json ----------------------------------------------------
def _compare(data: Path, out: Path, *extra: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in (
        "compare", "--methods", "bicubic", "--scale", "2", "--data", data, "--out", out, "--metrics", "psnr_rgb",
        "--device", "cpu", "-q", *extra)], catch_exceptions=False)


def test_an_inputs_manifest_with_entries_of_another_shape_keeps_only_the_well_formed(hr_folder: Path,
                                                                                   tmp_path: Path) -> None:
    from restorekit.harness.inputs import _read_manifest

    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    manifest = next((out / "inputs").glob("*/manifest.json"))
    record = json.loads(manifest.read_text())
    good = record["images"]["img1"]
    record["images"] = {"img0": 5, "img1": good, "img2": [1], "img3": None}
    manifest.write_text(json.dumps(record))
    assert _read_manifest(manifest, record["core_code"]) == {"img1": good}
    r = _compare(hr_folder, out)
    assert r.exit_code == 0, r.output
    assert set(json.loads(manifest.read_text())["images"]) == {"img0", "img1", "img2", "img3"}  # made again


@pytest.mark.parametrize("methods", [5, [1], "bicubic", ["bicubic"], {"bicubic": 5}, {"bicubic": [1]}])
def test_a_compare_json_of_another_shape_is_another_configuration(hr_folder: Path, tmp_path: Path,
                                                                methods: object) -> None:
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    config = out / "compare.json"
    record = json.loads(config.read_text())
    record["methods"] = methods
    config.write_text(json.dumps(record))
    r = _compare(hr_folder, out)
    assert r.exit_code == 2
    err = r.stderr.replace("\n", " ")
    assert f"{out} holds the results of another configuration (" in err and "unexpected" not in err
    assert len(r.stderr.strip().splitlines()) == 1
    assert _compare(hr_folder, out, "--fresh").exit_code == 0  # and --fresh starts over


# -- a faces sidecar --------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["1e999", "-1e999", "1e300", "-1", '"x"', "null"])
def test_a_sidecar_with_a_face_index_out_of_range_is_unreadable(tmp_path: Path, index: str) -> None:
    from restorekit.faces.pipeline import _expected_firsts

    (tmp_path / "p.json").write_text('{"faces": [{"index": 0, "action": "restored"}, '
                                     f'{{"index": {index}, "action": "restored"}}]}}')
    assert _expected_firsts(tmp_path, "p", True) == ["p_face0"]
    (tmp_path / "p.json").write_text('{"faces": [{"index": 2, "action": "restored"}]}')
    assert _expected_firsts(tmp_path, "p", True) == ["p_face2"]


def test_a_resume_does_not_read_a_log_through_a_planted_link(tmp_path: Path) -> None:
    """In a shared run folder a link at log.jsonl would copy the lines of any file of the user's
    into the run's log (and a FIFO would hang the resume): refused in one line, the file untouched."""
    import os

    from restorekit.errors import FileSystemError
    from restorekit.training.trainer import trim_log

    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"step": 1, "secret": "x"}\n')
    log = tmp_path / "log.jsonl"
    log.symlink_to(victim)
    with pytest.raises(FileSystemError, match="symbolic link"):
        trim_log(log, 5)
    assert log.is_symlink() and victim.read_text() == '{"step": 1, "secret": "x"}\n'
    log.unlink()
    os.mkfifo(log)
    with pytest.raises(FileSystemError, match="not a regular file"):
        trim_log(log, 5)
