"""What decides ``restorekit run``'s outputs: recorded in each output, checked on a rerun.

A rerun into a folder skips the outputs that exist: that is how an interrupted run resumes. An
output made with other settings (another method, scale, option, weights file, seed, backend) or
from another input is not a finished output of this run, and a folder holding both would look like
one run's results; so the rerun refuses, naming what changed. An output without a record (another
program's, an older restorekit's) is taken as finished, as before. The record is a note inside the
file (:mod:`restorekit.provenance`); options that name files are recorded by file name and sha256,
not by their folder, and weights are compared by that content, not by how they were named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .degradations import Bicubic, Blur, Chain, Jpeg, Noise
from .interfaces import Degradation, Method, Options, result_options
from .provenance import read_note

T = TypeVar("T")
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: Keys of a record compared on a rerun ("options" key by key).
COMPARED = ("command", "method", "spec", "scale", "couple", "seed", "backend", "default_weights", "option_files")
#: Keys of :data:`COMPARED` added to the record after it was first written, with the value an
#: output whose record lacks the key was made with: the first records (``run``'s alone) had no
#: "command". A record without the key reads as that value, not as a change.
RECORDED_BEFORE: dict[str, Any] = {"command": "run"}
#: The paste mask of a ``run --faces detect`` photo whose record names none: it was made before
#: the mask was a setting, with the whole aligned crop.
PASTE_MASK_BEFORE = "square"
#: Keys a ``run --faces detect`` record adds (:mod:`restorekit.faces.reruns`), compared where both
#: records have them (colour matching is recorded only for photos with a restored face), by name.
FACES_COMPARED = {"detector": "detector", "background": "background", "min_face": "min_face",
                  "max_shrink": "max_shrink", "colour_match": "colour match", "only_faces": "only faces"}


def run_settings(cls: type[Method], options: Options, *, scale: int, seed: int | None, n_samples: int,
                 couple: bool, backend: str) -> dict[str, Any]:
    """The settings of one ``run``, as recorded in each of its outputs."""
    from .harness.runner import default_weights_pin, option_files_pin

    files = option_files_pin(options) or {}
    # A file by its name (its content is pinned): an output shared publicly does not show the user's folders.
    values = {key: _names_only(value, key, files) for key, value in result_options(options).items()}
    settings: dict[str, Any] = {"command": "run", "method": cls.info.name, "scale": scale, "options": values,
                                "couple": bool(couple), "backend": backend}
    if not (cls.info.one_sample_ignores_seed if n_samples == 1 else cls.info.deterministic):
        settings["seed"] = seed  # outputs that do not depend on it do not record it
    pin = default_weights_pin(cls, options)
    if pin:
        settings["default_weights"] = pin
    if files:
        settings["option_files"] = files
    return settings


def _names_only(value: Any, label: str, files: Mapping[str, str]) -> Any:
    """``value`` with each string that :func:`option_files_pin` pinned as a file (by its label,
    at any depth) reduced to the file's name."""
    if isinstance(value, str):
        return Path(value).name if label in files else value
    if isinstance(value, list):
        return [_names_only(v, f"{label}[{i}]", files) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _names_only(v, f"{label}.{k}", files) for k, v in value.items()}
    return value


def degrade_settings(chain: Chain, *, seed: int) -> dict[str, Any]:
    """The settings of one ``degrade``, as recorded in each of its outputs: the spec, and the seed
    where a step of the chain draws from it (:func:`draws_from_seed`)."""
    settings: dict[str, Any] = {"command": "degrade", "spec": chain.spec()}
    if any(draws_from_seed(step) for step in chain.steps):
        settings["seed"] = seed
    return settings


#: Built-in steps whose code draws nothing (the seed is nothing to them), and the one that draws.
SEEDLESS_STEPS: tuple[type[Degradation], ...] = (Bicubic, Blur, Jpeg)
SEEDED_STEPS: tuple[type[Degradation], ...] = (Noise,)
#: The largest own scale of a plugin step that :func:`draws_from_seed` tries (a probe of 512 px a side).
MAX_PROBED_SCALE = 64


