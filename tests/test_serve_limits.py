"""``restorekit serve`` against clients that send slowly, nothing, or a lot at once (docs/serve.md,
"Limits on connections"): the connection cap, the header and body deadlines, the upload slots, files
streamed from disk, jobs that hold their upload, a queue that cancelled jobs leave, and the small
protocol details (Allow, Retry-After, a Host with userinfo, X-Forwarded-* not read).

One server with tiny limits (fractions of a second) answers in this process; each test is quick.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from serve_helpers import generated_face, get_json, png, post_json, request, upload, wait_job  # noqa: E402

from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.jobs import Job, JobQueue, JobSettings  # noqa: E402
from restorekit.web.server import RunningServer, start  # noqa: E402

LIMITS = dict(max_connections=4, header_timeout=0.5, write_timeout=0.5, body_timeout=0.5, body_min_rate_kb=1.0, body_max_time=2.0,
              max_concurrent_uploads=1, upload_wait=0.3, keep_uploads=1, max_queue=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], max_upload_mb=0.2,
                      temp_parent=tmp_path_factory.mktemp("serve"), **LIMITS)
    srv = start(cfg)
    yield srv
    srv.stop()


class ErrorLog(logging.Handler):
    """What uvicorn logs at WARNING or above while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def uvicorn_log() -> Any:
    handler = ErrorLog()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def port_of(srv: RunningServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def connect(srv: RunningServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def quiet(srv: RunningServer, timeout: float = 5.0) -> None:
    """Wait until the server holds no connection (a test's leftovers are closed by the deadlines)."""
    deadline = time.monotonic() + timeout
    while srv._server.server_state.connections:
        assert time.monotonic() < deadline, "connections left open"
        time.sleep(0.02)


def closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.05,
                 timeout: float = 5.0) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (sending ``trickle`` every ``every`` s meanwhile) and what it sent."""
    t0 = time.monotonic()
    got = b""
    sock.settimeout(every)
    while time.monotonic() - t0 < timeout:
        if trickle:
            try:
                sock.send(trickle)
            except OSError:
                pass
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
    return time.monotonic() - t0, got


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def headers_of(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and a body of its Content-Length) from ``sock``."""
    sock.settimeout(5)
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < int(
            headers_of(raw).get("content-length", "0")):
        data = sock.recv(65536)
        assert data, raw
        raw += data
    return raw


def host(srv: RunningServer) -> bytes:
    return f"127.0.0.1:{port_of(srv)}".encode()


# ------------------------------------------------------------------------------------------ connections


def test_one_connection_over_the_cap_is_answered_503_at_once_and_idle_ones_close_at_the_header_deadline(
        server: RunningServer, uvicorn_log: list[logging.LogRecord]) -> None:
    quiet(server)
    idle = [connect(server) for _ in range(LIMITS["max_connections"])]
    try:
        time.sleep(0.1)
        extra = connect(server)
        elapsed, raw = closed_after(extra)
        assert status_of(raw) == 503 and elapsed < 0.4, raw
        assert headers_of(raw)["retry-after"] == "1"
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"].startswith("the server is busy (4 connections")
        for sock in idle:  # nothing sent: closed at the header deadline, without an answer
            elapsed, raw = closed_after(sock)
            assert raw == b"" and elapsed < 2.0
    finally:
        for sock in idle:
            sock.close()
    assert get_json(server.url, "/api/info")[0] == 200
    assert not [r for r in uvicorn_log if r.levelno >= logging.ERROR]


def test_one_client_holds_at_most_its_share_of_the_connections(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """max_client_connections: one more from the same remote client is answered 503 at once, and
    its connections count again once closed (loopback peers are not counted: here every
    connection is made to count as one remote client's)."""
    import restorekit.web.server as server_module

    monkeypatch.setattr(server_module, "client_key", lambda peer: "203.0.113.7")
    cfg = ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], temp_parent=tmp_path,
                      **{**LIMITS, "max_connections": 6, "max_client_connections": 2, "header_timeout": 5.0})
    srv = start(cfg)
    try:
        held = [connect(srv) for _ in range(2)]
        time.sleep(0.1)
        elapsed, raw = closed_after(connect(srv))
        assert status_of(raw) == 503 and elapsed < 0.4, raw
        assert headers_of(raw)["retry-after"] == "1"
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"].startswith(
            "too many connections from your address (2 at once)")
        for sock in held:
            sock.close()
        quiet(srv)
        assert get_json(srv.url, "/api/info")[0] == 200  # closed ones no longer count
    finally:
        srv.stop()


