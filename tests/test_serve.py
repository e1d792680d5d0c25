"""``restorekit serve`` at the HTTP level: the numbers it shows, bad inputs, file routes, guards, queue, cancel.

A real server (uvicorn on a free localhost port, in this process) answers raw HTTP requests; the
browser itself is driven in ``test_serve_browser.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import (PrefixProxy, generated_face, get_json, png, post_json, request, resolve, upload,  # noqa: E402
                           wait_job)

from restorekit.degradations import parse_spec  # noqa: E402
from restorekit.errors import RestorekitError  # noqa: E402
from restorekit.harness.inputs import degrade_hr  # noqa: E402
from restorekit.harness.runner import metric_states, score, setup_metrics  # noqa: E402
from restorekit.images import from_pil, to_pil  # noqa: E402
from restorekit.methods import build_method, keep_black_and_white  # noqa: E402
from restorekit.plugins import registry  # noqa: E402
from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.server import RunningServer, start  # noqa: E402

METRICS = ["psnr_y_crop", "ssim_y_crop", "lr_consistency"]
# PULSE on a tiny untrained StyleGAN2 that never reaches eps: a long job to follow and cancel.
TINY_PULSE = {"random_generator": "true", "steps": "100000", "eps": "0", "gaussian_fit_samples": "2000",
              "generator_options": json.dumps({"resolution": 32, "style_dim": 32, "n_mlp": 2, "channel_max": 16})}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    methods = registry().names("methods")
    opts = {"pulse": TINY_PULSE} if "stylegan2" in registry().names("generators") else {}
    cfg = ServeConfig(port=0, device="cpu", metrics=METRICS, method_options=opts, max_upload_mb=0.2,
                      max_pixels=300_000, max_output_pixels=2_000_000, temp_parent=tmp_path_factory.mktemp("serve"))
    srv = start(cfg)
    srv.methods = methods  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def face_upload(srv: RunningServer, size: int = 64) -> dict[str, Any]:
    status, up = upload(srv.url, png(generated_face(size)), "face.png")
    assert status == 201, up
    return up


def run_job(srv: RunningServer, settings: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    status, job = post_json(srv.url, "/api/jobs", settings)
    assert status == 202, job
    return wait_job(srv.url, job["id"], timeout)


def fetch(srv: RunningServer, url: str) -> tuple[int, dict[str, str], bytes]:
    """GET a URL the API gave (relative to the page, which is the server's root here)."""
    return request(srv.url, "GET", resolve(srv.url + "/", url))


# ------------------------------------------------------------------------------------------ catalogue


def test_info_lists_every_installed_method_with_the_reason_it_cannot_run(server: RunningServer) -> None:
    status, info = get_json(server.url, "/api/info")
    assert status == 200
    listed = {m["name"]: m for m in info["methods"]}
    assert sorted(listed) == sorted(registry().names("methods"))
    for name, m in listed.items():
        try:  # the method layer's own verdict, with the server's options
            build_method(name, dict(server.state.config.method_options.get(name, {})), "cpu")
        except RestorekitError as exc:
            assert (m["available"], m["reason"]) == (False, str(exc))
        else:
            assert (m["available"], m["reason"]) == (True, None)
    assert listed["bicubic"]["available"] and listed["pix2pixhd"]["available"]
    assert [x["name"] for x in info["metrics"]] == METRICS
    assert info["limits"]["max_upload_bytes"] == 200_000


# ------------------------------------------------------------------------------------------ numbers


def test_two_methods_give_the_harness_numbers_and_pngs_of_the_right_size(server: RunningServer) -> None:
    up = face_upload(server)
    job = run_job(server, {"upload": up["id"], "methods": ["bicubic", "pix2pixhd"], "scale": 4, "degrade": True})
    assert job["status"] == "done", job
    r = job["result"]
    assert [row["name"] for row in r["methods"]] == ["bicubic", "pix2pixhd"]
    roles = {i["role"]: i for i in r["images"]}
    assert (roles["lr"]["width"], roles["lr"]["height"]) == (16, 16)
    assert (roles["hr"]["width"], roles["hr"]["height"]) == (64, 64)
    # What compare would do with this HR: the same LR, restore, 8-bit rounding, harness metrics.
    hr0 = from_pil(generated_face(64))
    hr, lr = degrade_hr(hr0, parse_spec("bicubic:4"), 4, where="face.png")
    lr = from_pil(to_pil(lr))
    metrics = metric_states(METRICS)
    setup_metrics(metrics, torch.device("cpu"))
    for row in r["methods"]:
        assert row["status"] == "ok", row
        [out] = row["outputs"]
        status, headers, body = fetch(server, out["url"])
        assert status == 200 and headers["content-type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
        shown = Image.open(__import__("io").BytesIO(body))
        assert shown.size == (64, 64) == (out["width"], out["height"])
        with torch.no_grad():
            y = build_method(row["name"], {}, "cpu").restore(lr, 4)
        expected, _ = score(metrics, from_pil(to_pil(y)), hr, lr, 4, torch.device("cpu"))
        assert from_pil(shown).equal(from_pil(to_pil(y)))
        for name, value in expected.items():
            assert row["metrics"][name]["mean"] == pytest.approx(value, rel=1e-12), name
    # bicubic downscales back to nearly its own input; the learned method is better on SSIM here or not,
    # but both numbers are real: PSNR in a sane range.
    assert all(15 < row["metrics"]["psnr_y_crop"]["mean"] < 60 for row in r["methods"])
    # The JSON of the numbers holds the same numbers.
    status, headers, body = fetch(server, r["numbers"]["url"] + "?download=1")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["content-disposition"] == 'attachment; filename="face_x4_results.json"'
    numbers = json.loads(body)
    assert [m["metrics"] for m in numbers["methods"]] == [m["metrics"] for m in r["methods"]]
    assert [m["name"] for m in numbers["methods"]] == ["bicubic", "pix2pixhd"]
    assert numbers["backend"]["torch"] == torch.__version__


def test_a_black_and_white_face_comes_back_black_and_white(server: RunningServer) -> None:
    """psp_sr, a colour model, tints grey faces; the served output is grey, as run writes it."""
    status, up = upload(server.url, png(generated_face(64).convert("L").convert("RGB")), "grey.png")
    assert status == 201, up
    job = run_job(server, {"upload": up["id"], "methods": ["psp_sr"], "scale": 4, "degrade": True})
    assert job["status"] == "done", job
    [row] = job["result"]["methods"]
    assert row["status"] == "ok", row
    status, _, body = fetch(server, row["outputs"][0]["url"])
    y = from_pil(Image.open(io.BytesIO(body)))
    assert status == 200 and torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


@pytest.mark.parametrize("bits", [8, 16])
def test_a_jobs_outputs_are_those_of_the_float_image(server: RunningServer, bits: int) -> None:
    """The store holds an 8-bit upload as uint8 (a 16-bit one as uint16) and converts it when a job
    uses it: every output is bit for bit what the method makes of read_image_bytes' float32 image."""
    import io

    import numpy as np

    from restorekit.images import read_image_bytes

    if bits == 8:
        rng = np.random.default_rng(3)
        face = np.asarray(generated_face(48)).astype(np.int16) + rng.integers(-6, 7, (48, 48, 3))
        img = Image.fromarray(np.clip(face, 0, 255).astype(np.uint8), "RGB")
    else:
        gray = np.asarray(generated_face(48).convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(gray + np.random.default_rng(3).integers(0, 257, gray.shape).astype(np.uint16))
    data = png(img)
    status, up = upload(server.url, data, f"face{bits}.png")
    assert status == 201, up
    held = server.state.uploads.get(up["id"])
    assert held is not None and held.pixels.dtype == (torch.uint8 if bits == 8 else torch.uint16)
    x = read_image_bytes(data, "face.png")
    convention = (np.asarray(img, dtype=np.float32) / 255.0 if bits == 8 else  # README: "The image convention"
                  np.repeat((np.asarray(img, dtype=np.float32) / 65535.0)[..., None], 3, axis=2))
    assert torch.equal(x, torch.from_numpy(convention).permute(2, 0, 1)[None])
    methods = [m for m in ("bicubic", "pix2pixhd") if server.state.catalogue.methods[m].available]
    job = run_job(server, {"upload": up["id"], "methods": methods, "scale": 2})
    assert job["status"] == "done", job
    [lr] = [i for i in job["result"]["images"] if i["role"] == "lr"]
    assert Image.open(io.BytesIO(fetch(server, lr["url"])[2])).tobytes() == to_pil(x).tobytes()
    assert [row["name"] for row in job["result"]["methods"]] == methods and "bicubic" in methods
    for row in job["result"]["methods"]:
        assert row["status"] == "ok", row
        with torch.no_grad():
            m = build_method(row["name"], {}, "cpu")
            y = keep_black_and_white(m, x, m.restore(x, 2))  # the 16-bit face is grey: so are its outputs
        shown = Image.open(io.BytesIO(fetch(server, row["outputs"][0]["url"])[2]))
        assert shown.tobytes() == to_pil(y).tobytes(), row["name"]


def test_stochastic_samples_and_seed_reach_the_method(server: RunningServer) -> None:
    if not server.state.catalogue.methods.get("pulse") or not server.state.catalogue.methods["pulse"].available:
        pytest.skip("pulse cannot run here (no stylegan2 generator registered)")
    server.state.catalogue.methods["pulse"].method.options.steps = 3  # type: ignore[union-attr]
    try:
        up = face_upload(server, 32)
        job = run_job(server, {"upload": up["id"], "methods": ["pulse", "bicubic"], "scale": 4, "degrade": True,
                               "seed": 7, "samples": 2})
    finally:
        server.state.catalogue.methods["pulse"].method.options.steps = 100000  # type: ignore[union-attr]
    assert job["status"] == "done", job
    pulse, bicubic = job["result"]["methods"]
    assert (pulse["seed"], pulse["samples"], len(pulse["outputs"])) == (7, 2, 2)
    assert [r["seed"] for r in pulse["reports"]] == [7, 7] and [r["sample"] for r in pulse["reports"]] == [0, 1]
    assert pulse["metrics"]["psnr_y_crop"]["std"] is not None  # mean ± std over the samples
    # Each output's own values, from which the mean and std come; the time per output is what
    # best.runtime ranks (before, it ranked that while the JSON showed only the total).
    values = [o["metrics"]["psnr_y_crop"] for o in pulse["per_output"]]
    assert [o["output"] for o in pulse["per_output"]] == [0, 1] and values[0] != values[1]
    assert pulse["metrics"]["psnr_y_crop"]["mean"] == pytest.approx(sum(values) / 2, rel=1e-12)
    assert [o["metrics"] for o in bicubic["per_output"]] == [{m: bicubic["metrics"][m]["mean"] for m in METRICS}]
    assert pulse["ms_per_output"] == pytest.approx(pulse["ms"] / 2, abs=0.1)
    fastest = min((pulse, bicubic), key=lambda m: m["ms_per_output"])["name"]
    assert job["result"]["best"]["runtime"] == [fastest]
    assert (bicubic["seed"], bicubic["samples"], len(bicubic["outputs"])) == (None, 1, 1)
    assert bicubic["notes"] == ["bicubic is deterministic: one output"]


def test_photo_with_detect_outlines_faces_and_pastes_them_back(server: RunningServer) -> None:
    if server.state.catalogue.detector is None:
        pytest.skip(f"no face detector here: {server.state.catalogue.detector_reason}")
    pytest.importorskip("skimage")
    status, up = post_json(server.url, "/api/uploads/sample", {})
    assert status == 201 and (up["width"], up["height"]) == (512, 512)
    job = run_job(server, {"upload": up["id"], "methods": ["pix2pixhd"], "scale": 2, "faces": "detect",
                           "degrade": True})
    assert job["status"] == "done", job
    r = job["result"]
    roles = {i["role"]: i for i in r["images"]}
    assert (roles["faces"]["width"], roles["lr"]["width"], roles["hr"]["width"]) == (512, 256, 512)
    [row] = r["methods"]
    assert [f["action"] for f in row["faces"]] == ["restored"]
    assert (row["outputs"][0]["width"], len(row["crops"])) == (512, 1)
    assert row["crops"][0]["download"] == "astronaut_x2_pix2pixhd_face0.png"
    assert row["metrics"]["psnr_y_crop"]["mean"] > 20


# ------------------------------------------------------------------------------------------ bad inputs


def test_an_upload_over_the_byte_limit_is_refused_with_a_clear_message(server: RunningServer) -> None:
    big = os.urandom(250_000)
    status, _, body = request(server.url, "POST", "/api/uploads", big, {"X-Filename": "big.png"})
    assert (status, json.loads(body)["error"]) == (413, "big.png: 0.25 MB is over the upload limit of 0.20 MB "
                                                        "(restorekit serve --max-upload-mb raises it)")
    # Without a declared length (chunked), the server stops reading at the limit.
    chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in [big[i:i + 50_000] for i in range(0, 250_000, 50_000)])
    status, _, body = request(server.url, "POST", "/api/uploads", chunks + b"0\r\n\r\n",
                              {"X-Filename": "big.png", "Transfer-Encoding": "chunked"})
    assert (status, json.loads(body)["error"]) == (413, "big.png: more than the upload limit of 0.20 MB "
                                                        "(restorekit serve --max-upload-mb raises it)")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(server: RunningServer) -> None:
    status, err = upload(server.url, png(Image.new("RGB", (700, 700), "gray")), "wide.png")
    assert status == 400
    assert err["error"] == "wide.png: 700×700 = 0.5 MP exceeds the limit of 0.3 MP (raise it with --max-pixels)"


@pytest.mark.parametrize(("data", "name", "message"), [
    (b"just some notes\n", "notes.txt", "notes.txt: not an image in a format read here (PNG, JPEG, WEBP, BMP, TIFF, GIF)"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "x.eps",
     "x.eps: its format is EPS, which is not read here (image files may be PNG, JPEG, WEBP, BMP, TIFF, GIF)"),
    (b"", "empty.png", "empty.png: empty file (0 bytes)"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cut.png", None),
])
def test_a_non_image_is_refused_with_one_line(server: RunningServer, data: bytes, name: str, message: str | None) -> None:
    status, err = upload(server.url, data, "../../" + name)  # a path in the name is only a name
    assert status == 400
    assert err["error"] == message if message else err["error"].startswith(f"{name}: ")
    assert "\n" not in err["error"]


def tiff_with_float_strip_offsets() -> bytes:
    """A small TIFF whose StripOffsets tag is typed FLOAT: pillow opens it, then fails inside its
    decoder with a TypeError (not the OSError/ValueError a broken file usually gives)."""
    import struct

    buf = __import__("io").BytesIO()
    Image.new("RGB", (40, 30), "gray").save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 11)  # type FLOAT
    return bytes(data)


def test_an_upload_that_breaks_the_decoder_is_refused_with_one_line(server: RunningServer) -> None:
    status, headers, body = request(server.url, "POST", "/api/uploads", tiff_with_float_strip_offsets(),
                                    {"X-Filename": "odd.tif"})
    assert (status, headers["content-type"]) == (400, "application/json")
    err = json.loads(body)["error"]
    assert err.startswith("odd.tif: corrupt or truncated image (") and "\n" not in err
    assert face_upload(server)["width"] == 64  # and the next upload is read as usual


def test_bad_job_settings_are_refused_before_queueing(server: RunningServer) -> None:
    up = face_upload(server)
    base = {"upload": up["id"], "methods": ["bicubic"], "scale": 4}
    cases = [
        ({"methods": ["bicubc"]}, "unknown method 'bicubc' (did you mean 'bicubic'?)"),
        ({"scale": 0}, "scale: Input should be greater than or equal to 1"),
        ({"scale": 17}, "scale 17 is over this server's limit of 16 (restorekit serve --max-scale)"),
        ({"scale": 32, "degrade": False}, "scale 32 is over this server's limit of 16 (restorekit serve --max-scale)"),
        ({"degradation": "bicubic:4"}, "a degradation applies only when the page degrades the upload (degrade)"),
        ({"degrade": True, "degradation": "bicubic:2"}, "degradation 'bicubic:2' downsizes by 2, but the scale is 4"),
        ({"upload": "nope"}, "the upload is no longer held (the server keeps the last 16): choose the image again"),
        ({"scale": 16, "methods": ["bicubic"], "upload": face_upload(server, 128)["id"]},
         "face.png: its ×16 output would be 2048×2048 = 4.2 MP, over the output limit of 2.0 MP "
         "(lower --scale or raise --max-output-pixels)"),
        ({"wat": 1}, "wat: Extra inputs are not permitted"),
        # (read as 1 before: "scale": true ran ×1)
        ({"scale": True}, "scale: Value error, takes a number, not true or false"),
        ({"seed": False}, "seed: Value error, takes a number, not true or false"),
        ({"samples": True}, "samples: Value error, takes a number, not true or false"),
    ]
    unavailable = [m for m in server.state.catalogue.methods.values() if not m.available]
    if unavailable:
        cases.append(({"methods": ["bicubic", unavailable[0].name]},
                      f"{unavailable[0].name} cannot run here: {unavailable[0].reason}"))
    for change, message in cases:
        status, err = post_json(server.url, "/api/jobs", {**base, **change})
        assert (status, err["error"]) == (400, message)
    status, _, body = request(server.url, "POST", "/api/jobs", b"{not json", {"Content-Type": "application/json"})
    assert (status, json.loads(body)["error"]) == (400, "a job request is a JSON object")
    # Nested deeper than the JSON decoder recurses (RecursionError, not ValueError), within the size limit.
    status, _, body = request(server.url, "POST", "/api/jobs", b'{"upload": ' + b"[" * 50_000,
                              {"Content-Type": "application/json"})
    assert (status, json.loads(body)["error"]) == (400, "a job request is a JSON object")


# ------------------------------------------------------------------------------------------ behind a proxy


def test_the_page_works_at_a_sub_path_behind_a_proxy(server: RunningServer) -> None:
    """Every URL the page and the API hand out is relative, so a proxy may serve the page under a
    prefix (docs/serve.md): the assets, an upload, a job and its files all answer through it."""
    import re

    proxy = PrefixProxy(server.url, "/faces/")
    try:
        page = proxy.url + "/faces/"
        status, _, html = request(proxy.url, "GET", "/faces/")
        assert status == 200 and b"<html" in html
        assets = re.findall(r'(?:href|src)="([^"#]+)"', html.decode())
        assert sorted(assets) == ["static/app.js", "static/style.css"]
        for ref in assets:
            status, _, body = request(proxy.url, "GET", resolve(page, ref))
            assert status == 200 and body, ref
        script = request(proxy.url, "GET", resolve(page, "static/app.js"))[2].decode()
        # The script asks for its API relative to the page too: no path from the server's root.
        assert re.findall(r"""api\((["'`])/""", script) == [] and "sendUpload(\"/" not in script
        assert len(re.findall(r"""api\((["'`])api/""", script)) >= 4

        status, _, body = request(proxy.url, "POST", resolve(page, "api/uploads"), png(generated_face(64)),
                                  {"X-Filename": "face.png", "Content-Type": "application/octet-stream",
                                   "Origin": proxy.url})
        up = json.loads(body)
        assert status == 201, up
        status, _, body = request(proxy.url, "POST", resolve(page, "api/jobs"),
                                  json.dumps({"upload": up["id"], "methods": ["bicubic"], "scale": 4,
                                              "degrade": True}).encode(),
                                  {"Content-Type": "application/json", "Origin": proxy.url})
        job = json.loads(body)
        assert status == 202, job
        job = wait_job(server.url, job["id"])
        assert job["status"] == "done", job
        status, _, body = request(proxy.url, "GET", resolve(page, f"api/jobs/{job['id']}"))
        assert status == 200 and json.loads(body)["status"] == "done"
        urls = [up["preview"], job["result"]["numbers"]["url"]] + [i["url"] for i in job["result"]["images"]]
        urls += [o["url"] for row in job["result"]["methods"] for o in row["outputs"]]
        for url in urls:
            path = resolve(page, url)
            assert path.startswith("/faces/files/"), url
            status, _, body = request(proxy.url, "GET", path)
            assert status == 200 and body, url
        assert all(path.startswith("/faces/") for _, path, _ in proxy.seen)
    finally:
        proxy.close()


# ------------------------------------------------------------------------------------------ files and guards


def test_files_are_reached_only_by_their_opaque_ids(server: RunningServer) -> None:
    up = face_upload(server)
    status, headers, body = fetch(server, up["preview"])
    assert status == 200 and body[:4] == b"\x89PNG" and headers["x-content-type-options"] == "nosniff"
    token = up["preview"].rsplit("/", 1)[1]
    root = server.state.files.root
    secret = root.parent / "secret.txt"
    secret.write_text("root:x:0:0")
    attempts = ["/files/../../../../etc/passwd", "/files/..%2F..%2F..%2Fetc%2Fpasswd", "/files/%2e%2e/secret.txt",
                f"/files/{token}/../../secret.txt", "/files/" + "." * 24, "/files/" + "a" * 24,
                f"/files/{token[:-1]}", f"/files/{root}/u1/1.png", "/files/..\\..\\secret.txt",
                "/static/../web/app.py", "/static/app.py", "/static/%2e%2e%2fapp.py", "/files/", "/files",
                f"/static/{token}", "//etc/passwd", "/../../etc/passwd", f"/files/{token}%00.png"]
    for path in attempts:
        status, _, body = request(server.url, "GET", path)
        assert status in (400, 404), path
        assert b"root:" not in body and b"import" not in body, path
    assert fetch(server, f"/files/{token}")[0] == 200


def test_a_foreign_host_or_origin_is_refused(server: RunningServer) -> None:
    status, _, body = request(server.url, "GET", "/api/info", headers={"Host": "evil.example"})
    assert status == 400 and "is not this machine" in json.loads(body)["error"]
    status, _, body = request(server.url, "POST", "/api/uploads", png(generated_face()),
                              {"Origin": "http://evil.example", "X-Filename": "f.png"})
    assert status == 403 and json.loads(body)["error"] == "request refused: it comes from another site (http://evil.example)"
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
        assert request(server.url, "GET", "/api/info", headers={"Host": host})[0] == 200, host


def test_behind_an_https_proxy_the_origin_may_be_https_but_must_still_be_the_allowed_host(tmp_path: Path) -> None:
    """docs/serve.md's reverse proxy: the browser is on https://faces.example.org, the proxy forwards
    its Host (faces.example.org, allowed with --allow-host) to the server on 127.0.0.1 over HTTP.
    The Origin's scheme may be https, but its host[:port] must still be the request's allowed Host."""
    cfg = ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], max_upload_mb=0.2,
                      allowed_hosts=["faces.example.org"], temp_parent=tmp_path)
    srv = start(cfg)
    try:
        def post(host: str, origin: str) -> tuple[int, Any]:
            status, _, body = request(srv.url, "POST", "/api/uploads", png(generated_face(32)),
                                      {"Host": host, "Origin": origin, "X-Filename": "face.png"})
            return status, json.loads(body)

        for host, origin in (("faces.example.org", "https://faces.example.org"),
                             ("faces.example.org", "http://faces.example.org"),
                             ("faces.example.org:8443", "https://faces.example.org:8443"),
                             ("Faces.Example.org", "https://faces.example.org")):
            status, up = post(host, origin)
            assert status == 201 and up["width"] == 32, (host, origin, up)
        port = srv.url.rsplit(":", 1)[1]
        assert post(f"localhost:{port}", f"https://localhost:{port}")[0] == 201
        # Still refused: another site's page, an opaque origin, another port, a scheme that is not the web's.
        for origin in ("https://evil.example", "https://evil.example.org", "https://faces.example.org.evil.example",
                       "https://faces.example.org:8443", "null", "ftp://faces.example.org",
                       "https://user@faces.example.org", "https://faces.example.org/", "https://"):
            status, body = post("faces.example.org", origin)
            assert status == 403 and body["error"] == f"request refused: it comes from another site ({origin})", origin
        # A Host that is neither allowed nor this machine is refused before the Origin is looked at.
        for host, origin in (("evil.example", "https://evil.example"), ("rebind.example", "http://rebind.example"),
                             ("faces.example.org.evil.example", "https://faces.example.org.evil.example")):
            status, body = post(host, origin)
            assert status == 400 and "is not this machine" in body["error"], (host, origin)
        assert len(srv.state.uploads._uploads) == 5  # only the accepted ones were decoded and kept
    finally:
        srv.stop()


