"""What docs/serve.md promises of ``restorekit serve``, held to it: the *photo, largest face* mode
gives the demo's crop and numbers to the last digit (the page's detector searched another pyramid);
the connection-cap 503 forbids framing and sniffing and carries the content security policy, as
every other response does (it carried none of them); torch's compile cache stays in the server's
own temporary folder (torch left ``torchinductor_USER`` in TMPDIR); and building the command line
imports nothing of ``restorekit.web`` (``serve`` imported its config at load)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import get_json, post_json, request, resolve, wait_job

needs_web = pytest.mark.skipif(
    importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None,
    reason="restorekit serve needs the web extra (starlette, uvicorn)")
needs_astronaut = pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None or importlib.util.find_spec("facenet_pytorch") is None,
    reason="the sample photo ships in scikit-image, the default face detector's weights in facenet-pytorch==2.6.0")
#: Metrics both the page and the demo score (quick ones: what differed was the crop).
METRICS = ("psnr_y_crop", "ssim_y_crop", "lr_consistency")


@needs_web
@needs_astronaut
def test_the_largest_face_mode_gives_the_demos_crop_and_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The astronaut, ×8 (the demo's default), bicubic: the page's crop job against ``restorekit demo``."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli
    from restorekit.commands import demo
    from restorekit.images import read_image, read_image_bytes
    from restorekit.web.config import ServeConfig
    from restorekit.web.server import start

    srv = start(ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=list(METRICS),
                            temp_parent=tmp_path))
    try:
        status, up = post_json(srv.url, "/api/uploads/sample", {})
        assert status == 201, up
        status, job = post_json(srv.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 8,
                                                       "faces": "crop", "degrade": True})
        assert status == 202, job
        job = wait_job(srv.url, job["id"], 120)
        assert job["status"] == "done", job
        r = job["result"]
        hr_url = next(i["url"] for i in r["images"] if i["role"] == "hr")
        status, _, body = request(srv.url, "GET", resolve(srv.url + "/", hr_url))
        assert status == 200
        page_hr = read_image_bytes(body, "hr.png")
    finally:
        srv.stop()

    monkeypatch.setattr(demo, "DEMO_METRICS", METRICS)
    out = tmp_path / "demo"
    result = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "bicubic",
                                              "--scale", "8", "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    # The same face at the same place (was [176.61, 59.72, 267.49, 173.53] against [180.05, 61.16, 267.75, 172.05]) …
    assert r["face"]["box"] == summary["face"]["box"]
    assert r["face"]["quad"] == summary["face"]["quad"] and r["face"]["score"] == summary["face"]["score"]
    # … the same HR pixels, and the same numbers to the last digit (bicubic PSNR-Y was 22.173 against 22.315).
    assert page_hr.equal(read_image(out / "astronaut_hr.png"))
    [row] = r["methods"]
    assert {m: row["metrics"][m]["mean"] for m in METRICS} == {m: summary["results"]["bicubic"][m] for m in METRICS}
    assert 22.3 < row["metrics"]["psnr_y_crop"]["mean"] < 22.33


@needs_web
def test_every_face_mode_keeps_runs_pyramid_and_crop_mode_the_demos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two detectors of the same name: *every face* with run's --min-face pyramid, *largest face*
    built as the demo builds it (:func:`restorekit.faces.pipeline.largest_face_detector`)."""
    import restorekit.faces.detectors as detectors
    import restorekit.faces.pipeline as pipeline
    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    built: list[tuple[str, Any]] = []

    class Stub:
        def __init__(self, name: str, min_face: Any) -> None:
            self.name, self.min_face = name, min_face

    def build(name: Any, **kwargs: Any) -> Any:
        built.append((name, kwargs.get("min_face")))
        return Stub(name, kwargs.get("min_face"))

    monkeypatch.setattr(detectors, "check_available", lambda name: None)
    monkeypatch.setattr(pipeline, "build_detector", build)
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], detector="mtcnn"))
    cat.load()
    assert cat.detector is not None and cat.crop_detector is not None, cat.detector_reason
    assert (cat.detector.min_face, cat.crop_detector.min_face) == (pipeline.DEFAULT_MIN_FACE, None)
    assert pipeline.largest_face_detector("mtcnn").min_face is None  # the demo's own, from the same function
    assert sorted(built, key=str) == sorted([("mtcnn", pipeline.DEFAULT_MIN_FACE), ("mtcnn", None),
                                             ("mtcnn", None)], key=str)


