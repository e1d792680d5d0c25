"""``allow_unsafe`` from the command line: every spelling of "no" refuses to unpickle.

A tiny rosinality *training* checkpoint (``args`` is an argparse Namespace, so it does not load
with ``weights_only``) carries a tripwire: unpickling it creates a marker file. Each command that
can reach the StyleGAN2 loader (``generate``, ``run --weights``, ``weights import``) must refuse it
for ``allow_unsafe=false/False/0/no`` without the marker appearing, reject ``allow_unsafe=maybe``
as a usage error naming the key and the accepted words, and (for ``generate`` and ``weights
import``) accept it with ``allow_unsafe=true``. ``export pulse`` does not reach it: pulse has no
ONNX graph, and export says so before it builds the method."""

from __future__ import annotations

import pathlib
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit import weights as W
from restorekit.cli import build_cli
from restorekit.plugins import registry
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

FALSE_SPELLINGS = ["false", "False", "0", "no"]


class Tripwire:
    """Unpickling this creates ``marker``: proof that a file's pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def unsafe_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a 32-px rosinality training checkpoint with a tripwire in ``args``."""
    torch.manual_seed(0)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    marker = tmp_path / "unpickled"
    path = tmp_path / "train-000100.pt"
    torch.save({"g": g.state_dict(), "g_ema": g.state_dict(), "d": {}, "ada_aug_p": 0.0,
                "args": Namespace(size=32, latent=16, n_mlp=2, tripwire=Tripwire(marker))}, path)
    return path, marker


def rk(*args: str) -> object:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def _refused(r: object, marker: Path) -> None:
    out = r.output  # type: ignore[attr-defined]
    assert r.exit_code != 0, out  # type: ignore[attr-defined]
    assert "pickled Python objects" in out and "Traceback" not in out, out
    assert not marker.exists(), "the checkpoint was unpickled"


@pytest.mark.parametrize("no", FALSE_SPELLINGS)
def test_generate_refuses(no: str, unsafe_ckpt: tuple[Path, Path], tmp_path: Path, rk_home: Path) -> None:
    ckpt, marker = unsafe_ckpt
    r = rk("generate", "--generator", "stylegan2", "--weights", str(ckpt), "--opt", f"allow_unsafe={no}",
           "--seeds", "0", "--output", str(tmp_path / "out"), "--device", "cpu")
    _refused(r, marker)
    assert r.exit_code == 2  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists()


def test_generate_consent_and_bad_value(unsafe_ckpt: tuple[Path, Path], tmp_path: Path, rk_home: Path) -> None:
    ckpt, marker = unsafe_ckpt
    base = ["generate", "--generator", "stylegan2", "--weights", str(ckpt), "--seeds", "0", "--output",
            str(tmp_path / "out"), "--device", "cpu"]
    r = rk(*base, "--opt", "allow_unsafe=maybe")
    assert r.exit_code == 2  # type: ignore[attr-defined]
    assert "'allow_unsafe'" in r.output and "true/false/1/0/yes/no" in r.output and "'maybe'" in r.output  # type: ignore[attr-defined]
    assert not marker.exists()
    r = rk(*base)  # no option: the default refuses too
    _refused(r, marker)
    r = rk(*base, "--opt", "allow_unsafe=Yes")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert marker.exists()  # consent given: unpickled (the tripwire fired)
    assert Image.open(tmp_path / "out" / "seed0000.png").size == (32, 32)


@pytest.mark.parametrize("no", FALSE_SPELLINGS)
def test_run_weights_refuses(no: str, unsafe_ckpt: tuple[Path, Path], tmp_path: Path, rk_home: Path) -> None:
    if "pulse" not in registry().names("methods"):
        pytest.skip("pulse (restorekit-baselines) is not installed")
    ckpt, marker = unsafe_ckpt
    lr = tmp_path / "lr.png"
    Image.new("RGB", (8, 8), (120, 90, 80)).save(lr)
    r = rk("run", "pulse", "--scale", "4", "--input", str(lr), "--output", str(tmp_path / "out"), "--device", "cpu",
           "--weights", str(ckpt), "--opt", f"allow_unsafe={no}", "--opt", "gaussian_fit_samples=64", "--quiet")
    _refused(r, marker)
    assert r.exit_code == 2  # type: ignore[attr-defined]
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_run_weights_bad_value_is_usage_error(unsafe_ckpt: tuple[Path, Path], tmp_path: Path, rk_home: Path) -> None:
    if "pulse" not in registry().names("methods"):
        pytest.skip("pulse (restorekit-baselines) is not installed")
    ckpt, marker = unsafe_ckpt
    lr = tmp_path / "lr.png"
    Image.new("RGB", (8, 8)).save(lr)
    r = rk("run", "pulse", "--scale", "4", "--input", str(lr), "--output", str(tmp_path / "out"),
           "--weights", str(ckpt), "--opt", "allow_unsafe=maybe")
    assert r.exit_code == 2 and "allow_unsafe" in r.output and "true/false/1/0/yes/no" in r.output  # type: ignore[attr-defined]
    assert not marker.exists()
    # Inside generator_options too: the generator's own model reads the values.
    r = rk("run", "pulse", "--scale", "4", "--input", str(lr), "--output", str(tmp_path / "out"),
           "--weights", str(ckpt), "--opt", 'generator_options={"resolution": "big"}')
    assert r.exit_code == 2 and "resolution" in r.output  # type: ignore[attr-defined]
    r = rk("run", "pulse", "--scale", "4", "--input", str(lr), "--output", str(tmp_path / "out"),
           "--weights", str(ckpt), "--opt", 'generator_options={"allow_unsafe": "false"}')
    assert r.exit_code == 2 and "pulse's own option" in r.output  # type: ignore[attr-defined]
    assert not marker.exists()


