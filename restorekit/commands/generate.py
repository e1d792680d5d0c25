"""``restorekit generate``: sample images from a registered generator, for eyeballing it.

The images are named by seed (``seed0007.png``); what made them — the generator, its weights
(the sha256 of the loaded state, and of its truncation centre ``latent_avg``, which the state
leaves out), a fingerprint of its code and ``--truncation`` — is recorded
in ``generate.json`` beside them, with the names of the images made so: each image is listed
before it is written, so an image listed but missing (a run killed before writing it) is made by
the next run. The manifest is written once before the first image and once at the end; in
between each image adds one line to a journal (``.generate.journal``): rewriting the whole list
per image made a long run quadratic (100,000 seeds: hours and ~100 GB written). A journal a
killed run left is folded into ``generate.json`` by the next run before anything else. A later
run into the same folder with other settings (other generator code, and a manifest of an earlier
restorekit that did not record the code, too), or onto images the manifest does not list (a
folder made before ``generate.json`` existed, too), is refused before any work (exit 2) unless
``--overwrite``, which replaces them and starts a new manifest: an image that exists is skipped
only when it was made with the same settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

import click
import torch

from ..batch import EXISTS, output_held
from ..cli import emit_json, error_line, fail_usage, json_output, warn
from ..devices import DEVICE, DEVICE_HELP
from ..errors import FileSystemError, RestorekitError, UnknownNameError, describe_os_error
from ..images import atomic_write_bytes, save_image
from ..methods import resolve_device
from ..options import FiniteFloatRange, OptionError, parse_pairs, with_weights
from ..plugins import registry
from ..provenance import cut_short
from ..safe_open import ends_line, open_append, read_plain
from ..seeds import MAX_SEEDS, parse_seeds, torch_seed


MANIFEST = "generate.json"
MANIFEST_FORMAT = "restorekit.generate/1"
#: One line per image listed since ``generate.json`` was last written (hidden: never an input).
JOURNAL = ".generate.journal"
JOURNAL_FORMAT = "restorekit.generate-journal/1"


def _state_sha256(gen: Any) -> str | None:
    """sha256 over the generator's state (its weights), or None when it is no module."""
    if not isinstance(gen, torch.nn.Module):
        return None
    from ..onnx_export import state_sha256

    return state_sha256(gen)


#: The settings key of the truncation centre's sha256, which manifests of earlier restorekit lack.
LATENT_AVG_KEY = "latent_avg_sha256"


def _as_recorded(settings: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as a manifest that does not record :data:`LATENT_AVG_KEY` (an earlier
    restorekit's) holds them: without it, so such a folder is compared as before and its manifest
    kept so (the truncation centre of its images is unknown, not vouched for)."""
    if LATENT_AVG_KEY in recorded:
        return settings
    return {k: v for k, v in settings.items() if k != LATENT_AVG_KEY}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail_usage(f"{path}: unreadable generate manifest ({exc}); use another --output, or remove it")
    if not (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and isinstance(data.get("settings"), dict)
            and isinstance(data.get("images"), list) and all(isinstance(n, str) for n in data["images"])):
        fail_usage(f"{path}: not a {MANIFEST_FORMAT} manifest; use another --output, or remove it")
    return data


def _write_manifest(path: Path, settings: dict[str, Any], images: set[str]) -> None:
    doc = {"format": MANIFEST_FORMAT, "settings": settings, "images": sorted(images)}
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


def _parsed(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:  # a line cut off by a kill mid-append (its image was not written yet)
        return None


def _read_journal(path: Path) -> tuple[Any, set[str]] | None:
    """``(settings, names)`` of the journal a killed run left at ``path`` (None: there is none).
    ``settings`` is None when its first line is not a journal header (cut off before any name)."""
    try:
        data = read_plain(path)
    except OSError as exc:
        fail_usage(f"{path}: unreadable generate journal ({describe_os_error(exc, path)}); remove it")
    if data is None:
        return None
    head, *rest = data.split(b"\n")
    header = _parsed(head)
    ok = isinstance(header, dict) and header.get("format") == JOURNAL_FORMAT
    return (header.get("settings") if ok else None), {v for v in map(_parsed, rest) if isinstance(v, str)}


def _fold_left_journal(manifest_path: Path, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """``manifest`` with the images a killed run's journal listed, written back, and the journal
    removed; done before anything reads what the folder holds. A journal whose settings are not the
    manifest's is dropped: the images it names stay of unknown settings (refused without --overwrite)."""
    journal = manifest_path.parent / JOURNAL
    left = _read_journal(journal)
    if left is None:
        return manifest
    settings, names = left
    if manifest is not None and settings == manifest["settings"] and not names <= set(manifest["images"]):
        manifest = {**manifest, "images": sorted({str(n) for n in manifest["images"]} | names)}
        _write_manifest(manifest_path, manifest["settings"], set(manifest["images"]))
    try:
        journal.unlink(missing_ok=True)
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, journal)) from None
    return manifest