def test_outputs_are_written_only_in_the_servers_temporary_folder(server: RunningServer, rk_home: Path) -> None:
    parent = server.state.files.root.parent
    before_home = sorted(p for p in rk_home.rglob("*"))
    before = {p for p in parent.rglob("*") if server.state.files.root not in p.parents and p != server.state.files.root}
    up = face_upload(server)
    run_job(server, {"upload": up["id"], "methods": ["bicubic", "pix2pixhd"], "scale": 2, "degrade": True})
    after = {p for p in parent.rglob("*") if server.state.files.root not in p.parents and p != server.state.files.root}
    assert after == before
    assert sorted(p for p in rk_home.rglob("*")) == before_home
    assert any(server.state.files.root.rglob("*.png"))


# ------------------------------------------------------------------------------------------ queue and cancel


def test_jobs_wait_their_turn_and_cancel_really_stops_pulse(server: RunningServer) -> None:
    pulse = server.state.catalogue.methods.get("pulse")
    if pulse is None or not pulse.available:
        pytest.skip("pulse cannot run here (no stylegan2 generator registered)")
    up = face_upload(server, 32)
    status, long = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic", "pulse"], "scale": 4,
                                                       "degrade": True})
    assert status == 202
    status, waiting = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 4})
    assert status == 202
    running = wait_job(server.url, long["id"], 60, until=lambda j: j["stage"].startswith("pulse") and j["step"][0] >= 3)
    assert running["status"] == "running" and running["stage"].startswith("pulse 1/1 try 1")
    assert running["step"][1] == 100000
    assert [m["name"] for m in running["result"]["methods"]] == ["bicubic"]  # finished methods show at once
    assert get_json(server.url, f"/api/jobs/{waiting['id']}")[1]["position"] == 1  # one job at a time
    later = wait_job(server.url, long["id"], 60, until=lambda j: j["step"][0] > running["step"][0])
    assert later["step"][0] > running["step"][0]  # progress moves
    t0 = time.monotonic()
    status, _ = post_json(server.url, f"/api/jobs/{long['id']}/cancel", {})
    assert status == 200
    done = wait_job(server.url, long["id"], 30)
    assert time.monotonic() - t0 < 10
    assert done["status"] == "cancelled" and done["error"] is None
    assert [(m["name"], m["status"]) for m in done["result"]["methods"]] == [("bicubic", "ok"), ("pulse", "cancelled")]
    numbers = json.loads(fetch(server, done["result"]["numbers"]["url"])[2])
    assert [m["status"] for m in numbers["methods"]] == ["ok", "cancelled"]
    # The queue goes on with the next job.
    assert wait_job(server.url, waiting["id"], 30)["status"] == "done"


