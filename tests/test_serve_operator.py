"""What ``restorekit serve`` tells its users and its operator when things go wrong on the server:
a full disk (one line without the server's paths for the page, the path on stderr, no empty
folder left), unexpected job failures (their traceback on stderr), folders of photos left by a
killed server (removed by the next), and ``--allow-host`` values that could never match."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from pydantic import ValidationError  # noqa: E402
from serve_helpers import generated_face, png, post_json, upload, wait_job  # noqa: E402

import restorekit.web.files as files_module  # noqa: E402
from restorekit.images import fs_error  # noqa: E402
from restorekit.web.config import ServeConfig, check_host_name  # noqa: E402
from restorekit.web.files import FileStore, StorageError  # noqa: E402
from restorekit.web.jobs import JobQueue, JobSettings  # noqa: E402
from restorekit.web.server import build_state, start  # noqa: E402

DISK_FULL = "the server's disk is full; try again later"


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of the server's files fails as a full disk makes ``atomic_write_bytes`` fail
    (its one-line error names the path; the errno is its cause's)."""

    def write(path: Path, data: bytes, **kw: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)  # as the real one: the folder is made first
        cause = OSError(errno.ENOSPC, "No space left on device")
        raise fs_error(cause, path) from cause

    monkeypatch.setattr(files_module, "atomic_write_bytes", write)


@pytest.fixture
def server(tmp_path: Path) -> Any:
    cfg = ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], max_upload_mb=0.2,
                      temp_parent=tmp_path)
    srv = start(cfg)
    yield srv
    srv.stop()


def test_a_full_disk_answers_an_upload_507_without_the_servers_paths(server: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    root = server.state.files.root
    full_disk(monkeypatch)
    status, body = upload(server.url, png(generated_face(64)), "face.png")
    assert (status, body) == (507, {"error": DISK_FULL})
    err = capfd.readouterr().err
    assert str(root) in err and "No space left on device" in err  # the operator is told where
    assert [p.name for p in root.iterdir()] == ["serve.pid"]  # no empty upload folder left behind


def test_a_full_disk_fails_a_job_in_one_line_without_paths(server: Any, monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    root = server.state.files.root
    status, up = upload(server.url, png(generated_face(64)), "face.png")
    assert status == 201
    full_disk(monkeypatch)
    status, job = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 2})
    assert status == 202, job
    job = wait_job(server.url, job["id"])
    assert job["status"] == "failed" and job["error"] == DISK_FULL
    assert any(DISK_FULL in n for n in job["result"]["notes"])  # the numbers could not be written either
    assert str(root) in capfd.readouterr().err
    assert not (root / f"j{job['id']}").exists()


def test_a_failed_write_other_than_a_full_disk_names_no_path_either(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def write(path: Path, data: bytes, **kw: Any) -> None:
        cause = PermissionError(errno.EACCES, "Permission denied", str(path))
        raise fs_error(cause, path) from cause

    store = FileStore(tmp_path)
    try:
        monkeypatch.setattr(files_module, "atomic_write_bytes", write)
        with pytest.raises(StorageError) as err:
            store.add(b"{}", "json", "a.json", "j1")
        assert err.value.status == 500 and str(tmp_path) not in str(err.value)
        assert str(err.value) == "the server could not write a file (Permission denied); try again later"
    finally:
        store.close()


def test_an_unexpected_job_failure_is_logged_with_its_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    def run(job: Any) -> None:
        if job.settings.methods == ["bug"]:
            raise ValueError("boom")
        raise OSError(errno.ENOSPC, "No space left on device", "/srv/tmp/restorekit-serve-x/j1/3.png")

    queue = JobQueue(run, max_waiting=4, keep=4)
    try:
        bug = queue.submit(JobSettings(upload="u", methods=["bug"], scale=2))
        full = queue.submit(JobSettings(upload="u", methods=["disk"], scale=2))
        deadline = time.monotonic() + 10
        while full.status != "failed" or bug.status != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        queue.close()
    assert bug.error == "unexpected ValueError: boom"
    assert full.error == DISK_FULL  # the page is not told the server's paths
    err = capfd.readouterr().err
    assert f"job {bug.id} failed unexpectedly" in err and "Traceback" in err and "ValueError: boom" in err
    assert f"job {full.id} failed unexpectedly" in err and "/srv/tmp/restorekit-serve-x/j1/3.png" in err


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_folders_left_by_a_killed_server_are_removed_by_the_next(tmp_path: Path) -> None:
    host = socket.gethostname()

    def left(name: str, pid_line: str | None) -> Path:
        folder = tmp_path / f"restorekit-serve-{name}"
        (folder / "u1").mkdir(parents=True)
        (folder / "u1" / "1.png").write_bytes(b"a user's photo")
        if pid_line is not None:
            (folder / "serve.pid").write_text(pid_line)
        return folder

    dead = left("dead", f"{dead_pid()} {host}\n")
    alive = left("alive", f"{os.getppid()} {host}\n")  # a server that still runs
    elsewhere = left("elsewhere", f"{dead_pid()} another-host.example\n")  # a shared parent: cannot tell
    unknown = left("nopid", None)  # being made this moment, or an older version's
    garbled = left("garbled", "12ab\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "serve.pid").write_text(f"{dead_pid()} {host}\n")
    (tmp_path / "restorekit-serve-link").symlink_to(tmp_path / "outside")
    said: list[str] = []
    state = build_state(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], temp_parent=tmp_path),
                        log=said.append)
    try:
        assert not dead.exists()
        assert all(p.exists() for p in (alive, elsewhere, unknown, garbled, tmp_path / "outside" / "serve.pid"))
        (line,) = [s for s in said if "temporary folder" in s]
        assert line.startswith("removed 1 temporary folder(s) of photos left by servers that were killed")
        assert "restorekit-serve-dead" in line
        # This server's folder says who made it, for the next one.
        assert (state.files.root / "serve.pid").read_text() == f"{os.getpid()} {host}\n"
    finally:
        state.close()
    # A server's own live folder is never taken for a stale one.
    store = FileStore(tmp_path)
    try:
        assert files_module.remove_stale_folders(tmp_path) == [] and store.root.exists()
    finally:
        store.close()


@pytest.mark.parametrize("value", ["http://box.local", "box.local:8080", "box.local/faces", "user@box.local",
                                   "*.example.org", "", "[::1", "999.1.2.3"])
def test_an_allow_host_that_can_never_match_is_refused_in_one_line(value: str, rk_cli: Any) -> None:
    with pytest.raises(ValidationError, match="not a bare host name or IP address"):
        ServeConfig(allowed_hosts=[value])
    # (--methods names no method: an --allow-host accepted would be refused for that instead)
    result = rk_cli("serve", "--allow-host", value, "--methods", "bicubc", "--port", "0")
    assert result.exit_code == 2
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert line.startswith(f"Error: --allow-host {value!r}: not a bare host name or IP address"), result.output
    assert line.endswith("e.g. faces.example.org)")  # the whole of it on that line


def test_allow_host_names_are_kept_as_a_host_header_gives_them() -> None:
    assert ServeConfig(allowed_hosts=["Box.Local", "[::1]", "10.0.0.5", "bücher.example"]).allowed_hosts == [
        "box.local", "::1", "10.0.0.5", "xn--bcher-kva.example"]
    assert check_host_name(" faces.example.org ") == "faces.example.org"
