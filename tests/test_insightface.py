"""insightface integration (ArcFace identity metric, SCRFD detector, pack import), offline.

The real insightface models cannot be downloaded here, so the tests build tiny stand-ins in
the same ONNX signatures (ArcFace: ``input.1`` N×3×112×112 → N×512; SCRFD: ``input.1``
1×3×H×W → 9 outputs, scores/boxes/landmarks for strides 8, 16, 32 with two anchors per cell),
export them with ``torch.onnx.export`` (opset 17), import them into a temporary weights cache
with ``restorekit weights import`` and load them through the code path users take
(``insightface.model_zoo.get_model``). The stand-in SCRFD answers a white 32×32 square at a
known stride-32 cell with a known box and known landmarks, so decoding is checked exactly.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from restorekit import weights as W
from restorekit.commands.weights import weights_group
from restorekit.errors import IntegrityError, RestorekitError, WeightsMissing

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

try:  # insightface imports cv2, scikit-image, requests…: a broken install skips with its error
    import insightface  # noqa: F401

    _NO_INSIGHTFACE = ""
except Exception as _exc:  # pragma: no cover - depends on the environment
    _NO_INSIGHTFACE = f"insightface not importable ({_exc}); pip install 'restorekit[insightface]'"
needs_insightface = pytest.mark.skipif(bool(_NO_INSIGHTFACE), reason=_NO_INSIGHTFACE or "-")
try:
    import cv2  # noqa: F401

    HAVE_CV2 = True
except ImportError:  # pragma: no cover
    HAVE_CV2 = False

PACK = "insightface-buffalo-l"
REGISTRY = Path(__file__).resolve().parents[1] / "registry"

# ---------------------------------------------------------------------------------------------
# Stand-in networks


class TinyArcFace(nn.Module):
    """ArcFace-shaped: N×3×112×112 (normalised RGB) → N×512."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.fc = nn.Linear(16 * 4, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))  # 28×28
        return self.fc(F.avg_pool2d(x, 14).flatten(1))


# The stand-in SCRFD's answer for a white stride-32 cell (in units of the stride, from the
# anchor centre = the cell's top-left corner): box distances (left, top, right, bottom) and
# landmarks (x, y) ×5. The cell in the tests is (x=2, y=1): anchor centre (64, 32).
BOX_DIST = (0.5, 0.25, 1.5, 1.75)
KPS_DIST = ((0.25, 0.5), (1.0, 0.5), (0.625, 0.875), (0.3125, 1.3125), (0.9375, 1.3125))
CELL = (2, 1)


