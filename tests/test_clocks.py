"""Durations on the monotonic clock, dates in UTC: a step of the system clock (NTP, a suspended
laptop, a daylight-saving change in the local zone) neither makes a duration negative or huge nor
writes an ambiguous date."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from restorekit.plugins import registry
from restorekit.testing.data import smooth_image


def _stepping_clock(monkeypatch: pytest.MonkeyPatch, step_s: float) -> None:
    """``time.time`` moves by ``step_s`` at each call (an hour back, a day forward …), as the system
    clock does when NTP steps it or a laptop wakes; the monotonic clocks are left alone."""
    now = [time.time()]

    def stepped() -> float:
        now[0] += step_s
        return now[0]

    monkeypatch.setattr(time, "time", stepped)


@pytest.mark.parametrize("step_s", [-3600.0, 86400.0], ids=["clock-back-an-hour", "clock-forward-a-day"])
def test_a_serve_job_s_times_keep_their_order_and_length_when_the_system_clock_steps(
        monkeypatch: pytest.MonkeyPatch, step_s: float) -> None:
    pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    from restorekit.web.jobs import FINISHED, JobQueue, JobSettings

    _stepping_clock(monkeypatch, step_s)
    q = JobQueue(lambda job: None, max_waiting=4, keep=4)
    try:
        job = q.submit(JobSettings(upload="u", methods=["bicubic"], scale=2))
        waiting = q.submit(JobSettings(upload="u", methods=["bicubic"], scale=2))
        q.cancel(waiting.id)  # (a job cancelled in line ends without starting)
        deadline = time.monotonic() + 10
        while job.status not in FINISHED:
            assert time.monotonic() < deadline, f"job still {job.status}"
            time.sleep(0.005)
    finally:
        q.close()
    assert job.status == "done"
    assert job.started is not None and job.finished is not None
    # Waiting and running took milliseconds: never a negative time, nor a day.
    assert 0 <= job.started - job.created < 10
    assert 0 <= job.finished - job.started < 10
    assert waiting.finished is not None and 0 <= waiting.finished - waiting.created < 10


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns"])
def test_compare_dates_its_results_in_utc_whatever_the_local_zone(rk_cli: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    if "bicubic" not in registry().names("methods"):
        pytest.skip("bicubic not installed (restorekit-baselines)")
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(smooth_image(16, 16, 0)).save(hr / "img0.png")
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert time.localtime().tm_gmtoff % 3600 != 0  # a half-hour zone: local time is not UTC
        before = datetime.now(timezone.utc).replace(microsecond=0)
        r = rk_cli("compare", "--methods", "bicubic", "--scale", "2", "--data", hr, "--out", tmp_path / "out",
                   "--metrics", "psnr_rgb", "--device", "cpu", "-q")
        after = datetime.now(timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert r.exit_code == 0, r.output
    created = json.loads((tmp_path / "out" / "results.json").read_text())["created"]
    assert created.endswith("Z")  # ISO 8601 with its offset: UTC
    stamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert before <= stamp <= after
    assert created in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_a_log_whose_times_go_backwards_still_trims_and_plots_by_step(tmp_path: Path) -> None:
    """A run resumed after the local clock went back (a daylight-saving change, an older log that
    held clock times): trimming at the resumed step and the loss curves go by step, not by time."""
    from restorekit.training.plot import read_series
    from restorekit.training.trainer import trim_log

    log = tmp_path / "log.jsonl"
    lines = [{"kind": "train", "step": s, "loss": 1.0 / s, "time": t}
             for s, t in ((1, 5000.0), (2, 5010.0), (3, 1410.0), (4, 1420.0))]  # an hour back after step 2
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    trim_log(log, 3)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3]
    assert read_series(log) == {"loss": [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]}  # time is no curve


_RUN_FIELDS = {"created", "wall_s", "timings_s", "runtime_ms", "ms", "ms_std", "warmup_ms", "ms_per_image", "peak_mem_mb", "out"}


def _without_run_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_fields(v) for k, v in value.items() if k not in _RUN_FIELDS}
    if isinstance(value, list):
        return [_without_run_fields(v) for v in value]
    return value


def test_two_compare_runs_differ_only_in_the_fields_documented_as_describing_the_run(rk_cli: Any,
                                                                                     tmp_path: Path) -> None:
    """reports.py's promise: apart from the run's date, timings, memory and output folder, two runs
    of the same settings on the same inputs write the same files: results.json and the other JSON,
    JSON-lines and CSV files read field by field, images and every other file byte for byte."""
    if "bicubic" not in registry().names("methods"):
        pytest.skip("bicubic not installed (restorekit-baselines)")
    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(16, 16, i)).save(hr / f"img{i}.png")
    docs = []
    for run in ("a", "b"):
        r = rk_cli("compare", "--methods", "bicubic", "--scale", "2", "--data", hr, "--out", tmp_path / run,
                   "--metrics", "psnr_rgb,ssim_rgb", "--device", "cpu", "-q")
        assert r.exit_code == 0, r.output
        docs.append(json.loads((tmp_path / run / "results.json").read_text()))
    assert docs[0]["created"] and docs[0]["settings"]["out"] != docs[1]["settings"]["out"]
    assert _without_run_fields(docs[0]) == _without_run_fields(docs[1])
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    kinds = {rel.suffix for rel in files_a}
    assert {".png", ".json", ".jsonl", ".csv", ".html"} <= kinds, kinds
    for rel in files_a:  # every other file, read as what it is, with the run's fields left out
        a, b = (tmp_path / run / rel for run in ("a", "b"))
        if rel.suffix == ".json":
            assert _without_run_fields(json.loads(a.read_text())) == _without_run_fields(json.loads(b.read_text())), rel
        elif rel.suffix == ".jsonl":
            assert ([_without_run_fields(json.loads(line)) for line in a.read_text().splitlines()]
                    == [_without_run_fields(json.loads(line)) for line in b.read_text().splitlines()]), rel
        elif rel.suffix == ".csv":
            assert _csv_without_run_fields(a) == _csv_without_run_fields(b), rel
        elif rel.suffix != ".html":  # (report.html: its date and runtime cells are not picked out here)
            assert a.read_bytes() == b.read_bytes(), rel


def _csv_without_run_fields(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k not in _RUN_FIELDS} for row in csv.DictReader(f)]


def _foreign_host_tag() -> str:
    from restorekit.images import _host_tag

    return "0" * 8 if _host_tag() != "0" * 8 else "1" * 8


@pytest.mark.parametrize("skew_s", [120.0, -120.0], ids=["this-clock-ahead", "this-clock-behind"])
def test_temp_files_are_swept_by_their_folders_own_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         skew_s: float) -> None:
    """On NFS a file's times are the server's clock, not this machine's: judged against
    ``time.time()``, a client two minutes ahead took a temp file another host is writing now for
    one left a while ago and removed it under that writer (two minutes behind, it kept one left
    there long enough to go)."""
    from restorekit.images import is_temp_name, sweep_temp_files

    out = tmp_path / "out"
    out.mkdir()
    now = time.time()  # the folder's clock (here the same disk's)
    writing = out / f".x.png.4242-{_foreign_host_tag()}-01234567.part"  # another host, writing now
    old_style = out / ".y.png.a8b1k2z_.part"  # an earlier version's name, written now
    left = out / f".z.png.4242-{_foreign_host_tag()}-89abcdef.part"  # another host's, 90 s ago
    for p in (writing, old_style, left):
        p.write_bytes(b"half")
    os.utime(left, (now - 90, now - 90))
    monkeypatch.setattr(time, "time", lambda: now + skew_s)
    assert sweep_temp_files([out]) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([writing.name, old_style.name])  # (no probe left)
    assert all(is_temp_name(p.name) for p in (writing, old_style, left))


def test_a_folder_no_file_can_be_made_in_is_swept_by_this_machines_clock(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.images as images

    out = tmp_path / "out"
    out.mkdir()
    young, old = (out / f".{n}.png.4242-{_foreign_host_tag()}-0123456{i}.part" for i, n in enumerate("ab"))
    for p in (young, old):
        p.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    def refused(*a: Any, **kw: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "_new_temp", refused)
    assert images.sweep_temp_files([out]) == 1
    assert [p.name for p in out.iterdir()] == [young.name]
