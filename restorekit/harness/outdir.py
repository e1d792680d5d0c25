"""The configuration a ``compare --out`` folder was made by, recorded in ``OUT/compare.json``.

Outputs, LR inputs and stored results are named by image and method only, so a folder must hold one
configuration: the inputs (``--data``, ``--scale``, the degradation or ``--lr-dir``) and, per
method, the settings its outputs depend on (options, device, backend, face mode, versions, and a
fingerprint of the code and weights shipped in its package, and in the package of each component its
options name). A run may extend a folder (more methods, seeds, images or metrics); one whose inputs
or any method's settings differ is refused, naming the differences, unless ``--fresh``, which first
removes what compare wrote there (and nothing else). A method that has no outputs in the folder (it
failed on every image: a weights file that does not exist, say) holds nothing to protect, so its
settings may change; only PNGs of this run's images, or that its result store records, count as its
outputs (:func:`has_outputs`: other pictures in a folder a link of the user's stands for do not).
The configuration is recorded (:func:`record`) only once the run's inputs exist: a run stopped by
its inputs (no images, a missing ``--lr-dir``) leaves the folder free for the corrected one.

A folder that an earlier restorekit's compare filled without recording a configuration (results,
outputs or reports but no ``compare.json``; LR files whose noise was seeded by the image's name)
is refused too, unless ``--fresh``: its LR files sit under the same names as this code's, and
were reused as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import zlib
from collections.abc import Callable, Collection
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import RestorekitError
from ..images import atomic_write_bytes, is_temp_name, name_key, shown_name, subfolders, sweep_temp_files
from ..safe_open import Folder, check_folders, open_folder, read_plain, refused_link

if TYPE_CHECKING:
    from .runner import Plan

CONFIG_FILE = "compare.json"
# The files compare writes at the top of --out; --fresh removes these when the configuration changes,
# and in inputs/, outputs/ and results/ only what compare made there (see _remove_owned).
OWNED_FILES = ("results.csv", "summary.csv", "paired.csv", "results.json", "report.html", CONFIG_FILE)
OWNED_FOLDERS = ("inputs", "outputs", "results")
_LR_FOLDER = re.compile(r"^[0-9a-f]{12}$")  # inputs/<hash of degradation and scale>/, harness.inputs
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.@-]+")  # a method's name in file names (store.safe_name)
_RESULT_FILE = re.compile(r"[A-Za-z0-9_.@-]+\.jsonl")
_MANIFEST = "manifest.json"  # an LR folder's list of the files compare made there (harness.inputs)
# What of a folder compare wrote (see _clear): the names, given the folder open; None: every *.jsonl.
Owned = Callable[[Folder], "set[str] | None"]


def _spec(value: str) -> str:
    """An input spec made independent of the working directory (``@list``, globs, paths)."""
    if value.startswith("@"):
        return "@" + os.path.abspath(value[1:])
    return os.path.abspath(value)


def folder_config(p: Plan) -> dict[str, Any]:
    """What this run's files under ``--out`` depend on."""
    cfg = p.config
    source = f"lr-dir:{_spec(cfg.lr_dir)}" if cfg.lr_dir is not None else f"degradation:{p.degradation}"
    inputs: dict[str, Any] = {"data": _spec(cfg.data), "scale": cfg.scale, "source": source}
    if cfg.lr_dir is None:  # the LR files were made by restorekit's degradation code
        inputs["core_code"] = p.core_code
        if p.degradation_code:  # and by plugins' steps: their distribution, version and code
            inputs["degradation_plugins"] = p.degradation_code
    return {"inputs": inputs, "methods": {mp.name: mp.settings for mp in p.methods}}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


_SEEDED_STEM = re.compile(r"(.*)_s[0-9]+")  # <image>_s<seed>: a stochastic method's output (runner._output_rel)


