"""A caller's ``torch.set_default_dtype(torch.float64)`` (common in notebooks) does not reach into a
method: every built-in method loads and restores under it and returns the float32 result it gives
under float32, and the caller's default is float64 again afterwards. Methods built under float64
failed with "Input type (float) and bias type (double)"; pulse built under float32 failed under
float64 with "mat1 and mat2 must have the same dtype" (its random draws were float64)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from restorekit.interfaces import Method, MethodInfo, float32_default_dtype
from restorekit.methods import build_method

LR = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
SCALE = 2


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pSp model (psp_sr, psp_pulse) and a tiny pix2pixHD generator, as their own tests make them."""
    from restorekit_baselines.pix2pixhd import GeneratorConfig, Pix2PixHDGenerator, save_generator
    from tiny_models import save_tiny

    root = tmp_path_factory.mktemp("dtype")
    g = torch.Generator().manual_seed(0)
    gen = Pix2PixHDGenerator(GeneratorConfig(ngf=4, n_downsampling=2, n_blocks=1, n_local_enhancers=0))
    with torch.no_grad():
        for p in gen.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return {"psp": save_tiny(root / "psp.safetensors"),
            "pix2pixhd": save_generator(gen, root / "p2p.safetensors", factors=[2], input_size=32)}


def options(name: str, files: dict[str, Path]) -> dict[str, Any]:
    """Tiny options for each built-in method: a few steps, no progress lines."""
    psp = {"weights": str(files["psp"]), "impl": "ref", "quiet": True}
    return {
        "bicubic": {},
        "pix2pixhd": {"weights": str(files["pix2pixhd"])},
        "psp_sr": psp,
        "psp_pulse": {**psp, "steps": 3},
        "pulse": {"random_generator": True, "gaussian_fit_samples": 64, "steps": 3, "quiet": True,
                  "generator_options": {"resolution": 32, "style_dim": 16, "n_mlp": 2, "channel_max": 16,
                                        "impl": "ref"}},
    }[name]


@pytest.fixture
def float64_default() -> Iterator[Callable[[], None]]:
    """A context in which the caller's default dtype is float64; float32 again after the test."""
    def enter() -> None:
        torch.set_default_dtype(torch.float64)

    assert torch.get_default_dtype() == torch.float32
    try:
        yield enter
    finally:
        torch.set_default_dtype(torch.float32)


BUILT_IN = ["bicubic", "pix2pixhd", "psp_sr", "psp_pulse", "pulse"]


def test_every_built_in_method_is_listed() -> None:
    from restorekit.plugins import registry

    assert sorted(registry().names("methods")) == sorted(BUILT_IN)  # a new one belongs below


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_method_loads_and_restores_in_float32_under_a_float64_default(
        name: str, tiny_files: dict[str, Path], float64_default: Callable[[], None]) -> None:
    opts = options(name, tiny_files)
    built32 = build_method(name, opts)
    want = built32.restore(LR, SCALE, seed=0)
    assert want.dtype == torch.float32 and want.shape == (1, 3, 16, 16)

    float64_default()
    built64 = build_method(name, opts)  # loads under float64: its networks must still be float32
    assert torch.get_default_dtype() == torch.float64
    got = {"built under float64": built64.restore(LR, SCALE, seed=0),
           "built under float32": built32.restore(LR, SCALE, seed=0),
           "a float64 batch": built64.restore(LR.double(), SCALE, seed=0)}
    assert torch.get_default_dtype() == torch.float64  # the caller's again
    for how, out in got.items():
        assert out.dtype == torch.float32, (name, how, out.dtype)
        assert torch.equal(out, want), (name, how, float((out.double() - want.double()).abs().max()))


def test_the_default_is_the_callers_again_after_a_failed_restore(float64_default: Callable[[], None]) -> None:
    class Failing(Method):
        info = MethodInfo(name="failing_dtype", summary="fails inside restore")
        seen: list[torch.dtype] = []

        def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
            self.seen.append(torch.get_default_dtype())
            raise RuntimeError("inside")

    float64_default()
    with pytest.raises(RuntimeError, match="inside"):
        Failing().restore(LR, 2)
    assert Failing.seen == [torch.float32] and torch.get_default_dtype() == torch.float64