def draws_from_seed(step: Degradation) -> bool:
    """Whether ``step``'s result depends on the generator it is given. A built-in step's code says
    (by its exact class: a plugin's subclass may draw); a step from a plugin, whose randomness is
    unknown, is tried alone on a probe of 8·its own scale px a side with eight seeds (a discrete
    draw, a coin flip, would agree for two by chance). Step by step, so that the probe's size
    never grows with the chain's scale; a step that cannot take the probe, or whose own scale
    is over :data:`MAX_PROBED_SCALE`, is taken as drawing."""
    import torch

    if type(step) in SEEDED_STEPS:
        return True
    if type(step) in SEEDLESS_STEPS:
        return False
    try:
        scale = max(1, int(getattr(step.params, "scale", 1)))
        if scale > MAX_PROBED_SCALE:
            return True
        probe = torch.rand(1, 3, 8 * scale, 8 * scale, generator=torch.Generator().manual_seed(0))
        first = step(probe.clone(), generator=torch.Generator().manual_seed(1))
        return any(not torch.equal(first, step(probe.clone(), generator=torch.Generator().manual_seed(s)))
                   for s in range(2, 9))
    except Exception:  # noqa: BLE001 - a step that cannot take the probe: take the seed as used
        return True


#: The weights pins a record may carry, and how a difference in one is named.
PINS = {"default_weights": "default weights", "option_files": "the file of --opt"}