def has_outputs(out: Path, method: str, stems: Collection[str] | None = None) -> bool:
    """Whether ``outputs/<method>/`` in ``out`` holds what compare writes there (its stored results
    may all be failures): a PNG named ``<image>.png`` or ``<image>_s<seed>.png`` — not a temp file,
    which a write cut short by a kill leaves behind, nor a folder.

    Given ``stems`` (the images of this run's ``--data``), only outputs of those images count, and
    those the method's result store records (:func:`_recorded_outputs`): the files compare would
    write over, and those it is known to have written. Any other picture there (a folder of the
    user's that a link of theirs stands for: ``outputs/<m> -> ~/pictures``) is none of compare's,
    is never read by it, and stays. Names are compared as a case-insensitive disk sees them."""
    from .store import safe_name

    folder = out / "outputs" / safe_name(method)
    try:
        names = [e.name for e in folder.iterdir() if not is_temp_name(e.name) and name_key(e.name).endswith(".png")
                 and not e.is_dir()]
    except OSError:  # (none there, a file, unreadable: no outputs to protect, and none reused)
        return False
    if stems is None or not names:
        return bool(names)
    images = {name_key(s) for s in stems}
    for name in map(name_key, names):
        seeded = _SEEDED_STEM.fullmatch(name[:-len(".png")])
        if name[:-len(".png")] in images or (seeded is not None and seeded[1] in images):
            return True
    try:
        recorded = {name_key(n) for n in _recorded_outputs(out, method)}
    except RestorekitError:  # (a link of another user's in results/: refused by claim, naming it)
        return True
    return any(name_key(n) in recorded for n in names)


def _input_stems(p: Plan) -> set[str] | None:
    """The image stems of this run's ``--data`` (its outputs are named by them); None when it
    cannot be listed (then every PNG counts, :func:`has_outputs`)."""
    from ..images import list_inputs

    try:
        return {item.stem for item in list_inputs(p.config.data)}
    except (RestorekitError, OSError, ValueError):
        return None


def differences(recorded: dict[str, Any], current: dict[str, Any], out: Path | None = None,
                stems: Collection[str] | None = None) -> list[str]:
    """``key: old → new`` for the inputs and for each method of ``current`` that ``recorded`` also has
    (and, given ``out``, that has outputs there: :func:`has_outputs` with ``stems``). A key one
    record lacks is a difference (``—`` stands for the missing value): the other record was made
    by code that did not record it, so the setting may have differed too."""
    diffs: list[str] = []
    pairs = [("", recorded.get("inputs") or {}, current["inputs"])]
    old_methods = recorded.get("methods") or {}
    pairs += [(f"{name}.", old_methods[name], settings) for name, settings in current["methods"].items()
              if name in old_methods and (out is None or has_outputs(out, name, stems))]
    core_changed = False
    code_changed: list[str] = []  # methods whose package's files changed (a plugin upgraded or edited)
    steps_changed: list[str] = []  # degradation steps whose plugin's files changed
    from ..run_record import PASTE_MASK_BEFORE, PINS

    for prefix, old, new in pairs:
        if prefix:  # a weights pin in one record only: the weights options differ, and say so themselves
            one_sided = [k for k in PINS if isinstance(old.get(k), dict) != isinstance(new.get(k), dict)]
            old, new = ({k: v for k, v in d.items() if k not in one_sided} for d in (old, new))
        a, b = _flat(old), _flat(new)
        if prefix and a.get("faces.mode") == "detect" and "faces.paste_mask" in b:
            # The one exception to "missing is a difference shown as —": a --faces detect method
            # recorded before the paste mask was a setting pasted the whole crop, and the default
            # has since changed (to "face"), so a record without it reads as "square", by name.
            a.setdefault("faces.paste_mask", PASTE_MASK_BEFORE)
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                if key == "faces.paste_mask":  # (in run's words)
                    diffs.append(f"{prefix}paste mask: {a.get(key, '—')} → {b.get(key, '—')}")
                elif key == "core_code":  # one line for all: restorekit itself, not a setting, changed
                    # (only --lr-dir runs record none: a switch to or from --lr-dir is its source line)
                    core_changed = core_changed or (key in a and key in b) or a.get("source") == b.get("source")
                elif key == "code" and prefix:
                    code_changed.append(prefix[:-1])
                elif prefix and key.startswith("components."):
                    # What it builds from another plugin (pulse's generator): one line per component, as for
                    # its own code. Where one record names none, it was made by restorekit code that did not
                    # record them (core_code says so) or with options naming another (the options say so).
                    label = f"{prefix[:-1]}'s {key[len('components.'):].rpartition('.')[0]}"
                    if key in a and key in b and label not in code_changed:
                        code_changed.append(label)
                elif not prefix and key.startswith("degradation_plugins.") and (
                        a.get("source") != b.get("source") or key.endswith(".code")):
                    # (another spec: its source line says it; the same: one line per step's code)
                    if a.get("source") == b.get("source"):
                        steps_changed.append(key[len("degradation_plugins."):-len(".code")])
                else:
                    diffs.append(f"{prefix}{key}: {a.get(key, '—')} → {b.get(key, '—')}")
    if steps_changed:
        diffs.insert(0, f"the code of degradation step {', '.join(repr(s) for s in steps_changed)} changed — its "
                        "plugin upgraded or edited — so its LR inputs could differ")
    if code_changed:
        diffs.insert(0, f"the code of {', '.join(code_changed)} changed — its plugin upgraded or edited — so "
                        "its numbers could differ")
    if core_changed:
        diffs.insert(0, "made by other restorekit code — an upgrade, or an edit of an editable install — so "
                        "its numbers could differ")
    return diffs


