"""Helpers of the ``restorekit serve`` tests: a generated face, raw HTTP, waiting for a job."""

from __future__ import annotations

import http.client
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def generated_face(size: int = 64) -> Image.Image:
    """A drawn face (skin oval, hair, eyes, brows, nose, mouth on a gradient), the same every call."""
    s = size / 64
    rng = np.random.default_rng(0)
    bg = np.linspace(60, 200, size, dtype=np.float32)[None, :, None] * np.array([0.6, 0.7, 1.0], np.float32)
    arr = np.broadcast_to(bg, (size, size, 3)).copy() + rng.normal(0, 4, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    d.ellipse((12 * s, 4 * s, 52 * s, 40 * s), fill=(70, 45, 30))  # hair
    d.ellipse((15 * s, 10 * s, 49 * s, 58 * s), fill=(225, 180, 150))  # face
    for x in (24, 40):
        d.line(((x - 5) * s, 23 * s, (x + 4) * s, 22 * s), fill=(80, 50, 35), width=max(1, round(s)))
        d.ellipse(((x - 4) * s, 26 * s, (x + 4) * s, 31 * s), fill=(250, 250, 250))
        d.ellipse(((x - 2) * s, 27 * s, (x + 2) * s, 31 * s), fill=(60, 90, 140))
    d.line((32 * s, 30 * s, 30 * s, 40 * s, 34 * s, 41 * s), fill=(190, 130, 110), width=max(1, round(s)))
    d.arc((24 * s, 40 * s, 40 * s, 52 * s), 20, 160, fill=(170, 60, 70), width=max(1, round(2 * s)))
    return img.filter(ImageFilter.GaussianBlur(0.6 * s))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw request (the path is sent exactly as given: no normalisation of ``..``)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}) and \
                (headers or {}).get("Transfer-Encoding") != "chunked":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def resolve(page: str, ref: str) -> str:
    """The request path (with its query) of ``ref`` — a URL the page or the API gave, usually
    relative — as a browser on ``page`` resolves it."""
    parts = urlsplit(urljoin(page, ref))
    return parts.path + (f"?{parts.query}" if parts.query else "")


class PrefixProxy:
    """A reverse proxy on a free localhost port serving ``upstream`` under ``prefix`` (``/faces/``),
    as nginx's ``location /faces/ { proxy_pass http://upstream/; proxy_set_header Host $http_host; }``
    does: the prefix is stripped, the browser's ``Host`` and every other header go on unchanged, and a
    path outside the prefix is 404."""

    def __init__(self, upstream: str, prefix: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def forward(self) -> None:
                if not self.path.startswith(prefix):
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
                status, out_headers, out = request(upstream, self.command, "/" + self.path[len(prefix):], body,
                                                   headers)
                proxy.seen.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in out_headers.items():
                    if k not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = forward

        self.seen: list[tuple[str, str, int]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def post_json(url: str, path: str, payload: Any) -> tuple[int, Any]:
    status, _, body = request(url, "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def get_json(url: str, path: str) -> tuple[int, Any]:
    status, _, body = request(url, "GET", path)
    return status, json.loads(body)


def upload(url: str, data: bytes, name: str) -> tuple[int, Any]:
    status, _, body = request(url, "POST", "/api/uploads", data,
                              {"X-Filename": name, "Content-Type": "application/octet-stream"})
    return status, json.loads(body)


def wait_job(url: str, job_id: str, timeout: float = 60.0, until: Any = None) -> dict[str, Any]:
    """Poll a job until it is finished (or ``until(job)`` is true); fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        status, job = get_json(url, f"/api/jobs/{job_id}")
        assert status == 200, job
        if (until(job) if until is not None else job["finished"]):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} ({job['stage']}) after {timeout} s")
        time.sleep(0.05)


# Chromium's flags for a headless run as root on a machine without network: no sandbox (root),
# no GPU, and nothing that would try to reach Google's servers and wait for them.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions")


def find_chromium() -> tuple[str, str] | str:
    """``(browser, driver)`` paths of an installed Chromium and its chromedriver, or why there are none."""
    import shutil

    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the test extra: pip install -e '.[test]')"
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
                    if p), None)
    driver = next((p for p in (shutil.which("chromedriver"), "/usr/lib/chromium/chromedriver")
                   if p and Path(p).exists()), None)
    if browser is None or driver is None:
        return ("no Chromium with its chromedriver here (Debian: apt-get install chromium chromium-driver, "
                "which .ci/run does)")
    return browser, driver


def chromium_driver(browser: str, driver: str, profile: Path, size: tuple[int, int] = (1280, 1000)) -> Any:
    """A headless Chromium driven through the chromedriver of the same package (never downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
