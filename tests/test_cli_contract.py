"""The command line as scripts and pipelines read it: exit codes, stdout holding only results (a
``--json`` document alone), one line per warning and error, and usage errors said before any work."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.testing.data import smooth_image

# A third-party plugin whose code prints to stdout, as much code does (a load message, a debug print):
# a method (restore) and a generator (built, synthesizing).
TALKING_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Generator, Method, MethodInfo, Options


class Talk(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="talk3p", summary="nearest-neighbour, chatty")
    Options = Options

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        print("talk3p: restoring")
        out = torch.nn.functional.interpolate(lr.float(), scale_factor=scale, mode="nearest")
        return out.repeat_interleave(n_samples, 0)


class TalkGen(Generator):
    def __init__(self):
        super().__init__()
        self.z_dim, self.style_dim, self.n_styles, self.resolution = 4, 4, 2, 4
        self.mapping = torch.nn.Linear(4, 4)
        print("talkgen3p: built")

    def map(self, z):
        return self.mapping(z)

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):
        print("talkgen3p: synthesizing")
        n = w_plus.shape[0]
        return torch.sigmoid(w_plus.mean(dim=(1, 2))).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()


@hookimpl
def register_methods(register):
    register(Talk)


@hookimpl
def register_generators(register):
    register("talkgen3p", TalkGen, summary="a tiny generator that prints")
'''


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], prog_name="restorekit", env=env)


@pytest.fixture
def talking(plugin_site):
    plugin_site("thirdparty-talk", "thirdparty_talk", TALKING_PLUGIN)
    yield
    from restorekit import plugins

    plugins.reset()


@pytest.fixture
def small_hr(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(16, 16, i)).save(d / f"img{i}.png")
    return d


# ---------------------------------------------------------------------------------------------
# Usage errors: said before any work (no --out folder made), in click's usage form, exit 2


@pytest.mark.parametrize("case", ["empty data", "missing lr-dir", "empty lr-dir", "unpaired lr-dir"])
def test_compare_refuses_inputs_it_cannot_use_before_making_out(small_hr: Path, tmp_path: Path, case: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(smooth_image(8, 8, 5)).save(other / "unrelated.png")
    extra, text = {
        "empty data": (["--data", empty], f"{empty}: no input images"),
        "missing lr-dir": (["--data", small_hr, "--lr-dir", tmp_path / "nowhere"], "no such file or folder"),
        "empty lr-dir": (["--data", small_hr, "--lr-dir", empty], f"{empty}: no input images"),
        "unpaired lr-dir": (["--data", small_hr, "--lr-dir", other],
                            f"no HR image in {small_hr} has an LR image of the same stem in {other}"),
    }[case]
    out = tmp_path / "report"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--out", out, *extra)
    assert r.exit_code == 2, r.output
    assert "Usage: restorekit compare" in r.stderr and text in r.stderr, r.stderr
    assert not out.exists()  # was made (empty) before the inputs were found unusable


def test_compare_refuses_an_unknown_detector_even_without_a_face_method(small_hr: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", small_hr, "--out", out,
               "--faces", "detect", "--detector", "mtcn")
    assert r.exit_code == 2, r.output  # was a run with exit 0, the typo unsaid
    assert "unknown face detector 'mtcn' (did you mean 'mtcnn'?)" in r.stderr
    assert not out.exists()


def test_realism_unknown_space_is_a_usage_error(small_hr: Path) -> None:
    r = invoke("realism", "--generator", "stylegan2", "--data", small_hr, "--spaces", "alex,vgx", "--detector", "none")
    assert r.exit_code == 2
    assert "Usage: restorekit realism" in r.stderr and "Error: --spaces: unknown feature space 'vgx'" in r.stderr


# ---------------------------------------------------------------------------------------------
# Exit codes alike: weights that are not installed are exit 2 everywhere


def test_weights_path_of_weights_not_installed_exits_2_as_run_does(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "cache"))  # an empty cache
    r = invoke("weights", "path", "stylegan2-ffhq-config-f")
    assert r.exit_code == 2, r.output  # was 1, the code of a refused or failed file
    assert r.stderr.splitlines() == [
        "error: weights 'stylegan2-ffhq-config-f' are not available; run `restorekit weights pull --trust "
        "stylegan2-ffhq-config-f` (needs network; no sha256 is published, so --trust records the one downloaded) "
        "or `restorekit weights import --trust stylegan2-ffhq-config-f FILE` (a file you already have)"]
    assert r.stdout == ""


# ---------------------------------------------------------------------------------------------
# Lines whole at any width


def test_weights_show_lines_are_not_wrapped_at_the_terminal_width() -> None:
    r = invoke("weights", "show", "stylegan2-ffhq-config-f", env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    license_line = next(ln for ln in lines if ln.startswith("license: "))
    assert license_line.endswith(")") and "non-commercial" in license_line, lines  # was cut after 40 columns
    assert lines[0].startswith("stylegan2-ffhq-config-f — ") and len(lines[0]) > 40


def test_a_python_warning_is_one_warning_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A library's or plugin's ``warnings.warn`` is one ``warning:`` line (Python's format is two lines,
    the first beginning with the file's path), unwrapped in a narrow terminal."""
    import restorekit.cli as rc

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() sets its own: put back after
    monkeypatch.setattr(rc, "_install_stop_handlers", lambda: None)  # (the signal handlers stay pytest's)
    monkeypatch.setattr(sys, "argv", ["restorekit", "warnit"])
    monkeypatch.setenv("COLUMNS", "40")

    @click.command("warnit")
    def warnit() -> None:
        warnings.warn("the model was saved by a newer version;\nsome layers are " + "x" * 150, UserWarning)
        click.echo("result")

    cli = build_cli()
    cli.add_command(warnit)
    try:
        with pytest.raises(SystemExit) as done:
            rc.main()
    finally:
        cli.commands.pop("warnit", None)
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert out == "result\n"
    assert re.fullmatch(rf"warning: the model was saved by a newer version; \| some layers are {'x' * 150} "
                        r"\(UserWarning, test_cli_contract\.py:\d+\)\n", err), err