def _refuse_links(out: Path, methods: set[str]) -> None:
    """Refuse (:class:`~restorekit.safe_open.LinkedFolderError`, one line naming it) a symbolic
    link another user owns standing for a folder compare writes in or removes from below ``out``:
    ``inputs/`` and its LR folders, ``outputs/`` and ``results/`` and each of ``methods``' folders
    there. Its files would be written into (or, with ``--fresh``, removed from) whatever folder it
    points at. ``out`` itself is the user's, and so are links the user owns below it (followed)."""
    from .store import safe_name

    names = sorted({safe_name(m) for m in methods})
    check_folders(out, [*OWNED_FOLDERS, "results/parts", *(f"outputs/{n}" for n in names),
                        *(f"results/parts/{n}" for n in names)])
    lr: list[str] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
            open_folder(out, "inputs", create=False) as inputs:
        lr = [f"inputs/{e.name}" for e in inputs.entries() if _LR_FOLDER.match(e.name)]
    check_folders(out, lr)


def _plain_name(name: str) -> bool:
    """Whether ``name`` is the name of an entry of a folder itself (no separator, not ``.`` or
    ``..``): a name read from a file (a store's record, a manifest) removes nothing elsewhere."""
    return name not in ("", ".", "..") and "\0" not in name and \
        not any(sep in name for sep in {"/", os.sep, os.altsep or "/"})


def _recorded_outputs(out: Path, method: str) -> set[str]:
    """The names in ``outputs/<method>/`` of the outputs that ``method``'s result store records
    (read by the store itself: ``results/<method>.jsonl`` and its parts); none when there is no
    store or it cannot be read.

    The store is the one record of which files there compare wrote: its outputs are named
    ``<image>.png`` (``<image>_s<seed>.png``), as any picture may be, so a folder of the user's
    that a link of theirs stands for cannot be told apart by name. Without a store, what is there
    is kept (and said): a kept output of an earlier run is never reused (that takes a record of its
    sha256) and a new one of the same name replaces it."""
    from .store import ResultStore, safe_name

    results = out / "results"
    if not results.is_dir() or refused_link(results):
        return set()
    try:
        records = ResultStore(out).load(method)
    except OSError:  # (a link or a FIFO where its file is: nothing read from it)
        return set()
    names: set[str] = set()
    for rec in records.values():
        parts = PurePosixPath(rec.output).parts if rec.output else ()
        if len(parts) == 3 and parts[:2] == ("outputs", safe_name(method)) and _plain_name(parts[2]):
            names.add(parts[2])
    return names


