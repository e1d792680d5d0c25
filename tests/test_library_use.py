"""restorekit from Python (a notebook, a service, another framework's training loop): a batch in another
convention is a one-line error naming the fix, integer-like scales pass, weights options take paths,
metrics refuse what they would misread; importing and calling leave the process as they found it,
results equal `restorekit run`'s, threads and repeated use are safe."""

from __future__ import annotations

import math
import threading
import time
import typing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, ValidationError

from restorekit.harness.metrics import LrConsistency, PsnrRgb, PsnrYCrop, SsimRgb, SsimYCrop
from restorekit.images import to_pil
from restorekit.interfaces import Method, MethodInfo, Options, OptionsModel, check_image_batch
from restorekit.options import WeightsRef, validate
from restorekit.testing.data import smooth_batch


class Nearest(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="nearest_lib", summary="nearest-neighbour upscaling")

    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        self.check_input(lr)
        self.check_scale(scale)
        return F.interpolate(lr.float(), scale_factor=int(scale), mode="nearest").repeat_interleave(n_samples, 0)


class OnlyFour(Nearest):
    info: ClassVar[MethodInfo] = MethodInfo(name="only_four", summary="x4 only", scales=(4,))


BATCH = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))

#: (what, input, words the one-line message must hold)
WRONG_INPUTS = [
    ("numpy H×W×3 uint8", (BATCH[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
     ["numpy.ndarray", "torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255"]),
    ("PIL image", to_pil(BATCH[0]), ["PIL", "restorekit.images.from_pil"]),
    ("3×H×W", BATCH[0], ["(3, 8, 8)", "x[None]"]),
    ("N×H×W×3", BATCH.permute(0, 2, 3, 1), ["(2, 8, 8, 3)", "permute(0, 3, 1, 2)"]),
    ("H×W×3", BATCH[0].permute(1, 2, 0), ["(8, 8, 3)", "permute(2, 0, 1)[None]"]),
    ("one channel", BATCH[:, :1], ["(2, 1, 8, 8)", "expand"]),
    ("RGBA", torch.cat([BATCH, BATCH[:, :1]], 1), ["(2, 4, 8, 8)", "alpha"]),
    ("H×W", BATCH[0, 0], ["(8, 8)"]),
    ("uint8", (BATCH * 255).to(torch.uint8), ["torch.uint8", "/ 255"]),
    ("0-255 floats", BATCH * 255, ["[0, 1]", "255"]),
    ("[-1, 1] floats", BATCH * 2 - 1, ["[0, 1]", "(x + 1) / 2"]),
    ("empty batch", torch.zeros(0, 3, 8, 8), ["empty"]),
]


@pytest.mark.parametrize("what,x,words", WRONG_INPUTS, ids=[w[0] for w in WRONG_INPUTS])
def test_restore_refuses_a_batch_in_another_convention_in_one_line(what, x, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        Nearest().restore(x, 2)
    msg = str(info.value)
    assert msg.startswith("nearest_lib: lr") and "\n" not in msg, msg
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_any_float_type_in_range_passes(dtype: torch.dtype) -> None:
    m = Nearest()
    m.check_input(BATCH.to(dtype))
    m.check_input(BATCH.clone().requires_grad_(True))
    m.check_input(BATCH.contiguous(memory_format=torch.channels_last))
    # A resampled image rings a little past [0, 1]: that is still an image in the convention.
    m.check_input((BATCH * 1.2 - 0.1).to(dtype))
    assert Nearest().restore(BATCH.to(dtype), 2).shape == (2, 3, 16, 16)


def test_check_image_batch_names_the_caller() -> None:
    with pytest.raises(ValueError, match=r"^my_thing: x must be a torch.Tensor"):
        check_image_batch([1, 2, 3], "my_thing: x")


@pytest.mark.parametrize("scale", [4, np.int64(4), np.int32(4), torch.tensor(4), torch.tensor(4, dtype=torch.int8)])
def test_check_scale_takes_any_integer(scale: object) -> None:
    Nearest().check_scale(scale)  # type: ignore[arg-type]
    OnlyFour().check_scale(scale)  # type: ignore[arg-type]
    assert Nearest().restore(BATCH, scale).shape == (2, 3, 32, 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [True, False, 4.0, 2.5, np.float64(4), torch.tensor(4.0), torch.tensor(True),
                                   torch.tensor([4, 2]), torch.tensor([4]), 0, -2, np.int64(0), "4", None])
def test_check_scale_still_refuses_non_integers_and_non_positive(scale: object) -> None:
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        Nearest().check_scale(scale)  # type: ignore[arg-type]


def test_check_scale_limits_apply_to_numpy_scales() -> None:
    with pytest.raises(ValueError, match="only_four supports --scale 4; got 2"):
        OnlyFour().check_scale(np.int64(2))  # type: ignore[arg-type]


def test_options_annotation_in_method_resolves_to_the_options_base() -> None:
    """Inside ``class Method`` the ``Options`` attribute hides the module's class: the constructor's
    annotation uses :data:`OptionsModel`, the same class, so type checkers (py.typed) resolve it."""
    assert OptionsModel is Options
    hints = typing.get_type_hints(Method.__init__, vars(__import__("restorekit.interfaces").interfaces))
    assert hints["options"] == Options | None


class WeightsModel(BaseModel):
    weights: WeightsRef = Field(None, description="a weights name or file")


def test_a_weights_option_takes_a_path(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    assert WeightsModel(weights=f).weights == str(f)
    assert WeightsModel(weights=str(f)).weights == str(f)
    assert WeightsModel(weights=None).weights is None
    # The command line's strings are unchanged: a name, and `none` clearing the option.
    assert validate(WeightsModel, {"weights": "stylegan2-faces128"}, label="m").weights == "stylegan2-faces128"
    assert validate(WeightsModel, {"weights": "none"}, label="m").weights is None
    assert validate(WeightsModel, {"weights": f}, label="m").weights == str(f)
    with pytest.raises(ValidationError, match="valid string"):
        WeightsModel(weights=3)
    # To option parsing and `methods show` the field is still `str | None`.
    assert WeightsModel.model_fields["weights"].annotation == (str | None)


# -- metrics --------------------------------------------------------------------------------
METRICS = [PsnrYCrop, SsimYCrop, PsnrRgb, SsimRgb, LrConsistency]


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hr = smooth_batch(2, 32, 32, seed=3)
    pred = (hr * 0.9 + 0.05).clamp(0, 1)
    return pred, hr, F.avg_pool2d(hr, 2)


@pytest.mark.parametrize("metric", METRICS, ids=[m.name for m in METRICS])
def test_metrics_refuse_0_255_uint8_and_unbatched_images(metric) -> None:  # type: ignore[no-untyped-def]
    pred, hr, lr = _pair()
    m = metric()
    ok = m(pred, hr, lr=lr, scale=2)
    assert ok.shape == (2,) and ok.dtype == torch.float64
    assert torch.allclose(m(pred.half(), hr.half(), lr=lr.half(), scale=2), ok, rtol=1e-2, atol=1e-4)
    for bad, words in [((pred * 255, hr * 255, lr * 255), "255"),
                       ((pred.mul(255).round().byte(), hr.mul(255).round().byte(), lr.mul(255).round().byte()), "uint8"),
                       ((pred[0], hr[0], lr[0]), "x[None]")]:
        with pytest.raises(ValueError) as info:
            m(bad[0], bad[1], lr=bad[2], scale=2)
        assert str(info.value).startswith(f"{m.name}: ") and words in str(info.value), str(info.value)


@pytest.mark.parametrize("metric", [PsnrYCrop, SsimYCrop, PsnrRgb, SsimRgb], ids=lambda m: m.name)
def test_pair_metrics_check_the_target_too(metric) -> None:  # type: ignore[no-untyped-def]
    pred, hr, lr = _pair()
    with pytest.raises(ValueError, match=f"^{metric.name}: target has values from"):
        metric()(pred, hr * 255, lr=lr, scale=2)
    with pytest.raises(ValueError, match=f"^{metric.name}: target must be N×3×H×W"):
        metric()(pred, hr[:, :1], lr=lr, scale=2)


def test_lr_consistency_checks_the_lr() -> None:
    pred, hr, lr = _pair()
    with pytest.raises(ValueError, match="^lr_consistency: lr has values from"):
        LrConsistency()(pred, hr, lr=lr * 255, scale=2)


def test_psnr_of_an_image_with_a_nan_is_nan_not_a_perfect_score() -> None:
    from restorekit.harness.metrics import PsnrRgb, PsnrYCrop

    a = torch.rand(2, 3, 16, 16)
    b = a.clone()
    b[1, 0, 3, 3] = float("nan")
    for m in (PsnrRgb(), PsnrYCrop()):
        v = m(b, a, lr=a[..., ::2, ::2], scale=2)
        assert math.isinf(float(v[0])) and math.isnan(float(v[1]))


@pytest.mark.parametrize("name", ["lpips_alex_v0.1", "identity_dlib"])
def test_network_metrics_refuse_0_255_images_before_loading_anything(name: str) -> None:
    from restorekit.plugins import registry

    metric = registry().metric(name)()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="divide by 255"):
        metric(x * 255, x, lr=x[..., ::4, ::4], scale=4)


# -- a notebook, a service, a training loop: the process around the call -------------------------
def process_state() -> dict[str, object]:
    """What a library call could leave changed in the process around it, keyed by how a user reads
    it: signal handlers, warnings filters, logging set-up, environment, cwd, standard streams and
    hooks, threads and open files, torch's settings (threads, dtype, determinism, cuDNN,
    precision, grad/inference/autocast modes) and the global torch, NumPy and Python RNGs (as
    bytes, so that states compare with ``==``). Self-contained: a fresh interpreter runs its
    source to see what ``import restorekit`` changes."""
    import logging
    import os
    import pickle
    import random
    import signal
    import sys
    import threading
    import warnings

    import numpy
    import torch

    def handler(s: int) -> object:
        try:
            h = signal.getsignal(s)
        except (OSError, ValueError):
            return "?"
        return h if isinstance(h, int) or h is None else f"{getattr(h, '__module__', '')}.{getattr(h, '__qualname__', h)}"

    fds: dict[str, str] = {}
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    # restorekit.memory holds this process's /proc/PID/status open, by design (the umask is read
    # there without setting it): one descriptor for the process's life, not one per call
    fds = {fd: target for fd, target in fds.items() if not target.startswith(f"/proc/{os.getpid()}/")}
    root = logging.getLogger()
    return {
        "signal handlers": {int(s): handler(s) for s in signal.valid_signals()},
        "warnings.filters": [(a, getattr(m, "pattern", m), c.__name__, getattr(mod, "pattern", mod), line)
                             for a, m, c, mod, line in warnings.filters],
        "warnings.showwarning": warnings.showwarning.__module__,
        "logging": (root.level, [type(h).__name__ for h in root.handlers], logging.root.manager.disable,
                    logging.getLoggerClass().__name__),
        "os.environ": dict(os.environ),
        "cwd": os.getcwd(),
        "streams and hooks": [id(x) for x in (sys.stdin, sys.stdout, sys.stderr, sys.excepthook,
                                               sys.unraisablehook, threading.excepthook, sys.displayhook)],
        "threads": threading.active_count(),
        "open files": sorted(fds.values()),
        "torch threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "torch modes": (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                        torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_anomaly_enabled()),
        "torch dtype": torch.get_default_dtype(),
        "torch determinism": (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
                              torch.backends.cudnn.deterministic, torch.backends.cudnn.enabled),
        "float32 precision": torch.get_float32_matmul_precision(),
        "torch RNG": bytes(torch.get_rng_state().numpy()),
        "numpy RNG": pickle.dumps(numpy.random.get_state()),
        "python RNG": pickle.dumps(random.getstate()),
    }


def changes(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    """What differs between two :func:`process_state` readings (of a mapping: the keys that differ)."""
    out: dict[str, object] = {}
    for k, v in before.items():
        now = after[k]
        if now != v:
            if isinstance(v, dict) and isinstance(now, dict):
                out[k] = {key: (v.get(key), now.get(key)) for key in {*v, *now} if v.get(key) != now.get(key)}
            else:
                out[k] = (v, now) if "RNG" not in k else "advanced or reseeded"
    return out


_IMPORT_AND_LOAD = '''
import json, torch, numpy, PIL.Image
{source}
torch.manual_seed(1)
before = process_state()
import restorekit, restorekit.methods, restorekit.images, restorekit.interfaces, restorekit.errors
from restorekit.methods import build_method
after_import = process_state()
lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
for name in ("bicubic", "pix2pixhd"):
    build_method(name).restore(lr, 2, seed=3, n_samples=2)
after_use = process_state()
print(json.dumps({{"import": changes(before, after_import), "use": changes(after_import, after_use)}}, default=str))
'''


def test_importing_and_using_restorekit_leaves_the_process_as_it_was() -> None:
    """``import restorekit`` in a fresh interpreter, then loading methods and restoring with them,
    installs no signal handler or hook, changes no warnings filter, logging set-up, environment
    variable, cwd, stream, torch setting or global RNG, and leaves no thread or file open."""
    import inspect
    import json
    import subprocess
    import sys

    code = _IMPORT_AND_LOAD.format(source=inspect.getsource(process_state) + inspect.getsource(changes))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"import": {}, "use": {}}, r.stdout


@pytest.fixture(scope="module")
def psp() -> Method:
    from restorekit.methods import build_method

    return build_method("psp_sr", {"quiet": True})


LR16 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))


def test_restore_leaves_global_state_and_the_callers_rng_stream(psp: Method) -> None:
    from restorekit.methods import build_method

    methods = [build_method("bicubic"), build_method("pix2pixhd"), psp]
    for mode in (torch.no_grad, torch.enable_grad, torch.inference_mode):
        for m in methods:
            with mode():
                torch.manual_seed(11)
                want = torch.rand(3)
                torch.manual_seed(11)
                before = process_state()
                out = m.restore(LR16, 2, seed=7, n_samples=2)
                assert changes(before, process_state()) == {}, (m.info.name, mode.__name__)
                assert torch.equal(torch.rand(3), want), f"{m.info.name} moved the caller's torch RNG"
                assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32 and out.grad_fn is None


class Conv(Nearest):
    """Nearest-neighbour upscaling, then a fixed 3×3 convolution (what autocast casts)."""

    info: ClassVar[MethodInfo] = MethodInfo(name="conv_lib", summary="nearest, then a 3×3 convolution")

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-0.2, 0.3, self.conv.weight.numel()).view_as(self.conv.weight))
            self.conv.bias.fill_(0.1)

    @torch.no_grad()
    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        return self.conv(super().restore(lr, scale, seed=seed, n_samples=n_samples)).clamp(0, 1)


