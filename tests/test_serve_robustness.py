"""``restorekit serve``'s pieces on their own: what keeps the queue, the catalogue and the folder sound
when something misbehaves (no server, no HTTP: ``test_serve.py`` does those)."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from restorekit.web.jobs import Job, JobQueue, JobSettings  # noqa: E402

SETTINGS = JobSettings(upload="u", methods=["bicubic"], scale=2)


def wait_finished(job: Job, timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    while job.status not in ("done", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job.status} after {timeout} s")
        time.sleep(0.01)
    return job


@pytest.mark.parametrize("escape", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_job_that_escapes_with_a_base_exception_fails_and_the_worker_goes_on(escape: BaseException) -> None:
    def run(job: Job) -> None:
        if job.settings.scale == 2:
            raise escape

    q = JobQueue(run, max_waiting=4, keep=4)
    try:
        first, second = q.submit(SETTINGS), q.submit(SETTINGS.model_copy(update={"scale": 4}))
        assert wait_finished(first).status == "failed"
        assert first.error is not None and type(escape).__name__ in first.error
        assert wait_finished(second).status == "done"
    finally:
        q.close()


def test_a_method_that_calls_sys_exit_while_it_is_built_is_listed_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.web.catalogue as catalogue_module
    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    real = catalogue_module.build_method

    def build(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "bicubic":
            sys.exit(3)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(catalogue_module, "build_method", build)
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic", "pix2pixhd"], metrics=["psnr_y_crop"]))
    cat.load()
    assert (cat.methods["bicubic"].available, cat.methods["bicubic"].reason) == (
        False, "could not load bicubic: SystemExit(3): the plugin tried to end the program")
    assert cat.methods["pix2pixhd"].available


def test_the_folder_is_not_made_again_by_a_write_after_close(tmp_path: Any) -> None:
    from restorekit.errors import RestorekitError
    from restorekit.web.files import FileStore

    store = FileStore(tmp_path)
    store.add(b"{}", "json", "a.json", "j1")
    store.close()
    assert not store.root.exists()
    with pytest.raises(RestorekitError, match="the server is stopping"):
        store.add(b"{}", "json", "b.json", "j1")  # a job that outlived the server's stop
    assert list(tmp_path.iterdir()) == []


def test_close_waits_for_a_write_in_progress_then_deletes_everything(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import restorekit.web.files as files_module
    from restorekit.web.files import FileStore

    started, release = threading.Event(), threading.Event()
    real = files_module.atomic_write_bytes

    def slow_write(path: Any, data: bytes) -> None:
        started.set()
        release.wait(10)
        real(path, data)

    monkeypatch.setattr(files_module, "atomic_write_bytes", slow_write)
    store = FileStore(tmp_path)
    writer = threading.Thread(target=store.add, args=(b"{}", "json", "a.json", "j1"))
    writer.start()
    assert started.wait(10)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # close waits for the write it would otherwise race
    release.set()
    writer.join(10)
    closer.join(10)
    assert not closer.is_alive() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ the Host guard


def guarded_status(config: Any, method: str, host: str, origin: str | None = None) -> int:
    """The status the application's guard answers for one request (the route behind it answers 200)."""
    import asyncio

    from restorekit.web.app import Guard, guard_options

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
    scope = {"type": "http", "method": method, "path": "/api/jobs", "headers": headers}
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(Guard(ok, **guard_options(config))(scope, receive, send))
    return int(sent[0]["status"])


def test_listening_on_every_address_still_refuses_a_host_name_it_does_not_know() -> None:
    """DNS rebinding: a page from rebind.example, whose name now resolves to this machine, sends
    Host and Origin rebind.example; only addresses and the server's own names are answered."""
    import socket

    from restorekit.web.config import ServeConfig

    cfg = ServeConfig(host="0.0.0.0", port=7860)
    assert guarded_status(cfg, "GET", "rebind.example:7860") == 400
    assert guarded_status(cfg, "POST", "rebind.example:7860", "http://rebind.example:7860") == 400
    for host in ("192.168.1.20:7860", "[fe80::1]:7860", "localhost:7860", "127.0.0.1:7860",
                 f"{socket.gethostname()}:7860"):
        assert guarded_status(cfg, "GET", host) == 200, host
        assert guarded_status(cfg, "POST", host, f"http://{host}") == 200, host
    assert guarded_status(cfg, "POST", "192.168.1.20:7860", "http://rebind.example:7860") == 403
    named = ServeConfig(host="0.0.0.0", allowed_hosts=["Box.Local"])
    assert guarded_status(named, "POST", "box.local:7860", "http://box.local:7860") == 200


