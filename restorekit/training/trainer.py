"""A generic, resumable training loop shared by every restorekit trainer.

A plugin subclasses :class:`Trainer` and implements :meth:`Trainer.train_step` (and optionally
:meth:`Trainer.validation_step`, :meth:`Trainer.export`), or passes ``step_fn``/``val_fn``.
The loop provides:

- optimizer (Adam or Ranger), gradient accumulation, gradient clipping, autocast on CUDA;
- a rich progress bar with the running losses and ETA where stderr is a terminal (in a log, a line of
  them at most once a minute: :data:`LOG_NOTE_EVERY_S`), and ``log.jsonl`` (one JSON object per
  logged step: ``kind``, ``step``, losses, ``lr``, ``time``; validation lines have
  ``kind="val"``; strict JSON, a number that is not finite written as in results.json:
  :func:`log_line`) plus ``loss.png`` at the end;
- periodic validation on rank 0: an image grid ``val/step_XXXXXXXX.png`` (one row per image,
  the columns ``validation_step`` returns) and mean metrics;
- checkpoints ``checkpoints/step_XXXXXXXX.pt`` every ``ckpt_every`` steps and at the end,
  written to a temp file and renamed: model, optimizer, scaler, step, every rank's RNG
  states and the config as a plain dict (loadable with ``torch.load(weights_only=True)``);
- exact resume: data order and per-sample randomness are functions of ``(seed, epoch, index)``
  and the position in the stream is derived from the step, so ``fit(resume=True)`` continues
  with the same batches and RNG states as an uninterrupted run;
- ``torchrun``: DistributedDataParallel (gloo on CPU, NCCL on CUDA), a distributed sampler,
  logging and checkpoints on rank 0, and a barrier at the end;
- a clean stop on SIGINT/SIGTERM or after ``time_limit`` seconds: a checkpoint at the last
  finished step, so a later session resumes from there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import signal
import sys
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..errors import FileSystemError, RestorekitError, describe_os_error
from ..harness.store import jsonable
from ..images import atomic_write_bytes, error_chain, fs_error, write_via_temp
from ..safe_open import Folder, check_folders, open_folder
from .config import TrainConfig, absolute_settings, without_unused
from .data import DataError, Split
from .distributed import (DistInfo, ResumableSampler, all_gather_objects, barrier, init_distributed, mean_across,
                          signal_across)
from .optim import build_optimizer

CKPT_FORMAT = "restorekit.train/1"
CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")

StepFn = Callable[[nn.Module, dict[str, Any]], dict[str, Tensor]]
ValFn = Callable[[nn.Module, dict[str, Any]], tuple[list[Tensor], dict[str, Tensor]]]


class TrainingError(RestorekitError):
    """Training cannot start or continue (bad data, no checkpoint to resume, mismatched state)."""


class RunStopped(TrainingError):
    """A run that had begun stopped on an error; the message says where it stands and how to go on."""


class TrainingDiverged(TrainingError):
    """The training itself failed: a loss or the weights are no longer finite (``restorekit train``
    exits 1, as a command whose work failed, not 2 as for a refused setting)."""


# -- checkpoints ------------------------------------------------------------------------------
#: A run folder's subfolders for checkpoints and validation grids.
CKPT_DIR = "checkpoints"
VAL_DIR = "val"
# The temp files atomic_save writes: ``.step_XXXXXXXX.pt.<8 random>.tmp`` (a kill mid-write leaves one).
_CKPT_TEMP_RE = re.compile(r"^\.step_\d{8,}\.pt\..+\.tmp$")


@contextlib.contextmanager
def workers_ended(batches: Iterator[Any]) -> Iterator[Iterator[Any]]:
    """``batches`` (a DataLoader's iterator), its worker processes ended when the block is left,
    however: an error from the data (``--set data.bad_images=stop``) keeps the iterator alive in
    its traceback, and workers left to the garbage collector cost seconds each to stop (the
    command hung a minute before exiting)."""
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator only
        if callable(shutdown):
            shutdown()


def checkpoint_path(out: str | Path, step: int) -> Path:
    return Path(out) / CKPT_DIR / f"step_{step:08d}.pt"


def run_subfolder(out: str | Path, name: str, *, create: bool = False) -> Folder | None:
    """``out/name`` opened without following a symbolic link that another user owns (one could
    have been swapped in for a folder of the user's in a shared run folder: it is refused, a
    :class:`FileSystemError` naming it; the user's own link is followed); ``None`` when it is not
    there and not ``create``."""
    try:
        return open_folder(out, name, create=create)
    except FileSystemError:
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:  # (not there, or a file: nothing to list)
        if create:
            raise fs_error(exc, Path(out) / name) from None
        return None
    except OSError as exc:
        raise fs_error(exc, Path(out) / name) from None


def check_run_folders(out: str | Path, names: tuple[str, ...]) -> None:
    """Refuse, before a run writes anything, a run folder whose subfolder ``names`` (checkpoints,
    val…) is a symbolic link another user owns: checkpoints and images would be written into the
    folder it points at, and old checkpoints removed from it. One line naming it
    (:func:`~restorekit.safe_open.check_folders`, the check every write below the run folder makes)."""
    try:
        check_folders(out, names)
    except FileSystemError:
        raise
    except OSError as exc:  # (named by the folder it met)
        raise fs_error(exc, action="read") from None


def _step_files(folder: Folder) -> list[tuple[int, str]]:
    """``(step, name)`` of the step checkpoints in the open ``folder``, oldest first."""
    return sorted((int(m.group(1)), e.name) for e in folder.entries() if (m := CKPT_RE.fullmatch(e.name)))


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the step checkpoints under ``out``, oldest first; a ``checkpoints``
    folder that is another user's symbolic link is refused (:func:`run_subfolder`), not listed through."""
    folder = run_subfolder(out, CKPT_DIR)
    if folder is None:
        return []
    with folder:
        try:
            found = _step_files(folder)
        except OSError as exc:
            raise fs_error(exc, folder.path, action="read") from None
    return [(step, Path(out) / CKPT_DIR / name) for step, name in found]


def latest_checkpoint(out: str | Path) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1][1] if ckpts else None


def atomic_save(obj: Any, path: Path, *, root: Path | None = None) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then a rename onto ``path``
    (:func:`~restorekit.images.write_via_temp`; ``root``: the run folder, as there: no folder below
    it followed when a link, nor a temp file swapped meanwhile moved into place). A failed write (a
    full disk, a file-size limit: torch says so as a RuntimeError of its zip writer, raised over the
    system's error where there is one, whose reason is then said) is a :class:`FileSystemError`
    naming ``path``; nothing is left behind."""
    path = Path(path)
    try:
        write_via_temp(path, lambda f: torch.save(obj, f), root=root, suffix=".tmp", fsync=True)
    except FileSystemError:
        raise
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, path)) from exc
    except RuntimeError as exc:
        # torch's zip writer raises its own ("unexpected pos 64 vs 0") while the file's error is
        # handled: that error's reason is said (File too large, No space left on device…)
        cause = next((e for e in error_chain(exc) if isinstance(e, OSError)), None)
        if cause is not None:
            raise fs_error(cause, path) from exc
        if "inline_container" in str(exc) or "write" in str(exc).lower():
            free = shutil.disk_usage(path.parent).free
            raise FileSystemError(f"cannot write {path}: the write failed ({free / 2**20:.0f} MiB free in its "
                                  f"folder; a full disk?)") from exc
        raise


def prune_checkpoints(out: str | Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep`` step checkpoints under ``out``, never ``protect`` (the
    one just written: a damaged file of a later step may sort after it), and the temp files of
    writes a kill cut short (only one process writes, so none is in progress). Removed by name in
    the ``checkpoints`` folder opened without following another user's link: one that is such a
    link is refused (:func:`run_subfolder`) and nothing is removed from where it points."""
    folder = run_subfolder(out, CKPT_DIR)
    if folder is None:
        return
    with folder:
        try:
            found = _step_files(folder)
        except OSError as exc:
            raise fs_error(exc, folder.path, action="read") from None
        for _, name in found[:-keep]:
            if protect is None or Path(out) / CKPT_DIR / name != Path(protect):
                with contextlib.suppress(OSError):
                    folder.unlink(name)
        with contextlib.suppress(OSError):
            for e in folder.entries():
                if _CKPT_TEMP_RE.fullmatch(e.name) and not e.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        folder.unlink(e.name)


def resume_checkpoint(out: str | Path, path: str | Path | None, trainer: str, *,
                      warn: bool = True, mmap: bool = False) -> tuple[Path, dict[str, Any]]:
    """``(path, checkpoint)`` that ``--resume`` continues from (``path``, else the newest under
    ``out`` that loads — a damaged newer one is skipped, with a warning when ``warn``), refused
    when another trainer wrote it. ``mmap``: see :func:`load_checkpoint`."""
    if path is not None:  # CPU; load_state_dict moves tensors to the model
        p, ckpt = Path(path), load_checkpoint(path, mmap=mmap)
    else:
        p, ckpt = newest_loadable_checkpoint(out, warn=warn, mmap=mmap)
    if ckpt.get("trainer") != trainer:
        raise TrainingError(f"{p}: written by trainer '{ckpt.get('trainer')}', not '{trainer}'")
    return p, ckpt


def newest_loadable_checkpoint(out: str | Path, *, warn: bool = True,
                               mmap: bool = False) -> tuple[Path, dict[str, Any]]:
    """The newest step checkpoint under ``out`` that loads, and its contents."""
    found = [p for _, p in reversed(list_checkpoints(out))]
    if not found:
        raise TrainingError(f"--resume: no checkpoint under {Path(out) / 'checkpoints'}")
    skipped: list[str] = []  # why each newer one was passed over (cut short, damaged, another format)
    for p in found:
        try:
            ckpt = load_checkpoint(p, mmap=mmap)
        except TrainingError as exc:
            skipped.append(str(exc))
            continue
        if skipped and warn:
            print(f"warning: {'; '.join(skipped)}; resuming from {p}", file=sys.stderr, flush=True)
        return p, ckpt
    shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    raise TrainingError(f"--resume: no loadable checkpoint under {Path(out) / 'checkpoints'} ({shown})")


def checkpoint_to_resume(out: str | Path, path: str | Path | None, trainer: str) -> dict[str, Any]:
    """The checkpoint of :func:`resume_checkpoint`."""
    return resume_checkpoint(out, path, trainer)[1]


def setting_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for each setting (dotted for tables) that differs, by key."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def config_differences(ckpt: dict[str, Any], config: TrainConfig) -> list[str]:
    """``'key: A in the checkpoint, now B'`` for each setting (dotted for tables) of ``config`` that
    differs from those ``ckpt`` was written with (:func:`_compared`)."""
    return [f"{key}: {json.dumps(a)} in the checkpoint, now {json.dumps(b)}" for key, a, b in _compared(ckpt, config)]


def _short(value: Any, limit: int = 48) -> str:
    """``value`` as JSON, its middle cut when long (a path's end tells most)."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1):]


def _at(settings: dict[str, Any], key: str, default: Any) -> Any:
    """The value of the dotted ``key`` in ``settings``, else ``default``."""
    node: Any = settings
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _filled(saved: dict[str, Any], defaults: BaseModel, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """``saved`` with each setting it lacks taken from ``before`` (what runs did before the setting
    existed, ``TrainConfig.SETTINGS_BEFORE``), else from ``defaults`` (in its tables too, but not
    into a dict-valued setting, whose entries are the setting)."""
    out = dict(saved)
    dumped = defaults.model_dump(mode="json")
    for name in type(defaults).model_fields:
        value = getattr(defaults, name)
        if name not in out:
            out[name] = (before or {}).get(name, dumped[name])
        elif isinstance(value, BaseModel) and isinstance(out[name], dict):
            out[name] = _filled(out[name], value)
    return out


def _compared(ckpt: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """:func:`setting_changes` from the checkpoint's settings to ``config``'s, paths compared absolute
    on both sides (a checkpoint written before they were saved absolute holds them as given). A
    setting added after the checkpoint was written counts as its default there: that is what the
    run trained with (new settings default to the behaviour before them), or its
    ``SETTINGS_BEFORE`` value where its default is not that."""
    cls = type(config)
    saved = _filled(without_unused(ckpt.get("config") or {}, cls), cls.model_construct(), cls.SETTINGS_BEFORE)
    return setting_changes(absolute_settings(cls, saved), absolute_settings(cls, config.model_dump(mode="json")))


def resume_warning(path: Path, ckpt: dict[str, Any], config: TrainConfig, shown: int = 8) -> str | None:
    """One line naming the settings of ``config`` that differ from those ``ckpt`` was written
    with (``key: old → new``, the first ``shown`` by name), leaving out ``config.RESUME_EXEMPT``;
    ``None`` when there are none. The run continues, but is no longer an exact continuation."""
    exempt = type(config).RESUME_EXEMPT
    changes = [(k, a, b) for k, a, b in _compared(ckpt, config) if k not in exempt]
    if not changes:
        return None
    given = config.model_dump(mode="json")
    changes = [(k, a, _at(given, k, b)) for k, a, b in changes]  # a path shown as it was given
    said = "; ".join(f"{k}: {_short(a)} → {_short(b)}" for k, a, b in changes[:shown])
    more = f"; and {len(changes) - shown} more" if len(changes) > shown else ""
    return (f"warning: resuming {path} with settings that differ from the checkpoint's, so this is not an exact "
            f"continuation: {said}{more}")


def warn_changed_settings(path: Path, ckpt: dict[str, Any], config: TrainConfig, *, main: bool,
                          world_size: int | None = None) -> None:
    """Print :func:`resume_warning` to stderr (on the main process only, ``main``), and a line when
    the run resumes with another number of processes than the checkpoint's (``world_size``)."""
    line = resume_warning(path, ckpt, config) if main else None
    if line:
        print(line, file=sys.stderr, flush=True)
    before = ckpt.get("world_size")
    if main and world_size is not None and before is not None and int(before) != world_size:
        print(f"warning: {path} was written by {before} processes, this run has {world_size}: not an exact "
              "continuation (random streams are reseeded; a per-process batch size changes the effective "
              "batch and the position in the data)", file=sys.stderr, flush=True)


def load_optimizer_state(optimizer: Any, state: dict[str, Any]) -> list[str]:
    """Load an optimizer's checkpointed state (moments, step counts) but keep the hyperparameters
    it was built with from this run's config — learning rate, betas, eps, weight decay — so a
    setting changed on ``--resume`` applies, as the resume warning says (``load_state_dict`` alone
    brings the checkpoint's back). Returns the hyperparameters that differ from the checkpoint's
    (``"lr 0.00235 → 0.0025"``), for the caller to say: a changed setting, or a trainer that now
    builds its optimizer otherwise."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    changed: dict[str, str] = {}
    for group, own in zip(optimizer.param_groups, settings):
        for key, value in own.items():
            old = group.get(key)
            if key in _HYPERPARAMETERS and old != value and key not in changed:
                changed[key] = f"{key} {_number(old)} → {_number(value)}"
        group.update(own)
    return list(changed.values())


_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "alpha", "k")


def _number(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_number(v) for v in value) + ")"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def warn_optimizer_changes(path: Path, name: str, changes: list[str], *, main: bool) -> None:
    """One warning line for :func:`load_optimizer_state`'s differences (main process only): for a
    resume whose settings are unchanged, where they come from the trainer building its optimizer
    otherwise than when the checkpoint was written (with a learning-rate schedule, the lr always
    differs: not for those)."""
    if main and changes:
        print(f"warning: {path}: {name}'s settings differ from the checkpoint's ({'; '.join(changes)}); this run's "
              "apply, the moments are the checkpoint's", file=sys.stderr, flush=True)


@contextlib.contextmanager
def restoring(path: Path, ckpt: dict[str, Any], config: TrainConfig) -> Iterator[None]:
    """Load a checkpoint's states inside this block: a state that does not fit the networks
    or optimizers built from ``config`` is a :class:`TrainingError` naming the settings that
    differ from the checkpoint's, not a bare ``load_state_dict`` traceback. Those resume may change
    (``config.RESUME_EXEMPT``: steps, out …) are left out: they are not what refuses the state."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        exempt = type(config).RESUME_EXEMPT
        compared = _compared(ckpt, config)
        diffs = [f"{key}: {json.dumps(a)} in the checkpoint, now {json.dumps(b)}"
                 for key, a, b in compared if key not in exempt]
        said = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        same = "no setting differs but those --resume may change" if compared else "the settings are the same"
        hint = f"settings that differ: {said}" if diffs else f"{same} (a different code version?)"
        raise TrainingError(f"{path} does not fit this config ({first.rstrip(':')}); {hint}. Resume without "
                            "--config/--set to continue as the run was made, or choose another --out") from None


def amp_enabled(config: TrainConfig, device: torch.device) -> bool:
    """Whether ``config`` asks for autocast on ``device``: on CUDA with ``amp``, on the CPU only
    with ``amp_cpu`` as well (bf16 pays there only where the CPU has AMX or AVX-512 BF16)."""
    return config.amp and (device.type == "cuda" or (device.type == "cpu" and config.amp_cpu))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint, loaded without executing code (``weights_only=True``).

    ``mmap``: its tensors are mapped from the file, read only where touched — for a caller that
    wants the settings and step alone (a file from an older torch format is read whole)."""
    p = Path(path)
    try:
        try:
            ckpt = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "zipfile" not in str(exc):
                raise
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{p}: not a loadable training checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise TrainingError(f"{p}: not a restorekit training checkpoint (format {CKPT_FORMAT})")
    return ckpt


def trim_log(path: Path, step: int, *, root: Path | None = None) -> None:
    """Keep the JSON lines of ``path`` up to ``step``; drop later ones (written after the
    checkpoint a run resumes from) and any line cut short by a kill mid-write. ``root``: ``path``
    lies below this run folder, and a folder between them that is another user's symbolic link is
    refused, not read or written through (as :func:`atomic_save`'s)."""
    from ..safe_open import read_plain

    try:  # (in a shared run folder a link planted there is not followed, nor a FIFO waited on)
        if root is None:
            data = read_plain(path)
        else:
            try:
                folder = open_folder(root, path.parent.relative_to(root), create=False)
            except (FileNotFoundError, NotADirectoryError):
                return  # no folder, so no log to trim
            with folder:
                data = read_plain(folder.at(path.name), dir_fd=folder.fd)
    except FileSystemError:
        raise
    except OSError as exc:
        raise fs_error(exc, path, action="read") from exc
    if data is None:
        return
    keep = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        bare: list[str] = []  # an older log's bare Infinity/NaN, read as floats and noted
        try:
            record = json.loads(line, parse_constant=lambda name: bare.append(name) or float(name))
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        at = record.get("step", 0)
        # (a step that is not a whole number — "7", null, true — is no line of a run's: dropped)
        if isinstance(at, int) and not isinstance(at, bool) and at <= step:
            # A line of an older log with a bare Infinity/NaN is written again as strict JSON, so
            # that the log a resumed run appends to is strict JSON throughout.
            keep.append(log_line(record) if bare else line)
    # Replaced whole (temp file, then rename): a kill mid-write must not cut the history short.
    atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode("utf-8"), root=root)


def log_line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON (what any JSON parser reads; ``allow_nan=False``):
    a number that is not finite written as results.json writes it
    (:func:`~restorekit.harness.store.encode_float`: ``+inf`` the string ``"Infinity"``, ``-inf``
    ``"-Infinity"``, NaN ``null``). :func:`~restorekit.training.plot.read_record` reads it back,
    and an older log's bare ``Infinity``/``NaN`` too."""
    return json.dumps(jsonable(record), allow_nan=False)


class LogFiles:
    """The JSON-lines files a run appends to (``log.jsonl``, ``metrics.jsonl``), each opened once
    for the run with :func:`~restorekit.safe_open.open_append` and kept: opened again by name for
    each record, a symbolic link that another user of a shared run folder put there meanwhile would
    have been followed. :meth:`close` at the end of the run (and before a file is replaced whole,
    as :func:`trim_log` does on a resume: the next record opens the new file)."""

    def __init__(self) -> None:
        self._files: dict[Path, BinaryIO] = {}

    def append(self, path: Path, record: dict[str, Any], *, root: Path | None = None) -> None:
        """Add ``record`` as one line of strict JSON (:func:`log_line`) to ``path`` (made, with its
        folder, when missing); an
        ``OSError`` is a :class:`FileSystemError` naming ``path``. ``root``: ``path`` lies below
        this run folder, and its folders are opened from there without following a link (one there
        is refused, naming it), as :func:`atomic_save`'s are."""
        from ..safe_open import ends_line, open_append

        data = (log_line(record) + "\n").encode("utf-8")
        try:
            f = self._files.get(path)
            if f is None:
                if root is None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    f = open_append(path)
                else:
                    with open_folder(root, path.parent.relative_to(root)) as folder:
                        f = open_append(folder.at(path.name), dir_fd=folder.fd)
                self._files[path] = f
                if not ends_line(f):  # a line a kill cut short: this record starts a line of its own
                    data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
        except FileSystemError:
            raise
        except OSError as exc:
            raise fs_error(exc, path) from exc

    def close(self) -> None:
        files, self._files = list(self._files.values()), {}
        for f in files:
            with contextlib.suppress(OSError):
                f.close()

    def __enter__(self) -> LogFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        """A run's ``with`` block: its logs are closed however it ends."""
        self.close()


RUN_LOCK = ".train.lock"


@contextlib.contextmanager
def run_folder_lock(out: str | Path) -> Iterator[None]:
    """Hold a run folder for one training process (the main one of a job) while it trains
    (:func:`~restorekit.folder_lock.held_alone` on ``OUT/.train.lock``).

    A second run on the same ``--out`` had started silently: it deleted the first's log, then
    both wrote log lines, checkpoints and the export. Refused at once instead, naming the folder.
    Once held, the temp files a killed run left in it and its subfolders (val, snapshot…) go; a
    subfolder that is a symbolic link is left alone (nothing of this run's is in it)."""
    from ..folder_lock import held_alone
    from ..images import subfolders, sweep_temp_files

    folder = Path(out)
    with held_alone(folder, RUN_LOCK, lambda: TrainingError(
            f"{folder}: another training run is using this folder; wait for it to end (then --resume continues "
            "it), or choose another --out")):
        sweep_temp_files([folder, *subfolders(folder)], root=folder)
        yield

def start_log(out: Path, log: Path, *, resumed_at: int | None, main: bool) -> None:
    """Ready a run's ``log`` (on the ``main`` process): resumed at a step, the lines past it go (they
    are logged again); a new run refuses a folder that holds checkpoints and removes an earlier
    run's log, whose checkpoints are gone."""
    if not main:
        return
    if resumed_at is not None:
        trim_log(log, resumed_at)
        return
    if latest_checkpoint(out) is not None:
        raise TrainingError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    log.unlink(missing_ok=True)


# -- RNG state ---------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states as plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved. A state without the CUDA generators' (written where
    CUDA was not in use: a checkpoint of a CPU session) resumed on a CUDA machine seeds them with
    :func:`cuda_seed_of` it, a function of the saved CPU state: left alone, they would start where
    the process starts them, and every rank and every such resume would draw the same noise again."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda" in state:
        # One state per GPU the saving process saw: a machine with fewer puts back those it has.
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    else:
        torch.cuda.manual_seed_all(cuda_seed_of(state))


def cuda_seed_of(state: dict[str, Any]) -> int:
    """A 64-bit seed for the CUDA generators derived from a saved :func:`rng_state`'s torch CPU
    state, which the run's seed, the process's rank and the step taken make: the same checkpoint
    gives the same seed, another step or rank another."""
    import hashlib

    data = torch.as_tensor(state["torch"]).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(b"restorekit.cuda-seed/1" + data).digest()[:8], "little")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- images ------------------------------------------------------------------------------------