def test_restore_computes_in_float32_under_a_callers_autocast(psp: Method) -> None:
    """A training loop's ``torch.autocast`` does not reach into a method: the result is what the
    method returns outside it (it was bfloat16-rounded, and psp_sr failed in a resize kernel)."""
    for m in (Conv(), psp):
        want = m.restore(LR16, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m.restore(LR16, 2)
            assert torch.is_autocast_enabled("cpu")  # the caller's context is its own again
        assert got.dtype == torch.float32 and torch.equal(got, want), m.info.name


@pytest.mark.parametrize("what,change,words", [
    ("NaN", lambda x: x.index_fill(2, torch.tensor([3]), float("nan")), "holds 96 NaN value(s) of 1536"),
    ("inf", lambda x: x.index_fill(3, torch.tensor([0]), float("inf")), "holds 96 infinite value(s) of 1536"),
    ("-inf", lambda x: x.index_fill(3, torch.tensor([0]), -float("inf")), "infinite value(s)"),
    ("meta", lambda x: x.to("meta"), "meta device"),
])
def test_a_batch_without_values_is_refused_in_one_line(what: str, change: Any, words: str, psp: Method) -> None:
    """A NaN came back as a NaN image (or, from psp_sr, a plausible face); inf was called a 0-255
    image; a meta tensor failed inside ``.item()``."""
    from restorekit_baselines.bicubic import Bicubic

    x = change(LR16)
    for m in (Nearest(), Bicubic(), psp):
        with pytest.raises(ValueError) as info:
            m.restore(x, 2)
        msg = str(info.value)
        assert msg.startswith(f"{m.info.name}: lr ") and words in msg and "\n" not in msg, msg


SAMPLING_ERRORS = [
    ({"n_samples": 0}, "n_samples must be a positive integer, got 0"),
    ({"n_samples": -1}, "n_samples must be a positive integer, got -1"),
    ({"n_samples": 2.5}, "n_samples must be a positive integer, got 2.5"),
    ({"n_samples": True}, "n_samples must be a positive integer, got True"),
    ({"seed": -1}, "seed must be None or an integer from 0 to 2**64 - 1, got -1"),
    ({"seed": 2**64}, "seed must be None or an integer from 0 to 2**64 - 1, got 18446744073709551616"),
    ({"seed": 1.5}, "seed must be None or an integer from 0 to 2**64 - 1, got 1.5"),
    ({"seed": "7"}, "seed must be None or an integer from 0 to 2**64 - 1, got '7'"),
]


def test_seed_and_n_samples_are_checked_by_every_method(psp: Method) -> None:
    """bicubic and pix2pixhd returned one sample for n_samples=0 or -1; a float or a string failed
    inside torch, and psp_sr handed a seed past 2**64 to torch (``Overflow when unpacking long long``)."""
    from restorekit.methods import build_method

    for m in (build_method("bicubic"), build_method("pix2pixhd"), psp):
        for kwargs, words in SAMPLING_ERRORS:
            with pytest.raises(ValueError) as info:
                m.restore(LR16, 2, **{"seed": 3, "n_samples": 2, **kwargs})
            assert str(info.value) == f"{m.info.name}: {words}", str(info.value)
        for seed, n in [(np.int64(3), np.int64(2)), (torch.tensor(3), torch.tensor(2)), (2**64 - 1, 1)]:
            torch.testing.assert_close(m.restore(LR16, 2, seed=seed, n_samples=n),  # type: ignore[arg-type]
                                       m.restore(LR16, 2, seed=int(seed), n_samples=int(n)), rtol=0, atol=0)


def test_an_output_that_does_not_fit_in_memory_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                                          psp: Method) -> None:
    """A service asked for ×128 got its process killed by the kernel mid-way (Linux lets a large
    allocation through, then kills on touching it); now it is one ``InsufficientMemory`` line."""
    from restorekit import device_memory
    from restorekit.errors import InsufficientMemory
    from restorekit_baselines.bicubic import Bicubic

    monkeypatch.setattr(device_memory, "available_memory", lambda device: 50 * 2**20)
    x = LR16[:1]
    for m in (Bicubic(), psp):
        with pytest.raises(InsufficientMemory, match=rf"^{m.info.name} at ×128 \(2048×2048\) needs about 101 MB of "
                                                     r"memory, 52 MB is available on cpu \(lower the scale"):
            m.restore(x, 128)
        with pytest.raises(InsufficientMemory, match=r"\(512×512 × 64 outputs\)"):
            m.restore(x, 32, n_samples=64, seed=0)
        assert m.restore(x, 4).shape == (1, 3, 64, 64)  # small outputs are not even measured


