"""bench method, bench scaleout, realism and --device: the audit's findings, each pinned.

- bench method timed NAME, all of it, then the second method (load drifting between the two
  phases moved the ratio), gave the second one at most one warm-up, and let NAME's process-wide
  keep_memory carry over to a ``--compare-opt keep_memory=false`` side;
- bench scaleout sent unknown metrics and too-small inputs to torchrun and reported torchrun's
  summary instead of the worker's error;
- realism fell over on a set with fewer than 2 readable images ("unexpected ValueError") and did
  not say which generator (weights, options) it had scored;
- ``--device cuda`` without a GPU printed click's usage block in bench method/harness/generator.

Fake methods, fake launches and tiny feature spaces: nothing here needs real weights, a GPU or
the face photos, and no assertion depends on how fast anything ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import Tensor, nn

from restorekit.cli import build_cli
from restorekit.errors import RestorekitError
from restorekit.harness.realism import FeatureSpace
from restorekit.testing.data import random_alexnet_file

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), prog_name="restorekit", catch_exceptions=False)


# ---------------------------------------------------------------------------------------------
# bench method: interleaving, warm-up, keep_memory


class FakeMethod:
    """Enough of a method for bench method: bicubic output, every call logged as (label, timed?)."""

    def __init__(self, label: str, log: list[str], *, keep_memory: bool | None = None,
                 resolution: int | None = None, device: str = "cpu") -> None:
        self.label, self.log = label, log
        self.device = torch.device(device)
        self.info = SimpleNamespace(name=label)
        self.options = SimpleNamespace() if keep_memory is None else SimpleNamespace(keep_memory=keep_memory)
        if resolution is not None:
            self.resolution = resolution

    def check_scale(self, scale: int) -> None:
        pass

    def restore(self, lr: Tensor, scale: int, **_: Any) -> Tensor:
        from restorekit.degradations import bicubic_resize
        from restorekit import memory

        self.log.append(f"{self.label}{'+' if memory._applied is True else ''}")  # '+': freed memory kept
        return bicubic_resize(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)).clamp(0, 1)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    """``bench method bicubic --compare-to bicubic`` with fake methods: ``set(name=..., other=...)``
    chooses their keep_memory and resolution; calls land in ``log``. A method that would switch
    keep_memory on does so (in :mod:`restorekit.memory`'s flag only; malloc is left alone)."""
    from restorekit import memory
    from restorekit.commands import bench_method

    monkeypatch.setattr(memory, "_applied", None)
    log: list[str] = []
    made: dict[str, dict[str, Any]] = {"name": {}, "other": {}}
    order = iter(["name", "other"])

    def build(name: str, opts: tuple[str, ...], weights: str | None, device: str) -> FakeMethod:
        side = next(order)
        m = FakeMethod("N" if side == "name" else "O", log, **made[side])
        asks = made[side].get("keep_memory") is True and made[side].get("resolution", 1024) >= 256
        if asks:  # what psp_sr's restore does (CPU, 256 px and more): switch it on, for good
            inner = m.restore

            def restore(lr: Tensor, scale: int, **kw: Any) -> Tensor:
                monkeypatch.setattr(memory, "_applied", True)
                return inner(lr, scale, **kw)

            m.restore = restore  # type: ignore[method-assign]
        return m

    monkeypatch.setattr(bench_method, "_build", build)

    def setup(**sides: dict[str, Any]) -> list[str]:
        made.update(sides)
        return log

    return setup


def bench_json(*extra: str) -> dict[str, Any]:
    r = invoke("bench", "method", "bicubic", "--compare-to", "bicubic", "--size", "8", "--batch", "1",
               "--device", "cpu", "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_runs_of_the_two_methods_alternate_after_the_same_warmup(fakes) -> None:
    log = fakes(name={}, other={})
    data = bench_json("--repeat", "4", "--compare-repeat", "2", "--warmup", "2")
    # Two warm-ups each (the second method got at most one before), then the timed runs spread evenly.
    assert log == ["N", "O", "N", "O", "N", "O", "N", "N", "O", "N"], log
    assert data["timing"] == {"order": "interleaved"}
    assert data["results"][0]["repeats"] == 4 and data["compare_results"][0]["repeats"] == 2


def test_a_side_without_keep_memory_is_timed_before_the_side_that_switches_it_on(fakes) -> None:
    """docs/performance.md's "before": NAME optimised with keep_memory (the default), the second
    method with keep_memory=false. Timed after NAME, the second one ran with NAME's memory kept."""
    log = fakes(name={"keep_memory": True, "resolution": 1024}, other={"keep_memory": False, "resolution": 1024})
    r = invoke("bench", "method", "bicubic", "--compare-to", "bicubic", "--size", "8", "--batch", "1",
               "--device", "cpu", "--json", "--repeat", "2", "--compare-repeat", "2", "--warmup", "1")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[r.stdout.index("{"):])
    assert log == ["O", "O", "O", "N+", "N+", "N+"], log  # every call of O before any of N, none with memory kept
    assert data["timing"]["order"] == "sequential" and data["timing"]["first"] == "other"
    assert "differ in keep_memory" in r.stderr and "not interleaved" in r.stderr


def test_a_method_without_the_option_counts_as_one_without_it(fakes) -> None:
    log = fakes(name={}, other={"keep_memory": True})  # no resolution told: counts as a large one
    data = bench_json("--repeat", "1", "--compare-repeat", "1", "--warmup", "0")
    assert log == ["N", "O+"] and data["timing"]["first"] == "name"


def test_small_generators_do_not_switch_memory_so_their_runs_alternate(fakes) -> None:
    log = fakes(name={"keep_memory": True, "resolution": 128}, other={"keep_memory": False})
    data = bench_json("--repeat", "2", "--compare-repeat", "2", "--warmup", "0")
    assert log == ["N", "O", "N", "O"] and data["timing"]["order"] == "interleaved"


def test_memory_already_kept_in_the_process_is_refused_in_one_line(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit import memory

    log = fakes(name={"keep_memory": True, "resolution": 1024}, other={"keep_memory": False})
    monkeypatch.setattr(memory, "_applied", True)
    r = invoke("bench", "method", "bicubic", "--compare-to", "bicubic", "--size", "8", "--device", "cpu")
    assert r.exit_code == 2 and "already keeps freed memory" in r.stderr and log == [], r.output


def test_switches_memory_reads_the_option_the_device_and_the_resolution() -> None:
    from restorekit.commands.bench_method import switches_memory

    log: list[str] = []
    assert switches_memory(FakeMethod("a", log, keep_memory=True, resolution=256))  # type: ignore[arg-type]
    assert switches_memory(FakeMethod("a", log, keep_memory=True))  # type: ignore[arg-type]
    assert not switches_memory(FakeMethod("a", log, keep_memory=True, resolution=128))  # type: ignore[arg-type]
    assert not switches_memory(FakeMethod("a", log, keep_memory=False, resolution=1024))  # type: ignore[arg-type]
    assert not switches_memory(FakeMethod("a", log, resolution=1024))  # type: ignore[arg-type]
    assert not switches_memory(FakeMethod("a", log, keep_memory=True, device="meta"))  # type: ignore[arg-type]
    pulse_like = FakeMethod("a", log, keep_memory=True)
    pulse_like.generator = SimpleNamespace(resolution=64)  # type: ignore[attr-defined]
    assert not switches_memory(pulse_like)  # type: ignore[arg-type]


def test_the_ratio_names_its_backend_and_compare_rows_their_device_and_precision() -> None:
    data = bench_json("--repeat", "1", "--compare-repeat", "1", "--warmup", "0")
    assert data["speed_ratio_backend"] == "torch"
    (row,) = data["compare_results"]
    assert row["device"] == "cpu" and row["precision"] == "float32"


@pytest.mark.parametrize("flag", [("--compare-opt", "optimize=false"), ("--compare-repeat", "3"),
                                  ("--compare-batch", "1")])
def test_second_method_options_without_compare_to_are_refused(flag: tuple[str, str]) -> None:
    r = invoke("bench", "method", "bicubic", "--size", "8", "--device", "cpu", *flag)
    assert r.exit_code == 2 and f"{flag[0]} applies to the second method of --compare-to" in r.stderr, r.output
    assert "ms/call" not in r.stdout  # refused before any timing


def test_the_documented_before_runs_without_keep_memory() -> None:
    """docs/performance.md's command gave a "before" with NAME's keep_memory on."""
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert "--compare-to psp_sr" in block and "--compare-opt optimize=false" in block
    assert "--compare-opt keep_memory=false" in block


# ---------------------------------------------------------------------------------------------
# bench scaleout


def test_scaleout_checks_metrics_and_sizes_before_launching(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.harness import bench_scaleout

    def launch(*a: Any, **k: Any) -> None:
        raise AssertionError("launched torchrun")

    monkeypatch.setattr(bench_scaleout, "_launch", launch)
    with pytest.raises(RestorekitError, match=r"^bench scaleout: --metrics: unknown metric 'psnr_nosuch'"):
        bench_scaleout.run_scaleout(2, 32, 4, 2, 1, 1, "psnr_y_crop,psnr_nosuch", repeats=1)
    with pytest.raises(RestorekitError, match=r"--size 16 at --scale 16 gives 1-px .*use --size 32 or more"):
        bench_scaleout.run_scaleout(2, 16, 16, 2, 1, 1, "psnr_y_crop", repeats=1)
    with pytest.raises(RestorekitError, match="names no metric"):
        bench_scaleout.run_scaleout(2, 32, 4, 2, 1, 1, " , ", repeats=1)
    r = invoke("bench", "scaleout", "--metrics", "psnr_nosuch")
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: bench scaleout: --metrics: unknown metric")


TORCHRUN_FAILURE = """Usage: restorekit compare [OPTIONS]
Try 'restorekit compare --help' for help.

Error: unknown metric 'psnr_nosuch'; known: psnr_rgb, psnr_y_crop
E1206 22:49:17.391000 2586 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_a_failed_worker_is_reported_by_its_own_error_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from restorekit.harness import bench_scaleout

    assert bench_scaleout.worker_error(TORCHRUN_FAILURE) == "unknown metric 'psnr_nosuch'; known: psnr_rgb, psnr_y_crop"
    assert bench_scaleout.worker_error("[rank1]: error: x.png: not an image\nsummary") == "x.png: not an image"
    assert bench_scaleout.worker_error("a\nb\nc\nd") == "b | c | d"  # no error line: the last lines
    monkeypatch.setattr(bench_scaleout.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=1, stderr=TORCHRUN_FAILURE, stdout=""))
    with pytest.raises(RestorekitError) as e:
        bench_scaleout._launch(2, 1, tmp_path, tmp_path / "o", 4, 1, "psnr_y_crop")
    assert str(e.value) == ("bench scaleout: compare with 2 processes failed: unknown metric 'psnr_nosuch'; known: "
                            "psnr_rgb, psnr_y_crop")


# ---------------------------------------------------------------------------------------------
# realism


class MeanColour(FeatureSpace):
    """A 3-D feature space (each image's mean colour): enough for statistics, no weights."""

    name, dim, summary = "mean_rgb", 3, "mean colour"

    def __init__(self) -> None:
        super().__init__("cpu")

    def network(self) -> nn.Module:
        return nn.Identity()

    def _features(self, images: Tensor) -> Tensor:
        return images.mean(dim=(2, 3))


def write_images(folder: Path, n: int, *, bad: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    for i in range(bad):
        p = folder / f"bad{i}.png"
        p.write_bytes(b"not an image at all")
        paths.append(p)
    return paths


def test_a_set_with_fewer_than_two_readable_images_is_one_line_naming_the_files(tmp_path: Path) -> None:
    from restorekit.harness import realism as R

    ref = write_images(tmp_path / "ref", 1, bad=1)
    good = write_images(tmp_path / "good", 3)
    with pytest.raises(RestorekitError) as e:  # was: ValueError "feature statistics need at least 2 samples"
        R.reference_statistics(ref, [MeanColour()], skipped=[])
    msg = str(e.value)
    assert msg.startswith("the reference set needs at least 2 readable images, got 1 of 2 (left out: ")
    assert str(ref[1]) in msg and "\n" not in msg
    imgs = write_images(tmp_path / "imgs", 1, bad=2)
    with pytest.raises(RestorekitError, match=r"the image set needs at least 2 readable images, got 1 of 3") as e:
        R.evaluate_images(str(tmp_path / "imgs"), good, spaces=[MeanColour()])
    assert str(e.value).startswith(f"{tmp_path / 'imgs'}: ") and str(imgs[1]) in str(e.value)


def random_alex_file(tmp_path: Path) -> Path:
    """Random AlexNet weights in torchvision naming (a file passed with --space-weights)."""
    return random_alexnet_file(tmp_path / "alex-random.safetensors")


def test_realism_cli_says_which_files_left_the_set_short(tmp_path: Path) -> None:
    ref = write_images(tmp_path / "ref", 1, bad=1)
    write_images(tmp_path / "imgs", 3)
    r = invoke("realism", "--images", str(tmp_path / "imgs"), "--data", str(tmp_path / "ref"), "--spaces", "alex",
               "--space-weights", f"alex={random_alex_file(tmp_path)}", "--cache", "none", "--detector", "none",
               "--device", "cpu", "-q")
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'ref'}: the reference set needs at least 2 readable images, got 1 "
                           f"of 2 (left out: {ref[1]}: "), line


class Tiny(nn.Module):
    """A generator with weights (so a state sha256), notes and nothing else."""

    z_dim, style_dim, n_styles, resolution = 4, 4, 1, 8

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lin = nn.Linear(4, 3)
        self.notes = [f"tiny: weights tiny-{seed}, license MIT"]

    def map(self, z: Tensor) -> Tensor:
        return z

    def mean_latent(self) -> Tensor:
        return torch.zeros(1, 4)

    def synthesize(self, w_plus: Tensor, **_: Any) -> Tensor:
        return torch.sigmoid(self.lin(w_plus[:, 0]))[:, :, None, None].expand(-1, 3, 8, 8)


def test_the_report_says_which_generator_with_weights_state_and_options(tmp_path: Path) -> None:
    from restorekit.commands.realism import generator_line
    from restorekit.harness import realism as R

    ref = write_images(tmp_path / "ref", 4)
    reports = []
    for seed in (1, 2):
        g = Tiny(seed)
        prov = R.generator_provenance("tiny", g, weights=None, options={"channel_max": "64"})
        reports.append(R.evaluate_generator(g, ref, n_samples=4, spaces=[MeanColour()],
                                            provenance=prov))
    a, b = (r.as_dict()["generator"] for r in reports)
    assert a["name"] == "tiny" and a["weights"] is None and a["options"] == {"channel_max": "64"}
    assert len(a["weights_state_sha256"]) == 64 and a["weights_state_sha256"] != b["weights_state_sha256"]
    assert a["notes"] == ["tiny: weights tiny-1, license MIT"]
    json.dumps(reports[0].as_dict())  # what --json prints
    line = generator_line(a)
    assert line == (f"generator: tiny, weights tiny-1, license MIT; state sha256 {a['weights_state_sha256']}; "
                    f"--opt channel_max=64")
    assert "same sample count, reference set and --seed" in reports[0].note
    # An image set has no generator.
    assert R.evaluate_images(ref, ref, spaces=[MeanColour()]).generator is None


# ---------------------------------------------------------------------------------------------
# --device cuda without a GPU: one line, in every command


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("args", [("bench", "method", "bicubic"), ("bench", "harness"),
                                  ("compare", "--methods", "bicubic", "--data", "x", "--out", "y"),
                                  ("realism", "--images", "x", "--data", "y")])
def test_cuda_without_a_gpu_is_one_error_line(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    no_gpu(monkeypatch)
    r = invoke(*args, "--device", "cuda")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == ["error: --device cuda: no CUDA device is available (use --device cpu "
                                             "or auto)"], r.stderr


def test_cuda_index_past_the_gpus_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    r = invoke("bench", "method", "bicubic", "--device", "cuda:3")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: --device cuda:3: this machine has 1 CUDA device (cuda:0)"], r.stderr


def test_device_help_and_cpu_need_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.devices import DEVICE

    no_gpu(monkeypatch)
    assert invoke("bench", "method", "--device", "cuda", "--help").exit_code == 0
    assert DEVICE.convert("CPU", None, None) == "cpu" and DEVICE.convert("auto", None, None) == "auto"
    with pytest.raises(RestorekitError, match="no CUDA device"):
        DEVICE.convert("cuda:0", None, None)


def test_realism_names_a_mistyped_detector_before_loading_any_space(tmp_path: Path) -> None:
    """Usage first: a mistyped --detector is said (with a suggestion) before a space's weights are
    looked for, here a file that is not there."""
    write_images(tmp_path / "ref", 2)
    write_images(tmp_path / "imgs", 2)
    r = invoke("realism", "--images", str(tmp_path / "imgs"), "--data", str(tmp_path / "ref"), "--spaces", "alex",
               "--space-weights", f"alex={tmp_path / 'none.safetensors'}", "--cache", "none", "--detector", "mtcnnn",
               "--device", "cpu", "-q")
    assert r.exit_code == 2, r.output
    assert "mtcnnn" in r.output and "mtcnn" in r.output.replace("mtcnnn", "") and "none.safetensors" not in r.output