def test_client_key_counts_remote_clients_not_this_machine() -> None:
    from restorekit.web.server import client_key

    assert client_key(("203.0.113.7", 5000)) == client_key(("203.0.113.7", 6000)) == "203.0.113.7"
    assert client_key(("::ffff:203.0.113.7", 1, 0, 0)) == "203.0.113.7"
    assert client_key(("2001:db8::1", 1, 0, 0)) == client_key(("2001:db8::ffff:2", 1, 0, 0)) == "2001:db8::/64"
    assert client_key(("2001:db8:0:1::1", 1, 0, 0)) != "2001:db8::/64"
    for own in (("127.0.0.1", 1), ("127.8.0.1", 1), ("::1", 1, 0, 0), ("::ffff:127.0.0.1", 1, 0, 0), None, "/run/s"):
        assert client_key(own) is None, own


def test_a_thousand_idle_connections_leave_the_server_answering(server: RunningServer,
                                                                 uvicorn_log: list[logging.LogRecord]) -> None:
    """The audit's 1100 idle sockets exhausted file descriptors (170 000 tracebacks); now all but the
    cap are closed as they come, and once the deadline has closed the rest the server answers."""
    quiet(server)
    socks = []
    try:
        for _ in range(300):
            socks.append(connect(server))
        # Each one over the cap is closed as it comes; the server forgets it on its loop's next turn.
        deadline = time.monotonic() + 3
        while len(server._server.server_state.connections) > LIMITS["max_connections"] + 1 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(server._server.server_state.connections) <= LIMITS["max_connections"] + 1
        time.sleep(LIMITS["header_timeout"] + 0.3)  # the last ones accepted are closed by the deadline
        quiet(server)
        assert get_json(server.url, "/api/info")[0] == 200
    finally:
        for sock in socks:
            sock.close()
    assert not [r for r in uvicorn_log if r.levelno >= logging.ERROR]


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(server: RunningServer) -> None:
    quiet(server)
    sock = connect(server, b"GET /api/info HTTP/1.1\r\nHost: " + host(server) + b"\r\n")
    try:
        elapsed, raw = closed_after(sock, trickle=b"X")  # a header that never ends
        assert raw == b"" and 0.4 < elapsed < 2.0
    finally:
        sock.close()


def test_a_kept_alive_connection_gets_a_new_header_deadline_after_each_response(server: RunningServer) -> None:
    quiet(server)
    get = b"GET /api/info HTTP/1.1\r\nHost: " + host(server) + b"\r\n\r\n"
    sock = connect(server, get)
    try:
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /api/info HTTP/1.1\r\n")  # the next request starts, then trickles
        elapsed, raw = closed_after(sock, trickle=b"X")
        assert raw == b"" and elapsed < 2.0
    finally:
        sock.close()


def test_x_forwarded_headers_are_not_read(server: RunningServer) -> None:
    config = server._server.config
    assert config.proxy_headers is False
    assert type(config.loaded_app).__name__ != "ProxyHeadersMiddleware"


# ------------------------------------------------------------------------------------------ bodies


def post_head(srv: RunningServer, path: str, length: int, name: str = "slow.png") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port_of(srv)}\r\nContent-Length: {length}\r\n"
            f"X-Filename: {name}\r\n\r\n").encode()