class SlowLoad(Nearest):
    """Publishes its model before its set-up has ended (as psp_sr did: assigned, then optimised in place)."""

    info: ClassVar[MethodInfo] = MethodInfo(name="slow_load", summary="a load that takes a while")

    def __init__(self) -> None:
        super().__init__()
        self.model: str | None = None
        self.loads = 0

    def load(self) -> None:
        if self.model is not None:
            return
        self.loads += 1
        self.model = "being set up"
        time.sleep(0.2)
        self.model = "ready"

    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        self.load()
        assert self.model == "ready", f"restore ran with a model {self.model}"
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


def test_two_threads_whose_first_restore_loads_the_method_load_it_once() -> None:
    m = SlowLoad()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            m.restore(LR16, 2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert errors == [] and m.loads == 1
    assert type(m).load.__wrapped__ is SlowLoad.__dict__["load"].__wrapped__  # type: ignore[attr-defined]


def test_a_loaded_method_restores_from_several_threads_as_alone(psp: Method) -> None:
    """Documented in :class:`restorekit.interfaces.Method`: one loaded instance serves threads."""
    inputs = [LR16[i:i + 1] for i in range(2)] * 2
    want = [psp.restore(x, 2, seed=1, n_samples=2) for x in inputs]
    got: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, psp.restore(inputs[i], 2, seed=1, n_samples=2)))
               for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[i], want[i]) for i in range(len(inputs)))


