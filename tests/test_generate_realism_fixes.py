"""Defects an audit found in generate and realism:

- torch's CPU generator keeps a seed's low 32 bits, so seeds 1 and 2**32 + 1 drew the same noise
  (the same images, the same figures) though every seed option takes 0 … 2**64 − 1;
- ``weights_state_sha256`` leaves out the StyleGAN2 generator's ``latent_avg`` (a non-persistent
  buffer, the truncation centre): a checkpoint with it and one without recorded the same hash, and
  generate mixed their images in one folder;
- cached reference statistics replayed "left out" lines naming the files of the folder that filled
  the cache, not those of the ``--data`` given now.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import restorekit.commands.generate as generate
from restorekit.cli import build_cli
from restorekit.harness import realism as R
from restorekit.seeds import SEED_MAX, torch_seed
from restorekit.testing.data import smooth_image
from generator_stand_ins import OneColourGenerator, use_stand_in


# ---------------------------------------------------------------------------------------------
# Seeds at or above 2**32


def _draw(seed: int, n: int = 4) -> torch.Tensor:
    """The noise the code before the fix drew for ``seed`` (torch keeps its low 32 bits)."""
    return torch.randn(1, n, generator=torch.Generator().manual_seed(seed))


def test_torch_seed_keeps_seeds_below_2_to_the_32_and_spreads_the_others() -> None:
    for seed in (0, 1, 7, 2**31, 2**32 - 1):
        assert torch_seed(seed) == seed
    high = [2**32, 2**32 + 1, 2**33 + 1, 2**63, SEED_MAX]
    folded = [torch_seed(s) for s in high]
    assert all(0 <= v < 2**32 for v in folded)
    assert len(set(folded)) == len(high)
    assert folded[0] != 0 and folded[1] != 1 and folded[3] != 0  # not the low 32 bits (which torch took)
    assert torch_seed(2**32 + 1) == torch_seed(2**32 + 1)  # a function of the seed alone


class TinyGenerator(OneColourGenerator):
    """:class:`OneColourGenerator` that remembers each ``z`` it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def map(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.append(z.clone())
        return super().map(z)


def test_generate_draws_other_images_for_seeds_2_to_the_32_apart(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("restorekit_psp_sr")  # (its registered name 'stylegan2'; the tiny stand-in draws)
    tiny = TinyGenerator()
    use_stand_in(monkeypatch, lambda: tiny)
    out = tmp_path / "gen"
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", f"1,{2**32 + 1}",
                                         "--output", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    low, high = tiny.seen
    assert torch.equal(low, _draw(1))  # a seed below 2**32: the noise it drew before, exactly
    assert torch.equal(high, _draw(torch_seed(2**32 + 1))) and not torch.equal(high, low)
    assert (out / "seed0001.png").read_bytes() != (out / f"seed{2**32 + 1}.png").read_bytes()


def test_realism_latents_differ_for_seeds_2_to_the_32_apart_and_stay_below() -> None:
    g = TinyGenerator()
    for seed in (0, 1, 12345, 2**32 - 1):
        assert torch.equal(R.generator_latents(g, 6, seed),
                           torch.randn(6, 4, generator=torch.Generator().manual_seed(seed)))
    for seed in (0, 1):
        assert not torch.equal(R.generator_latents(g, 6, seed + 2**32), R.generator_latents(g, 6, seed))
    assert not torch.equal(R.generator_latents(g, 6, 2**63), R.generator_latents(g, 6, 0))
    # The samples (and so the figures) follow the latents.
    a = torch.cat(list(R.generator_batches(g, 6, seed=1)))
    b = torch.cat(list(R.generator_batches(g, 6, seed=2**32 + 1)))
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# latent_avg, the truncation centre the state's sha256 leaves out


@pytest.fixture(scope="module")
def rosinality_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The shipped generator saved as a rosinality checkpoint with its latent_avg and without it
    (a training checkpoint's g_ema alone), and the sha256 of its latent_avg bytes."""
    pytest.importorskip("restorekit_psp_sr")
    from restorekit.plugins import registry
    from restorekit_psp_sr.rosinality import save_rosinality

    folder = tmp_path_factory.mktemp("ros")
    g = registry().get("generators", "stylegan2").create({}, label="g")
    assert g.latent_avg.numel()
    with_avg = save_rosinality(g, folder / "ros.pt")
    without = folder / "ros_noavg.pt"
    torch.save({"g_ema": {k: v.detach().clone() for k, v in g.state_dict().items()}}, without)
    sha = hashlib.sha256(g.latent_avg.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return with_avg, without, sha


def _gen(out: Path, weights: Path, seeds: str) -> tuple[int, str]:
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--weights", str(weights),
                                         "--seeds", seeds, "--output", str(out), "--device", "cpu", "--json", "-q"])
    return r.exit_code, (r.stdout if r.exit_code == 0 else r.output)


def test_generate_records_the_truncation_centre_and_refuses_another(tmp_path: Path, rosinality_files) -> None:
    with_avg, without, sha = rosinality_files
    a, b = tmp_path / "a", tmp_path / "b"
    assert _gen(a, with_avg, "0")[0] == 0 and _gen(b, without, "0")[0] == 0
    sa = json.loads((a / "generate.json").read_text())["settings"]
    sb = json.loads((b / "generate.json").read_text())["settings"]
    assert sa["weights_state_sha256"] == sb["weights_state_sha256"]  # the state alone does not tell them apart
    assert sa["latent_avg_sha256"] == sha and sb["latent_avg_sha256"] is None
    assert (a / "seed0000.png").read_bytes() != (b / "seed0000.png").read_bytes()
    # A rerun into a folder made with the other truncation centre: refused, naming it, nothing written.
    before = (a / "seed0000.png").read_bytes()
    code, text = _gen(a, without, "0-1")
    lines = [ln for ln in text.splitlines() if "other settings" in ln]
    assert code == 2 and len(lines) == 1 and f"latent_avg_sha256 {sha[:12]}… → None" in lines[0], text
    assert (a / "seed0000.png").read_bytes() == before and not (a / "seed0001.png").exists()
    # The same file again: kept, the new seed made.
    code, text = _gen(a, with_avg, "0-1")
    assert code == 0 and len(json.loads(text)["written"]) == 1 and len(json.loads(text)["skipped"]) == 1


def test_a_manifest_without_the_key_is_compared_as_before(tmp_path: Path, rosinality_files) -> None:
    """An earlier restorekit recorded no latent_avg_sha256: its folder is taken as it was (the
    other settings decide), and its manifest is not made to vouch for a truncation centre."""
    with_avg, without, _ = rosinality_files
    out = tmp_path / "old"
    assert _gen(out, with_avg, "0")[0] == 0
    manifest = json.loads((out / "generate.json").read_text())
    del manifest["settings"]["latent_avg_sha256"]
    (out / "generate.json").write_text(json.dumps(manifest, indent=2))
    code, text = _gen(out, without, "0-1")
    assert code == 0 and len(json.loads(text)["written"]) == 1, text
    after = json.loads((out / "generate.json").read_text())
    assert after["settings"] == manifest["settings"] and after["images"] == ["seed0000.png", "seed0001.png"]


def test_realism_provenance_tells_the_two_files_apart(rosinality_files) -> None:
    from restorekit.commands.realism import generator_line

    with_avg, without, sha = rosinality_files
    provs = [R.generator_provenance("stylegan2", generate.build_generator("stylegan2", str(w), (),
                                                                         torch.device("cpu"), quiet=True),
                                    weights=str(w)) for w in (with_avg, without)]
    assert provs[0]["weights_state_sha256"] == provs[1]["weights_state_sha256"]
    assert provs[0]["latent_avg_sha256"] == sha and provs[1]["latent_avg_sha256"] is None
    assert f"; latent_avg sha256 {sha};" in generator_line(provs[0])
    assert "latent_avg" not in generator_line(provs[1])
    assert R.generator_provenance("tiny", TinyGenerator())["latent_avg_sha256"] is None


# ---------------------------------------------------------------------------------------------
# Cached "left out" lines name the files of the set given now


def _ref(folder: Path, broken: str = "broken.png") -> Path:
    folder.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(32, 32, i)).save(folder / f"{i}.png")
    (folder / broken).write_bytes(b"not a png")
    return folder


def test_cached_left_out_lines_name_the_files_of_the_set_read_now(tmp_path: Path) -> None:
    alex = R.build_space("alex", allow_random=True)
    cache = tmp_path / "cache"
    first: list[str] = []
    a = R.reference_statistics(_ref(tmp_path / "refb"), [alex], cache_dir=cache, skipped=first)
    assert len(first) == 1 and first[0].startswith(f"{tmp_path / 'refb' / 'broken.png'}: ")
    # The same files in another folder, the broken one under another name: the cache is hit (keyed
    # by content) and the line names this folder's file, with the same error.
    other = tmp_path / "refc"
    shutil.copytree(tmp_path / "refb", other)
    (other / "broken.png").rename(other / "zz.png")
    shutil.rmtree(tmp_path / "refb")
    calls = []
    orig = alex._features
    alex._features = lambda x: calls.append(1) or orig(x)  # type: ignore[method-assign]
    again: list[str] = []
    b = R.reference_statistics(other, [alex], cache_dir=cache, skipped=again)
    assert calls == []  # from the cache
    np.testing.assert_array_equal(a["alex_conv5"].mu, b["alex_conv5"].mu)
    rest = first[0][len(str(tmp_path / "refb" / "broken.png")):]
    assert again == [f"{other / 'zz.png'}{rest}"]
    # Two broken files of the same content: each named once.
    (other / "aa.png").write_bytes(b"not a png")
    R.reference_statistics(other, [alex], cache_dir=cache, skipped=[])
    twice: list[str] = []
    R.reference_statistics(other, [alex], cache_dir=cache, skipped=twice)
    assert [ln.split(": ", 1)[0] for ln in twice] == [str(other / "aa.png"), str(other / "zz.png")]


def test_a_cache_that_recorded_lines_without_their_files_is_computed_again(tmp_path: Path) -> None:
    alex = R.build_space("alex", allow_random=True)
    cache = tmp_path / "cache"
    R.reference_statistics(_ref(tmp_path / "refb"), [alex], cache_dir=cache, skipped=[])
    (f,) = cache.glob("*.npz")
    with np.load(f) as z:  # as the code before the fix wrote it: the lines, with refb's paths, alone
        old = {k: z[k] for k in z.files if k not in ("skipped_paths", "skipped_digests")}
    np.savez(f, **old)
    other = tmp_path / "refc"
    shutil.copytree(tmp_path / "refb", other)
    lines: list[str] = []
    R.reference_statistics(other, [alex], cache_dir=cache, skipped=lines)
    assert len(lines) == 1 and lines[0].startswith(f"{other / 'broken.png'}: ")


def test_the_face_share_samples_are_the_first_of_the_frechet_ones() -> None:
    """torch's CPU normal draw of 3×4 values is not the start of a draw of 40×4: the face share's
    --detect-n samples were not the first Fréchet samples, as realism.md says they are."""
    g = TinyGenerator()
    list(R.generator_batches(g, 40, seed=3))
    frechet = torch.cat(g.seen)
    g.seen.clear()
    list(R.generator_batches(g, 3, seed=3, first_of=40))
    assert torch.equal(torch.cat(g.seen), frechet[:3])
    g.seen.clear()
    list(R.generator_batches(g, 3, seed=3))  # (a draw of its own: why first_of is needed)
    assert not torch.equal(torch.cat(g.seen), frechet[:3])
    g.seen.clear()
    list(R.generator_batches(g, 50, seed=3, first_of=40))  # more than the Fréchet samples: all drawn
    assert torch.equal(torch.cat(g.seen)[:40], frechet) and len(torch.cat(g.seen)) == 50
