"""psp_sr's weights sha256 is of the bytes it loaded (a file rewritten during the load is loaded
again), and its ONNX sidecar names the weights file, not the user's path to it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tiny_models import save_tiny  # noqa: E402

import restorekit_psp_sr.method as psp_method  # noqa: E402
from restorekit.onnx_export import export_onnx, find_export_spec, state_sha256  # noqa: E402
from restorekit.weights import sha256_file  # noqa: E402
from restorekit_psp_sr.method import PSPSR, PSPSROptions  # noqa: E402


def test_a_weights_file_rewritten_during_load_is_loaded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = save_tiny(tmp_path / "a.safetensors", noise_strength=0.3)
    b = save_tiny(tmp_path / "b.safetensors", seed=1, noise_strength=0.3)
    w = tmp_path / "w.safetensors"
    shutil.copy(a, w)
    os.utime(w, ns=(0, 0))  # written long ago: the rewrite below shows in its times whatever the clock's tick
    real, calls = psp_method.load_psp_model, []

    def load_then_rewrite(path: Any, **kwargs: Any) -> Any:
        loaded = real(path, **kwargs)
        calls.append(path)
        if len(calls) == 1:
            shutil.copy(b, w)  # a trainer saves its checkpoint right after this read
        return loaded

    monkeypatch.setattr(psp_method, "load_psp_model", load_then_rewrite)
    m = PSPSR(PSPSROptions(weights=str(w), impl="ref"))
    m.load()
    assert len(calls) == 2 and m.weights_info["sha256"] == sha256_file(b)
    monkeypatch.setattr(psp_method, "load_psp_model", real)
    fresh = PSPSR(PSPSROptions(weights=str(b), impl="ref"))
    fresh.load()
    assert state_sha256(find_export_spec(m).module) == state_sha256(find_export_spec(fresh).module)


def test_sidecar_names_the_weights_file_not_its_path(tmp_path: Path) -> None:
    w = save_tiny(tmp_path / "tiny.safetensors", noise_strength=0.3)
    m = PSPSR(PSPSROptions(weights=str(w), impl="ref"))
    res = export_onnx(find_export_spec(m), tmp_path / "t.onnx", tolerance=1e-4)
    assert res.info["source"]["weights_file"] == "tiny.safetensors"
    assert res.info["source"]["weights_sha256"] == sha256_file(w)
    assert str(tmp_path) not in json.dumps(res.info)
