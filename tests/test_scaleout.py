"""`run` and `compare` under torchrun: sharding, merging, resuming — the same results as one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from restorekit.degradations import parse_spec
from restorekit.harness.inputs import from_degradation, merge_shards, update_manifest
from restorekit.harness.store import Record, ResultStore
from restorekit.sharding import SINGLE, Job, cpu_budget, cpu_share, exit_code_of
from restorekit.testing.data import smooth_image
from background_runs import Launch, selected, torchrun
from plugin_sources import write_plugin_dist

# A throwaway plugin: a deterministic method that fails on 24-px-wide inputs and a stochastic one.
# Each restore is logged (method, rank, LR digest, seed); with RK_DIE_AFTER=K rank 1 dies at its
# (K+1)-th restore, like a crashed or OOM-killed process (torchrun then stops the others).
SCALEOUT_PLUGIN = '''
import hashlib
import os
import time
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo

CALLS = 0


def _log(name, lr, seed):
    global CALLS
    CALLS += 1
    die = int(os.environ.get("RK_DIE_AFTER", "0"))
    if die and os.environ.get("RANK") == "1" and CALLS > die:
        os._exit(17)
    time.sleep(float(os.environ.get("RK_SLEEP", "0")))
    digest = hashlib.sha1(lr.numpy().tobytes()).hexdigest()[:12]
    with open(os.environ["RK_TEST_CALLS"], "a") as f:
        f.write(f"{name} {os.environ.get('RANK', '-')} {digest} {seed}\\n")


class Sharp(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="sharp3p", summary="nearest, sharpened; fails on 24-px-wide inputs")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        _log("sharp3p", lr, seed)
        if lr.shape[-1] == 24:
            raise RuntimeError("cannot handle a 24-px-wide input")
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        blur = torch.nn.functional.avg_pool2d(up, 3, stride=1, padding=1, count_include_pad=False)
        return (up + 0.7 * (up - blur)).clamp(0, 1).repeat_interleave(n_samples, 0)


class Jitter(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="jitter3p", summary="bilinear plus seeded noise",
                                            deterministic=False)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        _log("jitter3p", lr, seed)
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False)
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        noise = torch.randn((n_samples, *up.shape[1:]), generator=g)
        return (up + 0.03 * noise).clamp(0, 1)


@hookimpl
def register_methods(register):
    register(Sharp)
    register(Jitter)
'''

METRICS = "psnr_y_crop,ssim_y_crop,psnr_rgb,lr_consistency"
# What differs between two runs of the same command whatever the number of processes.
RUN_ONLY = ("ms", "warmup", "peak_mem_mb", "reused")


def write_hr9(d: Path) -> Path:
    """Eight 32×32 images and one 48-px-wide one (sharp3p fails on its ×2 LR)."""
    d.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(smooth_image(32, 32, i)).save(d / f"img{i}.png")
    Image.fromarray(smooth_image(32, 48, 9)).save(d / "narrow.png")
    return d


@pytest.fixture
def hr9(tmp_path: Path) -> Path:
    return write_hr9(tmp_path / "hr")


@pytest.fixture
def scaleout_plugin(plugin_site, tmp_path, monkeypatch) -> Path:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("RK_TEST_CALLS", str(calls))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plugin_site("thirdparty-scaleout", "thirdparty_scaleout", SCALEOUT_PLUGIN)
    return calls


def _command(args: Sequence[str], processes: int) -> list[str]:
    """``python -m restorekit ARGS``, or under ``torchrun --nproc_per_node PROCESSES``."""
    return [*([sys.executable] if processes == 1 else torchrun(processes)), "-m", "restorekit", *args]


def restorekit_here(*args: str) -> subprocess.CompletedProcess[str]:
    """``restorekit ARGS`` in this process: a one-process reference without an interpreter's start-up.
    On one thread, as ``python -m restorekit`` runs with ``OMP_NUM_THREADS=1`` and as each rank of a
    two-process job runs on this machine's CPU share (the thread count is put back after)."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(build_cli(), list(args), prog_name="restorekit", catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["restorekit", *args], r.exit_code, r.stdout, r.stderr)