def _listed_lr_files(folder: Folder) -> set[str]:
    """The LR files (``<image>.png``) that the manifest of the LR folder ``folder`` lists, and the
    manifest itself: what compare wrote there (none listed when it cannot be read)."""
    try:
        data = read_plain(folder.at(_MANIFEST), dir_fd=folder.fd)
        doc = json.loads(data.decode("utf-8")) if data is not None else None
    except (OSError, ValueError, RecursionError):
        doc = None
    images = doc.get("images") if isinstance(doc, dict) else None
    listed = {f"{stem}.png" for stem in images} if isinstance(images, dict) else set()
    return {name for name in listed if _plain_name(name)} | {_MANIFEST}


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _clear(out: Path, rel: PurePath, owned: Owned) -> str | None:
    """Remove from the folder ``out/rel`` the files compare wrote there: the names ``owned(folder)``
    gives (None: every ``*.jsonl``, a store's parts) and its temp files (:func:`is_temp_name`) —
    files and links themselves, never a folder, nor what a link points at. Then the folder itself
    when it is a real one left empty; a link standing for it (the user's own, followed: another
    user's is refused, :class:`~restorekit.safe_open.LinkedFolderError`) is kept. What is left in
    words, for a line on stderr; None when nothing is (or there is no folder there)."""
    try:
        with open_folder(out, rel.parent, create=False) as parent:
            linked = stat.S_ISLNK(parent.lstat(rel.name).st_mode)
            with parent.open(rel.name) as folder:
                names = owned(folder)
                files = folders = 0
                # (a manifest last: a removal cut short leaves the files it lists listed)
                for e in sorted(folder.entries(), key=lambda e: (e.name == _MANIFEST, e.name)):
                    if e.is_dir(follow_symlinks=False):
                        folders += 1
                    elif is_temp_name(e.name) or (e.name.endswith(".jsonl") if names is None else e.name in names):
                        folder.unlink(e.name)
                    else:
                        files += 1
            if not files and not folders:
                if not linked:
                    parent.rmdir(rel.name)
                return None
    except (FileNotFoundError, NotADirectoryError):  # none there, or a file, or a link to none: left
        return None
    kept = " and ".join(_count(n, what) for n, what in ((files, "file"), (folders, "folder")) if n)
    real = Path(os.path.realpath(out / rel))
    where = "" if real == Path(os.path.realpath(out)) / rel else f" (-> {real})"
    return f"--fresh kept {kept} in {out / rel}{where} that compare did not write"


def _remove_file(out: Path, path: Path) -> None:
    """Remove the file ``path`` (a link itself, never what it points at; a folder there is not
    compare's and is left), reached from ``out`` as :func:`_clear` reaches a folder."""
    rel = path.relative_to(out)
    try:
        with open_folder(out, rel.parent, create=False) as folder:
            if not stat.S_ISDIR(folder.lstat(rel.name).st_mode):
                folder.unlink(rel.name)
    except (FileNotFoundError, NotADirectoryError):
        pass


def _written_by_compare(out: Path, methods: set[str]) -> list[tuple[Path, Owned | None]]:
    """Where compare wrote in ``out`` (for ``methods``, the recorded and the current ones), each
    with what of a folder is compare's (:func:`_clear`; None: a file): each method's
    ``outputs/<method>/`` (the outputs its store records), its LR folders (``inputs/<hash>/`` with
    a manifest: the files it lists), each method's ``results/parts/<method>/``, ``<method>.jsonl``
    and ``<method>.meta.json``, and its files at the top — in that order, the records last, so a
    removal cut short leaves what the next one needs to know what to remove."""
    from .store import safe_name

    names = sorted({safe_name(m) for m in methods})
    found: list[tuple[Path, Owned | None]] = []
    for name in names:
        found.append((out / "outputs" / name, lambda folder, name=name: _recorded_outputs(out, name)))
    inputs = out / "inputs"
    if inputs.is_dir() and not refused_link(inputs):
        found += [(d, _listed_lr_files) for d in sorted(inputs.iterdir()) if d.is_dir() and not refused_link(d)
                  and _LR_FOLDER.match(d.name) and (d / _MANIFEST).is_file()]
    for name in names:
        found.append((out / "results" / "parts" / name, lambda folder: None))
        found += [(out / "results" / f"{name}{ext}", None) for ext in (".jsonl", ".meta.json")]
    found += [(out / name, None) for name in sorted(OWNED_FILES, key=lambda n: n == CONFIG_FILE)]
    return [(path, owned) for path, owned in found if path.exists() or path.is_symlink()]


def _remove_owned(out: Path, methods: set[str], keep: list[Path]) -> None:
    """``--fresh``: remove what compare wrote (:func:`_written_by_compare`; in its folders only
    its own files, whatever else is there — a folder a link of the user's stands for may hold
    theirs — is kept and said on stderr, one line per folder), then its folders left empty.
    Refused when an input of this run (``keep``: ``--data``, ``--lr-dir``) lies inside what
    would go."""
    from .runner import CompareUsageError

    doomed = _written_by_compare(out, methods)
    for given in keep:
        target = given.resolve()
        hit = next((d for d, _ in doomed if target == d.resolve() or d.resolve() in target.parents), None)
        if hit is not None:
            raise CompareUsageError(f"--fresh would remove {hit}, which holds this run's input {given}: "
                                    "move the input out of the --out folder, or use another --out")
    for path, owned in doomed:
        if owned is None:
            _remove_file(out, path)
            continue
        kept = _clear(out, PurePath(path.relative_to(out)), owned)
        if kept is not None:
            print(f"warning: {shown_name(kept)}", file=sys.stderr, flush=True)
    for name in map(PurePath, ("results/parts", *OWNED_FOLDERS)):
        with contextlib.suppress(OSError), open_folder(out, name.parent, create=False) as parent:
            parent.rmdir(name.name)  # (only an empty folder; never a link)