def test_float32_default_dtype_blocks_of_two_threads_take_turns(float64_default: Callable[[], None]) -> None:
    """Under a float64 default two threads' blocks take turns (global_state.LOCK): the first to leave
    must not set float64 back under the other, and the caller's float64 is back after both."""
    float64_default()
    a_in, a_may_leave = threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def a() -> None:
        with float32_default_dtype():
            a_in.set()
            assert a_may_leave.wait(10)
            seen["a"] = torch.get_default_dtype()

    def b() -> None:
        assert a_in.wait(10)
        with float32_default_dtype():
            seen["b entered after a left"] = a_may_leave.is_set()
            seen["b"] = torch.get_default_dtype()

    def run(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 (re-raised in the test's thread)
                errors.append(exc)
        return body

    threads = [threading.Thread(target=run(f)) for f in (a, b)]
    for t in threads:
        t.start()
    threads[1].join(0.5)  # b waits for a's block to end
    assert threads[1].is_alive() and "b" not in seen
    a_may_leave.set()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert seen == {"a": torch.float32, "b entered after a left": True, "b": torch.float32}
    assert torch.get_default_dtype() == torch.float64


def test_under_a_float32_default_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.dtype] = []
    monkeypatch.setattr(torch, "set_default_dtype", calls.append)
    with float32_default_dtype():
        with float32_default_dtype():
            pass
    assert calls == []


def test_the_face_pipeline_and_its_default_detector_run_under_a_float64_default() -> None:
    """MTCNN built and run under a float64 default failed with a raw dtype error: detectors' load
    and detect run under the float32 default as methods do."""
    from restorekit.faces.pipeline import restore_photo
    from restorekit.methods import build_method
    from restorekit.samples import astronaut

    photo = torch.nn.functional.interpolate(astronaut(), size=(128, 128), mode="area")
    m = build_method("bicubic")
    want, found = restore_photo(m, photo, 2, detector="mtcnn")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out, records = restore_photo(m, photo, 2, detector="mtcnn")
    finally:
        torch.set_default_dtype(old)
    assert out.dtype == torch.float32 and len(records) == len(found) == 1
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_a_float64_default_is_never_lost_to_a_build_beside_restores() -> None:
    """Restores in one thread beside builds in another under a float64 default: the default came
    back float32 for good, and a build was blamed for changing it (a warning)."""
    import threading
    import warnings

    from restorekit.methods import build_method

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    stop = threading.Event()
    m = build_method("bicubic")

    def restores() -> None:
        while not stop.is_set():
            m.restore(torch.rand(1, 3, 8, 8, dtype=torch.float32), 2)

    t = threading.Thread(target=restores)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            t.start()
            for _ in range(20):
                build_method("bicubic")
            stop.set()
            t.join()
        assert torch.get_default_dtype() == torch.float64
        assert not [w for w in seen if "changed global state" in str(w.message)]
    finally:
        stop.set()
        torch.set_default_dtype(old)


def test_a_load_beside_a_restore_that_loads_lazily_does_not_deadlock() -> None:
    """Under a float64 default, one thread's restore (which loads lazily, as pulse's does) and
    another's load took the method's load lock and global_state.LOCK in opposite orders: both hung."""
    import threading
    import time
    from typing import ClassVar

    from restorekit.interfaces import Method, MethodInfo

    class Lazy(Method):
        info: ClassVar[MethodInfo] = MethodInfo(name="lazy_dtype", summary="lazy", license="MIT",
                                                deterministic=True, scales=None, input_kind="any")

        def load(self) -> None:
            time.sleep(0.2)

        def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
            time.sleep(0.2)
            self.load()
            return torch.nn.functional.interpolate(lr.float(), scale_factor=int(scale))

    m = Lazy()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    done: dict[str, object] = {}
    try:
        t = threading.Thread(target=lambda: done.update(restore=m.restore(torch.rand(1, 3, 4, 4), 2).shape),
                             daemon=True)
        t.start()
        time.sleep(0.1)
        u = threading.Thread(target=lambda: (m.load(), done.update(load=True)), daemon=True)
        u.start()
        t.join(20)
        u.join(20)
        assert not t.is_alive() and not u.is_alive(), "deadlocked"
        assert done == {"restore": (1, 3, 8, 8), "load": True}
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(old)