class _Journal:
    """Lists each image in ``generate.json`` before it is written, at a cost that does not grow
    with the run: the first by writing the manifest, the others by one line each appended to
    :data:`JOURNAL`; :meth:`fold` writes them into the manifest and removes the journal."""

    def __init__(self, manifest_path: Path, settings: dict[str, Any]) -> None:
        self.manifest_path = manifest_path
        self.path = manifest_path.parent / JOURNAL
        self.settings = settings
        self._f: BinaryIO | None = None

    def add(self, made: set[str], name: str) -> None:
        """List ``name`` (``made`` holds it and every image listed before)."""
        if self._f is None:
            _write_manifest(self.manifest_path, self.settings, made)
            try:
                self._f = open_append(self.path)
            except OSError as exc:
                raise FileSystemError(describe_os_error(exc, self.path)) from None
            header = {"format": JOURNAL_FORMAT, "settings": self.settings}
            self._append(json.dumps(header) + "\n", fresh=True)
        else:
            self._append(json.dumps(name) + "\n")

    def _append(self, text: str, fresh: bool = False) -> None:
        assert self._f is not None
        f, data, start = self._f, text.encode(), -1
        try:
            start = os.fstat(f.fileno()).st_size
            if fresh and start and not ends_line(f):
                data = b"\n" + data  # never glued onto a line cut off in a file found there
            view = memoryview(data)
            while view:  # a raw write may take part of it
                view = view[f.write(view):]
        except OSError as exc:
            if start >= 0:
                with suppress(OSError):
                    os.ftruncate(f.fileno(), start)  # no cut-off line left behind (a full disk)
            raise FileSystemError(describe_os_error(exc, self.path)) from None

    def fold(self, made: set[str]) -> None:
        """Write every image of ``made`` into the manifest and remove the journal (when one was begun)."""
        if self._f is None:
            return
        self._f.close()
        self._f = None
        _write_manifest(self.manifest_path, self.settings, made)
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise FileSystemError(describe_os_error(exc, self.path)) from None


def _generator_code(name: str) -> str:
    """What the images depend on beyond the weights: a fingerprint of the code of the package that
    registered generator ``name`` (:func:`~restorekit.harness.runner.code_fingerprint`, as compare
    pins a method's code; ``""`` for a name not registered), so images an upgraded or edited
    generator would draw otherwise are not kept as its own."""
    from ..harness.runner import code_fingerprint

    try:
        module = getattr(registry().get("generators", name).build, "__module__", None)
    except UnknownNameError:
        return ""
    return code_fingerprint(module) if isinstance(module, str) and module else ""


def _settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    def short(v: Any) -> str:
        return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else str(v)

    found = []
    for k in sorted(old.keys() | new.keys()):
        if old.get(k) == new.get(k):
            continue
        if k == "code":  # in words: code is no setting the user chose
            found.append("made by an earlier restorekit, which did not record the generator's code" if k not in old
                         else "the generator's code changed (its plugin upgraded or edited)")
        else:
            found.append(f"{k} {short(old.get(k, '—'))} → {short(new.get(k, '—'))}")
    return found


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    return parse_seeds(value)  # 0 … 2**64 − 1 each, at most MAX_SEEDS, checked before the list is built


def generator_weights_options(command: Any) -> Any:
    """``--weights`` and ``--opt``, as every command that builds a generator with
    :func:`build_generator` takes them."""
    command = click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
                           help="Generator config (repeatable); random_weights=true asks for an untrained "
                                "generator.")(command)
    return click.option("--weights", default=None,
                        help="Weights name or path for the generator (default: the generator's shipped weights, "
                             "if any).")(command)