def test_a_host_name_that_means_loopback_still_gets_the_host_check() -> None:
    from restorekit.web.config import ServeConfig

    cfg = ServeConfig(host="ip6-localhost", port=7860)  # not 'localhost', not an address: judged as a name
    assert guarded_status(cfg, "GET", "rebind.example:7860") == 400
    assert guarded_status(cfg, "GET", "ip6-localhost:7860") == 200
    local = ServeConfig(port=7860)
    assert guarded_status(local, "GET", "192.168.1.20:7860") == 400  # localhost only: no other address
    assert guarded_status(local, "GET", "localhost:7860") == 200


@pytest.mark.parametrize("host", ["[::1", "[evil]:7860", "local]host", ""])
def test_a_malformed_host_is_refused_like_any_foreign_one(host: str) -> None:
    from restorekit.web.config import ServeConfig

    assert guarded_status(ServeConfig(port=7860), "GET", host) == 400
    assert guarded_status(ServeConfig(host="0.0.0.0", port=7860), "GET", host) == 400


# ------------------------------------------------------------------------------------------ the upload store


def encoded(kind: str) -> tuple[bytes, str]:
    """One small image file of ``kind`` (every mode the decoder treats differently), as uploaded."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # every 8-bit value, noisy
    images = {
        "rgb.png": lambda: Image.fromarray(rgb, "RGB"),
        "rgba.png": lambda: Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (30, 40), dtype=np.uint8)]), "RGBA"),
        "gray.png": lambda: Image.fromarray(rgb[..., 0], "L"),
        "palette.gif": lambda: Image.fromarray(rgb, "RGB").quantize(64),
        "photo.jpg": lambda: Image.fromarray(rgb, "RGB"),
        "rotated.jpg": lambda: Image.fromarray(rgb, "RGB"),
        "gray16.png": lambda: Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 53 + 1).astype(np.uint16)),
        "int32.tif": lambda: Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50 - 7).astype(np.int32), "I"),
        "float.tif": lambda: Image.fromarray(np.linspace(-0.1, 1.1, 30 * 40, dtype=np.float32).reshape(30, 40), "F"),
    }
    img = images[kind]()
    buf = io.BytesIO()
    if kind == "rotated.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90° clockwise
        img.save(buf, "JPEG", quality=90, exif=exif)
    else:
        img.save(buf, {"png": "PNG", "gif": "GIF", "jpg": "JPEG", "tif": "TIFF"}[kind.rsplit(".", 1)[1]])
    return buf.getvalue(), kind


@pytest.mark.parametrize("kind, stored", [
    ("rgb.png", "uint8"), ("rgba.png", "uint8"), ("gray.png", "uint8"), ("palette.gif", "uint8"),
    ("photo.jpg", "uint8"), ("rotated.jpg", "uint8"),
    ("gray16.png", "uint16"), ("int32.tif", "float32"), ("float.tif", "float32")])
def test_an_upload_is_held_as_its_decoded_pixels_and_converts_exactly(tmp_path: Any, kind: str, stored: str) -> None:
    """8-bit data is held as uint8 (a quarter of float32), 16-bit grayscale as uint16, 32-bit data as
    float32; what a job gets is bit for bit what read_image_bytes gives for the same bytes."""
    import io

    import torch
    from PIL import Image

    from restorekit.images import read_image_bytes, to_pil
    from restorekit.web.files import FileStore
    from restorekit.web.uploads import UploadStore

    data, name = encoded(kind)
    files = FileStore(tmp_path)
    try:
        store = UploadStore(files, max_bytes=10_000_000, max_pixels=10_000, keep=2)
        up = store.accept(data, name)
        expected = read_image_bytes(data, name)
        assert up.pixels.dtype == getattr(torch, stored)
        assert tuple(up.pixels.shape) == tuple(expected.shape) == ((1, 3, 40, 30) if kind == "rotated.jpg"
                                                                   else (1, 3, 30, 40))
        image = up.image()
        assert image.dtype == torch.float32 and torch.equal(image, expected)
        if stored == "uint8":  # exactly the decoded pixels
            assert torch.equal(up.pixels, (expected * 255).round().to(torch.uint8))
        assert up.public()["width"] == expected.shape[-1] and up.public()["height"] == expected.shape[-2]
        preview = Image.open(io.BytesIO(files.get(up.preview).path.read_bytes()))
        assert preview.tobytes() == to_pil(expected).tobytes()
    finally:
        files.close()


def test_a_16_bit_upload_keeps_its_precision(tmp_path: Any) -> None:
    """A 16-bit PNG's levels between two 8-bit ones survive: the job sees value/65535, as run and compare do."""
    import numpy as np
    import torch

    from restorekit.web.files import FileStore
    from restorekit.web.uploads import UploadStore

    data, name = encoded("gray16.png")
    levels = (np.arange(30 * 40).reshape(30, 40) * 53 + 1).astype(np.uint16)
    files = FileStore(tmp_path)
    try:
        up = UploadStore(files, max_bytes=10_000_000, max_pixels=10_000, keep=2).accept(data, name)
        image = up.image()
        want = torch.from_numpy(levels.astype(np.float32) / 65535.0)
        assert all(torch.equal(image[0, c], want) for c in range(3))
        assert len(torch.unique(image)) == 30 * 40 > 256  # more levels than 8 bits hold
    finally:
        files.close()