def image_grid(columns: list[Tensor], max_rows: int = 8) -> Tensor:
    """``1×3×H×W``: one row per image, one column per panel (resized, nearest, to the tallest).
    A picture to look at: a NaN pixel (a sample gone bad) is drawn black, not refused as
    :func:`~restorekit.images.save_image` refuses it, so a snapshot or validation grid never stops a run."""
    if not columns:
        raise ValueError("image_grid needs at least one column")
    rows = min(max_rows, min(c.shape[0] for c in columns))
    size = max(c.shape[-1] for c in columns)
    cols = []
    for c in columns:
        c = torch.nan_to_num(c[:rows].detach().float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1).cpu()
        if c.shape[-2:] != (size, size):
            c = torch.nn.functional.interpolate(c, size=(size, size), mode="nearest")
        cols.append(c)
    grid = torch.cat(cols, dim=-1)  # rows × 3 × S × (S·cols)
    return torch.cat(list(grid), dim=-2).unsqueeze(0)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image RGB PSNR in dB of ``pred`` (clamped to [0,1]) against ``target``."""
    mse = (pred.detach().clamp(0, 1).double() - target.detach().double()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def worker_message(exc: BaseException) -> str:
    """``exc``'s own one-line message, also when a DataLoader worker re-raised it (torch then
    puts the worker's traceback in the message, the original message on its last line)."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    head = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(head):] if last.startswith(head) else last


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def check_stop_steps(step: int, steps: int, until: int | None) -> None:
    """Refuse a resumed run's ``--until`` or ``--steps`` that lies at or before the step it is at
    (``--steps`` equal to it ends the run there and exports)."""
    if until is not None and until <= step:
        raise TrainingError(f"--until {until}: the run is already at step {step}")
    if step > steps:  # a schedule that ended before the checkpoint: not this run's to export
        raise TrainingError(f"--steps {steps}: the run is already at step {step} (--steps {step} "
                            f"ends it there and exports)")