def test_a_method_that_calls_sys_exit_fails_alone_and_the_queue_goes_on(server: RunningServer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def exits(*args: Any, **kwargs: Any) -> Any:
        sys.exit(3)

    monkeypatch.setattr(server.state.catalogue.methods["bicubic"].method, "restore", exits)
    up = face_upload(server)
    job = run_job(server, {"upload": up["id"], "methods": ["bicubic", "pix2pixhd"], "scale": 2}, timeout=30)
    assert job["status"] == "done", job
    failed, ok = job["result"]["methods"]
    assert (failed["name"], failed["status"], ok["name"], ok["status"]) == ("bicubic", "failed", "pix2pixhd", "ok")
    assert failed["error"] == "SystemExit(3): the plugin tried to end the program"
    monkeypatch.undo()
    assert run_job(server, {"upload": up["id"], "methods": ["bicubic"], "scale": 2}, timeout=30)["status"] == "done"


def test_an_output_that_breaks_the_image_convention_fails_its_row(server: RunningServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """As in run and compare: a [0, 255] output is that method's failure, named, not shown as a result."""
    entry = server.state.catalogue.methods["bicubic"].method
    plain = entry.restore
    monkeypatch.setattr(entry, "restore", lambda *a, **k: plain(*a, **k) * 255)
    up = face_upload(server)
    job = run_job(server, {"upload": up["id"], "methods": ["bicubic", "pix2pixhd"], "scale": 2}, timeout=30)
    failed, ok = job["result"]["methods"]
    assert (failed["name"], failed["status"], ok["status"]) == ("bicubic", "failed", "ok"), job
    assert re.fullmatch(r"bicubic: restore returned values from [\d.]+ to 2\d\d; images are in \[0, 1\] .*",
                        failed["error"]), failed["error"]


def test_a_waiting_job_is_cancelled_at_once(server: RunningServer) -> None:
    gate = server.state.catalogue.lock
    up = face_upload(server)
    with gate:  # hold the worker: jobs wait
        status, first = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 2})
        status, second = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 2})
        assert get_json(server.url, f"/api/jobs/{second['id']}")[1]["position"] == 1
        status, cancelled = post_json(server.url, f"/api/jobs/{second['id']}/cancel", {})
        assert cancelled["status"] == "cancelled" and cancelled["finished"]
    assert wait_job(server.url, first["id"])["status"] == "done"
    assert get_json(server.url, f"/api/jobs/{second['id']}")[1]["result"] == {}