def _of_its_shape(recorded: dict[str, Any]) -> bool:
    """Whether a read-back ``compare.json`` has the shape :func:`record` writes: ``inputs`` an
    object, ``methods`` an object of objects (either may be absent)."""
    inputs, methods = recorded.get("inputs") or {}, recorded.get("methods") or {}
    return isinstance(inputs, dict) and isinstance(methods, dict) and all(isinstance(v, dict) for v in methods.values())


def _stem_seeded(manifest: Any) -> bool:
    """Whether an LR manifest (``inputs/<key>/manifest.json``) lists a file whose degradation noise
    was seeded from the image's name (the CRC-32 of its stem: what compare recorded as ``seed``
    before the noise was seeded from the image's pixels) — made by an earlier restorekit, so not
    the LR file this code makes of the same image (same folder key, other noise)."""
    images = manifest.get("images") if isinstance(manifest, dict) else None
    if not isinstance(images, dict):
        return False
    return any(isinstance(entry, dict) and entry.get("seed") == str(zlib.crc32(str(stem).encode("utf-8", "surrogateescape")))
               for stem, entry in images.items())


def _earlier_traces(p: Plan) -> tuple[list[str], set[str]]:
    """What an ``--out`` without ``compare.json`` holds that an earlier restorekit's compare wrote
    (one that recorded no configuration; today's records it before any method runs): in words, and
    the methods whose result files are there. A run stopped while making its LR files (its
    manifest, no ``compare.json`` yet) is not one: its LR files are reused unless made by
    name-seeded code (:func:`_stem_seeded`)."""
    from .inputs import lr_folder_key

    out = p.config.out
    found: list[str] = []
    methods: set[str] = set()
    results = out / "results"
    if results.is_dir() and not refused_link(results):
        with contextlib.suppress(OSError):  # (names as compare writes them: safe_name's)
            methods |= {e.name[:-len(".jsonl")] for e in results.iterdir() if _RESULT_FILE.fullmatch(e.name)
                        and not e.is_symlink() and e.is_file()}  # (a link there: the store refuses it)
            parts = results / "parts"
            if parts.is_dir() and not refused_link(parts):
                methods |= {e.name for e in parts.iterdir() if _SAFE_NAME.fullmatch(e.name) and e.is_dir()
                            and not refused_link(e)}
    if methods:
        found.append(f"results of {', '.join(sorted(methods))}")
    outputs: list[str] = []
    stems = _input_stems(p)  # (outputs of other images: none of this run's business, never read)
    for d in subfolders(out / "outputs"):
        with contextlib.suppress(OSError):
            if has_outputs(out, d.name, stems):
                outputs.append(d.name)
    if outputs and not methods:
        found.append(f"outputs of {', '.join(sorted(outputs))}")
    reports = [name for name in OWNED_FILES if name != CONFIG_FILE and (out / name).is_file()]
    if reports and not found:
        found.append(", ".join(reports))
    if p.config.lr_dir is None:
        key = lr_folder_key(p.degradation or "", p.config.scale, p.degradation_code or None)
        manifest = out / "inputs" / key / "manifest.json"
        with contextlib.suppress(OSError, ValueError, RecursionError):
            data = None if refused_link(manifest.parent) else read_plain(manifest)
            if data is not None and _stem_seeded(json.loads(data.decode("utf-8"))):
                found.append(f"LR files made by other degradation code (inputs/{key}/)")
    return found, methods