@pytest.mark.parametrize("path", ["/api/uploads", "/api/jobs"])
def test_a_body_that_stalls_is_answered_408(server: RunningServer, path: str) -> None:
    quiet(server)
    sock = connect(server, post_head(server, path, 1000) + b"x" * 100)
    try:
        elapsed, raw = closed_after(sock)
        assert status_of(raw) == 408 and elapsed < 2.0, raw
        assert "request body too slow" in json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    finally:
        sock.close()


def test_a_body_that_trickles_below_the_minimum_rate_is_answered_408(server: RunningServer) -> None:
    quiet(server)
    sock = connect(server, post_head(server, "/api/uploads", 100_000))
    try:  # 1 byte every 50 ms: 20 B/s, under 1 KB/s; never a pause of body_timeout
        elapsed, raw = closed_after(sock, trickle=b" ")
        assert status_of(raw) == 408 and elapsed < 2.0, raw
    finally:
        sock.close()


def test_a_body_over_its_time_limit_is_answered_408_however_fast_it_comes(server: RunningServer) -> None:
    quiet(server)
    sock = connect(server, post_head(server, "/api/uploads", 150_000))
    try:  # 100 B every 50 ms: 2 KB/s, over the minimum rate, but 150 KB would take 75 s (limit 2 s)
        elapsed, raw = closed_after(sock, trickle=b" " * 100)
        assert status_of(raw) == 408 and 1.5 < elapsed < 3.5, (elapsed, raw)
    finally:
        sock.close()


def test_a_slow_but_steady_upload_is_accepted(server: RunningServer) -> None:
    quiet(server)
    data = png(generated_face(32))
    sock = connect(server, post_head(server, "/api/uploads", len(data), "face.png"))
    try:
        for i in range(0, len(data), 400):  # ~4 KB/s with pauses of 0.1 s: a slow real link
            sock.sendall(data[i:i + 400])
            time.sleep(0.1)
        raw = read_response(sock)
        assert status_of(raw) == 201, raw
    finally:
        sock.close()


def test_a_client_that_goes_away_mid_upload_is_dropped_without_a_traceback(
        server: RunningServer, uvicorn_log: list[logging.LogRecord]) -> None:
    quiet(server)
    sock = connect(server, post_head(server, "/api/uploads", 50_000) + b"x" * 1000)
    time.sleep(0.1)
    sock.close()
    quiet(server)
    time.sleep(0.2)
    assert [r.getMessage() for r in uvicorn_log] == []
    assert upload(server.url, png(generated_face(32)), "face.png")[0] == 201  # the upload slot was let go


def test_a_slow_sender_does_not_hold_up_the_uploads_of_others(server: RunningServer) -> None:
    """The turn used to be taken before the body was read: two slow links held every other upload off."""
    quiet(server)
    data = png(generated_face(32))
    first = connect(server, post_head(server, "/api/uploads", len(data), "first.png") + data[:100])
    try:
        time.sleep(0.1)  # the first's body still coming
        t0 = time.monotonic()
        assert upload(server.url, data, "second.png")[0] == 201
        assert time.monotonic() - t0 < 0.25  # no wait for the slow one
        first.sendall(data[100:])
        assert status_of(read_response(first)) == 201
    finally:
        first.close()


def test_only_so_many_uploads_are_decoded_at_once_the_next_is_told_to_retry(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    quiet(server)
    data = png(generated_face(32))
    release, started = threading.Event(), threading.Event()
    real = server.state.uploads.accept

    def slow_accept(body: bytes, name: str) -> Any:
        if name == "first.png":
            started.set()
            release.wait(5)
        return real(body, name)

    monkeypatch.setattr(server.state.uploads, "accept", slow_accept)
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(upload(server.url, data, "first.png")[0]))
    t.start()
    try:
        assert started.wait(5)  # the first holds the only turn, decoding
        t0 = time.monotonic()
        status, headers, body = request(server.url, "POST", "/api/uploads", data, {"X-Filename": "second.png"})
        assert (status, headers.get("retry-after")) == (503, "2"), body
        assert 0.25 < time.monotonic() - t0 < 2.0  # it waited upload_wait for a turn
        assert json.loads(body)["error"] == ("second.png: the server is busy decoding 1 other upload(s); "
                                             "try again in a moment")
    finally:
        release.set()
        t.join(10)
    assert results == [201]
    assert upload(server.url, data, "third.png")[0] == 201