def _calls(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _comparable(doc: dict) -> dict:
    """results.json without what describes the run rather than the results."""
    return {"images": [{k: v for k, v in img.items() if k not in RUN_ONLY} for img in doc["images"]],
            "aggregates": [{k: v for k, v in m["aggregate"].items() if k not in ("runtime_ms", "warmup_ms",
                                                                                 "peak_mem_mb")}
                           for m in doc["methods"]],
            "failures": doc["failures"], "inputs": doc["inputs"], "best": {k: v for k, v in doc["best"].items()
                                                                           if k != "runtime"},
            "settings": doc["settings"] | {"out": None}, "exit_code": doc["exit_code"]}


# --------------------------------------------------------------------------------------------
# In-process: the pieces a job is made of


def test_single_process_job_is_the_identity():
    assert (SINGLE.rank, SINGLE.world, SINGLE.is_main, SINGLE.distributed, SINGLE.device) == (0, 1, True, False, None)
    assert SINGLE.part([3, 1, 2]) == [3, 1, 2] and list(SINGLE.indices(3)) == [0, 1, 2]
    assert SINGLE.gather({"a": 1}) == [{"a": 1}] and SINGLE.together(lambda: 7) == 7
    with pytest.raises(ValueError, match="boom"):
        SINGLE.together(lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert SINGLE.device_for("auto") == "auto"
    assert SINGLE.describe_devices(["cpu (x86_64, 4 threads)"]) == "cpu (x86_64, 4 threads)"


def test_a_rank_takes_every_world_th_item_and_devices_are_described_once():
    from restorekit.training.distributed import DistInfo

    jobs = [Job(DistInfo(rank=r, world_size=3, local_rank=r)) for r in range(3)]
    shares = [j.part(list("abcdefg")) for j in jobs]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert sorted(sum(shares, [])) == list("abcdefg")
    assert [list(j.indices(7)) for j in jobs] == [[0, 3, 6], [1, 4], [2, 5]]
    assert jobs[1].describe_devices(["cuda:0 (H200)", "cuda:1 (H200)"]) == "cuda (H200) × 2 processes"
    assert jobs[0].describe_devices(["cpu (x, 1 threads)", "cuda:0 (H200)"]) == \
        "cpu (x, 1 threads), cuda (H200) (2 processes)"


class DictStore:
    """The part of a c10d store that :class:`Job` uses, in memory (for ranks played by threads)."""

    def __init__(self) -> None:
        import threading

        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def add(self, key: str, n: int) -> int:
        with self.lock:
            value = int(self.data.get(key, b"0")) + n
            self.data[key] = str(value).encode()
            return value

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def get(self, key: str) -> bytes:
        return self.data[key]

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()


def test_ranks_meet_at_sync_points_and_an_abort_releases_the_waiting_ones():
    import threading
    import time

    from restorekit.training.distributed import DistInfo

    store = DictStore()
    a, b = (Job(DistInfo(rank=r, world_size=2, local_rank=r), store) for r in range(2))
    passed: list[str] = []
    waiter = threading.Thread(target=lambda: (a.sync(), passed.append("a")), daemon=True)
    waiter.start()
    time.sleep(0.2)
    assert passed == []  # rank 0 waits for rank 1
    b.sync()
    waiter.join(5)
    assert passed == ["a"]
    ended: list[object] = []

    def wait_for_b() -> None:
        try:
            a.sync()
        except SystemExit as exc:
            ended.append(exc.code)

    waiter = threading.Thread(target=wait_for_b, daemon=True)
    waiter.start()
    time.sleep(0.2)
    b.abort(143)  # rank 1 is ending before the job's end
    waiter.join(5)
    assert ended == [143]


def test_cpu_share_divides_the_cores_between_local_processes(monkeypatch):
    cores = cpu_budget()  # (affinity, and a container's CPU quota where one is set)
    threads = torch.get_num_threads()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 4))
    assert cpu_share() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert cpu_share() == max(1, min(threads, cores))


