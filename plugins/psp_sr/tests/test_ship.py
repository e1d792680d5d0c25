"""Shipping the face prior and psp_sr on tiny random models (scripts/ship_embedded_model.py).

The ship script runs against a temporary package (``rk_shipped_tiny``, standing in for
``restorekit_psp_sr``) and a copy of the registry; restorekit is pointed there, so the repository
is never written. Checked: fp16 files, valid registry entries, psp_sr's file without generator
tensors loading through its reference to the same model, the defaults of generate, realism,
pulse, psp_pulse and psp_sr when shipped (announced) and when not (one-line errors naming the
fix, never random weights), golden files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from restorekit.errors import IntegrityError, WeightsMissing
from restorekit.registry_schema import load_entry
from restorekit.testing.data import random_alexnet_file, smooth_batch
from restorekit.weights import WeightSpec, resolve
from restorekit_psp_sr import method as method_mod
from restorekit_psp_sr.method import (
    GENERATOR_MODEL_NAME, PSPSR, PSPModelError, PSPSROptions, load_psp_model, save_psp_safetensors,
)
from restorekit_psp_sr.plugin import PSP_DEFAULT_DECODER, build_stylegan2
from restorekit_psp_sr.train import load_generator
from tiny_models import DATA_NOTE, REPO, SHIP_PACKAGE, SHIP_SCRIPT, Shipped, ship_tiny, tiny_generator, tiny_psp_on

pytestmark = pytest.mark.skipif(not SHIP_SCRIPT.is_file(), reason="scripts/ship_embedded_model.py is not here")


def _repo_state() -> dict[str, bytes]:
    """The repository's registry and shipped-weights folders, to prove the tests leave them alone."""
    files = sorted((REPO / "registry").rglob("*")) + sorted(method_mod.WEIGHTS_DIR.glob("*"))
    return {str(p): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    before = _repo_state()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        yield ship_tiny(tmp_path_factory.mktemp("ship"), mp)
    assert _repo_state() == before, "shipping tests wrote into the repository"


@pytest.fixture
def nothing_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installation without the shipped files (e.g. this checkout before the GPU run)."""
    monkeypatch.setattr(method_mod, "WEIGHTS_DIR", tmp_path / "no-weights")


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


# -- what the ship script writes ----------------------------------------------------------------
def test_generator_is_shipped_in_fp16_with_a_valid_registry_entry(shipped: Shipped) -> None:
    f = shipped.generator_file
    tensors, meta = _tensors(f)
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert meta["format"] == "restorekit.stylegan2/1"
    config = json.loads(meta["config"])
    assert (config["name"], config["license"], config["weights_dtype"]) == (
        GENERATOR_MODEL_NAME, "LicenseRef-research-only", "float16")
    assert config["training"] == {"kimg": 1, "data": DATA_NOTE}
    # The weights are the trained generator's, rounded to fp16.
    trained, _ = _tensors(shipped.generator_run)
    assert _state_equal(tensors, {k: v.half() for k, v in trained.items()})

    entry_file = shipped.registry / "weights" / f"{GENERATOR_MODEL_NAME}.toml"
    spec = load_entry(entry_file)
    assert isinstance(spec, WeightSpec) and spec.name == entry_file.stem
    assert (spec.architecture, spec.plugin, spec.license) == ("stylegan2", "psp_sr", "LicenseRef-research-only")
    assert spec.source and spec.paper and "no third-party pretrained weights inside" in spec.license_note
    wf = spec.file()
    data = f.read_bytes()
    assert (wf.filename, wf.size, wf.sha256) == (f.name, len(data), hashlib.sha256(data).hexdigest())
    assert wf.bundled == f"{SHIP_PACKAGE}:weights/{f.name}" and not wf.urls
    assert shipped.results["stylegan2"]["sha256"] == wf.sha256
    plugin_entry = load_entry(shipped.registry / "plugins" / "restorekit-psp-sr.toml")
    assert GENERATOR_MODEL_NAME in plugin_entry.weights and "psp-sr-faces128" in plugin_entry.weights
    assert resolve(GENERATOR_MODEL_NAME) == f


def test_shipping_is_reproducible_and_checks_what_restorekit_resolves(shipped: Shipped, tmp_path: Path) -> None:
    """The same trained file ships to the same bytes (the registry entry pins them); a shipped file
    that restorekit would not resolve to is reported."""
    import dataclasses

    ship = shipped.ship
    for kind, run, gen in (("stylegan2", shipped.generator_run, None),
                           ("psp_sr", shipped.psp_run, GENERATOR_MODEL_NAME)):
        blob, _ = ship.build_file(shipped.targets[kind], run, DATA_NOTE, generator=gen)
        assert blob == shipped.targets[kind].file.read_bytes()
    elsewhere = dataclasses.replace(shipped.targets["stylegan2"], file=tmp_path / "stylegan2_faces128.safetensors")
    with pytest.raises(ship.ShipError, match="resolves 'stylegan2-faces128' to .*, not to .*pip install -e"):
        ship.check_resolves(elsewhere)
    # The copied registry also holds what the repository already ships (e.g. pix2pixhd-faces128).
    import tomllib

    others = 0
    for entry in sorted((ship.ROOT / "registry" / "weights").glob("*.toml")):
        data = tomllib.loads(entry.read_text())
        if data["name"] not in {GENERATOR_MODEL_NAME, "psp-sr-faces128"}:
            others += sum(int(f.get("size", 0)) for f in data.get("files", []) if f.get("bundled"))
    assert ship.shipped_total(shipped.registry) == others + sum(r["size"] for r in shipped.results.values())


def test_psp_is_shipped_without_its_generator_and_loads_to_the_same_model(shipped: Shipped,
                                                                          tmp_path: Path) -> None:
    tensors, meta = _tensors(shipped.psp_file)
    assert not [k for k in tensors if k.startswith("decoder.")]
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    config = json.loads(meta["config"])
    gen_sha = hashlib.sha256(shipped.generator_file.read_bytes()).hexdigest()
    assert config["decoder_weights"] == {"name": GENERATOR_MODEL_NAME, "sha256": gen_sha}
    assert config["license"] == "LicenseRef-research-only" and config["training"]["data"] == DATA_NOTE
    trained, _ = _tensors(shipped.psp_run)
    # Without the second copy of the generator the file is the encoder's size, not the encoder's + the generator's.
    gen_bytes = sum(t.numel() * 2 for t in _tensors(shipped.generator_file)[0].values())
    enc_bytes = sum(t.numel() * 2 for k, t in trained.items() if not k.startswith("decoder."))
    assert enc_bytes <= shipped.psp_file.stat().st_size < enc_bytes + gen_bytes // 2

    model, cfg = load_psp_model(shipped.psp_file, impl="ref")
    unshipped, _ = load_psp_model(shipped.psp_run, impl="ref")
    assert cfg["decoder_weights"]["name"] == GENERATOR_MODEL_NAME
    # Decoder: exactly the shipped generator (which is what stage 2 trained against).
    assert _state_equal(model.decoder.state_dict(), unshipped.decoder.state_dict())
    assert _state_equal(model.decoder.state_dict(), load_generator(str(shipped.generator_file)).state_dict())
    # Encoder and latent_avg: the trained ones rounded to fp16.
    assert _state_equal(model.encoder.state_dict(), {k: v.half() if v.is_floating_point() else v
                                                     for k, v in unshipped.encoder.state_dict().items()})
    lr = smooth_batch(2, 16, 16, seed=5)
    with torch.no_grad():
        out, _ = model(lr)
        want, _ = unshipped(lr)
    gap = float((out - want).abs().max())
    assert 0 < gap < 1e-2, gap  # fp16 rounding of the encoder, nothing more
    assert float((out[0] - out[1]).abs().mean()) > 10 * gap  # far below what the input changes

    # The same model shipped self-contained (decoder inside, fp16) restores exactly alike.
    blob, alone_config = shipped.ship.build_file(shipped.targets["psp_sr"], shipped.psp_run, DATA_NOTE)
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(blob)
    assert "decoder_weights" not in alone_config
    assert alone.stat().st_size > shipped.psp_file.stat().st_size + gen_bytes // 2
    m1 = PSPSR(PSPSROptions(weights=str(shipped.psp_file), impl="ref"))
    m2 = PSPSR(PSPSROptions(weights=str(alone), impl="ref"))
    assert torch.equal(m1.restore(lr, 4), m2.restore(lr, 4))


def test_golden_files_hold_the_shipped_outputs(shipped: Shipped) -> None:
    from restorekit.harness.realism.evaluate import generator_batches

    golden = json.loads(shipped.generator_file.with_suffix(".golden.json").read_text())
    assert shipped.results["stylegan2"]["golden"] == str(shipped.generator_file.with_suffix(".golden.json"))
    g = build_stylegan2(impl="ref")  # the default: the shipped file
    imgs = next(generator_batches(g, 2, truncation=golden["truncation"], seed=0))
    assert imgs.shape == (2, 3, 64, 64)
    torch.testing.assert_close(imgs[:, :, ::32, ::32], torch.tensor(golden["samples_every_32px"]), rtol=0, atol=1e-6)
    assert abs(float(imgs.mean()) - golden["mean"]) < 1e-6

    golden = json.loads(shipped.psp_file.with_suffix(".golden.json").read_text())
    assert golden["scale"] == 8
    out = PSPSR(PSPSROptions(impl="ref")).restore(smooth_batch(1, 16, 16, seed=0), 8)  # the default
    assert out.shape == (1, 3, 128, 128)
    torch.testing.assert_close(out[0, :, ::32, ::32], torch.tensor(golden["samples_every_32px"]), rtol=0, atol=1e-6)
    assert abs(float(out.mean()) - golden["mean"]) < 1e-6


def test_ship_refuses_a_decoder_that_is_not_the_generator(shipped: Shipped, tmp_path: Path) -> None:
    ship, target = shipped.ship, shipped.targets["psp_sr"]
    before = shipped.psp_file.read_bytes()
    other = save_psp_safetensors(tiny_psp_on(tiny_generator(seed=1)), tmp_path / "other.safetensors",
                                 factors=[1, 2, 4], license="unknown")
    with pytest.raises(ship.ShipError, match=r"its decoder is not the generator 'stylegan2-faces128' \(\d+ of \d+ "
                                             r"tensors differ.*--set generator=stylegan2-faces128"):
        ship.ship(target, other, registry=shipped.registry, generator=GENERATOR_MODEL_NAME)
    with pytest.raises(ship.ShipError, match="no registry entry describes it"):
        ship.ship(target, shipped.psp_run, registry=shipped.registry, generator="stylegan2-nowhere")
    # A file of the wrong kind, and --generator on a target that has no decoder.
    with pytest.raises(ship.ShipError, match=r"format 'restorekit.psp/1', but .* ships restorekit.stylegan2/\*"):
        ship.ship(shipped.targets["stylegan2"], shipped.psp_run, registry=shipped.registry)
    with pytest.raises(ship.ShipError, match="--generator applies to psp_sr"):
        ship.ship(shipped.targets["stylegan2"], shipped.generator_run, registry=shipped.registry,
                  generator=GENERATOR_MODEL_NAME)
    assert shipped.psp_file.read_bytes() == before  # refused before writing anything


def test_the_reference_is_checked_when_loading(shipped: Shipped, tmp_path: Path) -> None:
    tensors, meta = _tensors(shipped.psp_file)
    config = json.loads(meta["config"])
    from safetensors.torch import save_file

    def variant(stem: str, **ref: str) -> Path:
        path = tmp_path / f"{stem}.safetensors"
        save_file(tensors, str(path), metadata={**meta, "config": json.dumps(
            {**config, "decoder_weights": {**config["decoder_weights"], **ref}})})
        return path

    with pytest.raises(PSPModelError, match=r"trained against the generator 'stylegan2-faces128' with sha256 0{64}"):
        load_psp_model(variant("wrong-sha", sha256="0" * 64))
    with pytest.raises(WeightsMissing, match=r"'stylegan2-elsewhere'.*no registry entry describes it") as info:
        load_psp_model(variant("unknown", name="stylegan2-elsewhere"))
    assert "\n" not in str(info.value)
    both = tmp_path / "both.safetensors"
    save_file({**tensors, **{f"decoder.{k}": v for k, v in _tensors(shipped.generator_file)[0].items()
                             if k != "latent_avg"}}, str(both), metadata=meta)
    with pytest.raises(PSPModelError, match="holds decoder tensors and also names decoder weights"):
        load_psp_model(both)

    gen = shipped.generator_file
    data = gen.read_bytes()
    try:
        gen.unlink()  # an installation missing the generator
        with pytest.raises(WeightsMissing, match=rf"'stylegan2-faces128' are not available: psp_sr_faces128.safetensors "
                                                 rf"decodes with this generator, and it is not installed; reinstall the "
                                                 rf"package that ships it \({SHIP_PACKAGE}\)"):
            PSPSR(PSPSROptions(impl="ref")).load()
        gen.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a modified generator
        with pytest.raises(IntegrityError, match="the registry says"):
            PSPSR(PSPSROptions(impl="ref")).load()
    finally:
        gen.write_bytes(data)
    PSPSR(PSPSROptions(impl="ref")).load()


# -- the defaults, when shipped -------------------------------------------------------------------
SHIPPED_NOTE = ("stylegan2: weights stylegan2-faces128 (the shipped default; --weights NAME|PATH selects another), "
                "license LicenseRef-research-only")


def test_generate_uses_the_shipped_generator_and_says_so(shipped: Shipped, rk_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = rk_cli("generate", "--generator", "stylegan2", "--seeds", "0-1", "--output", tmp_path / "a", "--json")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == [SHIPPED_NOTE]
    written = json.loads(r.stdout)["written"]
    r = rk_cli("generate", "--generator", "stylegan2", "--weights", shipped.generator_file, "--seeds", "0-1",
               "--output", tmp_path / "b", "--json")
    assert r.exit_code == 0 and SHIPPED_NOTE not in r.stderr
    from restorekit.images import read_image

    for a, b in zip(written, json.loads(r.stdout)["written"]):
        x, y = read_image(a), read_image(b)
        assert x.shape[-2:] == (64, 64) and torch.equal(x, y)
    assert not torch.equal(read_image(written[0]), read_image(written[1]))


def test_realism_uses_the_shipped_generator(shipped: Shipped, rk_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from restorekit.images import save_image

    ref = tmp_path / "ref"
    for i in range(4):
        save_image(smooth_batch(1, 64, 64, seed=i), ref / f"{i}.png")
    alex = random_alexnet_file(tmp_path / "alex.safetensors")
    r = rk_cli("realism", "--generator", "stylegan2", "--data", ref, "--n", "4", "--spaces", "alex", "--space-weights",
               f"alex={alex}", "--detector", "none", "--cache", "none", "--json")
    assert r.exit_code == 0, r.output
    assert SHIPPED_NOTE in r.stderr.splitlines()
    figure = json.loads(r.stdout)["figures"][0]
    assert figure["n_samples"] == 4 and figure["distance"] > 0


def test_pulse_searches_the_shipped_generator(shipped: Shipped) -> None:
    from restorekit.plugins import registry

    if "pulse" not in registry().names("methods"):
        pytest.skip("restorekit-baselines (pulse) is not installed")
    pulse = registry().method("pulse")
    assert pulse.info.default_weights == GENERATOR_MODEL_NAME
    m = pulse(pulse.Options(quiet=True, gaussian_fit_samples=200))
    m.load()
    assert m.notes[0] == f"pulse: {SHIPPED_NOTE}"
    assert m.generator.resolution == 64
    assert _state_equal(m.generator.state_dict(), load_generator(str(shipped.generator_file)).state_dict())


def test_psp_sr_and_psp_pulse_use_the_shipped_model(shipped: Shipped) -> None:
    from restorekit_psp_sr.psp_pulse import PSPPulse

    m = PSPSR(PSPSROptions(impl="ref"))
    m.load()
    assert m.weights_info["name"] == "psp-sr-faces128" and m.weights_info["file"] == str(shipped.psp_file)
    assert m.notes[0] == ("psp_sr: weights psp-sr-faces128 (the embedded default; --weights NAME|PATH selects "
                          "another), decoder stylegan2-faces128, license LicenseRef-research-only")
    lr = smooth_batch(1, 16, 16, seed=2)
    explicit = PSPSR(PSPSROptions(weights=str(shipped.psp_file), impl="ref"))
    assert torch.equal(m.restore(lr, 4), explicit.restore(lr, 4))
    p = PSPPulse(PSPPulse.Options(impl="ref", steps=1, quiet=True, gaussian_fit_samples=200))
    p.load()
    assert p.notes[0].startswith("psp_pulse: weights psp-sr-faces128 (the embedded default")
    assert _state_equal(p.model.decoder.state_dict(), m.model.decoder.state_dict())
    # `psp_sr:default` as stylegan2 weights: the default model's decoder, i.e. the shipped generator.
    dec = build_stylegan2(weights=PSP_DEFAULT_DECODER, impl="ref")
    assert _state_equal(dec.state_dict(), load_generator(str(shipped.generator_file)).state_dict())


def test_compare_runs_the_defaults(shipped: Shipped, rk_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No weights anywhere on the command line: compare on the shipped psp_sr and psp_pulse."""
    from restorekit.images import save_image

    data = tmp_path / "hr"
    for i in range(2):
        save_image(smooth_batch(1, 64, 64, seed=i), data / f"face{i}.png")
    r = rk_cli("compare", "--methods", "psp_sr,psp_pulse,bicubic", "--scale", "4", "--data", data, "--out",
               tmp_path / "cmp", "--metrics", "psnr_y_crop", "--opt", "psp_pulse.steps=1", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    text = json.dumps(rows)
    assert "psp_sr" in text and "psp_pulse" in text


# -- the defaults, when not shipped: one line naming the fix, never random weights -----------------
def test_generate_without_shipped_weights_is_a_usage_error(nothing_shipped: None, rk_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = rk_cli("generate", "--generator", "stylegan2", "--seeds", "0", "--output", tmp_path / "out")
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert "weights 'stylegan2-faces128' are not available: stylegan2: no weights given" in line
    assert "stylegan2_faces128.safetensors is not in this installation" in line
    assert "pass --weights NAME|PATH" in line and "--opt random_weights=true" in line
    assert not (tmp_path / "out").exists()
    # Asked for explicitly: an untrained generator, and it says so.
    r = rk_cli("generate", "--generator", "stylegan2", "--opt", "random_weights=true", "--opt", "resolution=32",
               "--opt", "style_dim=16", "--opt", "n_mlp=2", "--opt", "channel_max=8", "--seeds", "0",
               "--output", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == ["stylegan2: random weights (random_weights=true): an untrained 32-px generator"]
    assert len(json.loads(r.stdout)["written"]) == 1
    r = rk_cli("generate", "--generator", "stylegan2", "--opt", "random_weights=true", "--weights", "x.pt",
               "--seeds", "0", "--output", tmp_path / "out2")
    assert r.exit_code == 2 and "exclude each other" in r.stderr


def test_realism_without_shipped_weights_is_a_usage_error(nothing_shipped: None, rk_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "ref").mkdir()
    from restorekit.images import save_image

    for i in range(2):  # a usable reference set (an empty one is refused first, naming --data)
        save_image(torch.full((1, 3, 8, 8), 0.2 + 0.3 * i), tmp_path / "ref" / f"{i}.png")
    alex = random_alexnet_file(tmp_path / "alex.safetensors")
    r = rk_cli("realism", "--generator", "stylegan2", "--data", tmp_path / "ref", "--spaces", "alex",
               "--space-weights", f"alex={alex}", "--detector", "none")
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert "weights 'stylegan2-faces128' are not available" in line and "--opt random_weights=true" in line


def test_methods_without_shipped_weights_name_the_fix(nothing_shipped: None, rk_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from restorekit.plugins import registry
    from restorekit_psp_sr.psp_pulse import PSPPulse

    for cls in (PSPSR, PSPPulse):
        with pytest.raises(WeightsMissing, match=rf"'psp-sr-faces128' are not available: {cls.info.name}: no "
                                                 r"--weights given.*pass --weights FILE"):
            cls(cls.Options(impl="ref")).load()
    with pytest.raises(WeightsMissing, match=r"'stylegan2-faces128' are not available.*pass --weights NAME\|PATH"):
        build_stylegan2(impl="ref")
    if "pulse" in registry().names("methods"):
        pulse = registry().method("pulse")
        with pytest.raises(WeightsMissing, match="'stylegan2-faces128' are not available"):
            pulse(pulse.Options(quiet=True)).load()
    from restorekit.images import save_image

    save_image(smooth_batch(1, 16, 16, seed=0), tmp_path / "lr.png")
    for method in ("psp_sr", "psp_pulse"):
        r = rk_cli("run", method, "--scale", "4", "--input", tmp_path / "lr.png", "--output", tmp_path / "out")
        assert r.exit_code == 2, r.output
        (line,) = r.stderr.strip().splitlines()
        assert "psp-sr-faces128" in line and "restorekit weights pull --trust psp-celebs-super-resolution" in line
    assert not (tmp_path / "out").exists()


def test_a_restyle_model_ships_with_its_passes(shipped: Shipped, tmp_path: Path) -> None:
    """A ReStyle encoder ships like a pSp one (naming the generator) and psp_sr's default then
    makes its passes. It ships over the module's psp_sr model, whose files are put back after."""
    from restorekit_psp_sr.encoder import GradualStyleEncoder
    from restorekit_psp_sr.psp import PSP

    ship, target = shipped.ship, shipped.targets["psp_sr"]
    entries = shipped.registry
    written = [target.file, target.file.with_suffix(".golden.json"),  # what ship() writes
               entries / "weights" / f"{target.name}.toml", entries / "plugins" / "restorekit-psp-sr.toml"]
    kept = {p: p.read_bytes() for p in written}
    try:
        decoder = load_generator(ship.DEFAULT_GENERATOR, impl="ref")
        torch.manual_seed(3)
        enc = GradualStyleEncoder(decoder.n_styles, decoder.style_dim, backbone="ir_se_light", input_size=32,
                                  head_channels=16, input_nc=6)
        model = PSP(enc, decoder, decoder.mean_latent(256), restyle_iterations=3).eval()
        run = tmp_path / "restyle.safetensors"
        save_psp_safetensors(model, run, factors=[1, 2, 4], license="unknown", name="psp_sr_faces128",
                             training={"generator": ship.DEFAULT_GENERATOR})
        ship.ship(target, run, DATA_NOTE, generator=ship.DEFAULT_GENERATOR, registry=entries)
        assert target.file.read_bytes() != kept[target.file]  # the ReStyle model is the default now
        m = PSPSR(PSPSROptions(impl="ref", keep_native_size=True))
        m.load()
        assert m.model.restyle_iterations == 3 and "decoder_weights" in m.model_config
        lr = smooth_batch(1, 16, 16, seed=4)
        with torch.no_grad():
            want = model(m._to_input(lr))[0].clamp(0, 1)
        torch.testing.assert_close(m.restore(lr, 2), want, rtol=0, atol=2e-2)  # the encoder shipped in fp16
    finally:
        for p, data in kept.items():
            p.write_bytes(data)
    back = PSPSR(PSPSROptions(impl="ref"))
    back.load()
    assert back.model.restyle_iterations is None  # the module's pSp model is the default again