def test_a_declared_length_over_the_limit_is_refused_without_waiting_for_a_slot(server: RunningServer) -> None:
    quiet(server)
    status, _, body = request(server.url, "POST", "/api/uploads", b"x" * 300_000, {"X-Filename": "big.png"})
    assert status == 413 and "over the upload limit" in json.loads(body)["error"]


# ------------------------------------------------------------------------------------------ files


def test_files_are_streamed_from_disk_with_the_same_headers(server: RunningServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    quiet(server)
    status, up = upload(server.url, png(generated_face(48)), "face.png")
    assert status == 201
    stored = server.state.files.get(up["preview"].split("/")[1])
    expected = stored.path.read_bytes()

    def whole(self: Path) -> bytes:
        raise AssertionError("a download must not read the whole file into memory")

    monkeypatch.setattr(Path, "read_bytes", whole)
    status, headers, body = request(server.url, "GET", "/" + up["preview"] + "?download=1")
    assert status == 200 and body == expected
    assert headers["content-length"] == str(len(expected)) and headers["content-type"] == "image/png"
    assert headers["content-disposition"] == 'attachment; filename="face.png"'
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    status, headers, body = request(server.url, "HEAD", "/" + up["preview"])
    assert (status, body, headers["content-length"]) == (200, b"", str(len(expected)))
    monkeypatch.undo()
    stored.path.unlink()  # gone from disk (its job was deleted meanwhile): 404, not a 500
    status, _, body = request(server.url, "GET", "/" + up["preview"])
    assert status == 404 and json.loads(body)["error"] == "no such file (it was deleted with its job)"


def test_a_client_that_never_reads_its_download_is_dropped(server: RunningServer) -> None:
    """A download the client does not read held its connection (one of the capped few) forever."""
    quiet(server)
    status, up = upload(server.url, png(generated_face(48)), "face.png")
    assert status == 201
    stored = server.state.files.get(up["preview"].split("/")[1])
    size = 32 * 2**20  # more than the kernel's buffers on both sides hold
    stored.path.write_bytes(b"\0" * size)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port_of(server)))
    try:
        sock.sendall(b"GET /" + up["preview"].encode() + b" HTTP/1.1\r\nHost: " + host(server) + b"\r\n\r\n")
        time.sleep(LIMITS["write_timeout"] + 1.5)  # not reading: the server's buffer fills, then it waits
        got, t0, reset = 0, time.monotonic(), False
        try:
            while chunk := sock.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            reset = True
        assert got < size and time.monotonic() - t0 < 5  # cut off, not sent whole
        # Reset, not closed: a close left the unread megabytes queued in the kernel (FIN-WAIT-1),
        # and the client read a body shorter than its Content-Length as if it had ended.
        assert reset
    finally:
        sock.close()
    quiet(server)


# ------------------------------------------------------------------------------------------ jobs


def test_a_waiting_job_keeps_its_upload_when_newer_uploads_push_it_out(server: RunningServer) -> None:
    quiet(server)
    first = upload(server.url, png(generated_face(32)), "first.png")[1]
    settings = {"upload": first["id"], "methods": ["bicubic"], "scale": 2}
    with server.state.catalogue.lock:  # the worker waits: the jobs wait with it
        running = post_json(server.url, "/api/jobs", settings)[1]
        waiting = post_json(server.url, "/api/jobs", settings)[1]
        for _ in range(3):  # keep_uploads=1: the first upload is pushed out of the store
            assert upload(server.url, png(generated_face(40)), "newer.png")[0] == 201
        assert server.state.uploads.get(first["id"]) is None
    for job in (running, waiting):
        done = wait_job(server.url, job["id"])
        assert (done["status"], done["error"]) == ("done", None)
        assert done["result"]["input"]["name"] == "first.png" and done["result"]["input"]["width"] == 32
        assert server.state.queue.get(job["id"]).upload is None  # a finished job lets its pixels go
    status, refused = post_json(server.url, "/api/jobs", settings)  # a new job: the upload is gone
    assert status == 400 and refused["error"].startswith("the upload is no longer held")