def test_exit_codes_of_what_ends_a_rank():
    from restorekit.cli import UsageProblem
    from restorekit.errors import RestorekitError

    assert [exit_code_of(e) for e in (UsageProblem("x"), RestorekitError("x"), OSError("x"), SystemExit(143),
                                      SystemExit(None), RuntimeError("x"))] == [2, 2, 2, 143, 0, 1]


def test_input_shards_merge_into_what_one_process_makes(tmp_path, hr9):
    (hr9 / "broken.png").write_bytes(b"not an image")
    chain = parse_spec("bicubic:2+noise:3")
    whole = from_degradation(str(hr9), chain, 2, tmp_path / "one")
    shards = [from_degradation(str(hr9), chain, 2, tmp_path / "two", shard=(r, 2)) for r in range(2)]
    assert [len(s.pairs) + len(s.failures) for s in shards] == [5, 5]
    merged = merge_shards([s.portable() for s in shards], shards[1])
    assert [(p.stem, p.input_hash) for p in merged.pairs] == [(p.stem, p.input_hash) for p in whole.pairs]
    assert [f["image"] for f in merged.failures] == [f["image"] for f in whole.failures] == ["broken"]
    assert merged._cache is shards[1]._cache  # a rank keeps its own decoded images only
    manifest = next((tmp_path / "two" / "inputs").glob("*/manifest.json"), None)
    assert manifest is None  # shards leave the manifest to rank 0
    update_manifest(merged, chain.spec(), fresh=False)
    one = json.loads(next((tmp_path / "one" / "inputs").glob("*/manifest.json")).read_text())
    two = json.loads(next((tmp_path / "two" / "inputs").glob("*/manifest.json")).read_text())
    assert list(one["images"]) == list(two["images"])
    for stem, entry in one["images"].items():
        assert {k: v for k, v in entry.items() if k != "hr"} == \
            {k: v for k, v in two["images"][stem].items() if k != "hr"}
    # A second pass of each shard reuses the LR files the first made: nothing is made again.
    again = [from_degradation(str(hr9), chain, 2, tmp_path / "two", shard=(r, 2)) for r in range(2)]
    assert all(not s.made for s in again)


def test_store_parts_are_read_on_resume_and_folded_by_compact(tmp_path):
    def rec(image: str, status: str = "ok") -> Record:
        return Record("m", image, None, "s", "h", status, metrics={"psnr": 30.0})

    main = ResultStore(tmp_path)
    main.append(rec("a", "failed"))
    main.close()
    for rank, images in enumerate((["a", "c"], ["b"])):
        part = ResultStore(tmp_path, part=f"rank{rank}")
        for image in images:
            part.append(rec(image))
        part.close()
    assert sorted(p.name for p in main.part_paths("m")) == ["rank0.jsonl", "rank1.jsonl"]
    loaded = ResultStore(tmp_path).load("m")  # a single process resuming a killed job sees every rank's work
    assert {k[1]: r.status for k, r in loaded.items()} == {"a": "ok", "b": "ok", "c": "ok"}
    main.compact("m", list(loaded.values()))
    assert main.part_paths("m") == [] and not (tmp_path / "results" / "parts").exists()
    assert {k[1] for k in ResultStore(tmp_path).load("m")} == {"a", "b", "c"}
    part = ResultStore(tmp_path, part="rank0")
    part.append(rec("d"))
    part.close()
    main.clear("m")
    assert ResultStore(tmp_path).load("m") == {} and main.part_paths("m") == []


# --------------------------------------------------------------------------------------------
# torchrun: two CPU processes (gloo) against one.
#
# Each launch spends most of its time starting interpreters that import torch, much of it on one
# core. So the launches of the tests below start when the module's first test starts, two at a
# time on a thread pool (:class:`Background`), and run beside the in-process tests and each
# other; a test computes its one-process reference in this process meanwhile, then checks what
# its launches did. Only the launches of the tests this session runs are started.

COMPARE = "test_compare_on_two_processes_gives_one_process_numbers"
RUN = "test_run_on_two_processes_writes_what_one_process_writes"
DEGRADE = "test_degrade_on_two_processes_writes_what_one_process_writes"
KILLED = "test_killed_compare_resumes_without_redoing_finished_work"
KILLED_RUN = "test_killed_run_resumes_without_redoing_finished_work"
BENCH = "test_bench_scaleout_reports_the_ratio_and_identical_results"
REPORTS = "test_a_report_rank_0_cannot_write_ends_every_process_with_its_code"


