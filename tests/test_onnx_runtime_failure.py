"""A graph that fails at run time: one ``OnnxBackendError`` line naming the graph, and nothing of
onnxruntime's own (multi-line, coloured) log on stderr (it logged at severity 3, errors included,
and its exception went out as ``unexpected Fail … report it``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from restorekit.errors import RestorekitError  # noqa: E402
from restorekit.onnx_backend import OnnxBackendError, OnnxSession  # noqa: E402


def reshaping_graph(path: Path) -> Path:
    """N×3×H×W in, reshaped to 1×3×8×8: runs at 8×8 only, loads (and passes the checker) at any size."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 3, 8, 8])
    node = helper.make_node("Reshape", ["image", "shape"], ["restored"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("restored", TensorProto.FLOAT, [1, 3, 8, 8])],
                              initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_graph_failing_at_run_time_is_one_line_naming_it(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    path = reshaping_graph(tmp_path / "bad.onnx")
    session = OnnxSession(path, threads=1, sidecar={"format": "none"})
    assert session.run(torch.full((1, 3, 8, 8), 0.5)).shape == (1, 3, 8, 8)
    capfd.readouterr()
    with pytest.raises(OnnxBackendError) as err:
        session.run(torch.full((1, 3, 16, 16), 0.5))
    msg = str(err.value)
    assert isinstance(err.value, RestorekitError) and "\n" not in msg
    assert msg.startswith(f"{path}: onnxruntime cannot run the graph on a 1×3×16×16 input (") and "Reshape" in msg, msg
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured.err


@pytest.mark.parametrize("text, kind", [("[1, 2]", "an array"), ('"x"', "a string"), ("null", "null"),
                                        ("3", "a number")])
def test_a_sidecar_that_is_not_a_json_object_is_said_to_be_no_sidecar(tmp_path: Path, text: str,
                                                                      kind: str) -> None:
    """It was taken for a missing sidecar (``--onnx``: ``no sidecar … beside it``)."""
    from restorekit.onnx_export import OnnxExportError, read_sidecar, sidecar_path

    path = reshaping_graph(tmp_path / "arr.onnx")
    side = sidecar_path(path)
    side.write_text(text)
    with pytest.raises(OnnxExportError) as err:
        read_sidecar(path)
    assert str(err.value) == f"{side}: not an ONNX sidecar (its JSON is {kind}, not an object)"
    with pytest.raises(RestorekitError, match="not an ONNX sidecar"):
        OnnxSession(path, threads=1)
    side.unlink()
    assert read_sidecar(path) is None