def test_a_full_queue_says_when_to_retry(server: RunningServer) -> None:
    quiet(server)
    up = upload(server.url, png(generated_face(32)), "face.png")[1]
    settings = {"upload": up["id"], "methods": ["bicubic"], "scale": 2}
    with server.state.catalogue.lock:
        jobs = [post_json(server.url, "/api/jobs", settings)[1]]
        wait_job(server.url, jobs[0]["id"], 10, until=lambda j: j["status"] == "running")
        jobs += [post_json(server.url, "/api/jobs", settings)[1] for _ in range(LIMITS["max_queue"])]
        status, headers, body = request(server.url, "POST", "/api/jobs", json.dumps(settings).encode())
        assert (status, headers.get("retry-after")) == (429, "5"), body
    for job in jobs:
        assert wait_job(server.url, job["id"])["status"] == "done"


def test_cancelled_jobs_leave_the_queue() -> None:
    """Submit and cancel, over and over, while a job runs: nothing piles up in the worker's line."""
    gate, ran = threading.Event(), []

    def run(job: Job) -> None:
        ran.append(job.settings.seed)
        gate.wait(10)

    q = JobQueue(run, max_waiting=3, keep=4)
    try:
        q.submit(JobSettings(upload="u", methods=["bicubic"], scale=2, seed=0))
        deadline = time.monotonic() + 5
        while not ran:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(2000):
            job = q.submit(JobSettings(upload="u", methods=["bicubic"], scale=2), upload=object())
            q.cancel(job.id)
            assert job.upload is None
        assert len(q._waiting) == 0 and len(q._jobs) <= q.keep + 1
        a, b, c = (q.submit(JobSettings(upload="u", methods=["bicubic"], scale=2, seed=s)) for s in (1, 2, 3))
        q.cancel(b.id)
        assert q.position(c) == 2 and len(q._waiting) == 2
        gate.set()
        deadline = time.monotonic() + 5
        while c.status != "done":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ran == [0, 1, 3]  # in order, the cancelled one skipped
    finally:
        gate.set()
        q.close()


# ------------------------------------------------------------------------------------------ protocol details


def test_405_names_the_methods_allowed(server: RunningServer) -> None:
    for method, path, allowed in (("DELETE", "/api/info", "GET"), ("GET", "/api/uploads", "POST"),
                                  ("PUT", "/api/jobs", "POST")):
        status, headers, body = request(server.url, method, path, b"" if method != "GET" else None)
        assert status == 405 and allowed in headers.get("allow", ""), (method, path, headers)
        assert json.loads(body)["error"] == f"{method} is not allowed here"


@pytest.mark.parametrize("bad", ["evil.example@{h}", "{h}#x", "{h}/x", "{h}?x", "{h}\\x", "evil.example\\@{h}"])
def test_a_host_with_userinfo_a_path_or_a_fragment_is_refused(server: RunningServer, bad: str) -> None:
    status, _, body = request(server.url, "GET", "/api/info", headers={"Host": bad.format(h=host(server).decode())})
    assert status == 400 and "is not this machine" in json.loads(body)["error"]


def test_the_serve_command_passes_its_connection_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import restorekit.web.server as server_module
    from restorekit.cli import build_cli
    from restorekit.errors import RestorekitError

    seen: list[ServeConfig] = []

    def capture(config: ServeConfig, log: Any = None) -> Any:
        seen.append(config)
        raise RestorekitError("stop here")

    monkeypatch.setattr(server_module, "build_state", capture)
    res = CliRunner().invoke(build_cli(), ["serve", "--methods", "bicubic", "--max-connections", "40",
                                           "--max-client-connections", "40", "-q"])
    assert res.exit_code == 2 and "stop here" in res.output
    assert (seen[0].max_connections, seen[0].max_client_connections) == (40, 40)