def check_generator(name: str) -> None:
    """Refuse an unknown generator name as a usage error (exit 2, with a did-you-mean), before any work."""
    try:
        registry().get("generators", name)
    except UnknownNameError as exc:
        fail_usage(str(exc))


def build_generator(name: str, weights: str | None, opts: tuple[str, ...], device: torch.device, *,
                    quiet: bool = False) -> Any:
    """The registered generator ``name`` from a command's ``--weights`` and ``--opt`` words, in eval
    mode on ``device``; its notes (which weights, their license) go to stderr unless ``quiet``.
    Callers refuse an unknown ``name`` first, before any other work (:func:`check_generator`).

    The factory's options model reads every value (``allow_unsafe=false`` is False, not a truthy
    string); a bad value or argument is a usage error (exit 2).
    """
    factory = registry().get("generators", name)
    label = f"generator '{name}'"
    config: dict[str, object] = dict(parse_pairs(opts))
    if weights is not None:
        try:
            config = with_weights(factory.options_model(), config, weights, label=label)
        except OptionError as exc:
            fail_usage(str(exc))
    try:
        gen = factory.create(config, label=label).to(device).eval()
    except (TypeError, ValueError) as exc:  # the factory's own check of its arguments
        fail_usage(f"{label}: {exc}")
    except RestorekitError as exc:
        # Weights of another kind (pix2pixhd's, lpips-alex): name the file (and its format), which
        # the loader of bare tensors cannot (psp_sr's rosinality.NotAGenerator.with_source).
        again = getattr(exc, "with_source", None)
        if weights is None or getattr(exc, "source", "") is not None or not callable(again):
            raise
        from ..weights import weights_source

        try:
            path = weights_source(weights)[0]
        except RestorekitError:
            raise exc from None
        raise again(path) from None
    if not quiet:
        for note in getattr(gen, "notes", []):
            click.echo(note, err=True)
    return gen


@click.command("generate")
@click.option("--generator", "name", required=True, help="Registered generator name.")
@generator_weights_options
@click.option("--seeds", "seed_list", default="0-7", show_default=True, callback=_seeds,
              help=f"Seeds, e.g. 0-7,12 (each 0 to 2**64-1; at most {MAX_SEEDS:,}).")
@click.option("--truncation", type=FiniteFloatRange(0, 1), default=0.7, show_default=True,
              help="Pull each latent toward the mean latent (1: none; lower: more typical, less varied).")