#: Seconds a data-loader worker outlives a TERM: time for the run to finish its step, checkpoint
#: and end its loaders, which stop the worker the ordinary way.
WORKER_TERM_GRACE_S = 60.0


def _worker_leaves_stopping_to_the_run(worker_id: int) -> None:
    """DataLoader worker set-up: a stop sent to the whole process group (Ctrl-C, systemd, a batch
    scheduler's TERM) is the main process's to act on — checkpoint, then end its loaders. A worker
    that died of it first made torch fail the run without a checkpoint. So a worker ignores INT and
    leaves on TERM only after :data:`WORKER_TERM_GRACE_S` (exit status 0) — never for good: a TERM
    is also how a process ending ends workers it did not stop itself, and waits for them."""
    import threading

    def leave_later(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        timer = threading.Timer(WORKER_TERM_GRACE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, leave_later)


#: What torch says when loader workers cannot put a batch into shared memory: a full ``/dev/shm``
#: (posix_fallocate's ENOSPC; older torch: a worker killed by a bus error on touching the pages).
_SHM_SIGNS = ("shared memory", "(shm)", "unable to write to file </torch_", "bus error")


def out_of_shared_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (from a DataLoader's iterator) says its workers ran out of shared memory."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _SHM_SIGNS)


def no_room_to_start_workers(exc: BaseException) -> bool:
    """Whether ``exc``, raised as a DataLoader's iterator starts its workers, says ``/dev/shm`` is
    already full: the semaphores of their queues are made there (``sem_open``: ``OSError``, ENOSPC)."""
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _end_half_started(exc: BaseException) -> None:
    """End what a DataLoader's iterator whose start raised ``exc`` had started (workers, queues) and
    mark it shut down: its own ``__del__`` would try, and print an ``Exception ignored`` traceback
    for the attributes its start never set."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    tb = exc.__traceback__
    while tb is not None:
        it = tb.tb_frame.f_locals.get("self")
        if isinstance(it, _MultiProcessingDataLoaderIter):
            it._shutdown = True
            workers, queues = list(getattr(it, "_workers", ())), list(getattr(it, "_index_queues", ()))
            with contextlib.suppress(Exception):  # as torch ends its workers: told they are done, then joined
                if workers:
                    it._workers_done_event.set()
                for q in queues:
                    q.put(None)
                for w in workers:
                    w.join(timeout=5)
                for q in queues:
                    q.cancel_join_thread()
                    q.close()
                for w in workers:
                    if w.is_alive():
                        w.terminate()
            return
        tb = tb.tb_next


def _mb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def shared_memory_warning(folder: str = "/dev/shm") -> str:
    """The one line said when loader workers ran out of shared memory and loading goes on in the
    main process: how large ``folder`` is and how to give it more, or to stop using workers."""
    try:
        st = os.statvfs(folder)
        size = f" ({folder}: {_mb(st.f_blocks * st.f_frsize)}, {_mb(st.f_bavail * st.f_frsize)} free)"
    except (OSError, AttributeError):
        size = ""
    return (f"the data loader's worker processes ran out of shared memory{size}, through which they hand "
            "batches over; loading in this process from now on (the same batches, more slowly). Give the "
            "container more (docker run --shm-size=2g; Kubernetes: a memory-backed emptyDir at /dev/shm) or "
            "set num_workers = 0")


def _preload_in_forkserver(modules: list[str]) -> None:
    """Where loader workers start from the forkserver (Python 3.14's default on Linux), have it
    import ``modules`` once, when it starts: each worker is then forked with them loaded, instead
    of importing torch and restorekit again (seconds a worker, every epoch, as the loaders of each
    epoch start their own). Other start methods, or a forkserver already running: nothing changes."""
    import multiprocessing
    from multiprocessing import forkserver

    if multiprocessing.get_start_method() != "forkserver":
        return
    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    wanted = [m for m in modules if m and m != "__main__" and m not in current]
    if wanted:
        multiprocessing.set_forkserver_preload(current + wanted)


class StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP (a second one interrupts at once): a training loop checks it, and
    checkpoints and stops after the current step. ``signum`` is the signal (exit code 128 + it)."""

    def __init__(self) -> None:
        self.set = False
        self.signum: int | None = None  # the signal that asked to stop (its exit code is 128 + it)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            hangup = getattr(signal, "SIGHUP", None)  # the terminal closed: checkpoint and stop, too
            if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:  # (nohup: stays ignored)
                self._old[hangup] = signal.signal(hangup, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == getattr(signal, "SIGHUP", None):  # the terminal has gone: the last notes go nowhere
            from ..terminals import leave_hung_up_terminal

            leave_hung_up_terminal()
        if self.set:  # second signal: give up at once
            raise KeyboardInterrupt
        self.set, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


#: Where stderr is a log (no progress bar), a line of the running losses at most this often (seconds).
LOG_NOTE_EVERY_S = 60.0


class Trainer:
    """The loop; subclass and implement :meth:`train_step` (or pass ``step_fn``).

    ``model`` holds every module whose state is checkpointed (frozen parts included); the
    optimizer trains its parameters that require grad (or ``params``). ``train_step`` receives
    ``net`` — the DDP wrapper under ``torchrun``, else ``model`` — and must run the trainable
    forward through ``net(...)`` so gradients are synchronised.
    """

    name: str = "trainer"
    #: The subfolders of the run folder this trainer writes to: one that is a symbolic link is
    #: refused when :meth:`fit` starts (:func:`check_run_folders`); a subclass writing others adds them.
    run_folders: tuple[str, ...] = (CKPT_DIR, VAL_DIR)
    # The config model `restorekit train NAME` validates files and --set overrides against.
    Config: type[TrainConfig] = TrainConfig
    #: Set when the loader workers ran out of shared memory: the run's batches are loaded in its own
    #: process from then on (:meth:`_loaded`).
    _in_process_loading: bool = False

    @classmethod
    def build(cls, config: TrainConfig, *, quiet: bool = False) -> "Trainer":
        """Build models and data from ``config`` (what ``restorekit train NAME`` calls)."""
        raise NotImplementedError(f"{cls.__name__} does not implement build(config)")

    def __init__(self, config: TrainConfig, model: nn.Module, train_data: Dataset[Any],
                 val_data: Dataset[Any] | None = None, *, out: str | Path | None = None,
                 step_fn: StepFn | None = None, val_fn: ValFn | None = None,
                 params: list[nn.Parameter] | None = None, quiet: bool = False,
                 dist_info: DistInfo | None = None) -> None:
        self.config = config
        self.quiet = quiet
        out = out if out is not None else config.out
        if out is None:
            raise TrainingError("no output folder: pass --out or set `out` in the config")
        self.out = Path(out)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.dist = dist_info or init_distributed(config.device)
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.train_data = train_data
        self.val_data = val_data
        #: Which images train and which validate, recorded in checkpoints (``None``: data sets not
        #: made by :func:`~restorekit.training.data.sr_datasets`, nothing recorded or checked).
        self.split: Split | None = getattr(train_data, "split", None)
        self._step_fn = step_fn
        self._val_fn = val_fn
        trainable = params if params is not None else [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(trainable, config)
        use_amp = amp_enabled(config, self.device)
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bf16" else torch.float16
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)
        self.net: nn.Module = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids, find_unused_parameters=config.ddp_find_unused)
        self.step = 0
        self.elapsed_before = 0.0
        self.last_logs: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.epoch = 0
        self._left_out: set[str] = set()  # warnings given about unreadable training images
        self.logs = LogFiles()  # log.jsonl, opened once (rank 0 writes)

    def close(self) -> None:
        """Drop the DDP wrapper, which holds the process group, before leaving the group
        (:func:`~restorekit.training.distributed.cleanup`); ``model`` stays usable. The log is closed."""
        self.net = self.model
        self.logs.close()

    # -- what subclasses provide -------------------------------------------------------------
    def train_step(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Losses for one micro-batch: a dict with the total under ``"loss"`` (others are logged)."""
        if self._step_fn is None:
            raise NotImplementedError("Trainer needs train_step() overridden or a step_fn")
        return self._step_fn(net, batch)

    def validation_step(self, batch: dict[str, Any]) -> tuple[list[Tensor], dict[str, Tensor]] | None:
        """``(image columns N×3×H×W, per-image metrics N)`` for a validation batch, or ``None``."""
        if self._val_fn is None:
            return None
        return self._val_fn(self.model, batch)

    def set_train_mode(self) -> None:
        """Put modules in training mode (override to keep frozen parts in eval mode)."""
        self.model.train()

    def export(self, folder: Path) -> Path | None:
        """Write the trained model in its inference format at the end (rank 0); ``None``: nothing."""
        return None

    def model_state(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)

    def extra_state(self) -> dict[str, Any]:
        """More plain data to checkpoint (override)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (override)."""

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, elapsed: float) -> Path | None:
        """Checkpoint at ``self.step`` (collective: every rank calls; rank 0 writes)."""
        rngs = all_gather_objects(self.dist, rng_state())
        if not self.dist.is_main:
            return None
        path = checkpoint_path(self.out, self.step)
        atomic_save({
            "format": CKPT_FORMAT, "trainer": self.name, "step": self.step,
            "model": self.model_state(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs, "world_size": self.dist.world_size,
            "config": self.config.saved_settings(), "elapsed": elapsed, "extra": self.extra_state(),
            "split": self.split.record() if self.split is not None else None,
        }, path, root=self.out)
        prune_checkpoints(self.out, self.config.keep_ckpts, protect=path)
        return path

    def resume(self, path: str | Path | None = None) -> int:
        """Load ``path`` (default: the latest checkpoint under ``out``); returns its step."""
        p, ckpt = resume_checkpoint(self.out, path, self.name, warn=self.dist.is_main)
        changed = self.split.check_resume(ckpt.get("split"), int(ckpt["step"])) if self.split is not None else None
        with restoring(p, ckpt, self.config):
            self.load_model_state(ckpt["model"])
            load_optimizer_state(self.optimizer, ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.load_extra_state(ckpt.get("extra", {}))
        warn_changed_settings(p, ckpt, self.config, main=self.dist.is_main, world_size=self.dist.world_size)
        if changed and self.dist.is_main:
            print(changed, file=sys.stderr, flush=True)
        self.step = int(ckpt["step"])
        self.elapsed_before = float(ckpt.get("elapsed", 0.0))
        rngs = ckpt["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # a different world size cannot replay the same streams; reseed per rank
            seed_everything(self.config.seed + 1000 * self.step + self.dist.rank)
        return self.step

    # -- logging -----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.logs.append(self.log_path, record)

    # -- data --------------------------------------------------------------------------------
    def _batches(self) -> Generator[Any, None, None]:
        """Micro-batches from the current position (``step·grad_accum``), across epochs."""
        cfg = self.config
        sampler = ResumableSampler(self.train_data, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                   shuffle=True, seed=cfg.seed)
        per_epoch = sampler.num_samples // cfg.batch_size
        if per_epoch < 1:
            raise TrainingError(f"{len(self.train_data)} training images are fewer than batch_size "  # type: ignore[arg-type]
                                f"{cfg.batch_size} × {self.dist.world_size} processes")
        micro = self.step * cfg.grad_accum
        epoch, offset = divmod(micro, per_epoch)
        while True:
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(epoch)

            def loader(workers: int, start: int, epoch: int = epoch, offset: int = offset) -> DataLoader[Any]:
                sampler.set_position(epoch, (offset + start) * cfg.batch_size)
                # Its own generator: creating a loader iterator must not draw from the global RNG,
                # or a resumed run (one more iterator) would diverge from an uninterrupted one.
                gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
                return self._loader(self.train_data, workers, generator=gen, pin_memory=self.device.type == "cuda",
                                    batch_sampler=BatchSampler(sampler, cfg.batch_size, drop_last=True))

            self.epoch = epoch
            with contextlib.closing(self._loaded(loader)) as batches:
                for batch in batches:
                    yield _to_device(self._note_left_out(batch), self.device)
            epoch, offset = epoch + 1, 0

    def _loader(self, data: Dataset[Any], workers: int, **options: Any) -> DataLoader[Any]:
        """A DataLoader of ``data`` with ``workers`` worker processes, each set up to leave a stop
        to the run (:func:`_worker_leaves_stopping_to_the_run`)."""
        if workers:
            _preload_in_forkserver([type(data).__module__, __name__])
        return DataLoader(data, num_workers=workers, worker_init_fn=_worker_leaves_stopping_to_the_run, **options)

    def _loaded(self, loader: Callable[[int, int], DataLoader[Any]]) -> Generator[Any, None, None]:
        """The batches of ``loader(workers, start)`` (``start``: how many batches it skips), its
        workers ended when the generator is. When they run out of shared memory (a container's
        64 MB ``/dev/shm``: a batch they cannot hand over, or a ``/dev/shm`` already full as they
        start, where their queues' semaphores cannot be made), that is said once
        (:func:`shared_memory_warning`) and the batches from the first one missing on come from this
        process, for the rest of the run. They are the same batches where the dataset draws each
        sample from ``(seed, epoch, index)`` alone, as :class:`~.data.SRPairDataset` does (its
        generator seeded per sample, not a worker's running state): whoever loads it, a sample is
        the same; a dataset that draws from a per-worker random stream gives other samples."""
        start = 0
        while True:
            workers = 0 if self._in_process_loading else self.config.num_workers
            try:
                started = iter(loader(workers, start))
            except OSError as exc:
                if not workers or not no_room_to_start_workers(exc):
                    raise
                _end_half_started(exc)
            else:
                with workers_ended(started) as batches:
                    while True:
                        try:
                            batch = next(batches)
                        except StopIteration:
                            return
                        except RuntimeError as exc:
                            if not workers or not out_of_shared_memory(exc):
                                raise
                            break
                        start += 1
                        yield batch
            self._in_process_loading = True
            rank = "" if self.dist.is_main else f"rank {self.dist.rank}: "
            print(f"warning: {rank}{shared_memory_warning()}", file=sys.stderr, flush=True)

    def _note_left_out(self, batch: Any) -> Any:
        """``batch`` without its ``left_out`` lines (:class:`~.data.SRPairDataset`), each printed
        once as a warning: a loader worker cannot tell what the others, or earlier epochs, said."""
        said = batch.pop("left_out", "") if isinstance(batch, dict) else ""
        for line in "\n".join(said if isinstance(said, (list, tuple)) else [said]).splitlines():
            if line and line not in self._left_out:
                self._left_out.add(line)
                print(f"warning: {line}", file=sys.stderr, flush=True)
        return batch

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Run :meth:`validation_step` over the validation set (rank 0); writes the grid PNG."""
        if self.val_data is None or not self.dist.is_main:
            return {}
        self.model.eval()
        try:
            return self._validate_in_eval_mode()
        finally:  # (every way out: a validation_step that returns None, or raises, too)
            self.set_train_mode()

    def _validate_in_eval_mode(self) -> dict[str, float]:
        from ..images import save_image

        val_data, size = self.val_data, self.config.batch_size
        assert val_data is not None

        def loader(workers: int, start: int) -> DataLoader[Any]:
            rest = range(start * size, len(val_data))  # type: ignore[arg-type]
            return self._loader(val_data, workers, batch_size=size, sampler=rest,
                                generator=torch.Generator().manual_seed(0))

        columns: list[list[Tensor]] = []
        sums: dict[str, float] = {}
        count = 0
        devs = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devs), self._autocast(), contextlib.closing(self._loaded(loader)) as batches:
            for batch in batches:
                res = self.validation_step(_to_device(self._note_left_out(batch), self.device))
                if res is None:
                    return {}
                cols, metrics = res
                if len(columns) == 0 or sum(c.shape[0] for c in columns[0]) < 8:
                    columns.append([c.float().cpu() for c in cols])
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v.double().sum())
                count += cols[0].shape[0]
        metrics_mean = {k: v / max(count, 1) for k, v in sums.items()}
        if columns:
            merged = [torch.cat([c[i] for c in columns]) for i in range(len(columns[0]))]
            save_image(image_grid(merged), self.out / VAL_DIR / f"step_{self.step:08d}.png", root=self.out)
        self.log({"kind": "val", "step": self.step, **metrics_mean})
        self.last_val = metrics_mean
        return metrics_mean

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    # -- the loop ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """The configured learning rate for optimizer step ``step`` (0-based): ``lr`` before
        ``lr_decay_start``, then cosine to ``lr·lr_final_ratio`` or linear to 0 at ``steps``
        (the step ``steps − 1`` takes ``lr/(steps − lr_decay_start)``, as pix2pixHD's last epoch)."""
        cfg = self.config
        if cfg.lr_schedule == "constant" or step < cfg.lr_decay_start:
            return cfg.lr
        span = max(1, cfg.steps - cfg.lr_decay_start)
        t = min(1.0, (step - cfg.lr_decay_start) / span)
        if cfg.lr_schedule == "linear":
            return cfg.lr * (1.0 - t)
        floor = cfg.lr * cfg.lr_final_ratio
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    def _one_step(self, batches: Iterator[Any]) -> dict[str, Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; detached losses (no host sync
        on CUDA: values are read only when logged)."""
        cfg = self.config
        if cfg.lr_schedule != "constant":
            lr = self.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}
        for j in range(cfg.grad_accum):
            batch = next(batches)
            sync = j == cfg.grad_accum - 1 or not self.dist.distributed
            ctx = contextlib.nullcontext() if sync else self.net.no_sync()  # type: ignore[operator]
            with ctx:
                with self._autocast():
                    losses = self.train_step(self.net, batch)
                    loss = losses["loss"]
                if self.device.type != "cuda":
                    self._check_finite(losses)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            for k, v in losses.items():
                d = v.detach().float() / cfg.grad_accum
                sums[k] = sums[k] + d if k in sums else d
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # type: ignore[arg-type]
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).detach()
        self.scaler.step(self.optimizer)  # type: ignore[arg-type]
        self.scaler.update()
        self.step += 1
        return sums

    def _check_finite(self, losses: dict[str, Tensor]) -> None:
        if not bool(torch.isfinite(losses["loss"])):
            raise TrainingDiverged(f"step {self.step + 1}: the loss is not finite "
                                f"({', '.join(f'{k}={float(v.detach()):.4g}' for k, v in losses.items())})")

    def _progress(self) -> Any:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        from ..cli import stderr_animates, stderr_is_terminal

        return Progress(TextColumn(f"[bold]{self.name}[/]"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                        # (a log with FORCE_COLOR is no terminal: the bar would write a line per refresh;
                        # in any log its last state is one line cut at 80 columns: the summary says it whole)
                        console=Console(stderr=True, force_terminal=stderr_is_terminal()),
                        disable=self.quiet or not self.dist.is_main or not stderr_animates(),
                        transient=False)

    def _data_stopped(self, exc: DataError, start: float, last_ckpt: Path | None) -> RunStopped:
        """The error that ends a run whose data failed mid-run (``data.bad_images = "stop"``),
        after a checkpoint of the last whole step, so that the run resumes once the data is fixed.
        Under DDP the other ranks may be inside a collective: no checkpoint there."""
        msg = worker_message(exc)
        if self.dist.distributed:
            return RunStopped(msg)
        saved = last_ckpt if last_ckpt == checkpoint_path(self.out, self.step) else None
        if saved is None and self.step > 0:
            saved = self.save_checkpoint(self.elapsed_before + time.monotonic() - start)
        if saved is None:
            return RunStopped(msg)
        return RunStopped(f"{msg}; the run stopped at step {self.step} ({saved}): --resume continues it")

    def fit(self, *, resume: bool | str | Path = False, time_limit: float | None = None,
            until: int | None = None) -> dict[str, Any]:
        """Train to ``config.steps``; ``resume=True`` continues from the latest checkpoint
        (a path: from that file). ``time_limit`` (seconds) stops early with a checkpoint, and so
        does ``until`` (a step) — without changing the schedule, which ``config.steps`` defines, so
        a run split at any step reproduces the uninterrupted one.

        Returns a summary: final step, output folder, last losses and validation metrics,
        the last checkpoint, and whether the run finished. The run's log is closed when it ends,
        however it ends.
        """
        with self.logs:
            return self._fit(resume=resume, time_limit=time_limit, until=until)

    def _fit(self, *, resume: bool | str | Path = False, time_limit: float | None = None,
             until: int | None = None) -> dict[str, Any]:
        """:meth:`fit`, but for closing the log."""
        cfg = self.config
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            check_run_folders(self.out, self.run_folders)
        if resume:
            self.resume(None if resume is True else resume)
        self.logs.close()  # (a log replaced whole now is opened again by the next record)
        start_log(self.out, self.log_path, resumed_at=self.step if resume else None, main=self.dist.is_main)
        if not resume:
            seed_everything(cfg.seed + self.dist.rank)
        barrier(self.dist)
        self.set_train_mode()
        start = time.monotonic()
        last_ckpt: Path | None = None
        check_stop_steps(self.step, cfg.steps, until)
        batches = self._batches()  # (a generator: nothing is loaded before the first step asks for a batch)
        first = self.step
        window: dict[str, Tensor] = {}
        n_window = 0
        stopped = False
        # In a log (no bar there) a line of the running losses now and then, so a long job is seen to run.
        from ..cli import stderr_animates

        notes_in_log = not self.quiet and self.dist.is_main and not stderr_animates()
        noted_at: float | None = None
        # closing: a run that ends by an error ends its loader workers now, not when collected.
        with StopFlag() as stop, self._progress() as bar, contextlib.closing(batches):
            task = bar.add_task("train", total=cfg.steps, completed=self.step, losses="")
            while self.step < cfg.steps:
                try:
                    logs = self._one_step(batches)
                except DataError as exc:
                    raise self._data_stopped(exc, start, last_ckpt) from None
                for k, v in logs.items():
                    window[k] = window[k] + v if k in window else v
                n_window += 1
                elapsed = time.monotonic() - start
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._check_finite(window)  # on CUDA the only check: here values reach the host
                    avg = mean_across(self.dist, {k: float(v) / n_window for k, v in window.items()})
                    window, n_window = {}, 0
                    self.last_logs = avg
                    rate = (self.step - first) * cfg.batch_size * cfg.grad_accum * self.dist.world_size / max(elapsed, 1e-9)
                    self.log({"kind": "train", "step": self.step, **avg,
                              "lr": self.optimizer.param_groups[0]["lr"], "epoch": self.epoch,
                              "time": round(self.elapsed_before + elapsed, 3), "images_per_s": round(rate, 3)})
                    bar.update(task, losses="  ".join(f"{k} {v:.4g}" for k, v in avg.items()))
                    if notes_in_log and (noted_at is None or elapsed - noted_at >= LOG_NOTE_EVERY_S):
                        noted_at = elapsed
                        print(f"{self.name}: step {self.step}/{cfg.steps}  "
                              + "  ".join(f"{k} {v:.4g}" for k, v in avg.items())
                              + f"  {rate:.3g} images/s  {self.elapsed_before + elapsed:.0f} s", file=sys.stderr,
                              flush=True)
                bar.update(task, completed=self.step)
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    try:
                        self.validate()
                    except DataError as exc:  # as for training data: stop after a checkpoint of this step
                        raise self._data_stopped(exc, start, last_ckpt) from None
                    barrier(self.dist)
                at_limit = (time_limit is not None and elapsed >= time_limit) or (until is not None and self.step >= until)
                # Every rank must agree on stopping (a signal may reach only some of them).
                halt = mean_across(self.dist, {"halt": float(stop.set or at_limit)})["halt"] > 0
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or halt:
                    last_ckpt = self.save_checkpoint(self.elapsed_before + elapsed) or last_ckpt
                if halt:
                    stopped = True
                    break
        finished = self.step >= cfg.steps
        exported: Path | None = None
        if self.dist.is_main:
            if finished:
                exported = self.export(self.out)
            self.logs.close()  # all written: the plot reads it
            if self.log_path.exists():
                from .plot import plot_losses

                plot_losses(self.log_path, self.out / "loss.png", root=self.out)
        signum = signal_across(self.dist, stop.signum)
        barrier(self.dist)
        return {"rank": self.dist.rank, "world_size": self.dist.world_size, "step": self.step, "steps": cfg.steps,
                "finished": finished, "stopped_early": stopped, "signal": signum,
                "out": str(self.out), "checkpoint": str(last_ckpt) if last_ckpt else None,
                "exported": str(exported) if exported else None, "losses": self.last_logs,
                "val": self.last_val, "seconds": round(time.monotonic() - start, 3)}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["LogFiles", "Trainer", "TrainingError", "CKPT_DIR", "VAL_DIR", "atomic_save", "check_run_folders", "check_stop_steps", "checkpoint_path", "checkpoint_to_resume", "count_parameters", "image_grid",
           "latest_checkpoint", "list_checkpoints", "load_checkpoint", "log_line", "newest_loadable_checkpoint", "no_room_to_start_workers", "out_of_shared_memory", "prune_checkpoints", "psnr", "restoring", "resume_checkpoint",
           "resume_warning", "rng_state", "run_subfolder", "set_rng_state", "cuda_seed_of", "seed_everything", "setting_changes", "start_log", "trim_log",
           "warn_changed_settings"]