def claim(p: Plan) -> None:
    """Check ``--out`` against its recorded configuration (with ``--fresh``, clear what compare
    wrote there when it differs); :func:`record` writes this run's once its inputs exist.

    Raises :class:`~restorekit.harness.runner.CompareUsageError` when the folder holds another
    configuration and ``--fresh`` is not given.
    """
    from .runner import CompareUsageError

    out = p.config.out
    current = json.loads(json.dumps(folder_config(p), default=str))  # as it reads back from the file
    path = out / CONFIG_FILE
    recorded: dict[str, Any] | None = None
    diffs: list[str] = []
    try:  # (not through a link, nor waiting on a FIFO, planted there)
        data = read_plain(path)
    except NotADirectoryError:  # (--out is a file: said when it is written)
        data = None
    except OSError as exc:
        data, diffs = None, [f"its {CONFIG_FILE} is unreadable ({exc})"]
    if data is not None:
        try:
            recorded = json.loads(data.decode("utf-8"))
            if not isinstance(recorded, dict):
                raise ValueError("not an object")
            if not _of_its_shape(recorded):  # ("methods": 5, a method's settings a list…)
                raise ValueError("not of the shape compare writes")
            diffs = differences(recorded, current, out, _input_stems(p))
        except (OSError, ValueError) as exc:
            recorded, diffs = None, [f"its {CONFIG_FILE} is unreadable ({exc})"]
    methods = set(current["methods"]) | set(((recorded or {}).get("methods") or {}))
    earlier: list[str] = []
    if data is None and not diffs:  # no compare.json: a new folder, a run stopped making its LR files, or
        earlier, earlier_methods = _earlier_traces(p)  # one an earlier restorekit filled (no record)
        methods |= earlier_methods
    _refuse_links(out, methods)  # before anything is removed or written
    if earlier and not p.config.fresh:
        raise CompareUsageError(f"{out} holds what an earlier restorekit's compare wrote ({'; '.join(earlier)}) "
                                f"without recording its configuration in {CONFIG_FILE}, so its numbers could "
                                "differ from this code's: use another --out, or add --fresh to discard them and "
                                "start over")
    if diffs or earlier:
        if not p.config.fresh:
            shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            raise CompareUsageError(f"{out} holds the results of another configuration ({shown}): use another "
                                    "--out, or add --fresh to discard them and start over")
        inputs = [p.config.data.lstrip("@"), *([p.config.lr_dir] if p.config.lr_dir is not None else [])]
        _remove_owned(out, methods, [Path(i) for i in inputs])
    # Accepted, and held (exclusive): the temp files a killed run left in the folders compare writes.
    sweep_temp_files([out, out / "results", *subfolders(out / "outputs"), *subfolders(out / "inputs")], root=out)


LOCK_FILE = ".compare.lock"


def exclusive(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``out`` for one compare at a time, for the whole run and its reports
    (:func:`~restorekit.folder_lock.held_alone` on ``OUT/.compare.lock``).

    Two runs with different settings had both been accepted (each checked the folder before the
    other recorded) and mixed their outputs and results; a second run is refused at once. The lock
    file is removed at the end, as ``run``'s is (``remove``: while still held, and a run that opened
    it meanwhile takes its lock on a new one, never on the removed file)."""
    from ..folder_lock import held_alone

    return held_alone(out, LOCK_FILE, lambda: _busy(out), note="compare", remove=True)


def _busy(out: Path) -> RestorekitError:
    """The refusal of a second compare into ``out``, naming the process that holds it as
    :func:`~restorekit.folder_lock.holder` reads it (from the lock file, or on a file system without
    locks from its marker: ``compare on <host>`` where that is another host), as ``run``'s does."""
    from ..folder_lock import holder
    from .runner import CompareUsageError

    who = holder(out, LOCK_FILE)
    other = f"another {who[1] or 'compare'}" if who is not None else "another compare"
    pid = f" (process {who[0]})" if who is not None else ""
    return CompareUsageError(f"{out}: {other} is writing into this folder{pid}; wait for it to end (then rerun: "
                             "what it stored is reused), or use another --out")


def record(p: Plan) -> None:
    """Record this run's configuration in ``--out`` (merged with the methods recorded before),
    after :func:`claim` accepted the folder."""
    out = p.config.out
    current = json.loads(json.dumps(folder_config(p), default=str))
    path = out / CONFIG_FILE
    recorded: Any = None
    try:  # claim() accepted it, or --fresh removed it (also an unreadable one)
        data = read_plain(path)
        recorded = json.loads(data.decode("utf-8")) if data is not None else None
    except (OSError, ValueError):
        recorded = None
    methods = dict(recorded["methods"]) if isinstance(recorded, dict) and _of_its_shape(recorded) \
        and recorded.get("methods") else {}
    methods.update(current["methods"])
    doc = {"inputs": current["inputs"], "methods": methods}
    atomic_write_bytes(path, (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode(), root=out)
