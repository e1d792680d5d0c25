"""Applying a per-image function to many input files: naming, skipping, atomic writes, failures.

Shared by ``run`` and ``degrade``: one bad file is reported and the rest go on; a write that the
file system refuses for every file (full, over quota, read-only) stops the batch there, the inputs
left listed as not processed. Under ``torchrun`` (``run``) the inputs are shared out between the
ranks (see :func:`process_files`).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import cli
from .cli import UsageProblem, debugging, describe_unexpected
from .errors import FileSystemError, ImageError, RestorekitError, describe_os_error, os_error_fix
from .images import (FOLDER_ERRNOS, ImageItem, _is_glob_spec, check_output_size, listing_folders, probe_size,
                     read_image, save_image, special_file_kind, storage_errno, storage_path, sweep_temp_files)
from .provenance import cut_short
from .safe_open import remove_made_folder
from .sharding import Job, current_job

# Errors a single input may raise without stopping the batch.
PER_IMAGE_ERRORS = (RestorekitError, ValueError, RuntimeError, OSError)


class SkipInput(Exception):
    """Raised by a per-image function (or ``expected``) for an input that has nothing to write,
    for ``reason`` (e.g. no face found under ``--only-faces``): the input is listed as skipped,
    ``{"path": input, "reason": reason}``, not written and not failed. ``short`` names the reason
    in the end-of-run line."""

    def __init__(self, reason: str, short: str) -> None:
        super().__init__(reason, short)
        self.reason = reason
        self.short = short

    def __str__(self) -> str:
        return self.reason


#: The reason of a skipped output that exists already.
EXISTS = "exists (--overwrite replaces it)"


@dataclass
class BatchResult:
    """What happened to each input.

    ``written`` lists the outputs written; ``skipped`` one ``{"path", "input", "reason"}`` each: an
    output that existed (``path``; reason :data:`EXISTS`) or an input with nothing to write (see
    :class:`SkipInput`; ``path`` is the input then), ``input`` always the input it is of, as
    ``failed``'s ``path`` (``{"path", "error"}``) and the keys of ``reports`` are.
    """

    written: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    reports: dict[str, object] = field(default_factory=dict)
    # SkipInput.short of each input skipped for a reason, in the order of those ``skipped`` entries
    skip_kinds: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def skipped_text(self) -> str:
        """``"N skipped (exist; --overwrite replaces)"``, inputs skipped for another reason counted apart:
        ``"N skipped (M exist, --overwrite replaces; K no face)"``."""
        if not self.skip_kinds:
            return f"{len(self.skipped)} skipped (exist; --overwrite replaces)"
        n_exist = len(self.skipped) - len(self.skip_kinds)
        parts = [f"{n_exist} exist, --overwrite replaces"] if n_exist else []
        parts += [f"{self.skip_kinds.count(kind)} {kind}" for kind in dict.fromkeys(self.skip_kinds)]
        return f"{len(self.skipped)} skipped ({'; '.join(parts)})"

    def add_exists(self, path: object, input_path: object) -> None:
        self.skipped.append({"path": str(path), "input": str(input_path), "reason": EXISTS})

    def add_skip(self, path: object, reason: str, short: str) -> None:
        self.skipped.append({"path": str(path), "input": str(path), "reason": reason})
        self.skip_kinds.append(short)

    def as_dict(self) -> dict[str, object]:
        return {"written": self.written, "skipped": self.skipped, "failed": self.failed,
                "reports": self.reports}


#: The largest side each output format can hold (JPEG's 16-bit size fields, as libjpeg caps
#: them; WebP's 14-bit ones): a larger output is refused before the work, not after it.
MAX_SIDE = {"jpg": 65500, "jpeg": 65500, "webp": 16383}


def check_inputs(items: list[ImageItem], *, max_pixels: int, out_scale: int = 1, n_outputs: int = 1,
                 max_output_pixels: int | None = None, ext: str | None = None,
                 couple: bool = False) -> tuple[list[ImageItem], list[dict[str, str]]]:
    """Check every input from its header before any work: ``(usable, failures)``.

    An input fails when it is unreadable, outside ``max_pixels``, when ``n_outputs`` results
    ``out_scale`` times its size would exceed ``max_output_pixels`` (None: no output limit), or
    when the file written is larger than the output format ``ext`` can hold (:data:`MAX_SIDE`):
    with ``couple`` (``--couple``) that file is twice as wide, the input beside the result.
    """
    ok: list[ImageItem] = []
    failed: list[dict[str, str]] = []
    side_limit = MAX_SIDE.get((ext or "").lower())
    for item in items:
        try:
            w, h = probe_size(item.path, max_pixels=max_pixels)
            if max_output_pixels is not None:
                check_output_size(w, h, out_scale, item.path, max_output_pixels=max_output_pixels,
                                  n_outputs=n_outputs)
            if side_limit is not None:
                check_output_side(w * out_scale, h * out_scale, item.path, ext or "", side_limit, couple)
            ok.append(item)
        except PER_IMAGE_ERRORS as exc:
            msg = str(exc) if str(item.path) in str(exc) else f"{item.path}: {exc}"
            failed.append({"path": str(item.path), "error": msg})
    return ok, failed


def check_output_side(width: int, height: int, where: object, ext: str, side_limit: int, couple: bool) -> None:
    """Refuse (one line) a ``width``×``height`` result whose file would pass ``side_limit`` px a side:
    a ``--couple`` file holds the input (resized to the result's size) beside it, ``2·width`` wide."""
    file_width = 2 * width if couple else width
    if max(file_width, height) <= side_limit:
        return
    what = f"{file_width}×{height} --couple" if couple else f"{width}×{height}"
    fix = "use --ext png" + (" or drop --couple" if couple and max(width, height) <= side_limit else "")
    raise ImageError(f"{where}: its {what} output is larger than {ext} holds ({side_limit} px a side); {fix}")


def _path_problem(p: Path) -> bool:
    """Whether asking the file system about ``p`` fails (the output the failure is about)."""
    try:
        p.exists()
        return False
    except (OSError, RuntimeError):
        return True


def _replaces_input(dest: Path) -> str:
    return f"{dest}: is an input file; refusing to overwrite an input (write to another --output folder)"


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two folder paths name one folder (the same inode where both exist, else the same
    resolved path: an output folder not made yet can still be an input folder's other name)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return _resolved(a) == _resolved(b)
    except (OSError, ValueError):
        return False


def _glob_tail(pattern: str) -> str:
    """The literal text after the last wildcard (``*``, ``?``, a ``[...]`` class) of a glob's
    file-name part: every name the pattern matches ends with it."""
    tail_start, i, n = 0, 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch in "*?":
            i += 1
            tail_start = i
        elif ch == "[":  # fnmatch's rule: a class closes at the first ']' after '[', '[!' or '[]'
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j < 0:  # no closing bracket: a literal '['
                i += 1
            else:
                i = j + 1
                tail_start = i
        else:
            i += 1
    return pattern[tail_start:]


def _glob_may_match_outputs(input_spec: str, ext: str) -> bool:
    """Whether a glob's file-name pattern could match an output name ``<name>.<ext>`` (any name;
    ``<name>.json`` too, a sidecar): its literal ending (after the last wildcard) must fit the end
    of ``.<ext>`` (case ignored, as some file systems ignore it)."""
    base = os.path.basename(input_spec)
    tail = _glob_tail(base).lower()
    if not tail:
        return True
    for suffix in (f".{ext}".lower(), ".json"):  # .json: the sidecars beside `run --faces detect` outputs
        if tail.endswith(suffix) or (any(ch in base for ch in "*?[") and suffix.endswith(tail)):
            return True
    return False


def check_output_folder(input_spec: str, output: Path, ext: str = "png") -> None:
    """Refuse (``ImageError``, one line; the commands make it a usage error, exit 2) an output
    folder that inputs are listed from (``--input`` a folder, or a glob matching files there
    whose pattern could match an output name, ``<name>.<ext>``): each run would take the
    previous run's outputs for new inputs (``face.jpg`` → ``face.png``, then ``face.jpg.png``
    and ``face.png.png``, …). A glob such as ``'faces/*.jpg'`` with ``.png`` outputs is accepted."""
    folders = listing_folders(input_spec)
    if folders and _is_glob_spec(str(input_spec)) and not _glob_may_match_outputs(str(input_spec), ext):
        return
    for folder in folders:
        if _same_folder(folder, output):
            raise ImageError(f"--output {output} is the folder the inputs are listed from ({folder}): every run "
                             "would take the last run's outputs for inputs; write to another folder")


def _resolved(p: Path) -> Path:
    """``p.resolve()``, or its absolute path where that fails (a symbolic link loop, a name too long)."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".restorekit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        fix = ("a file is in the way: choose another folder" if folder.exists() and not folder.is_dir()
               else os_error_fix(exc))
        raise FileSystemError(f"{folder}: output folder cannot be written ({exc.strerror or exc}); {fix}") from None


class OutputFolderBusy(RestorekitError):
    """Another ``run``, ``degrade`` or ``generate`` is writing into the output folder (exit 2, one line)."""


#: The lock file ``run``, ``degrade`` and ``generate`` hold in their ``--output`` folder while they run
#: (hidden: never an input; removed at the end).
OUTPUT_LOCK = ".output.lock"


@contextmanager
def output_held(outdir: Path, command: str, job: Job | None = None) -> Iterator[None]:
    """Hold ``outdir`` for this one ``restorekit COMMAND`` for the block (rank 0 of a ``torchrun``
    job holds it for every rank): a second ``run``, ``degrade`` or ``generate`` writing there
    meanwhile is refused at once (exit 2), naming the folder and the process holding it.

    Each command checks the outputs already there (their settings) and skips those that exist:
    two at once had both found the folder empty, then skipped each other's files as their own.
    Take it before that check. A folder not made yet is made here (or refused in one line, as
    :func:`check_writable` does); one this process cannot write to is no error here (a finished
    run, every output skipped, writes nothing)."""
    from .folder_lock import held_alone, holder

    job = job or current_job()

    def refused() -> OutputFolderBusy:
        who = holder(outdir, OUTPUT_LOCK)
        other = (f"another restorekit {who[1] or 'command'} (process {who[0]})" if who is not None
                 else "another restorekit command")
        return OutputFolderBusy(f"{outdir}: {other} is writing into this folder; wait for it to end (a rerun "
                                "then skips what it made), or use another --output")

    made: list[tuple[Path, os.stat_result]] = []  # the folders made here, deepest first, as made
    ended_early = True
    try:
        with ExitStack() as held:
            def take() -> None:
                if not job.is_main:
                    return
                if not outdir.is_dir():
                    missing = [p for p in (outdir, *outdir.parents) if not p.exists()]
                    check_writable(outdir)  # made here, or one line saying why not
                    made.extend((p, os.lstat(p)) for p in missing)
                try:
                    held.enter_context(held_alone(outdir, OUTPUT_LOCK, refused, read_only_ok=True, note=command,
                                                  remove=True))
                except OSError as exc:
                    if isinstance(exc, RestorekitError):
                        raise
                    raise FileSystemError(describe_os_error(exc, outdir / OUTPUT_LOCK)) from None
                # Held alone now: a temp file whose writer (named in it: .x.png.<pid>-<host>-<8>.part)
                # no longer runs is one a killed run left mid-write, which no rerun would ever replace;
                # one of another host or an older name over a minute old too. (A live writer's is left:
                # e.g. a run that took the folder before this one.)
                sweep_temp_files([outdir])

            job.together(take)
            try:
                yield
            except SystemExit as exc:  # the command's own end: 0, or 1 when some inputs failed
                ended_early = exc.code not in (None, 0, 1)
                raise
            ended_early = False
    finally:
        # A command stopped before its work (missing weights, a usage error) leaves no folder it
        # made; one that ran keeps its folder, empty or not, as its summary names it. Only the very
        # folders made: not one that a link, planted since in a shared parent, leads to.
        if ended_early:
            for folder, as_made in made:
                if not remove_made_folder(folder, as_made):  # (only when empty)
                    break


def _stop_reason(exc: BaseException, outdir: Path) -> str:
    """Why a batch stopped at ``exc`` (a :func:`~restorekit.images.storage_errno` error), and the fix.
    The disk (or the folder that refused a new file) named is the one the failed write went to
    (:func:`~restorekit.images.storage_path`): the output folder's, unless that path lies elsewhere
    (a method's scratch space in /tmp or /dev/shm, a cache), where another ``--output`` would not help."""
    code = storage_errno(exc)
    failed = storage_path(exc)
    elsewhere = failed is not None and not _under(Path(failed), outdir)
    where = failed if elsewhere else outdir
    if code in FOLDER_ERRNOS:  # (a folder that refuses new files: named, not the file tried)
        where = Path(failed).parent if failed is not None and elsewhere else outdir
        what, fix = f"{where} refuses new files ({os.strerror(code)})", "make it writable for this user"
    elif code == errno.EROFS:
        what, fix = f"{where} is on a read-only file system", "make it writable"
    elif code == errno.ENOSPC:
        what, fix = f"the disk holding {where} is full", "free some disk space"
    else:  # EDQUOT
        what, fix = f"the disk quota for {where} is used up", "free some disk space"
    if elsewhere:
        return (f"{what} (written while restoring, not an output), so every input would fail the same way; {fix} "
                "there, then run the same command again: it goes on from there")
    return (f"{what}, so every output would fail the same way; {fix} (or use another --output), then run the same "
            "command again: it goes on from there")


def _under(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (or is it), both taken as absolute paths, links not followed."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def require_inputs(items: list[ImageItem], spec: str) -> list[ImageItem]:
    """``items`` when there is at least one; else a usage error (exit 2), ``SPEC: no input images``:
    the same refusal in every command that takes an input spec (``run``, ``degrade``, ``bench faces``)."""
    if not items:
        raise UsageProblem(f"{spec}: no input images")
    return items


def bar_disabled(console: Console, total: int, quiet: bool) -> bool:
    """Whether a progress bar stays off: ``quiet``, at most one step, or stderr not a terminal (a
    log file, a pipe: rich would leave only a stray blank line there — or, with ``FORCE_COLOR``,
    which makes ``console.is_terminal`` true, a line per refresh)."""
    from .terminals import console_animates

    return quiet or total <= 1 or not console_animates(console)


@contextmanager
def progress_bar(total: int, label: str, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr (a terminal only); yields ``advance(description)``. It draws
    on the console that error and warning lines are printed through (:data:`restorekit.cli.err_console`),
    so a line said mid-run goes above the bar, not onto its line."""
    console = cli.err_console
    disable = bar_disabled(console, total, quiet)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True, disable=disable) as prog:
        task = prog.add_task(label, total=total)

        def advance(desc: str) -> None:
            prog.update(task, advance=1, description=f"{label} {desc}")

        yield advance


class _OutputFolder:
    """What is at each output path of one folder, asked of the file system once per question.

    A batch asks of every output where it leads (an input must never be written over) and what
    is there (a folder, a finished output). ``Path.resolve`` walks the whole path, one system call
    per folder on the way and another to check the end, for every output. Here the folder is
    resolved once, and again only when the folder its path leads to is another one (a link on the
    way changed meanwhile); an output that is not a symbolic link (nothing there, a plain file or
    folder) leads to that folder and its name, so an ``lstat`` of it and a ``stat`` of the folder
    answer all three. A link, or any other answer, is asked as before (``resolve``, ``exists``,
    ``is_dir``)."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self._resolved: tuple[tuple[int, int], Path] | None = None  # (the folder's device and inode, its path)

    def _folder(self) -> Path | None:
        """The folder's resolved path; None when it cannot be asked (not there yet…)."""
        try:
            st = os.stat(self.outdir)
        except OSError:
            return None
        if not st.st_ino:  # (no inode numbers to tell folders apart)
            return None
        ident = (st.st_dev, st.st_ino)
        if self._resolved is None or self._resolved[0] != ident:
            self._resolved = (ident, self.outdir.resolve())
        return self._resolved[1]

    def look(self, path: Path) -> tuple[Path, bool, str | None]:
        """``(path.resolve(), path.exists(), what stands there that no output may replace)`` for an
        output path: "a folder", "a FIFO (named pipe)", a device…, or None (nothing, or a regular
        file); their errors as theirs."""
        if path.parent == self.outdir:
            try:
                mode: int | None = os.lstat(path).st_mode
            except FileNotFoundError:
                mode = None
            except OSError:  # (a name too long…: asked as before, which says it as before)
                mode = stat.S_IFLNK
            folder = self._folder() if mode is None or not stat.S_ISLNK(mode) else None
            if folder is not None:
                return folder / path.name, mode is not None, _no_output(mode)
        there = path.exists()
        return path.resolve(), there, _no_output(path.stat().st_mode) if there else None


def _made_again(path: Path) -> bool:
    """Whether the output at ``path`` is cut short (:func:`~restorekit.provenance.cut_short`: a copy
    or a write that stopped), so it is no finished output and is written again; said in one
    ``warning:`` line (``-q`` too: a file in the folder is replaced)."""
    why = cut_short(path)
    if why is not None:
        cli.warn(f"{path}: cut short ({why}), not a finished output: made again")
    return why is not None


def _no_output(mode: int | None) -> str | None:
    """What a file of ``mode`` is where an output goes, when it is not one a finished output could
    be (a folder, a FIFO, a device, a socket); None for nothing there or a regular file."""
    if mode is None or stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else special_file_kind(mode)


def process_files(
    items: list[ImageItem],
    outdir: Path,
    fn: Callable[[torch.Tensor, ImageItem], list[tuple[str, torch.Tensor]]],
    *,
    ext: str = "png",
    overwrite: bool = False,
    max_pixels: int,
    quiet: bool = False,
    label: str = "",
    on_error: Callable[[str], None] | None = None,
    report: Callable[[ImageItem], object] | None = None,
    expected: Callable[[ImageItem], list[str]] | None = None,
    out_scale: int = 1,
    n_outputs: int = 1,
    max_output_pixels: int | None = None,
    job: Job | None = None,
    finish: Callable[[ImageItem], None] | None = None,
    finished: Callable[[ImageItem], bool] | None = None,
    note: Callable[[ImageItem, str], Mapping[str, Any] | None] | None = None,
    lossless: bool = False,
    couple: bool = False,
) -> BatchResult:
    """Read each input, call ``fn(image, item) -> [(name, image), …]`` and write each output.

    ``finish(item)``, when given, runs once an input's outputs are written (or found existing):
    what must come last, such as a sidecar that marks the input done; what it raises fails the
    input. An input whose every expected output (``expected(item)``, default its name) exists
    whole (one cut short, :func:`~restorekit.provenance.cut_short`, is made again with a warning:
    a folder copy that stopped holds such files), and that is ``finished(item)`` when that is
    given, is skipped unless ``overwrite``. A path
    problem with an expected output (a name too long for the file system…) fails that input
    only. A write the file system refuses for every file (a full disk, a quota, read-only:
    :func:`~restorekit.images.storage_errno`) fails its input and stops the work there: the
    inputs left are failed as "not processed" (said in one line, not one each). The others are checked from their headers first
    (:func:`check_inputs`), so an input that cannot succeed fails before any work. An output
    that would replace an input file (an expected one fails before any work, ``overwrite`` or
    not: an input is never taken for a finished output), or that another input of this batch
    already wrote, is refused. ``note(item, name)``, when given, is recorded inside each output
    file written (:mod:`restorekit.provenance`); ``lossless``: WebP outputs without loss
    (``degrade``: an LR file is what the spec made); ``couple``: ``fn`` writes each result with
    the input beside it (``--couple``), which the format's size limit is checked for. ``outdir``
    is made, and proven writable (:func:`check_writable`), only when some input is left to do: a
    rerun of a finished folder that was made read-only since skips every output.

    As one rank of a ``torchrun`` job (``job``, default the current one) each rank checks its
    share of the inputs, the inputs left to do are dealt out evenly (a resumed job splits what
    is left), and every rank returns the whole job's result in the order one process gives;
    each failure is named on stderr by the rank it happens on.
    """
    job = job or current_job()
    input_paths = {_resolved(it.path) for it in items}
    folder = _OutputFolder(outdir)

    # 1. Which inputs are done, which cannot succeed, which need work (each rank checks its share).
    skipped: dict[int, list[str] | tuple[str, str]] = {}  # output paths that exist, or (reason, short)
    early: dict[int, dict[str, str]] = {}
    usable: list[int] = []
    for i in job.indices(len(items)):
        try:
            stems = expected(items[i]) if expected is not None else [items[i].stem]
        except SkipInput as exc:  # done before, with nothing to write
            if not overwrite:
                skipped[i] = (exc.reason, exc.short)
                continue
            stems = []
        outs = [outdir / f"{s}.{ext}" for s in stems]
        try:
            # Neither an input nor a folder is a finished output: nothing to skip, nothing to write over.
            found = [(o, *folder.look(o)) for o in outs]
            an_input = next((o for o, real, _, _ in found if real in input_paths), None)
            # (a FIFO too: a rerun took one for a finished output, and reading it would wait for a writer)
            blocked = next(((o, what) for o, _, _, what in found if what), None) if an_input is None else None
            problem = _replaces_input(an_input) if an_input is not None else \
                f"{blocked[0]}: is {blocked[1]}, where the output goes" if blocked is not None else None
            done_before = (problem is None and not overwrite and all(there for _, _, there, _ in found)
                           and not any(cut_short(o) for o in outs)  # (made again in step 2, said there)
                           and (finished is None or finished(items[i])))
        except (OSError, RuntimeError) as exc:  # e.g. a name longer than the file system takes
            where = next((o for o in outs if _path_problem(o)), None)  # None: the path the error names
            problem = describe_os_error(exc, where) if isinstance(exc, OSError) else f"cannot use {where or outdir}: {exc}"
            problem = f"{items[i].path}: {problem}"
        if problem is not None:
            early[i] = {"path": str(items[i].path), "error": problem}
            if on_error is not None:
                on_error(problem)
            continue
        if done_before:
            skipped[i] = [str(o) for o in outs]
            continue
        _, bad = check_inputs([items[i]], max_pixels=max_pixels, out_scale=out_scale, n_outputs=n_outputs,
                              max_output_pixels=max_output_pixels, ext=ext, couple=couple)
        if bad:
            early[i] = bad[0]
            if on_error is not None:
                on_error(bad[0]["error"])
        else:
            usable.append(i)
    result = BatchResult()
    shares = job.gather((skipped, early, usable))
    all_skipped = {i: paths for share in shares for i, paths in share[0].items()}
    all_early = {i: failure for share in shares for i, failure in share[1].items()}
    for i in sorted(all_skipped):
        why = all_skipped[i]
        if isinstance(why, tuple):  # (reason, short): skipped for a reason
            result.add_skip(items[i].path, *why)
        else:  # the output paths that exist
            for path in why:
                result.add_exists(path, items[i].path)
    for i in sorted(all_early):
        result.failed.append(all_early[i])
    todo = sorted(i for share in shares for i in share[2])
    if todo:  # only when something will be written: a finished folder, made read-only since, is rerun
        job.together(lambda: check_writable(outdir))

    # 2. This rank's share of the work. A write that the file system refuses for every file (full,
    # over quota, read-only: storage_errno) stops it there: each input left would be read and
    # restored (minutes of a GPU, maybe) only to fail the same way, one error line each. They are
    # listed as failed, "not processed", and said in one line; a rerun goes on from there.
    done: dict[int, BatchResult] = {}
    written_by: dict[Path, Path] = {}
    stopped: str | None = None  # why the rest of this rank's share is not processed
    with job.progress(len(todo), label, quiet) as advance:
        mine = job.part(todo)
        for n, i in enumerate(mine):
            item = items[i]
            one = done[i] = BatchResult()
            if stopped is not None:
                one.failed.append({"path": str(item.path), "error": f"{item.path}: not processed: {stopped}"})
                continue
            try:
                image = read_image(item.path, max_pixels=max_pixels)
                planned = fn(image, item)
                for stem, out in planned:
                    dest = outdir / f"{stem}.{ext}"
                    other = written_by.get(dest)
                    if other is not None and other != item.path:
                        raise ImageError(f"{dest}: already written for {other} in this run; refusing to replace it")
                    written_by[dest] = item.path
                    real, there, _ = folder.look(dest)
                    if real in input_paths:
                        raise ImageError(_replaces_input(dest))
                    if there and not overwrite and not _made_again(dest):
                        one.add_exists(dest, item.path)
                        continue
                    save_image(out, dest, note=note(item, stem) if note is not None else None, lossless=lossless)
                    one.written.append(str(dest))
                if finish is not None:
                    finish(item)
                if report is not None:
                    one.reports[str(item.path)] = report(item)
            except SkipInput as exc:
                one.add_skip(item.path, exc.reason, exc.short)
                if report is not None:
                    one.reports[str(item.path)] = report(item)
            except Exception as exc:  # one image failing (a plugin's bug included) must not stop the others
                msg = str(exc) if isinstance(exc, PER_IMAGE_ERRORS) else describe_unexpected(exc)
                if debugging() and not isinstance(exc, RestorekitError):
                    traceback.print_exc()
                if str(item.path) not in msg:
                    msg = f"{item.path}: {msg}"
                one.failed.append({"path": str(item.path), "error": msg})
                if on_error is not None:
                    on_error(msg)
                left = len(mine) - n - 1
                if storage_errno(exc) is not None and left:
                    stopped = _stop_reason(exc, outdir)
                    if on_error is not None:
                        on_error(f"stopped: {left} input{'s' if left != 1 else ''} not processed, as {stopped}")
            advance(item.path.name)

    # 3. Every rank's outcomes, in input order.
    outcomes = {i: r for share in job.gather(done) for i, r in share.items()}
    job.settled = True
    for i in sorted(outcomes):
        r = outcomes[i]
        result.written.extend(r.written)
        result.skipped.extend(r.skipped)
        result.skip_kinds.extend(r.skip_kinds)
        result.failed.extend(r.failed)
        result.reports.update(r.reports)
    return result