def test_deep_uploads_count_for_their_bytes_against_the_store(tmp_path: Any) -> None:
    """The store holds at most the bytes of ``keep`` 8-bit uploads of the largest size: float32
    uploads (4 bytes a value) push the oldest out sooner, and the newest is always kept."""
    import torch

    from restorekit.web.files import FileStore
    from restorekit.web.uploads import UploadStore

    files = FileStore(tmp_path)
    try:
        store = UploadStore(files, max_bytes=10_000_000, max_pixels=100 * 100, keep=4)
        assert store.max_held == 4 * 100 * 100 * 3
        eight = [store.add(torch.zeros(1, 3, 100, 100, dtype=torch.uint8), f"u{i}.png") for i in range(4)]
        assert all(store.get(u.id) is not None for u in eight)  # four 8-bit ones: exactly the budget
        deep = store.add(torch.zeros(1, 3, 100, 100), "deep.tif")  # float32: four 8-bit uploads' worth
        assert store.get(deep.id) is not None and [store.get(u.id) is not None for u in eight] == [False] * 4
        with store._lock:
            assert store.held_bytes() == 4 * 100 * 100 * 3
        second = store.add(torch.zeros(1, 3, 100, 100), "deep2.tif")
        assert store.get(second.id) is not None and store.get(deep.id) is None
        assert files.get(eight[0].preview) is None  # forgotten uploads' previews go with them
    finally:
        files.close()


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs signal.setitimer")
def test_the_worker_is_known_to_be_inside_a_job_after_a_ctrl_c_cut_the_wait_for_it() -> None:
    """Python marks a thread stopped when a signal interrupts a ``join`` on it, though it runs on.
    ``serve`` asks whether the worker is still inside a job to leave at once (the interpreter
    aborts when it finalises under a thread inside torch): the worker says so itself."""
    import signal
    import threading

    release, started = threading.Event(), threading.Event()

    def run(job: Job) -> None:
        started.set()
        release.wait(10)

    class Interrupt(Exception):
        pass

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupt

    q = JobQueue(run, max_waiting=4, keep=4)
    job = q.submit(SETTINGS)
    assert started.wait(5)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupt):
            q.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert q.worker_alive and q.busy() and job.status == "running"
    release.set()
    wait_finished(job)
    deadline = time.monotonic() + 5
    while q.worker_alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not q.worker_alive


def test_the_page_detects_faces_as_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's detector searches the pyramid of `run --faces detect` (its default --min-face):
    built with the detector's own default, it found other boxes and landmarks."""
    import restorekit.faces.pipeline as pipeline
    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    asked: list[Any] = []
    real = pipeline.build_detector

    def build(name: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("min_face"))
        return real(name, **kwargs)

    import restorekit.faces.detectors as detectors

    monkeypatch.setattr(detectors, "check_available", lambda name: None)
    monkeypatch.setattr(pipeline, "build_detector", build)
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"]))
    cat.load()
    assert asked == [pipeline.DEFAULT_MIN_FACE, None]  # every face as run; the largest as the demo


def test_the_page_is_told_which_installed_plugins_did_not_load(plugin_site: Any) -> None:
    """Their methods are simply missing from the list; /api/info names the plugin and why."""
    from plugin_sources import BROKEN_PLUGIN

    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    plugin_site("thirdparty-broken", "thirdparty_broken", BROKEN_PLUGIN)
    info = Catalogue(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"])).public()
    assert info["broken_plugins"] == [{"name": "thirdparty_broken", "distribution": "thirdparty-broken",
                                       "status": "broken: ImportError: this plugin is broken on purpose"}]