def test_the_queue_refuses_more_waiting_jobs_than_its_limit(server: RunningServer) -> None:
    up = face_upload(server)
    settings = {"upload": up["id"], "methods": ["bicubic"], "scale": 2}
    limit = server.state.config.max_queue
    with server.state.catalogue.lock:  # the worker takes the first job and waits for the lock
        first = post_json(server.url, "/api/jobs", settings)[1]
        wait_job(server.url, first["id"], 10, until=lambda j: j["status"] == "running")
        waiting = [post_json(server.url, "/api/jobs", settings) for _ in range(limit)]
        assert [status for status, _ in waiting] == [202] * limit
        assert [get_json(server.url, f"/api/jobs/{j['id']}")[1]["position"] for _, j in waiting] == list(range(1, limit + 1))
        status, refused = post_json(server.url, "/api/jobs", settings)
        assert (status, refused["error"]) == (429, f"{limit} jobs are already waiting; try again when one has finished")
    for job in [first, *(j for _, j in waiting)]:
        assert wait_job(server.url, job["id"])["status"] == "done"


# ------------------------------------------------------------------------------------------ the command


def test_serve_binds_localhost_by_default_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "restorekit", "serve", "--port", "0", "--methods", "bicubic",
                             "--metrics", "psnr_y_crop", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("restorekit serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[2]
        port = int(url.rsplit(":", 1)[1])
        status, info = get_json(url, "/api/info")
        assert status == 200 and [m["name"] for m in info["methods"]] == ["bicubic"]
        if Path("/proc/net/tcp").exists():  # listening (state 0A) on 127.0.0.1 only
            rows = [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
            assert [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port] == [f"0100007F:{port:04X}"]
        assert len(list(tmp_path.glob("restorekit-serve-*"))) == 1
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert list(tmp_path.glob("restorekit-serve-*")) == []


def test_allow_host_adds_a_name_the_server_answers_to(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "restorekit", "serve", "--port", "0", "--methods", "bicubic",
                             "--metrics", "psnr_y_crop", "--allow-host", "Box.Local", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("restorekit serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[2]
        port = url.rsplit(":", 1)[1]
        assert request(url, "GET", "/api/info", headers={"Host": f"box.local:{port}"})[0] == 200
        assert request(url, "GET", "/api/info", headers={"Host": f"other.local:{port}"})[0] == 400
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_the_core_works_without_the_web_extra_and_serve_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] in ('starlette', 'uvicorn') else real(n, *a)\n"
        "sys.argv = ['restorekit', 'serve']\n"
        "from restorekit.cli import main\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: restorekit serve needs the web extra: pip install 'restorekit[web]' (missing: starlette, uvicorn)"]


def test_serve_usage_errors_are_one_line(rk_cli: Any) -> None:
    import socket

    result = rk_cli("serve", "--methods", "bicubc", "--port", "0")
    assert result.exit_code == 2 and "unknown method 'bicubc' (did you mean 'bicubic'?)" in result.output
    result = rk_cli("serve", "--methods", "bicubic", "--opt", "pulse.steps=3", "--port", "0")
    assert result.exit_code == 2 and "--opt 'pulse.steps=3': method 'pulse' is not in --methods" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = rk_cli("serve", "--methods", "bicubic", "--metrics", "psnr_y_crop", "--port", str(port), "-q")
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use (choose another --port; 0 picks a free one)" \
        in result.output


def test_a_url_with_a_trailing_slash_is_a_json_404_not_a_redirect(server: RunningServer) -> None:
    """Starlette's redirect is an absolute URL made from the Host: behind a proxy under a path
    prefix it would lose the prefix and https."""
    for method, path in (("GET", "/api/info/"), ("POST", "/api/jobs/")):
        status, headers, body = request(server.url, method, path)
        assert status == 404 and "location" not in headers, (path, status, headers)
        assert "error" in json.loads(body)


def test_the_temporary_folder_goes_however_the_wait_for_the_running_job_ends(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C (or a TERM) while the server waits for its running job had skipped the
    deletion, leaving the users' uploads behind; the wait is announced first."""
    from restorekit.web.server import build_state

    state = build_state(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], temp_parent=tmp_path))
    root = state.files.root
    assert root.is_dir()

    def cut_short() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(state.queue, "close", cut_short)
    monkeypatch.setattr(state.queue, "busy", lambda: True)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        state.close(said.append)
    assert not root.exists()
    assert said == ["waiting for the running job to stop at its next step (Ctrl-C again: quit at once)"]


def test_a_state_that_fails_to_build_leaves_no_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.web.server as server_module

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RestorekitError("refused")

    monkeypatch.setattr(server_module, "UploadStore", refuse)
    with pytest.raises(RestorekitError, match="refused"):
        server_module.build_state(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"],
                                              temp_parent=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "200000"])
def test_an_upload_limit_that_is_not_a_finite_size_is_a_usage_error(rk_cli: Any, value: str) -> None:
    result = rk_cli("serve", "--methods", "bicubic", "--port", "0", "--max-upload-mb", value)
    assert result.exit_code == 2, result.output
    assert "max-upload-mb" in result.output or "max_upload_mb" in result.output
    assert "unexpected" not in result.output


def test_what_reading_an_upload_warns_about_is_told_to_the_page(server: RunningServer,
                                                               capfd: pytest.CaptureFixture) -> None:
    """A profile that cannot be applied is a note in the upload's JSON, every time and for each
    user, not one line on the server's stderr once per file name."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, "PNG", icc_profile=b"not an icc profile at all" * 8)
    capfd.readouterr()
    for _ in range(2):
        status, up = upload(server.url, buf.getvalue(), "tagged.png")
        assert status == 201, up
        assert up["notes"] == ["tagged.png: its ICC profile is damaged and not applied; colours taken as sRGB"]
    assert "ICC" not in capfd.readouterr().err
    assert face_upload(server)["notes"] == []