class Background:
    """Jobs on a pool of two threads; each job starts its commands with :meth:`restorekit`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        site = root / "site"
        write_plugin_dist(site, "thirdparty-scaleout", "thirdparty_scaleout", SCALEOUT_PLUGIN)
        # What the scaleout_plugin fixture sets for a test.
        self.plugin_env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
                           "OMP_NUM_THREADS": "1"}
        self._pool = ThreadPoolExecutor(max_workers=2)
        self._lock = threading.Lock()
        self._launches: list[Launch] = []
        self._closed = False
        self.jobs: dict[str, Future] = {}

    def submit(self, job: Callable[[Background, Path], object], broken: bool = False) -> None:
        """Queue ``job(self, folder)``; its inputs, :meth:`hr`, are written now (a test may read them meanwhile)."""
        hr = write_hr9(self.root / job.__name__ / "hr")
        if broken:
            (hr / "broken.png").write_bytes(b"not an image")
        self.jobs[job.__name__] = self._pool.submit(job, self, hr.parent)

    def hr(self, name: str) -> Path:
        """The input folder of job ``name``: the images of ``write_hr9`` (and a broken.png for some)."""
        return self.root / name / "hr"

    def restorekit(self, *args: str, processes: int = 1, **env: str) -> subprocess.CompletedProcess[str]:
        """``python -m restorekit ARGS`` (under ``torchrun --nproc_per_node PROCESSES``), to its end."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the module's tests have ended")
            launch = Launch(_command(args, processes), env)
            self._launches.append(launch)
        return launch.wait()

    def result(self, name: str) -> Any:
        return self.jobs[name].result(timeout=900)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for launch in self._launches:
                launch.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)


COMPARE_ARGS = ("compare", "--methods", "sharp3p,jitter3p", "--scale", "2", "--seeds", "0,1", "--metrics", METRICS,
                "--degradation", "bicubic:2+noise:2", "--device", "cpu", "--json")
RUN_ARGS = ("run", "jitter3p", "--scale", "2", "--seed", "3", "--n-samples", "2", "--device", "cpu", "--json")
DEGRADE_ARGS = ("degrade", "--spec", "blur:1.2+bicubic:2+noise:5", "--seed", "4", "--json")


def compare_job(bg: Background, d: Path) -> dict:
    hr, calls = d / "hr", d / "calls.txt"
    two = bg.restorekit(*COMPARE_ARGS, "--data", str(hr), "--out", str(d / "two"), processes=2,
                        RK_TEST_CALLS=str(calls), **bg.plugin_env)
    return {"hr": hr, "two": two, "calls": _calls(calls), "out": d / "two"}


def run_job(bg: Background, d: Path) -> dict:
    hr, calls = d / "hr", d / "calls.txt"
    two = bg.restorekit(*RUN_ARGS, "--input", str(hr), "--output", str(d / "two"), processes=2,
                        RK_TEST_CALLS=str(calls), **bg.plugin_env)
    return {"hr": hr, "two": two, "calls": _calls(calls), "out": d / "two"}


def run_usage_job(bg: Background, d: Path) -> subprocess.CompletedProcess[str]:
    return bg.restorekit("run", "jitter3q", "--scale", "2", "--input", str(d / "hr"), "--output", str(d / "x"),
                         processes=2, RK_TEST_CALLS=str(d / "calls.txt"), **bg.plugin_env)


def degrade_job(bg: Background, d: Path) -> dict:
    hr = d / "hr"
    two = bg.restorekit(*DEGRADE_ARGS, "--input", str(hr), "--output", str(d / "two"), processes=2)
    return {"hr": hr, "two": two, "out": d / "two"}


