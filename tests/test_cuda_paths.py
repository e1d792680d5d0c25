"""What a user runs on a CUDA GPU, end to end: the shipped methods on ``cuda`` against the CPU,
``compare`` and ``run`` with ``--device cuda``, metrics on CUDA tensors, and the face detector.

Skipped without a GPU (CI has none). ``scripts/gpu/run.sh`` runs this file on a lent GPU beside
the training, so that the inference paths are checked there once too.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.degradations import bicubic_resize
from restorekit.methods import build_method, check_restored

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Three 128-px faces drawn by the shipped prior on the CPU (no data set needed)."""
    pytest.importorskip("restorekit_psp_sr")
    from restorekit_psp_sr.plugin import build_stylegan2

    with torch.no_grad():
        return build_stylegan2(impl="ref").sample(3, seed=7, truncation=0.7).float()


def _png(img: torch.Tensor, path: Path) -> None:
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


@pytest.mark.parametrize("name", ["bicubic", "pix2pixhd", "psp_sr"])
def test_shipped_methods_on_cuda_match_the_cpu(name: str, faces: torch.Tensor) -> None:
    lr = bicubic_resize(faces, (16, 16)).clamp(0, 1)
    outs = {}
    for device in ("cpu", "cuda"):
        m = build_method(name, device=device)
        assert m.device.type == device
        outs[device] = check_restored(name, m.restore(lr.to(m.device), 8), lr, 8).float().cpu()
    diff = (outs["cuda"] - outs["cpu"]).abs()
    # TF32 convolutions on recent GPUs (torch's default) move values by about 1e-3.
    assert float(diff.mean()) < 3e-3 and float(diff.max()) < 0.1, (float(diff.mean()), float(diff.max()))


@pytest.mark.parametrize("name", ["pulse", "psp_pulse"])
def test_latent_searches_run_on_cuda(name: str, faces: torch.Tensor) -> None:
    lr = bicubic_resize(faces[:1], (16, 16)).clamp(0, 1)
    m = build_method(name, {"steps": 20}, device="cuda")
    out = check_restored(name, m.restore(lr.cuda(), 8, seed=0), lr, 8).float().cpu()
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all()
    # Its output downscales towards its input better than a flat grey face does.
    err = float((bicubic_resize(out, (16, 16)) - lr).square().mean())
    assert err < float((lr - lr.mean()).square().mean()), err


def test_metrics_on_cuda_match_the_cpu(faces: torch.Tensor) -> None:
    from restorekit.harness.runner import metric_states, score, setup_metrics

    pred = bicubic_resize(bicubic_resize(faces, (32, 32)), (128, 128)).clamp(0, 1)
    lr = bicubic_resize(faces, (32, 32)).clamp(0, 1)
    values = {}
    for device in (torch.device("cpu"), torch.device("cuda")):
        states = metric_states(None)
        setup_metrics(states, device)
        active = [s for s in states if s.instance is not None]
        assert any(s.name == "psnr_y_crop" for s in active)
        values[device.type] = [score(active, pred[i:i + 1], faces[i:i + 1], lr[i:i + 1], 4, device)
                               for i in range(len(faces))]
    for (cpu_vals, cpu_errs), (gpu_vals, gpu_errs) in zip(values["cpu"], values["cuda"]):
        assert cpu_errs.keys() == gpu_errs.keys(), (cpu_errs, gpu_errs)
        for k, v in cpu_vals.items():
            assert gpu_vals[k] == pytest.approx(v, rel=1e-3, abs=1e-4, nan_ok=True), k


def test_compare_and_run_with_device_cuda(faces: torch.Tensor, tmp_path: Path) -> None:
    data, lr_dir = tmp_path / "hr", tmp_path / "lr"
    data.mkdir()
    lr_dir.mkdir()
    for i, face in enumerate(faces):
        _png(face, data / f"f{i}.png")
        _png(bicubic_resize(face[None], (16, 16))[0], lr_dir / f"f{i}.png")
    runner = CliRunner()
    res = runner.invoke(build_cli(), ["compare", "--methods", "bicubic,psp_sr", "--scale", "8", "--data", str(data),
                              "--out", str(tmp_path / "cmp"), "--device", "cuda", "--metrics",
                              "psnr_y_crop,ssim_y_crop", "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert "cuda" in doc["device"]
    assert len(doc["images"]) == 6 and all(r["status"] == "ok" for r in doc["images"]), doc["images"]
    res = runner.invoke(build_cli(), ["run", "psp_sr", "--scale", "8", "--input", str(lr_dir), "--output",
                              str(tmp_path / "sr"), "--device", "cuda", "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["f0.png", "f1.png", "f2.png"]


def test_the_face_detector_takes_cuda_tensors(faces: torch.Tensor) -> None:
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("mtcnn needs facenet-pytorch")
    from restorekit.faces.pipeline import build_detector

    photo = torch.nn.functional.pad(faces[0], (64, 64, 64, 64), value=0.5)  # a face in a larger picture
    found = build_detector("mtcnn", device="cuda").detect(photo.cuda())
    assert len(found) == 1, found
