"""``restorekit train``: a group to which plugins add one subcommand per trainer.

A plugin registers its trainer from ``register_commands(cli)``::

    def register_commands(cli):
        from restorekit.commands.train import add_trainer
        add_trainer(cli, "psp_sr", "pSp super-resolution encoder", _load_trainer)

where ``_load_trainer()`` imports and returns a :class:`~restorekit.training.Trainer` subclass
with a ``Config`` model and a ``build(config, quiet=...)`` classmethod — so heavy imports happen
only when that trainer runs. Every trainer gets the same options::

    restorekit train NAME --data DIR --config cfg.toml [--out DIR] [--steps N]
                          [--set key=value]... [--resume] [--time-limit MIN]

Settings apply in this order: when resuming, the config saved in the checkpoint; then the config
file; then ``--data/--out/--steps/--device``; then ``--set``. So ``--resume`` needs only ``--out``
(and whatever is to change); a changed setting is named in a warning (see
:func:`~restorekit.training.trainer.resume_warning`). Before any work, a setting that names a file
or folder may not be empty (``--out ""`` or ``--set out=`` would train into the current folder),
a config file's numbers must be finite (TOML's ``inf``) and be numbers (``steps = true``, which
pydantic reads as 1), and ``--time-limit`` must be a finite number of minutes.
Under ``torchrun --nproc_per_node N -m restorekit train …`` training runs data-parallel; a bad
option or setting, the same in every process, is said by each machine's first process only
(``LOCAL_RANK`` 0), the others ending with the same exit code. Errors from building the trainer
(data, weights) may differ between processes and are said by each. torchrun's variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) set by hand must be whole numbers that fit together, or
the command says which one is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..cli import emit_json, error_line, json_output
from ..command_group import CommandGroup
from ..devices import DEVICE, DEVICE_HELP
from ..errors import RestorekitError
from ..options import FiniteFloatRange
from ..process_layout import process_layout

TrainerLoader = Callable[[], Any]


@click.group("train", cls=CommandGroup)
def train_group() -> None:
    """Train models (each plugin adds its trainers; `restorekit train NAME --help`)."""


class _FolderPath(click.Path):
    """``click.Path`` that refuses an empty value, which ``pathlib`` reads as the current folder."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("empty: give a folder (`.` for the current one)", param, ctx)
        return super().convert(value, param, ctx)


def _leaves(data: Any, parts: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every value of a nested settings table (lists held whole)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*parts, str(key)))
    elif parts:
        yield ".".join(parts), data


def check_config_file(path: Path, data: dict[str, Any], model: Any) -> None:
    """Refuse what a config file's values hold that validation lets through: ``true``/``false`` for
    a number setting, alone or in a list (pydantic reads ``steps = true`` as 1 step). A NaN or infinite number (TOML
    ``nan``/``inf``) is refused by validation itself, naming the file and the setting."""
    from ..options import annotation_at, bool_for_number

    for key, value in _leaves(data):
        if isinstance(value, (bool, list, tuple, dict)) and bool_for_number(annotation_at(model, key.split(".")), value):
            said = str(value).lower() if isinstance(value, bool) else json.dumps(value)
            raise RestorekitError(f"{path}: setting '{key}' takes {'a number' if isinstance(value, bool) else 'numbers'}"
                                  f"; got {said}")


def _refuse_empty_paths(model: Any, data: dict[str, Any], sets: tuple[str, ...], layers: list[Any],
                        fallback: str) -> None:
    """An empty setting that names a file or folder (``model.PATH_SETTINGS``) is refused, naming where it
    came from: as a path it would be the current folder (``--set out=`` would train into it)."""
    from ..training.config import setting_source

    for key in getattr(model, "PATH_SETTINGS", {}):
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str) and not node.strip():
            raise RestorekitError(f"{setting_source(key, sets, layers, fallback)}: setting '{key}' is empty: give a "
                                  "file or folder (`.` for the current folder), or none to leave it unset")