def killed_compare_job(bg: Background, d: Path) -> dict:
    hr, out, calls = d / "hr", d / "out", d / "calls.txt"
    args = ["compare", "--methods", "jitter3p", "--scale", "2", "--data", str(hr), "--seeds", "0,1",
            "--metrics", "psnr_y_crop", "--device", "cpu", "--out", str(out), "-q"]
    killed = bg.restorekit(*args, processes=2, RK_TEST_CALLS=str(calls), RK_DIE_AFTER="3", RK_SLEEP="0.3",
                           **bg.plugin_env)
    stored = ResultStore(out).load("jitter3p")
    seen = {"killed": killed, "results_json": (out / "results.json").exists(), "first": _calls(calls),
            "finished": {(k[1], k[2]) for k, r in stored.items() if r.status == "ok" and ResultStore(out).reusable(r)},
            "parts": (out / "results" / "parts" / "jitter3p").is_dir()}
    calls.unlink(missing_ok=True)  # (none when the killed run never reached the method: its asserts say so)
    seen["resumed"] = bg.restorekit(*args, processes=2, RK_TEST_CALLS=str(calls), **bg.plugin_env)
    seen["second"] = _calls(calls)
    seen["out"] = out
    return seen


def killed_run_job(bg: Background, d: Path) -> dict:
    hr, out, calls = d / "hr", d / "out", d / "calls.txt"
    args = ["run", "jitter3p", "--scale", "2", "--input", str(hr), "--output", str(out), "--seed", "1",
            "--device", "cpu", "--json"]
    killed = bg.restorekit(*args, processes=2, RK_TEST_CALLS=str(calls), RK_DIE_AFTER="2", RK_SLEEP="0.3",
                           **bg.plugin_env)
    seen = {"killed": killed, "done": sorted(p.name for p in out.glob("*.png")), "hidden": list(out.glob(".*"))}
    calls.unlink(missing_ok=True)  # (none when the killed run never reached the method: its asserts say so)
    seen["resumed"] = bg.restorekit(*args, processes=2, RK_TEST_CALLS=str(calls), **bg.plugin_env)
    seen["second"] = _calls(calls)
    seen["out"] = out
    return seen


def bench_job(bg: Background, d: Path) -> subprocess.CompletedProcess[str]:
    return bg.restorekit("bench", "scaleout", "--n", "4", "--size", "32", "--steps", "2", "--metrics", "psnr_y_crop",
                         "--repeats", "1", "--json", OMP_NUM_THREADS="1")


def unwritable_report_job(bg: Background, d: Path) -> subprocess.CompletedProcess[str]:
    (d / "out" / "report.html").mkdir(parents=True)  # a folder where rank 0 writes a report
    return bg.restorekit("compare", "--methods", "bicubic", "--scale", "2", "--data", str(d / "hr"), "--limit", "2",
                         "--metrics", "psnr_y_crop", "--device", "cpu", "--out", str(d / "out"), "-q", processes=2,
                         OMP_NUM_THREADS="1")


# The bench first: its one-process launch keeps one core busy, the other jobs fill the other.
JOBS = {BENCH: [(bench_job, False)], COMPARE: [(compare_job, False)],
        RUN: [(run_job, True), (run_usage_job, False)], DEGRADE: [(degrade_job, True)],
        KILLED: [(killed_compare_job, False)], KILLED_RUN: [(killed_run_job, False)],
        REPORTS: [(unwritable_report_job, False)]}