def _raw_503(url: str) -> bytes:
    """What the server sends a connection it refuses at once (read until it closes)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        raw = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    return raw


def _headers(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in head)]


@needs_web
def test_the_connection_cap_503s_carry_the_headers_of_every_response(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.web.server as server_module
    from restorekit.web.app import SECURITY_HEADERS
    from restorekit.web.config import ServeConfig

    srv = server_module.start(ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"],
                                          temp_parent=tmp_path, max_connections=2, max_client_connections=1,
                                          header_timeout=5.0))
    port = int(srv.url.rsplit(":", 1)[1])
    expected = [(k.decode(), v.decode()) for k, v in SECURITY_HEADERS]
    try:
        status, headers, _ = request(srv.url, "GET", "/no-such-page")  # what every other response carries
        assert status == 404 and [(k, headers[k]) for k, _ in expected] == expected
        # One remote client over its share …
        monkeypatch.setattr(server_module, "client_key", lambda peer: "203.0.113.7")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            time.sleep(0.1)
            client_busy = _raw_503(srv.url)
        monkeypatch.undo()
        # … and one connection over the cap.
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.1)
            busy = _raw_503(srv.url)
        finally:
            for sock in held:
                sock.close()
        for raw, words in ((client_busy, "too many connections from your address"), (busy, "the server is busy")):
            assert raw.startswith(b"HTTP/1.1 503 "), raw
            assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"].startswith(words)
            got = _headers(raw)
            assert [h for h in got if h[0] in dict(expected)] == expected, got  # each once, as defined
            assert dict(got)["retry-after"] == "1" and dict(got)["x-frame-options"] == "DENY"
    finally:
        srv.stop()


@needs_web
def test_torch_compile_cache_stays_in_the_servers_folder(tmp_path: Path) -> None:
    """The LPIPS metric's set-up imports torchvision, which imports torch._dynamo, which makes torch's
    cache folder: it is in the server's folder, gone when the server stops, and TMPDIR is left empty."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('dynamo imported:', 'torch._dynamo' in sys.modules, file=sys.stderr))\n"
            "sys.argv = ['restorekit', 'serve', '--port', '0', '--methods', 'bicubic', '--metrics',"
            " 'psnr_y_crop,lpips_alex_v0.1', '-q']\n"
            "from restorekit.cli import main\n"
            "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("restorekit serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        assert get_json(line.split()[2], "/api/info")[0] == 200
        [folder] = tmp.glob("restorekit-serve-*")
        beside = sorted(p.name for p in tmp.iterdir() if p != folder)  # was ['torchinductor_USER']
        inside = (folder / "torchinductor").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    if "dynamo imported: True" not in err:
        pytest.skip("nothing imported torch._dynamo in this server (torchvision or the LPIPS metric absent)")
    assert beside == [] and inside  # torch's folder was in the server's …
    assert list(tmp.iterdir()) == []  # … and went with it


@needs_web
def test_the_torch_cache_setting_of_the_user_is_kept_and_ours_is_put_back(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.web.server import keep_torch_cache_in

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    put_back = keep_torch_cache_in(tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor")
    put_back()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/of/mine")
    put_back = keep_torch_cache_in(tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/of/mine"
    put_back()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/of/mine"


def test_building_the_command_line_imports_nothing_of_restorekit_web() -> None:
    code = ("import json, sys\n"
            "import restorekit.cli\n"
            "restorekit.cli.build_cli()\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'restorekit.web' or m.startswith('restorekit.web.'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    # The option's bound and the config's are one constant.
    from pydantic import ValidationError

    from restorekit.commands.serve import MAX_UPLOAD_MB, serve_cmd
    from restorekit.web.config import ServeConfig

    [opt] = [p for p in serve_cmd.params if p.name == "max_upload_mb"]
    assert opt.type.max == MAX_UPLOAD_MB  # type: ignore[attr-defined]
    assert ServeConfig(max_upload_mb=MAX_UPLOAD_MB).max_upload_mb == MAX_UPLOAD_MB
    with pytest.raises(ValidationError, match="max_upload_mb"):
        ServeConfig(max_upload_mb=MAX_UPLOAD_MB * 1.5)