def test_the_library_returns_what_restorekit_run_writes(tmp_path: Path, psp: Method) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from restorekit.cli import build_cli
    from restorekit.images import from_pil
    from restorekit.methods import build_method

    to_pil(F.interpolate(LR16[:1], scale_factor=0.5, mode="area").clamp(0, 1)).save(tmp_path / "face.png")
    lr = from_pil(Image.open(tmp_path / "face.png"))
    for name, args, lib in [("bicubic", [], lambda: build_method("bicubic").restore(lr, 4)),
                            ("psp_sr", ["--n-samples", "2", "--seed", "5"], lambda: psp.restore(lr, 4, seed=5, n_samples=2))]:
        out = tmp_path / name
        r = CliRunner().invoke(build_cli(), ["run", name, "--scale", "4", "--input", str(tmp_path / "face.png"),
                                             "--output", str(out), "-q", *args])
        assert r.exit_code == 0, r.output
        written = sorted(out.glob("*.png"))
        mine = lib()
        assert len(written) == mine.shape[0]
        for f, img in zip(written, mine):
            assert np.array_equal(np.asarray(Image.open(f).convert("RGB")), np.asarray(to_pil(img))), (name, f.name)


def test_loading_50_times_and_restoring_200_times_keeps_memory_threads_and_files_flat() -> None:
    import gc
    import os
    import tracemalloc

    from restorekit.methods import build_method

    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    x = LR16[:1, :, :8, :8]
    m = build_method("bicubic")
    m.restore(x, 2)
    gc.collect()
    tracemalloc.start()
    try:
        start, held = counts(), tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            build_method("bicubic").restore(x, 2)
        for _ in range(200):
            m.restore(x, 2)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert counts() == start
    assert grown < 64 * 1024, f"{grown} bytes of Python objects kept after 50 loads and 200 restores"