def pin_differences(key: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The weights of pin ``key`` (:data:`PINS`) that differ between two records' pins, in words.
    A pin whose content was not known when it was recorded (``"?"``, ``None``: registered weights
    without a published sha256, before restorekit pinned the cached file's) tells nothing: such
    weights are compared by their option's value, as before."""
    return [f"{PINS[key]} {name}: {'changed' if name in a and name in b else 'other'}"
            for name in sorted(a.keys() | b.keys()) if a.get(name) != b.get(name)
            and not (name in a and name in b and (_unknown_pin(a[name]) or _unknown_pin(b[name])))]


def _unknown_pin(pin: Any) -> bool:
    """Whether a recorded pin holds no content: an ``option_files`` string that is not sha256s, or a
    ``default_weights`` list with a file of unknown hash."""
    if isinstance(pin, str):
        return not _known_content(pin)
    return isinstance(pin, list) and any(not isinstance(x, str) or not _SHA256.fullmatch(x) for x in pin)


def option_differences(a: Mapping[str, Any], b: Mapping[str, Any], *,
                       ignore_options: frozenset[str] = frozenset()) -> list[str]:
    """The options that differ between two records (``--opt KEY: old → new``), but ``ignore_options``."""
    return [f"--opt {k}: {a.get(k, '—')} → {b.get(k, '—')}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in ignore_options]


def same_files(old: Mapping[str, Any], now: Mapping[str, Any]) -> frozenset[str]:
    """The options whose file both records pin to the same content (``option_files``): one file
    spelled two ways (a registered name and its file, another path) is not another setting. A pin
    that holds no sha256 (``"?"``: registered weights whose spec publishes none) says nothing of
    the content: two such weights are told apart by their names."""
    a, b = old.get("option_files"), now.get("option_files")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return frozenset()
    return frozenset(k for k, v in a.items() if _known_content(v) and b.get(k) == v)


def _known_content(pin: Any) -> bool:
    """Whether an ``option_files`` pin names content: one sha256, or several joined by commas
    (a registered name of several files), none of them unknown."""
    return isinstance(pin, str) and bool(pin) and all(_SHA256.fullmatch(part) for part in pin.split(","))


def differences(old: Mapping[str, Any], now: Mapping[str, Any], *,
                ignore_options: frozenset[str] = frozenset()) -> list[str]:
    """What differs between a recorded run and this one, in words (``key: old → new``); options
    in ``ignore_options`` (result-neutral ones) are not compared."""
    if old.get("command", "run") != now.get("command", "run"):  # (notes before "command" were run's)
        return [f"made by restorekit {old.get('command', 'run')}, not {now.get('command', 'run')}"]
    if old.get("faces", "aligned") != now.get("faces", "aligned"):  # a photo with faces pasted back ≠ a face
        return [f"made by run --faces {old.get('faces', 'aligned')}, not --faces {now.get('faces', 'aligned')}",
                *([f"method: {old.get('method')} → {now.get('method')}"] if old.get("method") != now.get("method") else [])]
    found = input_difference(old, now)
    other_method = old.get("method") != now.get("method")  # then its options and weights say nothing more
    defaults = same_default_weights(old, now)
    for key in COMPARED:
        if key in PINS:  # in one record only: the weights options differ, and say so themselves
            a, b = old.get(key), now.get(key)
            if isinstance(a, dict) and isinstance(b, dict) and not other_method:
                a, b = ({k: v for k, v in d.items() if k not in defaults} for d in (a, b))  # (compared by content)
                found += pin_differences(key, a, b)
        elif key in old or key in now:
            was, value = old.get(key, RECORDED_BEFORE.get(key)), now.get(key, RECORDED_BEFORE.get(key))
            if was != value and not (key == "seed" and seed_used(was) == seed_used(value)):
                found.append(f"{key}: {was} → {value}")
    found += [f"{label}: {_shown(old[key])} → {_shown(now[key])}" for key, label in FACES_COMPARED.items()
              if key in old and key in now and old[key] != now[key]]
    if old.get("faces") == "detect" and not old.get("only_faces"):
        found += paste_mask_difference(old, now)
    a, b = old.get("options"), now.get("options")
    if isinstance(a, dict) and isinstance(b, dict) and not other_method:
        found += option_differences(a, b, ignore_options=ignore_options | same_files(old, now) | defaults)
    return found


def seed_used(seed: Any) -> Any:
    """The seed a record's ``seed`` stands for: an omitted one (None) is seed 0. restorekit's
    stochastic methods take an omitted seed as 0, so that a run is reproducible unless a seed is
    asked for; a method that instead draws afresh without one makes other pixels at every run, so
    its None promises no more than 0 does. So a rerun with ``--seed 0`` over outputs made without
    ``--seed`` (or the reverse) resumes them; another seed is still a change."""
    return 0 if seed is None else seed


def input_difference(old: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["input: A → B"]`` where both records name the input an output is made from and it differs:
    by content where both record its sha256 (``input_sha256``), else by file name. A record without
    one (``now`` of a whole run, not of one output) compares none."""
    for key in ("input_sha256", "input"):
        if key in old and key in now:
            if old[key] == now[key]:
                return []
            was, value = old.get("input", "—"), now.get("input", "—")
            return [f"input: {was} → {value}" + (" (other content)" if was == value else "")]
    return []


def same_default_weights(old: Mapping[str, Any], now: Mapping[str, Any]) -> frozenset[str]:
    """The options that one record leaves unset, so that its method loads its default weights
    (pinned in ``default_weights``), and the other sets to a file of exactly that content (the
    default by its registered name, or its file's path): the same weights, not another setting."""
    found: set[str] = set()
    for unset, named in ((old, now), (now, old)):
        pin, files, options = default_content(unset), named.get("option_files"), unset.get("options")
        if pin is None or not isinstance(files, dict) or not isinstance(options, dict):
            continue
        found.update(k for k, v in files.items() if k in options and options[k] is None and v == pin)
    return frozenset(found)


def default_content(record: Mapping[str, Any]) -> str | None:
    """A record's default weights as an ``option_files`` pin (their sha256s joined by commas), where
    it pins one set of weights whose content is all known; else None."""
    pins = record.get("default_weights")
    if not (isinstance(pins, dict) and len(pins) == 1):
        return None
    [shas] = pins.values()
    pin = ",".join(shas) if isinstance(shas, list) and all(isinstance(s, str) for s in shas) else None
    return pin if _known_content(pin) else None


def paste_mask_difference(old: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["paste mask: A → B"]`` when ``now`` records a paste mask that differs from ``old``'s, a
    record without one reading as :data:`PASTE_MASK_BEFORE` (made before the mask was a setting)."""
    if "paste_mask" not in now:
        return []
    was = old.get("paste_mask", PASTE_MASK_BEFORE)
    return [f"paste mask: {was} → {now['paste_mask']}"] if was != now["paste_mask"] else []


def _shown(value: Any) -> str:
    """A recorded value in a difference: on/off for a switch."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def changed_among(items: Iterable[T], read: Callable[[T], Any],
                  diff: Callable[[Any], list[str]]) -> tuple[list[T], list[str]] | None:
    """The items whose record (``read(item)``; ``None`` or not a dict: passed over) differs from
    this run (``diff(record)``, the differences in words), and those differences, each once; None
    when no item's record differs. What a rerun over earlier outputs checks, whatever records them
    (an output's embedded note, a photo's sidecar)."""
    return changed_among_each(items, read, [diff])[0]


def changed_among_each(items: Iterable[T], read: Callable[[T], Any],
                       diffs: Sequence[Callable[[Any], list[str]]]) -> list[tuple[list[T], list[str]] | None]:
    """:func:`changed_among` for each of ``diffs``, reading each item's record once (a record is a
    file read: a rerun over a folder of many outputs reads each of them once, not once per check)."""
    changed: list[list[T]] = [[] for _ in diffs]
    found_in: list[dict[str, None]] = [{} for _ in diffs]
    for item in items:
        record = read(item)
        if not isinstance(record, dict):
            continue
        for diff, items_changed, words in zip(diffs, changed, found_in):
            found = diff(record)
            if found:
                items_changed.append(item)
                words.update(dict.fromkeys(found))
    return [(c, list(w)) if c else None for c, w in zip(changed, found_in)]


def changed_outputs(outputs: Iterable[Path], now: Mapping[str, Any], *,
                    ignore_options: frozenset[str] = frozenset(),
                    read: Callable[[Path], Any] = read_note,
                    inputs: Mapping[Path, Mapping[str, Any]] | None = None) -> tuple[list[Path], list[str]] | None:
    """The outputs among ``outputs`` that exist and record other settings than ``now`` (options
    but ``ignore_options``), and what differs (each difference once); None when there are none.
    ``read``: how an output's record is read (:func:`reading_notes` also notes those without one).
    ``inputs``: per output, what this run would record of its input (``{"input": NAME}``, and
    ``input_sha256`` where known): an output made from another input is no finished one
    (:func:`input_difference`)."""
    made_from = inputs or {}

    def record(path: Path) -> dict[str, Any] | None:
        note = read(path)
        return {"note": note, "now": {**now, **made_from.get(path, {})}} if isinstance(note, dict) else None

    return changed_among(outputs, record,
                         lambda r: differences(r["note"], r["now"], ignore_options=ignore_options))


def reading_notes(unrecorded: list[Path]) -> Callable[[Path], dict[str, Any] | None]:
    """:func:`~restorekit.provenance.read_note` that also adds to ``unrecorded`` each output that
    is a file without a record (another program's, an older restorekit's, one that cannot be read):
    a rerun keeps those as finished without comparing them, and says so (:func:`unrecorded_warning`).
    Only a regular file (links followed) is an output: a folder where one goes is no finished
    output, and the write that fails there says so itself."""
    def read(path: Path) -> dict[str, Any] | None:
        note = read_note(path)
        # One stat; False, not an error, for a name too long to exist or a path that cannot be examined.
        if note is None and os.path.isfile(path):
            unrecorded.append(path)
        return note
    return read


def unrecorded_warning(output: Path, paths: Sequence[Path]) -> str:
    """The warning of a rerun over outputs that carry no record (:func:`reading_notes`)."""
    names = ", ".join(p.name for p in paths[:3]) + (", …" if len(paths) > 3 else "")
    return (f"{output}: {len(paths)} existing output{'s' if len(paths) > 1 else ''} ({names}) carry no "
            "record of what made them (another program's, an older restorekit's): kept as finished without "
            "comparing settings; --overwrite remakes them")


def refusal(output: Path, changed: tuple[list[Path], list[str]]) -> str:
    """The one-line refusal of a rerun over outputs :func:`changed_outputs` found made otherwise."""
    paths, diffs = changed
    names = ", ".join(p.name for p in paths[:3]) + (", …" if len(paths) > 3 else "")
    return (f"{output}: {len(paths)} of the outputs ({names}) were made with other settings ({'; '.join(diffs)}); "
            "use another --output, or --overwrite to remake them")