@pytest.fixture(scope="module", autouse=True)
def background(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The launches of the tests below that this session runs, started when the module's first test starts."""
    chosen = selected(request, *JOBS)
    if not chosen:
        yield None
        return
    bg = Background(tmp_path_factory.mktemp("scaleout"))
    for test, jobs in JOBS.items():
        if test in chosen:
            for job, broken in jobs:
                bg.submit(job, broken)
    yield bg
    bg.close()


@pytest.mark.slow
def test_compare_on_two_processes_gives_one_process_numbers(background, scaleout_plugin, tmp_path):
    one = restorekit_here(*COMPARE_ARGS, "--data", str(background.hr("compare_job")), "--out", str(tmp_path / "one"))
    assert one.returncode == 1, one.stderr[-2000:]  # sharp3p fails on the narrow image
    calls_one = _calls(scaleout_plugin)
    job = background.result("compare_job")
    two, calls_two, out = job["two"], job["calls"], job["out"]
    assert two.returncode != 0 and "exitcode  : 1" in two.stderr, two.stderr[-2000:]

    # Each (method, image, seed) ran once, shared between both ranks.
    key = [(c[0], c[2], c[3]) for c in calls_two]
    assert Counter(key) == Counter((c[0], c[2], c[3]) for c in calls_one) and len(set(key)) == len(key) == 9 + 18
    assert {c[1] for c in calls_two} == {"0", "1"}
    # One JSON summary on stdout (rank 0's), and the failure said once, by the rank it happened on.
    summary = json.loads(two.stdout)
    assert summary["processes"] == 2 and summary["exit_code"] == 1
    assert two.stderr.count("cannot handle a 24-px-wide input") == 1
    doc1 = json.loads((tmp_path / "one" / "results.json").read_text())
    doc2 = json.loads((out / "results.json").read_text())
    assert doc2["processes"] == 2 and "processes" not in doc1
    assert _comparable(doc1) == _comparable(doc2)  # every number, bit for bit (JSON keeps a float's exact value)
    sharp = next(m for m in doc2["methods"] if m["name"] == "sharp3p")
    assert doc1["methods"][0]["device"].endswith(", 1 threads)")
    assert sharp["device"] == "cpu (" + doc1["methods"][0]["device"].split(" (", 1)[1] + " × 2 processes"
    assert sharp["aggregate"]["failed"] == 1 and sharp["aggregate"]["ok"] == 8
    for name in ("summary.csv", "inputs"):
        assert (out / name).exists()
    pngs = sorted((tmp_path / "one" / "outputs").rglob("*.png"))
    assert len(pngs) == 8 + 18
    for f in pngs:
        assert f.read_bytes() == (out / f.relative_to(tmp_path / "one")).read_bytes()
    manifests = [json.loads(next((d / "inputs").glob("*/manifest.json")).read_text()) for d in (tmp_path / "one", out)]
    assert manifests[0] == manifests[1]
    store = out / "results"
    assert not (store / "parts").exists() and len((store / "sharp3p.jsonl").read_text().splitlines()) == 9


def _same_lists(s1: dict, one: Path, s2: dict, two: Path) -> None:
    """The written, skipped and failed lists of two summaries, the same but for their output folders."""
    for k in ("written", "skipped", "failed"):
        assert [json.dumps(x).replace(str(one), "OUT") for x in s1[k]] == \
            [json.dumps(x).replace(str(two), "OUT") for x in s2[k]], k


@pytest.mark.slow
def test_run_on_two_processes_writes_what_one_process_writes(background, scaleout_plugin, tmp_path):
    hr = background.hr("run_job")
    one = restorekit_here(*RUN_ARGS, "--input", str(hr), "--output", str(tmp_path / "one"))
    assert one.returncode == 1, one.stderr[-2000:]
    assert len(_calls(scaleout_plugin)) == 9
    job = background.result("run_job")
    two, calls = job["two"], job["calls"]
    assert two.returncode != 0, two.stderr[-2000:]
    assert len(calls) == 9 and {c[1] for c in calls} == {"0", "1"}  # 9 readable inputs, each once
    s1, s2 = json.loads(one.stdout), json.loads(two.stdout)
    assert s2["processes"] == 2 and s2["device"] == "cpu × 2 processes"
    _same_lists(s1, tmp_path / "one", s2, job["out"])
    assert len(s2["written"]) == 18 and [f["path"] for f in s2["failed"]] == [str(hr / "broken.png")]
    assert two.stderr.count("broken.png: not a readable image") == 1
    pngs = sorted((tmp_path / "one").glob("*.png"))
    assert len(pngs) == 18
    for f in pngs:
        assert f.read_bytes() == (job["out"] / f.name).read_bytes(), f.name
    # A usage error is said once, not once per rank.
    bad = background.result("run_usage_job")
    assert bad.returncode != 0 and bad.stderr.count("unknown method 'jitter3q'") == 1, bad.stderr[-2000:]


def test_degrade_on_two_processes_writes_what_one_process_writes(background, tmp_path):
    """degrade shares its inputs out like run; random steps depend on the seed and name, not the rank."""
    one = restorekit_here(*DEGRADE_ARGS, "--input", str(background.hr("degrade_job")), "--output",
                          str(tmp_path / "one"))
    job = background.result("degrade_job")
    two = job["two"]
    assert one.returncode == 1 and two.returncode != 0, two.stderr[-2000:]
    s1, s2 = json.loads(one.stdout), json.loads(two.stdout)
    assert s2["processes"] == 2 and "processes" not in s1
    _same_lists(s1, tmp_path / "one", s2, job["out"])
    assert len(s2["written"]) == 9 and two.stderr.count("broken.png: not a readable image") == 1
    pngs = sorted((tmp_path / "one").glob("*.png"))
    assert len(pngs) == 9
    for f in pngs:
        assert f.read_bytes() == (job["out"] / f.name).read_bytes(), f.name


@pytest.mark.slow
def test_killed_compare_resumes_without_redoing_finished_work(background):
    seen = background.result("killed_compare_job")
    killed, out = seen["killed"], seen["out"]
    assert killed.returncode != 0 and "exitcode  : 17" in killed.stderr, killed.stderr[-2000:]
    assert not seen["results_json"]
    # What the killed job finished is in the store (each rank's part), with its output.
    finished = seen["finished"]
    assert 3 <= len(finished) < 18 and len(seen["first"]) >= len(finished)
    assert seen["parts"]

    resumed, second = seen["resumed"], seen["second"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(second) == 18 - len(finished)  # only what was not finished, each once
    assert {c[1] for c in second} == {"0", "1"}  # what was left is shared again
    doc = json.loads((out / "results.json").read_text())
    assert sum(img["reused"] for img in doc["images"]) == len(finished)
    assert len(doc["images"]) == 18 and all(img["status"] == "ok" for img in doc["images"])
    assert not (out / "results" / "parts").exists()  # folded into results/jitter3p.jsonl


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_work(background):
    seen = background.result("killed_run_job")
    killed, out, done = seen["killed"], seen["out"], seen["done"]
    assert killed.returncode != 0 and "exitcode  : 17" in killed.stderr, killed.stderr[-2000:]
    assert 2 <= len(done) < 9 and not seen["hidden"]  # no temp file left behind
    resumed = seen["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert len(seen["second"]) == 9 - len(done)
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == done
    assert len(summary["written"]) == 9 - len(done) and summary["failed"] == []
    assert len(list(out.glob("*.png"))) == 9


@pytest.mark.slow
def test_bench_scaleout_reports_the_ratio_and_identical_results(background):
    r = background.result("bench_job")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["identical"] is True
    assert (d["one"]["processes"], d["many"]["processes"]) == (1, 2)
    assert d["one"]["images"] == d["many"]["images"] == 4
    for run in (d["one"], d["many"]):
        assert run["images_per_s"] == pytest.approx(4 / run["wall_s"])
    assert d["speedup"] == pytest.approx(d["many"]["images_per_s"] / d["one"]["images_per_s"])


@pytest.mark.slow
def test_a_report_rank_0_cannot_write_ends_every_process_with_its_code(background):
    """Rank 1 left before rank 0 wrote the reports and exited 0 while rank 0 failed (exit 2): on
    another machine of the job every process would have said all went well."""
    done = background.result("unwritable_report_job")
    ranks = re.findall(r"rank\s*:\s*(\d)\s*\(local_rank: \d\)\s*exitcode\s*:\s*(-?\d+)", done.stderr)
    assert sorted(ranks) == [("0", "2"), ("1", "2")], done.stderr[-3000:]
    assert done.stderr.count("report.html: Is a directory") == 1, done.stderr[-3000:]


def test_only_rank_0_draws_a_methods_own_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """PULSE's search bar was drawn by every rank of a torchrun job, interleaved on one terminal."""
    from restorekit import progress
    from restorekit.plugins import registry

    cls = registry().method("pulse")
    pulse = cls(cls.Options(steps=1))  # (not quiet: its bar is drawn where stderr is a terminal)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for rank, draws in (("0", True), ("1", False)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        assert progress.draws_bars() is draws
        assert (pulse._progress("x") is not None) is draws
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert progress.draws_bars()