@pytest.mark.parametrize("no", [*FALSE_SPELLINGS, "maybe"])
def test_export_of_pulse_reads_no_weights(no: str, unsafe_ckpt: tuple[Path, Path], tmp_path: Path,
                                          rk_home: Path) -> None:
    """``export`` cannot reach the StyleGAN2 loader through pulse: pulse has no ONNX graph, and
    export says so before it builds the method, so the checkpoint is never opened."""
    if "pulse" not in registry().names("methods"):
        pytest.skip("pulse (restorekit-baselines) is not installed")
    ckpt, marker = unsafe_ckpt
    out = tmp_path / "m.onnx"
    r = rk("export", "pulse", "--weights", str(ckpt), "--out", str(out), "--opt", f"allow_unsafe={no}",
           "--opt", "gaussian_fit_samples=64")
    assert r.exit_code == 2 and "cannot be exported to ONNX" in r.output, r.output  # type: ignore[attr-defined]
    assert not out.exists() and not marker.exists()


@pytest.mark.parametrize("no", FALSE_SPELLINGS)
def test_weights_import_refuses(no: str, unsafe_ckpt: tuple[Path, Path], rk_home: Path) -> None:
    ckpt, marker = unsafe_ckpt
    name = "stylegan2-ffhq-config-f"  # no published sha256: --trust records one
    r = rk("weights", "import", name, str(ckpt), "--trust", "--opt", f"allow_unsafe={no}")
    _refused(r, marker)
    assert r.exit_code == 1  # type: ignore[attr-defined]
    assert "argparse.Namespace" in r.output  # type: ignore[attr-defined]
    assert not W.cached_files(name) and W.first_use(name, W.get_spec(name).files[0].filename) is None


def test_weights_import_consent_then_loading_asks_again(unsafe_ckpt: tuple[Path, Path], tmp_path: Path,
                                                        rk_home: Path) -> None:
    ckpt, marker = unsafe_ckpt
    name = "stylegan2-ffhq-config-f"
    r = rk("weights", "import", name, str(ckpt), "--trust", "--opt", "allow_unsafe=maybe")
    assert r.exit_code == 2 and "true/false/1/0/yes/no" in r.output  # type: ignore[attr-defined]
    r = rk("weights", "import", name, str(ckpt), "--trust", "--opt", "allow_unsafe=1")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert not marker.exists()  # importing scans the pickle's opcodes; nothing is unpickled
    # Loading it by name from the cache: refused again without consent.
    for no in FALSE_SPELLINGS:
        r = rk("generate", "--generator", "stylegan2", "--weights", name, "--opt", f"allow_unsafe={no}",
               "--seeds", "0", "--output", str(tmp_path / "out"), "--device", "cpu")
        _refused(r, marker)


@pytest.mark.parametrize("allow_unsafe", [False, True])
def test_corrupt_file_is_called_unreadable_not_unsafe(tmp_path: Path, unsafe_ckpt: tuple[Path, Path],
                                                      allow_unsafe: bool) -> None:
    """A truncated or garbage file fails weights_only loading too, but it holds no pickled
    objects: telling the user to pass allow_unsafe=true for it would ask them to switch the
    safety off for nothing (and with it on, the unpickler's own error escaped as a traceback)."""
    from restorekit_psp_sr.rosinality import CheckpointError, read_checkpoint

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(unsafe_ckpt[0].read_bytes()[:3000])
    for path in (garbage, truncated):
        with pytest.raises(CheckpointError, match=f"{path.name}: not a readable PyTorch checkpoint") as err:
            read_checkpoint(path, allow_unsafe=allow_unsafe)
        assert "allow_unsafe" not in str(err.value) and "\n" not in str(err.value)
    assert not unsafe_ckpt[1].exists()


@pytest.mark.parametrize("allow_unsafe", [False, True])
def test_an_official_network_pickle_is_named_as_such_and_never_unpickled(tmp_path: Path, allow_unsafe: bool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A StyleGAN2-ADA/StyleGAN3 ``.pkl`` (a plain pickle of the official code's objects) had been
    refused as "not a readable PyTorch checkpoint (Unsupported operand 149)"."""
    import pickle
    import sys
    import types

    from restorekit_psp_sr.rosinality import CheckpointError, read_checkpoint

    module = types.ModuleType("torch_utils.persistence")

    class Network:  # stands for the official code's persistent networks
        def __init__(self) -> None:
            self.w = [1.0, 2.0]

    Network.__module__, Network.__qualname__ = module.__name__, "Network"
    module.Network = Network  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    pkl = tmp_path / "network-snapshot-000100.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": Network(), "augment_pipe": None}, protocol=4))
    for name in ("torch_utils", module.__name__):  # as on a machine without the official code
        monkeypatch.delitem(sys.modules, name)
    made: list[object] = []
    monkeypatch.setattr(Network, "__setstate__", lambda self, state: made.append(state), raising=False)
    with pytest.raises(CheckpointError, match=r"network-snapshot-000100.pkl: a StyleGAN2-ADA/StyleGAN3 network "
                                              r"pickle \(torch_utils.persistence.Network…\).*never unpickles") as err:
        read_checkpoint(pkl, allow_unsafe=allow_unsafe)
    assert "\n" not in str(err.value) and made == []