# ---------------------------------------------------------------------------------------------
# --json: stdout is the document alone, whatever plugin code prints


def test_generate_json_is_the_whole_stdout_while_the_generator_prints(talking, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    r = invoke("generate", "--generator", "talkgen3p", "--seeds", "0-1", "--output", out, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # the plugin's lines were in it
    assert doc["written"] == [str(out / "seed0000.png"), str(out / "seed0001.png")] and doc["failed"] == []
    assert "talkgen3p: built" in r.stderr and r.stderr.count("talkgen3p: synthesizing") == 2


def test_bench_method_json_is_the_whole_stdout_while_the_method_prints(talking) -> None:
    r = invoke("bench", "method", "talk3p", "--scale", "2", "--size", "8", "--batch", "1", "--repeat", "1",
               "--warmup", "0", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["method"] == "talk3p" and [row["batch"] for row in doc["results"]] == [1]
    assert "talk3p: restoring" in r.stderr


def test_run_json_with_a_failed_input_and_a_warning_parses_whole(talking, small_hr: Path, tmp_path: Path) -> None:
    """The summary with one input failed and the unrecorded-output warning: stdout parses as a whole."""
    (small_hr / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(smooth_image(32, 32, 0)).save(out / "img0.png")  # another program's: no record
    r = invoke("run", "talk3p", "--scale", "2", "--input", small_hr, "--output", out, "--device", "cpu", "--json",
               env={"COLUMNS": "40"})
    assert r.exit_code == 1, r.output  # some inputs failed
    doc = json.loads(r.stdout)
    assert doc["written"] == [str(out / "img1.png")] and [s["path"] for s in doc["skipped"]] == [str(out / "img0.png")]
    assert [f["path"] for f in doc["failed"]] == [str(small_hr / "bad.png")]
    lines = r.stderr.splitlines()
    assert sum(ln.startswith("error: ") and "bad.png" in ln for ln in lines) == 1
    assert sum(ln.startswith("warning: ") and "carry no record" in ln and ln.endswith("--overwrite remakes them")
               for ln in lines) == 1, lines


def test_a_command_caps_torch_threads_at_the_cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """``restorekit`` (the process's owner) gives torch no more threads than a CPU quota or Slurm's
    CPUs per task allow; a thread count the user set in the environment wins. (Importing restorekit
    as a library changes nothing: tests/test_library_use.py.)"""
    import torch

    import restorekit.cli as rc

    threads = torch.get_num_threads()
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(rc, "_install_stop_handlers", lambda: None)
    monkeypatch.setattr(sys, "argv", ["restorekit", "--help"])
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    seen = []
    try:
        torch.set_num_threads(2)
        with pytest.raises(SystemExit):
            rc.main()
        seen.append(torch.get_num_threads())
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice
        with pytest.raises(SystemExit):
            rc.main()
        seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]


def test_compare_table_notes_are_one_line_each_in_a_log(hr_folder: Path, tmp_path: Path) -> None:
    """A skipped metric's reason (a download URL and two commands) was broken over lines at the
    table's width (200 columns) in a log or a pipe; there each note is now one line."""
    import restorekit.harness.runner as runner

    reason = "weights 'x' are not available: " + " ".join(f"word{i}" for i in range(60))
    real = runner.setup_metrics

    def setup(metrics, device):  # type: ignore[no-untyped-def]
        real(metrics, device)
        for m in metrics:
            if m.name == "ssim_rgb":
                m.instance, m.status, m.reason = None, "skipped", reason

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "setup_metrics", setup)
        r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--out", tmp_path / "o",
                   "--metrics", "psnr_rgb,ssim_rgb", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"metric ssim_rgb skipped: {reason}" in r.stdout.splitlines(), r.stdout


def test_a_table_in_a_log_keeps_each_header_and_cell_on_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """demo, realism, bench and plugin checks print their tables on stdout: in a log or a pipe each
    column name and cell stays whole (rich's default of 80 columns broke ``psnr_y_crop`` in two),
    while ``COLUMNS`` (and a terminal) still sets the width."""
    from restorekit.cli import table

    columns = ["method", "psnr_y_crop", "ssim_y_crop", "lpips_alex_v0.1", "identity_dlib_dist", "lr_consistency",
               "ms/img (cpu) ↓"]
    cells = ["a_third_party_method", "16.5175", "0.3417", "0.2198", "0.5657", "0.0175", "123.4"]
    monkeypatch.delenv("COLUMNS", raising=False)
    table("astronaut ×8 (16 → 128 px)", columns, [cells])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "method" in line)
    assert all(c in header for c in columns), out
    assert any(all(v in line for v in cells) for line in out.splitlines()), out
    assert max(len(line) for line in out.splitlines()) > 80

    monkeypatch.setenv("COLUMNS", "60")
    table("astronaut ×8 (16 → 128 px)", columns, [cells])
    narrow = capsys.readouterr().out
    assert max(len(line) for line in narrow.splitlines()) <= 60, narrow


def test_a_json_document_emitted_from_a_thread_reaches_stdout() -> None:
    """A plugin command that emits its document from a worker thread: the held-back documents were
    the context's, and a new thread starts with none — the document went to stderr."""
    import threading

    from restorekit.cli import emit_json, json_output

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    @json_output
    def cmd(as_json: bool) -> None:
        print("chatter")
        worker = threading.Thread(target=emit_json, args=({"from": "thread"},))
        worker.start()
        worker.join()

    r = CliRunner().invoke(cmd, ["--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"from": "thread"} and "chatter" not in r.stdout


def test_a_listing_in_a_log_is_whole_and_unpadded(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`plugins`, `methods`, `weights list` in a log or a pipe: no summary cut to 80 columns, no line
    padded with spaces to the widest row, and FORCE_COLOR (many CI services set it) changes neither."""
    from restorekit.cli import listing

    long = ", ".join(f"method_{i}" for i in range(120))
    for env in ({}, {"FORCE_COLOR": "1"}):
        monkeypatch.delenv("COLUMNS", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        listing("Plugins", ["name", "registers"], [["p", long], ["q", "short"]], cut=("registers",))
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in capsys.readouterr().out.splitlines()]
        assert any(ln.endswith(long) for ln in lines), lines  # whole: not cut with '…'
        assert all(ln == ln.rstrip() for ln in lines) and lines[-1].split() == ["q", "short"], lines
    monkeypatch.delenv("FORCE_COLOR")
    for bad in ("0", "abc"):  # not a width: as if unset (0 printed nothing at all)
        monkeypatch.setenv("COLUMNS", bad)
        listing("Plugins", ["name", "registers"], [["p", long]], cut=("registers",))
        assert long in capsys.readouterr().out
    monkeypatch.setenv("COLUMNS", "60")
    listing("Plugins", ["name", "registers"], [["p", long]], cut=("registers",))
    out = capsys.readouterr().out
    assert long not in out and "…" in out and max(len(ln) for ln in out.splitlines()) <= 60


def test_a_compare_table_in_a_colour_forced_log_is_the_wide_one(hr_folder: Path, tmp_path: Path) -> None:
    """FORCE_COLOR (set by many CI services) made rich take a log for an 80-column terminal: the
    comparison table was turned and split as in a narrow terminal. Colour stays; the width is the log's."""
    import os
    import subprocess

    env = {**os.environ, "FORCE_COLOR": "1"}
    env.pop("COLUMNS", None)
    r = subprocess.run([sys.executable, "-m", "restorekit", "compare", "--methods", "bicubic", "--scale", "2",
                        "--data", str(hr_folder), "--out", str(tmp_path / "cmp"), "--metrics",
                        "psnr_rgb,ssim_rgb,psnr_y_crop,ssim_y_crop,lr_consistency", "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
    assert "\x1b[" in r.stdout  # still coloured, as asked
    header = next(ln for ln in plain.splitlines() if "method" in ln)
    assert "psnr_rgb ↑" in header and "lr_consistency ↓" in header and "ms/img" in header, plain


def test_no_progress_bar_redraws_in_a_colour_forced_log(small_hr: Path, tmp_path: Path) -> None:
    """With FORCE_COLOR rich takes a log for a terminal: run's bar hid the cursor and redrew itself
    into the file (``ESC[?25l``, ``ESC[2K`` per refresh). A bar is drawn only where stderr is one."""
    import os
    import subprocess

    env = {**os.environ, "FORCE_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "restorekit", "run", "bicubic", "--scale", "2", "--input", str(small_hr),
                        "--output", str(tmp_path / "out"), "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "written" in r.stderr and "\x1b[?25l" not in r.stderr and "\x1b[2K" not in r.stderr, repr(r.stderr)


def test_usage_errors_print_what_was_typed_as_printable_text() -> None:
    """A usage error quotes the typed value: its escape sequences reached the terminal raw."""
    for args, quoted in ((["run", "bic\x07", "--scale", "2", "--input", "x", "--output", "y"], "'bic\\x07'"),
                         (["degrade", "--spec", "bicubic:\x1b[2J", "--input", "x", "--output", "y"], "bicubic:\\x1b[2J"),
                         (["--x\x1b[31m"], "'--x\\x1b[31m'")):
        r = invoke(*args)
        assert r.exit_code == 2, r.output
        assert "\x1b" not in r.stderr and "\x07" not in r.stderr
        assert quoted in r.stderr.splitlines()[-1]


def test_a_file_gone_while_a_method_loads_is_a_file_line_not_a_plugin_bug(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`weights rm` while `run` loaded those weights read "could not load psp_sr (plugin 'psp_sr'):
    FileNotFoundError: [Errno 2] …", the wording of a plugin's own bug."""
    import restorekit.commands.run as run_mod

    gone = tmp_path / "cache" / "net" / "net.safetensors"

    def vanished(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", str(gone))

    monkeypatch.setattr(run_mod, "build_method", vanished)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "in.png")
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(tmp_path / "in.png"), "--output", str(tmp_path / "o"))
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines()[-1] == (f"error: could not load bicubic: cannot read {gone}: No such file or "
                                         "directory; check that the path exists")


@pytest.mark.parametrize("group", [[], ["weights"], ["train"], ["plugin"]])
def test_a_bare_group_prints_its_help_as_lines(group: list[str]) -> None:
    """Making usage errors printable turned the help a bare group prints (click's NoArgsIsHelpError,
    whose message is the help) into one line of literal "\\n"s."""
    r = invoke(*group)
    lines = r.output.splitlines()
    assert lines[0].startswith("Usage: restorekit") and "\\n" not in r.output
    assert any(line.startswith("Commands:") for line in lines) and len(lines) > 5