class TinyScrfd(nn.Module):
    """SCRFD-shaped (det_10g layout): input ``input.1`` 1×3×H×W, outputs
    ``[score8, score16, score32, bbox8, bbox16, bbox32, kps8, kps16, kps32]`` with shapes
    ``(H/s·W/s·2, 1|4|10)``. A random conv trunk feeds the heads, and a cell-mean brightness
    channel drives the stride-32 score: sigmoid(20·g − 10) for anchor 0 (a white cell scores
    ≈ 1, grey or black ≈ 0); anchor 1 and strides 8, 16 never fire. Box and landmark heads
    answer the constants above (their weights are zero, their biases hold the answer)."""

    strides = (8, 16, 32)

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.ModuleList([nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(5)])
        self.score = nn.ModuleList([nn.Conv2d(5, 2, 1) for _ in self.strides])
        self.bbox = nn.ModuleList([nn.Conv2d(5, 8, 1) for _ in self.strides])
        self.kps = nn.ModuleList([nn.Conv2d(5, 20, 1) for _ in self.strides])
        with torch.no_grad():
            for i in range(3):
                for head in (self.score[i], self.bbox[i], self.kps[i]):
                    head.weight.zero_()
                self.score[i].bias.fill_(-20.0)
                self.bbox[i].bias.fill_(0.5)
                self.kps[i].bias.fill_(0.5)
            self.score[2].weight[:, 4] = 20.0
            self.score[2].bias.copy_(torch.tensor([-10.0, -30.0]))
            self.bbox[2].bias.copy_(torch.tensor(BOX_DIST * 2))
            self.kps[2].bias.copy_(torch.tensor([v for pt in KPS_DIST for v in pt] * 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gray = x.mean(1, keepdim=True)
        feats = []
        h = x
        for i, conv in enumerate(self.trunk):
            h = F.relu(conv(h))
            if i >= 2:
                feats.append(h)
        scores, boxes, kpss = [], [], []
        for i, (s, f) in enumerate(zip(self.strides, feats)):
            z = torch.cat([f, F.avg_pool2d(gray, s)], 1)
            scores.append(torch.sigmoid(self.score[i](z)).permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(self.bbox[i](z).permute(0, 2, 3, 1).reshape(-1, 4))
            kpss.append(self.kps[i](z).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *kpss)


def _export(model: nn.Module, example: torch.Tensor, path: Path, outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), opset_version=17, dynamo=False,
                          input_names=["input.1"], output_names=outputs, dynamic_axes=dynamic)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The two stand-in ONNX files (and their torch modules) in a folder laid out like buffalo_l."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("buffalo_l")
    arc = TinyArcFace()
    _export(arc, torch.zeros(1, 3, 112, 112), folder / "w600k_r50.onnx", ["fc1"],
            {"input.1": {0: "None"}, "fc1": {0: "None"}})
    det = TinyScrfd()
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    _export(det, torch.zeros(1, 3, 128, 128), folder / "det_10g.onnx", names,
            {"input.1": {2: "?", 3: "?"}, **{n: {0: f"n_{n}"} for n in names}})
    (folder / "genderage.onnx").write_bytes(b"not used by restorekit")
    return {"folder": folder, "arcface": arc, "scrfd": det}


def _test_registry(root: Path) -> Path:
    """A registry whose buffalo_l entry has no sizes/hashes (stand-ins need ``--trust``)."""
    (root / "weights").mkdir(parents=True)
    text = (REGISTRY / "weights" / f"{PACK}.toml").read_text()
    kept = [line for line in text.splitlines() if not line.startswith(("size =", "sha256 ="))]
    (root / "weights" / f"{PACK}.toml").write_text("\n".join(kept) + "\n")
    return root


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    from restorekit.faces import insightface_models as IM

    IM.clear_cache()
    return tmp_path / "home"


@pytest.fixture
def cached(models: dict[str, object], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-ins imported (as a zip, with --trust) into a fresh cache under a test registry."""
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(_test_registry(tmp_path / "registry")))
    archive = tmp_path / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(Path(models["folder"]).iterdir()):  # type: ignore[arg-type]
            zf.write(p, f"buffalo_l/{p.name}")
    r = CliRunner().invoke(weights_group, ["import", PACK, str(archive), "--trust"])
    assert r.exit_code == 0, r.output
    return home


def face_image(size: int = 128) -> torch.Tensor:
    """Black image with a white 32×32 square on the stride-32 cell ``CELL`` and some texture."""
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, size, size, generator=g) * 0.05
    x, y = CELL
    img[:, 32 * y:32 * y + 32, 32 * x:32 * x + 32] = 1.0
    return img


# ---------------------------------------------------------------------------------------------
# Alignment


def test_similarity_transform_recovers_an_exact_similarity() -> None:
    from restorekit.faces.identity_arcface import ARCFACE_TEMPLATE, arcface_affine, similarity_transform

    rng = np.random.default_rng(0)
    th, s, t = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    src = rng.uniform(0, 100, (5, 2))
    m = similarity_transform(src, src @ (s * rot).T + t)
    assert np.allclose(m[:, :2], s * rot, atol=1e-12) and np.allclose(m[:, 2], t, atol=1e-10)
    # the template itself maps to the identity; a mirrored point set is not fitted by a reflection
    assert np.allclose(arcface_affine(ARCFACE_TEMPLATE), np.eye(2, 3), atol=1e-12)
    mirrored = ARCFACE_TEMPLATE * [-1, 1] + [112, 0]
    assert np.linalg.det(arcface_affine(mirrored)[:, :2]) > 0


@needs_insightface
def test_similarity_transform_matches_insightface_estimate_norm() -> None:
    from insightface.utils import face_align

    from restorekit.faces.identity_arcface import ARCFACE_TEMPLATE, arcface_affine

    assert np.allclose(ARCFACE_TEMPLATE, face_align.arcface_dst, atol=1e-4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        lm = ARCFACE_TEMPLATE * rng.uniform(0.5, 3) + rng.uniform(-40, 200, 2) + rng.normal(0, 3, (5, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ref = face_align.estimate_norm(lm.astype(np.float32), 112)
        assert np.allclose(arcface_affine(lm), ref, atol=1e-4)


def _blob_image(lm: np.ndarray, size: int = 256) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size), np.float64)
    for x, y in lm:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0 ** 2))
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _rotated_template_face() -> tuple[np.ndarray, np.ndarray]:
    """A blob image of the ArcFace template rotated by 12°, scaled by 1.9 and shifted, and its landmarks."""
    from restorekit.faces.identity_arcface import ARCFACE_TEMPLATE

    th, s, t = math.radians(12), 1.9, np.array([40.0, 30.0])
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    lm = ARCFACE_TEMPLATE @ (s * rot).T + t
    return _blob_image(lm), lm


def test_alignment_puts_landmarks_on_the_arcface_template() -> None:
    from restorekit.faces.identity_arcface import ARCFACE_TEMPLATE, _warp_bilinear, align_arcface, arcface_affine, norm_crop

    img, lm = _rotated_template_face()
    for crop in (align_arcface(img, lm), norm_crop(img, lm), _warp_bilinear(img, arcface_affine(lm), 112)):
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        g = crop[..., 0].astype(np.float64)
        ys, xs = np.mgrid[0:112, 0:112]
        for tx, ty in ARCFACE_TEMPLATE:  # intensity centroid of each blob in a 9×9 window
            win = (abs(xs - tx) <= 4.5) & (abs(ys - ty) <= 4.5)
            w = g * win
            cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
            assert abs(cx - tx) < 0.35 and abs(cy - ty) < 0.35, (cx, cy, tx, ty)


@needs_insightface
@pytest.mark.skipif(not HAVE_CV2, reason="needs OpenCV (cv2)")
def test_alignment_matches_insightface_norm_crop() -> None:
    from restorekit.faces.identity_arcface import _warp_bilinear, align_arcface, arcface_affine, norm_crop

    img, lm = _rotated_template_face()
    assert np.array_equal(align_arcface(img, lm), norm_crop(img, lm))  # same estimate, same cv2 warp
    smooth = (np.stack(np.meshgrid(np.linspace(0, 255, 256), np.linspace(255, 0, 256)), -1) @ [[1, 0.5, 0], [0, 0.5, 1]])
    smooth = smooth.clip(0, 255).astype(np.uint8)
    diff = np.abs(_warp_bilinear(smooth, arcface_affine(lm), 112).astype(int) - norm_crop(smooth, lm).astype(int))
    # OpenCV quantises sample positions to 1/32 px; rows where the crop leaves the image differ most
    assert diff.mean() < 0.05 and diff.max() <= 3 and diff[:96].max() <= 1


# ---------------------------------------------------------------------------------------------
# Import


def test_import_refuses_standins_for_the_real_pack(models: dict[str, object], home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in Path(models["folder"]).iterdir():  # type: ignore[arg-type]
            zf.write(p, p.name)
    for extra in ([], ["--trust"]):
        r = CliRunner().invoke(weights_group, ["import", PACK, str(archive), *extra])
        assert r.exit_code == 1 and "refused" in r.output, r.output
    r = CliRunner().invoke(weights_group, ["import", PACK, str(models["folder"]), "--trust"])
    assert r.exit_code == 1 and "refused" in r.output
    assert not W.cached_files(PACK) and not (home / "weights" / PACK).exists()


def test_import_checks_sha256_of_archive_members(models: dict[str, object], home: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit import weights as WA

    folder = Path(models["folder"])  # type: ignore[arg-type]
    det_sha = W.sha256_file(folder / "det_10g.onnx")
    spec = W.WeightSpec(name="pack", architecture="x", plugin="restorekit", license="MIT", files=(
        W.WeightFile(filename="det_10g.onnx", sha256=det_sha),
        W.WeightFile(filename="w600k_r50.onnx", sha256="0" * 64)))
    monkeypatch.setattr(W, "registry_specs", lambda: {"pack": (spec, Path("pack.toml"))})
    monkeypatch.setattr(W, "plugin_specs", lambda: {})
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(folder / "det_10g.onnx", "pack/det_10g.onnx")
        zf.write(folder / "w600k_r50.onnx", "pack/w600k_r50.onnx")
        zf.writestr("__MACOSX/pack/._det_10g.onnx", b"resource fork")
    assert WA.wants_archive_import(spec, archive) and WA.wants_archive_import(spec, folder)
    with pytest.raises(IntegrityError, match="w600k_r50.onnx.*need 0000"):
        WA.import_archive("pack", archive, trust=True)  # a known hash is never overridden
    assert not (home / "weights" / "pack").exists()  # nothing half-imported
    spec2 = spec.model_copy(update={"files": spec.files[:1]})
    monkeypatch.setattr(W, "registry_specs", lambda: {"pack": (spec2, Path("pack.toml"))})
    done = WA.import_archive("pack", archive)
    assert [p.name for p in done.paths] == ["det_10g.onnx"] and done.ignored == ["pack/w600k_r50.onnx"]
    assert W.resolve("pack", "det_10g.onnx", full_check=True).read_bytes() == (folder / "det_10g.onnx").read_bytes()
    assert W.cached_files("pack")["det_10g.onnx"].source == f"import:{archive}:pack/det_10g.onnx"
    small = spec2.model_copy(update={"files": (W.WeightFile(filename="det_10g.onnx", size=1000),)})
    monkeypatch.setattr(W, "registry_specs", lambda: {"pack": (small, Path("pack.toml"))})
    with pytest.raises(IntegrityError, match="has more than the 1000 bytes of weights 'pack'"):  # reading stops past the spec's size
        WA.import_archive("pack", archive, trust=True)
    with pytest.raises(RestorekitError, match="--link needs a folder"):
        WA.import_archive("pack", archive, link=True)
    with pytest.raises(RestorekitError, match="has no det_10g.onnx"):
        empty = tmp_path / "empty.zip"
        with zipfile.ZipFile(empty, "w") as zf:
            zf.writestr("readme.txt", "x")
        WA.import_archive("pack", empty)


def test_import_without_hash_needs_trust_and_links_folders(models: dict[str, object], home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(_test_registry(tmp_path / "registry")))
    folder = str(models["folder"])
    r = CliRunner().invoke(weights_group, ["import", PACK, folder])
    assert r.exit_code == 1 and "--trust" in r.output and not W.cached_files(PACK)
    r = CliRunner().invoke(weights_group, ["import", PACK, folder, "--trust", "--link"])
    assert r.exit_code == 0, r.output
    assert "without a reference hash" in r.output
    assert (home / "weights" / PACK / "det_10g.onnx").is_symlink()
    assert set(W.cached_files(PACK)) == {"det_10g.onnx", "w600k_r50.onnx"}  # genderage.onnx left out
    assert W.is_cached(PACK) and not W.verify(PACK)


# ---------------------------------------------------------------------------------------------
# Models through insightface


@pytest.fixture
def packages_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if insightface and onnxruntime were installed: what is said about the weights pack then."""
    from restorekit.faces import identity_arcface, insightface_models

    for module in (identity_arcface, insightface_models):
        monkeypatch.setattr(module, "require_packages", lambda what: None)


def test_missing_weights_name_the_import_command(home: Path, packages_installed: None) -> None:
    from restorekit.faces.identity_arcface import IdentityArcface

    with pytest.raises(WeightsMissing) as exc:
        IdentityArcface().setup(torch.device("cpu"))
    msg = str(exc.value)
    assert f"restorekit weights import {PACK} buffalo_l.zip" in msg and "buffalo_l.zip" in msg
    assert "non-commercial" in msg
    # One way to each fix, said once: the archive's import, or a pull.
    assert msg.count(f"weights import {PACK}") == 1 and msg.count(f"weights pull {PACK}") == 1


@needs_insightface
def test_loader_goes_through_insightface_model_zoo(cached: Path, models: dict[str, object], tmp_path: Path) -> None:
    import insightface

    from restorekit.faces import insightface_models as IM

    det = IM.load_detector()
    rec = IM.load_recognizer()
    assert isinstance(det, insightface.model_zoo.SCRFD) and det.use_kps and det.fmc == 3 and det._num_anchors == 2
    assert isinstance(rec, insightface.model_zoo.ArcFaceONNX) and tuple(rec.input_size) == (112, 112)
    assert rec.input_mean == 127.5 and rec.input_std == 127.5
    assert IM.load_detector() is det  # cached session
    assert IM.onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert Path(det.model_file) == cached / "weights" / PACK / "det_10g.onnx"
    with pytest.raises(RestorekitError, match="not an insightface SCRFD"):
        IM.load_model(Path(str(models["folder"])) / "w600k_r50.onnx", "detector")
    # the embedding equals the torch stand-in on the same crop (BGR→RGB, (x-127.5)/127.5)
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    got = rec.get_feat([crop])
    x = torch.from_numpy(crop[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        ref = models["arcface"]((x - 127.5) / 127.5).numpy()  # type: ignore[operator]
    assert got.shape == (1, 512) and np.allclose(got, ref, atol=1e-4)


@needs_insightface
def test_scrfd_decodes_the_known_box_and_landmarks(cached: Path) -> None:
    from restorekit.faces.scrfd import ScrfdDetector
    from restorekit.testing.conformance import check_face_detector

    det = ScrfdDetector(det_size=128)
    faces = det.detect(face_image())
    assert len(faces) == 1
    cx, cy = CELL[0] * 32, CELL[1] * 32  # anchor centre: the cell's top-left corner, stride 32
    l, t, r, b = (d * 32 for d in BOX_DIST)
    want_box = (cx - l + 0.5, cy - t + 0.5, cx + r + 0.5, cy + b + 0.5)
    assert np.allclose(faces[0].box, want_box, atol=1e-3), faces[0].box
    want_lm = [(cx + dx * 32 + 0.5, cy + dy * 32 + 0.5) for dx, dy in KPS_DIST]
    assert np.allclose(faces[0].landmarks, want_lm, atol=1e-3)
    assert faces[0].score == pytest.approx(1 / (1 + math.exp(-(20 * (255 - 127.5) / 128 - 10))), abs=1e-4)
    # a larger image is letterboxed into det_size: coordinates come back in image pixels
    big = F.interpolate(face_image()[None], scale_factor=2, mode="nearest")[0]
    raw, kps = det.detect_raw(np.ascontiguousarray((big.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)))
    assert raw.shape == (1, 5) and np.allclose(raw[0, :4], np.array(want_box) * 2 - 0.5 * 2, atol=1e-2)
    assert np.allclose(kps[0], (np.array(want_lm) - 0.5) * 2, atol=1e-2)
    check_face_detector(lambda: ScrfdDetector(det_size=128), require_face=False)  # grey → no face


@needs_insightface
def test_identity_arcface_metric(cached: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.faces import insightface_models as IM
    from restorekit.faces.identity_arcface import IdentityArcface, align_arcface
    from restorekit.faces.scrfd import to_bgr_uint8

    IM._NOTED.clear()
    m = IdentityArcface(det_size=128)
    m.setup(torch.device("cpu"))
    assert "non-commercial" in capsys.readouterr().err
    hr = face_image()
    g = torch.Generator().manual_seed(3)
    noisy = (hr + 0.15 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    grey = torch.full_like(hr, 0.5)
    pred = torch.stack([hr, noisy, grey])
    target = torch.stack([hr, hr, grey])
    v = m(pred, target, lr=pred[:, :, ::4, ::4], scale=4)
    assert v.dtype == torch.float64 and v.shape == (3,)
    assert v[0].item() == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(v[2].item()) and m.faces_not_found == 1 and m.faces_not_found_total == 1
    # by hand: the target's landmarks for both crops, insightface's recogniser, cosine
    det, kps = m._detector.detect_raw(to_bgr_uint8(hr))  # type: ignore[union-attr]
    crops = [align_arcface(to_bgr_uint8(x), kps[0]) for x in (hr, noisy)]
    e = m._recognizer.get_feat(crops).astype(np.float64)
    want = float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]))
    assert v[1].item() == pytest.approx(want, abs=1e-6) and v[1].item() < 0.9999
    emb = m.embed(crops)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # a prediction of another size reuses the target's landmarks at its scale
    big = F.interpolate(hr[None], scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    vb = m(big, hr[None], lr=hr[None], scale=1)
    assert vb[0].item() > 0.98


def test_registered_and_listed_with_license(home: Path) -> None:
    from restorekit.plugins import registry

    reg = registry()
    cls = reg.metric("identity_arcface")
    assert cls.requires_weights == (PACK,) and "non-commercial" in cls.summary and "reused" in cls.summary
    assert "ArcFace" in cls.summary and "dlib" in reg.metric("identity_dlib").summary
    assert reg.get("face_detectors", "scrfd").build(det_size=128).name == "scrfd"
    r = CliRunner().invoke(weights_group, ["list", "--json"])
    rows = {row["name"]: row for row in __import__("json").loads(r.output)}
    assert rows[PACK]["license"] == "LicenseRef-InsightFace-NonCommercial" and rows[PACK]["cached"] == "no"
    assert "non-commercial" in rows["insightface-antelopev2"]["license_note"]


def test_compare_skips_without_models_and_names_the_import(home: Path, packages_installed: None) -> None:
    from restorekit.harness.runner import MetricState, setup_metrics
    from restorekit.faces.identity_arcface import IdentityArcface

    ms = MetricState("identity_arcface", IdentityArcface, "restorekit", "restorekit", "0")
    setup_metrics([ms], torch.device("cpu"))
    assert ms.status == "skipped" and f"restorekit weights import {PACK} buffalo_l.zip" in (ms.reason or "")
    assert ms.nan_label == "no face found on the HR image"


def test_the_identity_metric_names_missing_packages_before_the_weights_pack(home: Path, monkeypatch) -> None:
    """Without the insightface extra and without the pack, the pack (191 MB of non-commercial
    weights) was asked for first; the missing packages only showed once it was fetched. Compare
    skips the metric with the install command; the plugin checks skip it as not installed."""
    import importlib.util

    from restorekit.errors import DependencyMissing
    from restorekit.faces.identity_arcface import IdentityArcface
    from restorekit.faces.insightface_models import INSIGHTFACE_HINT
    from restorekit.harness.runner import MetricState, setup_metrics

    real = importlib.util.find_spec
    installed = {"insightface": object(), "onnxruntime": None}  # (whatever this machine has)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: installed.get(name, real(name, *a)))
    with pytest.raises(DependencyMissing) as err:
        IdentityArcface().setup(torch.device("cpu"))
    assert str(err.value) == f"metric 'identity_arcface' needs onnxruntime; {INSIGHTFACE_HINT}"
    ms = MetricState("identity_arcface", IdentityArcface, "restorekit", "restorekit", "0")
    setup_metrics([ms], torch.device("cpu"))
    assert (ms.status, ms.reason) == ("skipped", str(err.value))


@pytest.mark.skipif(os.environ.get("RESTOREKIT_INSIGHTFACE_REAL") is None,
                    reason="set RESTOREKIT_INSIGHTFACE_REAL=1 with the real buffalo_l imported")
@needs_insightface
def test_real_buffalo_l_on_a_portrait() -> None:  # pragma: no cover - needs the real models
    skimage = pytest.importorskip("skimage")
    from restorekit.faces.identity_arcface import IdentityArcface
    from restorekit.faces.scrfd import ScrfdDetector

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    faces = ScrfdDetector().detect(img)
    assert len(faces) == 1 and faces[0].score > 0.8
    m = IdentityArcface()
    v = m(img[None], img[None], lr=img[None], scale=1)
    assert v[0].item() == pytest.approx(1.0, abs=1e-5)


@needs_insightface
def test_compare_reports_both_identity_embedders(cached: Path, tmp_path: Path) -> None:
    """``compare`` scores identity_arcface beside identity_dlib; the report names each embedder."""
    import json

    from PIL import Image

    from restorekit.cli import build_cli

    data = tmp_path / "hr"
    data.mkdir()
    face = (face_image().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(face).save(data / "face.png")
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(data / "flat.png")
    metrics = ["psnr_y_crop", "identity_arcface"]
    try:
        import dlib  # noqa: F401

        metrics.append("identity_dlib")
    except ImportError:
        pass
    out = tmp_path / "out"
    r = CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(data),
                                         "--out", str(out), "--metrics", ",".join(metrics), "--device", "cpu", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    by_name = {m["name"]: m for m in doc["metrics"]}
    assert by_name["identity_arcface"]["status"] == "ok"
    assert "ArcFace" in by_name["identity_arcface"]["summary"] and "non-commercial" in by_name["identity_arcface"]["summary"]
    assert by_name["identity_arcface"]["nan_label"] == "no face found on the HR image"
    if "identity_dlib" in by_name:
        assert "dlib" in by_name["identity_dlib"]["summary"]
    agg = next(m for m in doc["methods"] if m["name"] == "bicubic")["aggregate"]["metrics"]["identity_arcface"]
    assert agg["n"] == 1 and agg["nan"] == 1  # the flat image has no face
    per = {img["image"]: img["metrics"] for img in doc["images"]}
    assert 0 < per["face"]["identity_arcface"] < 1 and per["flat"]["identity_arcface"] is None  # NaN in JSON: null
    html = (out / "report.html").read_text()
    assert "identity_arcface" in html and "ArcFace R50" in html


def test_providers_and_missing_package_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from restorekit.faces import insightface_models as IM

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert IM.onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert IM.onnx_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert IM.onnx_providers("cuda") == ["CPUExecutionProvider"]  # CPU-only onnxruntime: CPU fallback
    monkeypatch.setitem(__import__("sys").modules, "insightface", None)
    with pytest.raises(RestorekitError, match=r"restorekit\[insightface\]"):
        IM.import_insightface()


@needs_insightface
def test_scrfd_drives_the_face_pipeline(cached: Path) -> None:
    """The detect → align → restore → paste pipeline takes SCRFD's 5 points (eyes, nose, mouth)."""
    from restorekit.faces.pipeline import FacePipeline, build_detector
    from restorekit.faces.scrfd import ScrfdDetector
    from restorekit.methods import build_method

    assert isinstance(build_detector("scrfd"), ScrfdDetector)  # by name, loaded from the cache
    pipe = FacePipeline(build_method("bicubic"), 2, detector=ScrfdDetector(det_size=128), min_face=10)
    assert pipe.layout == "eyes_nose_mouth5"
    res = pipe.run(face_image()[None])
    assert res.image.shape == (1, 3, 256, 256)
    [rec] = res.records
    assert rec.action == "restored" and rec.landmark_layout == "eyes_nose_mouth5" and rec.quad is not None
    cx, cy = CELL[0] * 32, CELL[1] * 32
    assert np.allclose(rec.landmarks[0], (cx + KPS_DIST[0][0] * 32 + 0.5, cy + KPS_DIST[0][1] * 32 + 0.5), atol=1e-3)
