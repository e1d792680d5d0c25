"""One process kept alive for many calls: what it holds must level off, not grow with the calls.

``restorekit serve`` answers job after job for as long as it runs: its job store, upload store and
temporary folder hold the last few of each (``keep_jobs``, ``keep_uploads``), and a job pushed out
takes its files, its ids and its upload's pixels with it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from restorekit.plugins import registry  # noqa: E402
from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.jobs import FINISHED, Job, read_settings  # noqa: E402
from restorekit.web.server import build_state  # noqa: E402

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc/self/fd")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds(at_most: int, timeout: float = 2.0) -> int:
    """The open descriptors once they are down to ``at_most``, or whatever they are after ``timeout``:
    a job is seen finished while its worker may still be ending it, and other threads of the
    process (the suite's) open and close files of their own meanwhile; a descriptor held for good
    stays whatever the wait."""
    deadline = time.monotonic() + timeout
    while (n := open_fds()) > at_most and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def fd_targets() -> list[str]:
    out = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


def wait_finished(job: Job, timeout: float = 30.0) -> Job:
    deadline = time.monotonic() + timeout
    while job.status not in FINISHED:
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job.status} ({job.stage}) after {timeout} s")
        time.sleep(0.002)
    return job


def tokens(job: Job) -> list[str]:
    """The ids of every file a job's page links to."""
    urls = [im["url"] for im in job.result.get("images", [])]
    urls += [o["url"] for row in job.result.get("methods", []) for o in row.get("outputs", [])]
    urls += [job.result["numbers"]["url"]] if "numbers" in job.result else []
    return [u.split("/", 1)[1] for u in urls]


@needs_proc
def test_a_server_answering_many_jobs_holds_only_the_last_few(tmp_path: Path) -> None:
    if "bicubic" not in registry().names("methods"):
        pytest.skip("bicubic comes with restorekit-baselines")
    keep_jobs, keep_uploads, n = 3, 2, 24
    threads_before = threading.active_count()
    state = build_state(ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"],
                                    keep_jobs=keep_jobs, keep_uploads=keep_uploads, temp_parent=tmp_path))
    jobs: list[Job] = []
    uploads: list[Any] = []
    try:
        for i in range(n):
            up = state.uploads.add(torch.full((1, 3, 8, 8), 10 * i, dtype=torch.uint8), f"face{i}.png")
            settings = read_settings({"upload": up.id, "methods": ["bicubic"], "scale": 2, "degrade": i % 2 == 0})
            job = wait_finished(state.queue.submit(settings, upload=state.restorer.check(settings)))
            assert job.status == "done", job.error
            assert job.upload is None  # a finished job keeps its numbers and files, not the pixels
            jobs.append(job)
            uploads.append(up)
            if i == keep_jobs + 1:
                fds_early, early = open_fds(), fd_targets()
        assert settled_fds(fds_early) <= fds_early, (early, fd_targets())
        assert threading.active_count() == threads_before + 1  # the job worker only
        kept_jobs = [j for j in jobs if state.queue.get(j.id) is not None]
        kept_uploads = [u for u in uploads if state.uploads.get(u.id) is not None]
        assert kept_jobs == jobs[-keep_jobs:] and kept_uploads == uploads[-keep_uploads:]
        for job in jobs[:-keep_jobs]:  # a job pushed out: its files are gone, their ids unknown
            assert tokens(job) and all(state.files.get(t) is None for t in tokens(job))
        for job in kept_jobs:
            assert all(state.files.get(t) is not None for t in tokens(job))
        groups = {p.name for p in state.files.root.iterdir() if p.is_dir()}
        assert groups == {f"j{j.id}" for j in kept_jobs} | {f"u{u.id}" for u in kept_uploads}
        files = [p for p in state.files.root.rglob("*") if p.is_file()]
        assert len(files) == 1 + len(kept_uploads) + sum(len(tokens(j)) for j in kept_jobs)  # + serve.pid
    finally:
        state.close()
    assert not state.files.root.exists()
    assert threading.active_count() == threads_before
