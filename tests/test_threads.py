"""restorekit called from several threads: process-wide state, progress reporters, the caches'
locks, serve's catalogue, and one method instance shared by a thread pool.

Interleavings are forced with events and barriers. Where the right behaviour is that one thread
waits, the other waits for a sign of it for ``PATIENCE`` seconds: a sign that must not come.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from restorekit import global_state as gs
from restorekit.plugins import kept_global_state, registry

PATIENCE = 0.3  # seconds a thread waits for a sign that must not come (the other thread is held)


def in_threads(*fns: Callable[[], Any]) -> list[Any]:
    """Run each of ``fns`` in its own thread; their results, or the first exception raised."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


# --------------------------------------------------------------------------- process-wide state


def test_two_builds_at_once_do_not_put_back_each_others_changes() -> None:
    """A build that changes the default dtype (put back, with its warning) while another thread
    builds: the other must not snapshot the changed dtype and put *that* back for good, nor be
    named for a change it did not make."""
    assert torch.get_default_dtype() == torch.float32
    a_changed, b_entered, a_done = threading.Event(), threading.Event(), threading.Event()
    said: dict[str, list[str]] = {"a": [], "b": []}

    def a() -> None:
        with kept_global_state("method 'a'", "while it loaded", said["a"].append):
            torch.set_default_dtype(torch.float64)  # a plugin's load that forgets to set it back
            a_changed.set()
            b_entered.wait(PATIENCE)  # must not come: b waits for this block to end
        a_done.set()

    def b() -> None:
        a_changed.wait(10)
        with kept_global_state("method 'b'", "while it loaded", said["b"].append):
            b_entered.set()
            a_done.wait(10)  # b's build lasts past a's

    try:
        in_threads(a, b)
        assert torch.get_default_dtype() == torch.float32
        assert said["b"] == []
        assert said["a"] == ["torch.get_default_dtype() float32 → float64"]  # what a changed, put back
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_thread_holding_the_lock_keeps_its_seeded_draws_while_another_builds() -> None:
    """Seeding and drawing from torch's global RNG in one thread while another builds a method
    (whose layers draw from that RNG, put back afterwards): held under ``global_state.LOCK``, the
    draws are those of the seed, whenever the build runs."""
    torch.manual_seed(123)
    want = torch.rand(2, 4)
    built, drew = threading.Event(), threading.Event()

    def build() -> None:
        with kept_global_state("method 'x'", "while it loaded"):
            torch.nn.Linear(64, 64)  # parameter init draws from the global RNG
            built.set()
            drew.wait(10)  # the build lasts past the other thread's draw

    def seeded() -> torch.Tensor:
        with gs.LOCK:
            torch.manual_seed(123)
            first = torch.rand(1, 4)
            builder = threading.Thread(target=build)
            builder.start()
            built.wait(PATIENCE)  # must not come: the build waits for the lock
            second = torch.rand(1, 4)
            drew.set()
        builder.join(10)
        return torch.cat([first, second])

    got = seeded()
    assert built.is_set()
    assert torch.equal(got, want)


def test_a_build_puts_back_grad_mode_in_its_own_thread_only() -> None:
    """Grad mode is torch's per thread: a build that turns it off has it put back in its own
    thread, and another thread's ``no_grad`` is neither read nor changed by that put-back."""
    inside, b_checked, put_back = threading.Event(), threading.Event(), threading.Event()
    said: list[str] = []

    def build() -> bool:
        with kept_global_state("method 'g'", "while it loaded", said.append):
            torch.set_grad_enabled(False)
            inside.set()
            b_checked.wait(10)
        put_back.set()
        return torch.is_grad_enabled()

    def other() -> tuple[bool, bool]:
        with torch.no_grad():
            inside.wait(10)
            during = torch.is_grad_enabled()
            b_checked.set()
            put_back.wait(10)
            return during, torch.is_grad_enabled()

    build_mode, (during, after) = in_threads(build, other)
    assert build_mode is True
    assert said == ["torch.is_grad_enabled() True → False"]
    assert (during, after) == (False, False)


# --------------------------------------------------------------------------- progress


def test_a_reporter_is_its_own_threads_and_ends_with_its_block() -> None:
    """Two jobs at once each hear only their own steps; a thread started inside a block hears
    nothing; after the block nothing is heard (the next job on the same worker starts clean)."""
    from restorekit import progress

    heard: dict[str, list[tuple[str, int, int]]] = {"a": [], "b": []}
    both_in = threading.Barrier(2)
    stray: list[bool] = []

    def job(name: str) -> None:
        with progress.reporting(lambda label, done, total: heard[name].append((label, done, total))):
            both_in.wait(10)
            progress.report(name, 1, 2)
            both_in.wait(10)
            t = threading.Thread(target=lambda: stray.append(progress._REPORTER.get() is None))
            t.start()
            t.join(10)
        progress.report(f"{name} after", 2, 2)

    in_threads(lambda: job("a"), lambda: job("b"))
    assert heard == {"a": [("a", 1, 2)], "b": [("b", 1, 2)]}
    assert stray == [True, True]


# --------------------------------------------------------------------------- caches