def test_the_public_api_is_typed() -> None:
    import importlib.util
    import inspect

    import restorekit
    import restorekit.methods as methods

    for pkg in ("restorekit", "restorekit_psp_sr", "restorekit_baselines"):
        spec = importlib.util.find_spec(pkg)
        assert spec is not None and spec.origin is not None
        assert (Path(spec.origin).parent / "py.typed").is_file(), pkg
    assert restorekit.__version__ and restorekit.ENTRY_POINT_GROUP == "restorekit"
    public = [getattr(methods, n) for n in methods.__all__ if inspect.isfunction(getattr(methods, n))]
    public += [Method.check_input, Method.check_scale, Method.check_sampling, Method.check_output_memory,
               Method.load, Method.restore, check_image_batch]
    for fn in public:
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, fn.__qualname__
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values() if p.name != "self"), \
            fn.__qualname__


@pytest.mark.parametrize("package", ["restorekit", "restorekit_psp_sr", "restorekit_baselines"])
def test_every_name_a_module_exports_exists(package: str) -> None:
    """`from module import *` fails on a name in ``__all__`` that the module no longer defines (one
    was left behind when a helper moved to another module)."""
    import importlib
    import pkgutil

    root = importlib.import_module(package)
    missing = []
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)
        missing += [f"{info.name}.{n}" for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
    assert not missing