@click.option("--output", "--out", "output", type=click.Path(path_type=Path), required=True,
              help="Output folder (seedNNNN.png and generate.json).")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--overwrite", is_flag=True, help="Replace images that already exist (else those made with the same "
                                                "settings, as generate.json records, are skipped, and others refused).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@json_output
def generate_cmd(name: str, weights: str | None, opts: tuple[str, ...], seed_list: list[int], truncation: float,
                 output: Path, device: str, overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Write one image per seed from GENERATOR (truncated towards its mean latent).

    Without --weights the generator's factory picks its default (stylegan2: the shipped face prior,
    named on stderr) or fails naming the fix; random weights only with --opt random_weights=true."""
    check_generator(name)
    dev = resolve_device(device)
    # This run alone writes into --output, from the check of what is there to its last image: two at
    # once had both read the manifest, then each rewritten it, listing the other's images as its own.
    # Taken before the generator is built, so a busy folder is refused at once (loading and hashing a
    # 1024-px generator takes many seconds), as `run` is before it builds its method.
    with output_held(output, "generate"):
        gen = build_generator(name, weights, opts, dev, quiet=quiet)
        from ..harness.realism.evaluate import latent_avg_sha256

        settings = {"generator": name, "truncation": truncation, "weights_state_sha256": _state_sha256(gen),
                    LATENT_AVG_KEY: latent_avg_sha256(gen), "code": _generator_code(name)}
        manifest_path = output / MANIFEST
        manifest = _fold_left_journal(manifest_path, _read_manifest(manifest_path))
        if manifest is not None and manifest["settings"] == _as_recorded(settings, manifest["settings"]):
            settings = manifest["settings"]  # the same (an earlier restorekit's manifest: as it recorded them)
        elif manifest is not None:
            if not overwrite:
                diffs = "; ".join(_settings_differences(manifest["settings"],
                                                        _as_recorded(settings, manifest["settings"])))
                fail_usage(f"{output}: holds images made with other settings ({diffs}; see {manifest_path}); use "
                           f"another --output, or --overwrite to replace them")
            manifest = None  # --overwrite: a new manifest, listing only the images made now
        made = {str(n) for n in (manifest or {}).get("images", [])}
        targets = [(seed, output / f"seed{seed:04d}.png") for seed in seed_list]
        unknown = [p for _, p in targets if (p.exists() or p.is_symlink()) and p.name not in made]
        if unknown and not overwrite:  # images of unknown settings would be left as if made now
            them = f"{unknown[0]}{f' and {len(unknown) - 1} more' if len(unknown) > 1 else ''}"
            it = "it" if len(unknown) == 1 else "them"
            if manifest is None:  # a folder made before generate recorded its settings, or by something else
                fail_usage(f"{output}: has no {MANIFEST}, so the settings that made {them} are unknown (a folder "
                           f"made before restorekit recorded them in {MANIFEST}, or by something else); use another "
                           f"--output, or --overwrite to replace {it}")
            fail_usage(f"{them}: made with settings {manifest_path} does not record; use another --output, or "
                       f"--overwrite to replace {it}")

        journal = _Journal(manifest_path, settings)

        def record(file_name: str) -> None:
            made.add(file_name)
            journal.add(made, file_name)

        written: list[str] = []
        skipped: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []  # an image that could not be written; the other seeds go on
        try:
            _generate_all(gen, targets, truncation, dev, overwrite, record, written, skipped, failed)
        except BaseException:  # (Ctrl-C too) listed so far; failing that, the next run folds the journal
            with suppress(OSError):
                journal.fold(made)
            raise
        journal.fold(made)
        if as_json:
            emit_json({"generator": name, "truncation": truncation, "written": written, "skipped": skipped,
                       "failed": failed})
        elif not quiet:
            extra = f", {len(skipped)} skipped (exist; --overwrite replaces them)" if skipped else ""
            bad = f", {len(failed)} failed" if failed else ""
            click.echo(f"{len(written)} images{extra}{bad} → {output}", err=True)
        if failed:
            raise SystemExit(1)


def _generate_all(gen: Any, targets: list[tuple[int, Path]], truncation: float, dev: torch.device,
                  overwrite: bool, record: Callable[[str], None], written: list[str], skipped: list[dict[str, str]],
                  failed: list[dict[str, str]]) -> None:
    """Make each target's image (``record`` lists it first), filling ``written``, ``skipped``, ``failed``."""
    with torch.inference_mode():
        w_avg = gen.mean_latent()
        for seed, path in targets:
            if not overwrite and (path.exists() or path.is_symlink()) and not _made_again(path):
                skipped.append({"path": str(path), "reason": EXISTS})  # made with these settings (the manifest says so)
                continue
            z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(torch_seed(seed))).to(dev)
            w = w_avg + truncation * (gen.map(z) - w_avg)
            img = gen.synthesize(w.unsqueeze(1).repeat(1, gen.n_styles, 1)).clamp(0, 1)
            # An image made with other settings (--overwrite) goes before the manifest lists this one
            # under these: a kill between the two steps must leave it missing, never old and listed.
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # e.g. a folder where the image goes: this seed fails, not the run
                failed.append(_failure(path, exc))
                continue
            record(path.name)  # first: a kill before the image is written leaves it listed, not unknown,
            try:  # and the rerun makes it (it does not exist)
                written.append(str(save_image(img.cpu(), path)))
            except (RestorekitError, OSError) as exc:
                failed.append(_failure(path, exc))


def _made_again(path: Path) -> bool:
    """Whether the listed image at ``path`` is cut short (:func:`~restorekit.provenance.cut_short`: a
    copy or a write that stopped), so it is made again; said in one ``warning:`` line (``-q`` too)."""
    why = cut_short(path)
    if why is not None:
        warn(f"{path}: cut short ({why}), not a finished image: made again")
    return why is not None


def _failure(path: Path, exc: Exception) -> dict[str, str]:
    """``{"path", "error"}`` for a seed's image that could not be written, said on stderr at once."""
    from ..errors import describe_os_error

    msg = str(exc) if isinstance(exc, RestorekitError) else describe_os_error(exc, path)
    if str(path) not in msg:
        msg = f"{path}: {msg}"
    error_line(msg)
    return {"path": str(path), "error": msg}


def attach(cli: click.Group) -> None:
    cli.add_command(generate_cmd)