def _saved_config(out: Path, trainer: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--resume`` continues from and the config saved in it (refused when
    another trainer wrote it: its settings would not be this trainer's)."""
    from ..training.trainer import resume_checkpoint

    main = process_layout().get("RANK", 0) == 0  # under torchrun, one warning for the run
    # Mapped: the settings are all that is read here; the trainer loads the states from this file.
    path, ckpt = resume_checkpoint(out, None, trainer, warn=main, mmap=True)
    return path, dict(ckpt["config"])


@dataclass(frozen=True)
class ResolvedTraining:
    """What ``restorekit train NAME`` runs: the trainer class, its validated config, and the
    checkpoint ``--resume`` continues from (``None`` for a new run). The settings and the states
    come from that one file, even if a newer checkpoint appears in the meantime."""

    trainer: Any
    config: Any
    checkpoint: Path | None = None


def resolve_training_config(loader: TrainerLoader, *, data: Path | None, config: Path | None, out: Path | None,
                            steps: int | None, sets: tuple[str, ...], resume: bool,
                            device: str | None) -> ResolvedTraining:
    """The trainer class, its validated config and the checkpoint to resume from, from the
    command's options and files alone.

    Settings are laid over each other in this order: when resuming, the config saved in the
    checkpoint; then the ``config`` file; then ``data``/``out``/``steps``/``device``; then ``sets``.
    """
    from ..training.config import (Layer, apply_overrides, checkpoint_layer, merge_settings, read_config_file,
                                   validate_config, without_unused)

    cls = loader()
    given = read_config_file(config) if config is not None else {}
    if config is not None:
        check_config_file(config, given, cls.Config)
    source = str(config) if config is not None else "config"
    base: dict[str, Any] = {}
    saved_root: str | None = None
    ckpt_path: Path | None = None
    layers: list[Layer] = []  # where each setting came from, to blame a bad one on its source
    if resume:
        # The run folder to continue: --out, else an `out` the file or a --set gives.
        run = out if out is not None else apply_overrides(given, sets, cls.Config).get("out")
        if isinstance(run, str) and not run.strip():
            _refuse_empty_paths(cls.Config, {"out": run}, sets, [Layer(source, given)], source)
        if run is None:
            raise RestorekitError("--resume needs --out (the run folder to continue)")
        ckpt_path, base = _saved_config(Path(run), cls.name)
        # A setting the checkpoint predates continues as the run trained (SETTINGS_BEFORE), not at its
        # default; one the trainer does not use (UNUSED: refused when given now) is left out.
        base = without_unused({**cls.Config.SETTINGS_BEFORE, **base}, cls.Config)
        saved_root = (base.get("data") or {}).get("root")
        layers.append(checkpoint_layer(ckpt_path, base))
    if config is not None:
        layers.append(Layer(str(config), given))
    base = merge_settings(base, given, cls.Config)
    if out is not None:
        base["out"] = str(out)
    if steps is not None:
        base["steps"] = steps
    if device is not None:
        base["device"] = device
    if data is not None:
        section = base.setdefault("data", {})
        if not isinstance(section, dict):
            raise RestorekitError(f"{config if config is not None else 'config'}: setting 'data' must be a table "
                                  f"([data] with root, factors…), not {section!r}")
        section["root"] = str(data)
    settings = apply_overrides(base, sets, cls.Config)
    _refuse_empty_paths(cls.Config, settings, sets, layers, source)
    cfg = validate_config(cls.Config, settings, overrides=sets, source=source, layers=layers)
    if cfg.out is None:
        raise RestorekitError("no output folder: pass --out DIR (or set `out` in the config)")
    if cfg.data.root is None:
        raise RestorekitError("no training data: pass --data DIR (a folder of HR face images)")
    if cfg.data.root == saved_root and not Path(cfg.data.root).is_dir():
        where = "" if Path(cfg.data.root).is_absolute() else " (relative to the current folder)"
        raise RestorekitError(f"--resume: the run's data folder {cfg.data.root}{where} no longer exists; "
                              "pass --data DIR with the folder of its training images")
    _refuse_out_inside_data(cfg.out, cfg.data.root)
    return ResolvedTraining(cls, cfg, ckpt_path)


def _refuse_out_inside_data(out: str, root: str) -> None:
    """A run folder inside the data folder is refused: the images the run writes there (validation
    grids, loss.png, a GAN's samples) were listed as training and validation faces by the next run
    or resume (4 faces became 6 training and 3 validation images)."""
    o, r = Path(os.path.realpath(out)), Path(os.path.realpath(root))
    if o == r or r in o.parents:
        raise RestorekitError(f"--out {out} is inside the training data {root}: the images the run writes there "
                              "(validation grids, loss.png) would be read as faces by the next run or --resume; "
                              "choose an --out outside it")


def fit_training(trainer: Any, *, resume: bool | Path, time_limit: float | None,
                 until: int | None = None) -> dict[str, Any]:
    """Fit a built trainer, then let go of its process group; returns the summary."""
    try:
        return trainer.fit(resume=resume, time_limit=time_limit * 60 if time_limit is not None else None,
                           until=until)
    finally:
        from ..training.distributed import cleanup

        close = getattr(trainer, "close", None)  # a trainer with a DDP wrapper lets go of it first
        if close is not None:
            close()
        cleanup(trainer.dist)


def _drop_if_empty(made: Path | None) -> None:
    """Remove the ``--out`` folder a refused command created, when nothing (but its run lock) was
    written into it."""
    from ..training.trainer import RUN_LOCK

    if made is None or not made.is_dir() or any(p.name != RUN_LOCK for p in made.iterdir()):
        return
    with contextlib.suppress(OSError):  # another process of the run may have written into it meanwhile
        (made / RUN_LOCK).unlink(missing_ok=True)
        made.rmdir()


def _diverged_summary(trainer: Any, error: str) -> dict[str, Any]:
    """``--json``'s summary of a run that diverged: the keys of a finished run's, where it stands."""
    from ..training.trainer import latest_checkpoint

    out = Path(trainer.out)
    kept = latest_checkpoint(out) if out.is_dir() else None
    return {"rank": 0, "world_size": getattr(getattr(trainer, "dist", None), "world_size", 1), "step": trainer.step,
            "steps": trainer.config.steps, "finished": False, "stopped_early": False, "signal": None,
            "out": str(out) if out.is_dir() else None, "checkpoint": str(kept) if kept is not None else None,
            "exported": None, "losses": getattr(trainer, "last_logs", {}), "val": getattr(trainer, "last_val", None),
            "seconds": None, "diverged": True, "error": error}


def trainer_command(name: str, summary: str, loader: TrainerLoader) -> click.Command:
    """The ``restorekit train NAME`` command for the trainer ``loader()`` returns."""

    @click.command(name, help=f"{summary}\n\nSettings: with --resume the checkpoint's, then the config file, "
                              "then the options, then --set.")
    @click.option("--data", type=_FolderPath(path_type=Path, file_okay=False), default=None,
                  help="Folder of HR images (recursive).")
    @click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="TOML config file (or YAML, with pyyaml installed).")
    @click.option("--out", "--output", "out", type=_FolderPath(path_type=Path, file_okay=False), default=None,
                  help="Run folder: checkpoints, log.jsonl, validation grids, the exported model.")
    @click.option("--steps", type=click.IntRange(min=1), default=None, help="Total optimizer steps.")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Override a setting (dotted for tables: data.factors=[1,4]); repeatable.")
    @click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out, with its settings.")
    @click.option("--time-limit", type=FiniteFloatRange(min=0), default=None, metavar="MIN",
                  help="Stop (with a checkpoint) after this many minutes; --resume continues later.")
    @click.option("--until", type=click.IntRange(min=1), default=None, metavar="STEP",
                  help="Stop (with a checkpoint) at this step; the schedule still ends at --steps.")
    @click.option("--device", type=DEVICE, default=None,
                  help=DEVICE_HELP[:-1] + " (default: the config's).")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
    @json_output
    def cmd(data: Path | None, config: Path | None, out: Path | None, steps: int | None, sets: tuple[str, ...],
            resume: bool, time_limit: float | None, until: int | None, device: str | None, quiet: bool,
            as_json: bool) -> None:
        ctx = click.get_current_context()
        made: Path | None = None  # an --out this command would create: not left behind, empty, by a refusal
        try:
            layout = process_layout()
        except RestorekitError as exc:  # which process this is cannot be told: each says it
            error_line(str(exc))
            ctx.exit(2)
        try:
            run = resolve_training_config(loader, data=data, config=config, out=out, steps=steps, sets=sets,
                                          resume=resume, device=device)
            made = None if Path(run.config.out).exists() else Path(run.config.out)
            trainer = run.trainer.build(run.config, quiet=quiet)
        except RestorekitError as exc:  # a bad setting, option, data folder or weights file: the same in
            if layout.get("LOCAL_RANK", 0) == 0:  # every process of a machine, said once a machine
                error_line(str(exc))
            _drop_if_empty(made)
            ctx.exit(2)
        try:
            with contextlib.ExitStack() as held:
                if layout.get("RANK", 0) == 0:  # the run folder is this run's alone
                    from ..training.trainer import run_folder_lock

                    held.enter_context(run_folder_lock(run.config.out))
                result = fit_training(trainer, resume=run.checkpoint or False, time_limit=time_limit,
                                      until=until)
        except RestorekitError as exc:  # a checkpoint that does not fit; a run its data stopped (maybe one rank's)
            from ..training.trainer import TrainingDiverged

            error_line(str(exc))  # one line, as every command's: not a click usage block
            _drop_if_empty(made)
            diverged = isinstance(exc, TrainingDiverged)
            if diverged and as_json and layout.get("RANK", 0) == 0:  # the work failed: still summed up
                emit_json(_diverged_summary(trainer, str(exc)))
            ctx.exit(1 if diverged else 2)  # (1: the work failed, not its settings)
        if result.get("rank", 0) != 0:
            return  # under torchrun, rank 0 reports
        if as_json:
            emit_json({**result, "diverged": False, "error": None})
        elif not quiet:
            state = "finished" if result["finished"] else "stopped (resume with --resume)"
            losses = ", ".join(f"{k} {v:.4g}" for k, v in result["losses"].items())
            click.echo(f"{name}: step {result['step']}/{result['steps']} {state}" + (f"; {losses}" if losses else ""),
                       err=True)
            if result["exported"]:
                click.echo(f"model: {result['exported']}", err=True)
        if result.get("signal"):  # stopped by Ctrl-C or a TERM, with a checkpoint: said by the exit code too
            ctx.exit(128 + int(result["signal"]))

    return cmd


def add_trainer(cli: click.Group, name: str, summary: str, loader: TrainerLoader) -> click.Command:
    """Add ``restorekit train NAME`` (creating the ``train`` group if the core has none)."""
    group = cli.commands.get("train")
    if not isinstance(group, click.Group):
        group = train_group
        cli.add_command(group)
    cmd = trainer_command(name, summary, loader)
    group.add_command(cmd)
    return cmd


def attach(cli: click.Group) -> None:
    cli.add_command(train_group)