def test_first_use_records_of_two_threads_are_both_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two first pulls at once (two threads of one process) read, change and write back the one
    record file: the lock is a lock between threads too, so neither record is lost."""
    from restorekit.weights import tofu

    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path))
    real_read = tofu._read_tofu
    a_read, b_read = threading.Event(), threading.Event()

    def read() -> dict[str, tofu.FirstUse]:
        records = real_read()
        if threading.current_thread().name == "first-a":
            a_read.set()
            b_read.wait(PATIENCE)  # must not come: b waits for the lock a holds
        else:
            b_read.set()
        return records

    monkeypatch.setattr(tofu, "_read_tofu", read)
    rec = tofu.FirstUse("0" * 64, 1, "now", "test")
    a = threading.Thread(target=tofu._remember_first_use, args=("a", "a.pt", rec), name="first-a")
    b = threading.Thread(target=lambda: (a_read.wait(10), tofu._remember_first_use("b", "b.pt", rec)), name="first-b")
    for t in (a, b):
        t.start()
    for t in (a, b):
        t.join(10)
    assert sorted(real_read()) == ["a/a.pt", "b/b.pt"]


# --------------------------------------------------------------------------- serve


def test_serve_never_builds_while_a_job_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build puts back the process-wide state it changed, which would also undo a running job's:
    the catalogue builds under the lock its jobs run under."""
    import restorekit.faces.detectors as detectors
    import restorekit.faces.pipeline as pipeline
    import restorekit.web.catalogue as catalogue_module
    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    built = threading.Event()
    real = catalogue_module.build_method

    def build(*args: Any, **kwargs: Any) -> Any:
        built.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(catalogue_module, "build_method", build)
    monkeypatch.setattr(detectors, "check_available", lambda name: None)
    monkeypatch.setattr(pipeline, "build_detector", lambda name, **kw: None)
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"]))
    loader = threading.Thread(target=cat.load)
    with cat.lock:  # a job is running
        loader.start()
        assert not built.wait(PATIENCE), "a method was built while a job held the lock"
    loader.join(10)
    assert built.is_set() and cat.methods["bicubic"].available


# --------------------------------------------------------------------------- one instance, two threads


def _tiny_psp_weights(folder: Path) -> str:
    pytest.importorskip("restorekit_psp_sr")
    from restorekit_psp_sr.encoder import GradualStyleEncoder
    from restorekit_psp_sr.method import save_psp_safetensors
    from restorekit_psp_sr.psp import PSP
    from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
        enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16)
        model = PSP(enc, g, g.mean_latent(64)).eval()
    return str(save_psp_safetensors(model, folder / "tiny.safetensors", factors=[1, 2, 4], license="CC0-1.0",
                                    name="tiny"))


def _options(name: str, folder: Path) -> dict[str, Any]:
    if name == "psp_sr":
        return {"weights": _tiny_psp_weights(folder), "quiet": True}
    if name == "pulse":
        return {"random_generator": True, "gaussian_fit_samples": 64, "steps": 1, "tries": 1, "quiet": True,
                "generator_options": {"resolution": 32, "style_dim": 16, "n_mlp": 2, "channel_max": 16,
                                      "impl": "ref"}}
    return {}


@pytest.mark.parametrize("name", ["bicubic", "pix2pixhd", "psp_sr"])
def test_one_instance_restores_in_two_threads_as_one_after_the_other(name: str, tmp_path: Path) -> None:
    """A library user's thread pool sharing one loaded method: each call's output is what the
    same call gives alone (no cached tensor, mode or generator shared between calls)."""
    from restorekit.methods import build_method

    if name not in registry().names("methods"):
        pytest.skip(f"{name} is not installed")
    m = build_method(name, _options(name, tmp_path))
    g = torch.Generator().manual_seed(5)
    calls = [(torch.rand(1, 3, 16, 16, generator=g), 2, 0, 2), (torch.rand(1, 3, 16, 16, generator=g), 2, 1, 1)]
    # (lr, scale, seed, n_samples)
    alone = [m.restore(lr, k, seed=s, n_samples=n) for lr, k, s, n in calls]
    start = threading.Barrier(2)

    def call(i: int) -> torch.Tensor:
        lr, k, s, n = calls[i]
        start.wait(10)
        with torch.inference_mode() if i == 0 else torch.no_grad():  # one caller in each mode
            return m.restore(lr, k, seed=s, n_samples=n)

    together = in_threads(lambda: call(0), lambda: call(1))
    for got, want in zip(together, alone):
        assert torch.equal(got, want)


def test_threads_asking_for_the_registry_at_once_share_one_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first registry() of two threads at once loaded the plugins twice (warnings twice, two
    registries: a method registered in one was unknown to the other)."""
    from restorekit import plugins

    real_load = plugins.load_registry
    loads: list[int] = []
    entered = threading.Event()

    def slow_load(strict=None):  # type: ignore[no-untyped-def]
        loads.append(1)
        entered.set()
        time.sleep(0.2)  # the other thread asks meanwhile
        return real_load(strict)

    monkeypatch.setattr(plugins, "load_registry", slow_load)
    plugins.reset()
    got: list[object] = []
    first = threading.Thread(target=lambda: got.append(plugins.registry()))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=lambda: got.append(plugins.registry()))
    second.start()
    first.join(10)
    second.join(10)
    assert len(loads) == 1 and len(got) == 2 and got[0] is got[1]
