"""The shipped face prior (stylegan2-faces128): its file matches the registry, it is the default of
`generate`, it draws as recorded, and it draws faces. Skips until the file is shipped
(scripts/ship_embedded_model.py stylegan2 ...; the same path on tiny models: test_ship.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from restorekit.harness.realism.evaluate import generator_batches
from restorekit.weights import all_specs, get_spec, resolve
from restorekit_psp_sr.method import GENERATOR_MODEL_FILE, GENERATOR_MODEL_NAME, WEIGHTS_DIR
from restorekit_psp_sr.plugin import build_stylegan2

BUNDLED = WEIGHTS_DIR / GENERATOR_MODEL_FILE
pytestmark = pytest.mark.skipif(not BUNDLED.is_file(), reason=f"{GENERATOR_MODEL_FILE} is not in this checkout")


def test_bundled_file_matches_the_registry_and_is_fp16() -> None:
    spec = get_spec(GENERATOR_MODEL_NAME)
    data = BUNDLED.read_bytes()
    assert len(data) == spec.file().size and hashlib.sha256(data).hexdigest() == spec.file().sha256
    assert resolve(GENERATOR_MODEL_NAME) == BUNDLED
    assert spec.license == "LicenseRef-research-only" and spec.architecture == "stylegan2"
    with safe_open(str(BUNDLED), framework="pt") as f:
        assert f.metadata()["format"] == "restorekit.stylegan2/1"
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    # Issue #18: every weights file shipped inside a package, together, within 20 MB.
    total = sum(f.size or 0 for s in all_specs().values() for f in s.files if f.bundled)
    assert 0 < total <= 20_000_000, total


def test_default_is_announced_and_draws_as_recorded() -> None:
    torch.set_num_threads(1)
    g = build_stylegan2()
    assert g.notes == [f"stylegan2: weights {GENERATOR_MODEL_NAME} (the shipped default; --weights NAME|PATH "
                       "selects another), license LicenseRef-research-only"]
    assert g.resolution == 128
    golden = json.loads(BUNDLED.with_suffix(".golden.json").read_text())
    assert golden["input"] == "generator_batches(g, 2, truncation=0.7, seed=0)" and "seeds" not in golden
    g = build_stylegan2(impl="ref")
    imgs = next(generator_batches(g, golden["n"], truncation=golden["truncation"], seed=0))
    # The tolerance covers float32 differences between CPUs, not changes to the model's code.
    torch.testing.assert_close(imgs[:, :, ::32, ::32], torch.tensor(golden["samples_every_32px"]), rtol=0, atol=3e-3)
    assert abs(float(imgs.mean()) - golden["mean"]) < 1e-3
    assert (imgs[0] - imgs[1]).abs().mean() > 0.02  # different latents, different faces


def test_generate_writes_each_seed_as_recorded(tmp_path: Path) -> None:
    """`generate --seeds 0-1` draws each seed alone (not realism's one seed-0 draw of two): its
    images as written (8-bit levels), recorded by scripts/ship_embedded_model.py, so seed 1's
    path is pinned too."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from restorekit.cli import build_cli

    golden = json.loads(BUNDLED.with_suffix(".golden.json").read_text())
    rec = golden["generate"]
    assert rec["seeds"] == [0, 1]
    torch.set_num_threads(1)
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", "0-1", "--truncation",
                                         str(rec["truncation"]), "--output", str(tmp_path), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    levels = np.stack([np.asarray(Image.open(tmp_path / f"seed{s:04d}.png").convert("RGB")).transpose(2, 0, 1)
                       for s in rec["seeds"]]).astype(np.int64)
    # Float32 differences between CPUs may round a level either way, nothing more.
    assert np.abs(levels[:, :, ::32, ::32] - np.array(rec["levels_every_32px"])).max() <= 1
    assert abs(levels.mean() / 255 - rec["mean"]) < 1e-3
    # Seed 0 is realism's first row too; seed 1 is not its second row.
    batch = np.array(golden["samples_every_32px"])
    assert np.abs(levels[0, :, ::32, ::32] / 255 - batch[0]).max() < 3e-3
    assert np.abs(levels[1, :, ::32, ::32] / 255 - batch[1]).mean() > 0.05


def test_generate_without_weights_writes_its_faces(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from restorekit.cli import build_cli
    from restorekit.images import read_image

    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", "0-1", "--output",
                                         str(tmp_path), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert GENERATOR_MODEL_NAME in r.stderr
    written = json.loads(r.stdout)["written"]
    assert [read_image(p).shape[-2:] for p in written] == [(128, 128), (128, 128)]
    # A file already there is kept (and said to be) unless --overwrite, as with run.
    (tmp_path / "seed0001.png").write_bytes(b"kept")
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", "0-2", "--output",
                                         str(tmp_path), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [Path(p).name for p in doc["written"]] == ["seed0002.png"]
    assert [Path(s["path"]).name for s in doc["skipped"]] == ["seed0000.png", "seed0001.png"]
    assert (tmp_path / "seed0001.png").read_bytes() == b"kept"
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", "1", "--output",
                                         str(tmp_path), "--device", "cpu", "--overwrite"])
    assert r.exit_code == 0 and read_image(tmp_path / "seed0001.png").shape[-2:] == (128, 128)


@pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                    reason="the MTCNN detector's weights ship in facenet-pytorch")
def test_a_detector_finds_faces_in_most_samples() -> None:
    """Issue #18's bar for the prior: MTCNN finds a face in ≥ 80% of 32 samples at truncation 0.7."""
    from restorekit.harness.realism.evaluate import face_share

    torch.set_num_threads(1)
    g = build_stylegan2(impl="ref").eval()
    share = face_share(generator_batches(g, 32, truncation=0.7, seed=0, batch_size=8), "mtcnn", truncation=0.7)
    assert share.n == 32 and share.found >= 26, share


@pytest.mark.parametrize("size", ["resolution", "style_dim", "n_mlp", "channel_multiplier", "channel_max"])
def test_a_random_generator_of_size_zero_is_refused_not_built_at_the_default(size: str) -> None:
    """resolution=0 built a 1024-px generator (style_dim=0 one of 512 …): 0 read as 'not given'."""
    with pytest.raises(ValueError, match="resolution must be a power of two|must be ≥ 1"):
        build_stylegan2(random_weights=True, **{size: 0})
