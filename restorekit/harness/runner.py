"""Running methods over an evaluation set: the engine behind ``restorekit compare``.

:func:`plan` checks everything a user can get wrong (names, options, scales, data) before any
work starts and raises ``RestorekitError`` with one line; :func:`execute` then never stops for a
single (method, image): a failure is recorded with its reason and the rest go on. A write that the
file system refuses for every file (full, over quota, read-only:
:func:`~restorekit.images.storage_errno`) stops it instead, in one line (:func:`storage_stop`):
the results stored so far stay, and the same command run again goes on from there.

Per (method, image, seed) the runner records: the restore time (``time.perf_counter`` around
``restore`` only, CUDA synchronised; the first call of each method in a run is the warm-up, kept
but flagged and left out of the runtime column), the peak memory (where the network runs; CUDA: ``max_memory_allocated``
since a reset before the call, none for an onnxruntime graph, which allocates outside torch; CPU: the call's peak resident memory above the process's size when
it began — on Linux the high-water mark is reset before each call, so an earlier hungrier method
does not hide it; elsewhere only the growth of the process's maximum),
the output PNG and every metric's value. Predictions are rounded to 8 bits (what is saved) before
scoring, so a resumed run that re-reads an output scores exactly what the first run scored.
Deterministic methods run once per image (seed ignored, stored as null); stochastic ones once per
seed of ``--seeds``. ``METHOD@LABEL`` runs a method again as a column of its own, with its own
options (``--opt METHOD@LABEL.KEY=VALUE``): settings head to head, paired image by image.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__
from ..degradations import Chain, parse_spec
from ..devices import precision_label, run_device
from ..errors import (DependencyMissing, FileSystemError, RestorekitError, WeightsMissing, describe_os_error,
                      exception_line)
from ..images import (DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS, atomic_write_bytes, from_pil, read_image,
                      storage_errno, to_pil)
from ..interfaces import Method, Metric, Options
from ..memory import reset_peak_rss, status_fields
from ..methods import (check_output_size_contract, check_restored, keep_black_and_white, resolve_device,
                       validate_options)
from ..options import OptionError, parse_targeted_pairs, weights_option
from ..plugins import Registry, registry, suggest
from ..seeds import SEED_MAX
from ..sharding import Job, current_job
from ..weights.catalogue import get_spec, registered_name
from ..weights.checksum import sha256_file
from ..weights.spec import WeightSpec
from .inputs import (InputSet, Pair, duplicate_lines, from_degradation, from_pairs, merge_shards, png_bytes,
                     update_manifest)
from .outdir import claim, record
from .store import Record, ResultStore, file_key, safe_name, settings_hash


class CompareUsageError(RestorekitError):
    """Bad compare arguments (exit code 2)."""


@dataclass
class CompareConfig:
    """Everything ``compare`` was asked to do."""

    methods: list[str]
    scale: int
    data: str
    out: Path
    degradation: str | None = None
    lr_dir: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None
    metrics: list[str] | None = None
    device: str = "auto"
    opts: dict[str, dict[str, str]] = field(default_factory=dict)
    fresh: bool = False
    quiet: bool = True
    # "aligned": inputs are aligned faces (or any image); "detect": photos from the wild, face
    # methods run through the detect-align-restore-paste pipeline.
    faces: str = "aligned"
    detector: str | None = None
    # "detect": the region of each restored crop pasted into the photo (faces.align.PASTE_MASKS;
    # None: faces.pipeline.DEFAULT_PASTE_MASK). Refused with "aligned".
    paste_mask: str | None = None
    backend: str = "torch"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    # One of ``methods``: the others are also compared with it image by image (harness.paired).
    baseline: str | None = None


@dataclass
class MethodPlan:
    """A method ready to run: class, validated options, where it comes from, its settings hash."""

    name: str
    cls: type[Method]
    options: Options
    plugin: str
    distribution: str
    version: str
    seeds: list[int | None]
    settings: dict[str, Any]
    settings_hash: str
    # Filled in when the method is built.
    device: str = ""
    precision: str = "float32"
    backend: str = "torch"
    weights_info: dict[str, Any] | None = None
    load_error: str | None = None

    @property
    def deterministic(self) -> bool:
        """Whether its results here (one sample per image) do not depend on the seed."""
        return self.cls.info.one_sample_ignores_seed


@dataclass
class MetricState:
    """A metric of this run: set up once, or skipped with the reason (never a silent number)."""

    name: str
    cls: type[Metric]
    plugin: str
    distribution: str
    version: str
    instance: Metric | None = None
    status: str = "ok"  # "ok" or "skipped"
    reason: str | None = None
    fingerprint: str = ""  # :func:`metric_fingerprint`: a stored value of another one is scored again

    @property
    def higher_is_better(self) -> bool:
        return bool(self.cls.higher_is_better)

    @property
    def nan_label(self) -> str:
        return str(getattr(self.cls, "nan_label", "") or "NaN values")

    @property
    def fmt(self) -> str | None:
        f = getattr(self.cls, "fmt", None)
        return f if isinstance(f, str) else None


@dataclass
class Plan:
    config: CompareConfig
    device: torch.device
    degradation: str | None
    methods: list[MethodPlan]
    metrics: list[MetricState]
    registry: Registry
    # restorekit's own code (:func:`code_fingerprint`): methods, metrics and the LR inputs all run
    # through it (degradations, resizing, back-projection), so stored results made by other core
    # code are not reused, and an --out folder made by it is not extended.
    core_code: str = ""
    # The degradation's steps that plugins registered (:func:`degradation_plugins`): what the LR
    # files depend on beyond the core, so that they and the folder are not reused after a change.
    degradation_code: dict[str, dict[str, str]] = field(default_factory=dict)
    # ``--faces detect``: the paste mask the face methods' crops are blended in with (the default
    # resolved); None otherwise.
    paste_mask: str | None = None


@dataclass
class CompareResult:
    """What a run produced: the records of this run's (method, image, seed) set, and context."""

    plan: Plan
    inputs: InputSet
    records: list[Record]
    unmatched: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (summed over processes)
    started: str = ""
    wall_s: float = 0.0
    processes: int = 1  # torchrun processes that ran it

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.inputs.failures else 0


# --------------------------------------------------------------------------------------------
# Planning


def _dist_of(reg: Registry, plugin: str) -> tuple[str, str]:
    rec = reg.plugins.get(plugin)
    return (rec.distribution, rec.version) if rec else ("?", "?")


@functools.cache
def code_fingerprint(module: str) -> str:
    """16 hex digits of sha256 over the files of the top-level package (or module) that holds
    ``module``: its code and any weights shipped inside it. Part of a method's settings, so that
    stored results are not reused, and a ``--out`` folder is not extended, after the method's code
    or shipped weights changed under the same version (an editable install, a re-shipped model);
    ``""`` where the package has no files to read."""
    top = sys.modules.get(module.split(".")[0])
    path = getattr(top, "__file__", None)
    if not path:
        return ""
    root = Path(path).parent
    files = sorted(f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts) \
        if hasattr(top, "__path__") else [Path(path)]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def degradation_plugins(chain: Chain, reg: Registry) -> dict[str, dict[str, str]]:
    """``{step name: {plugin, distribution, version, code}}`` for each step of ``chain`` that a
    plugin other than restorekit's own registered (:func:`code_fingerprint` of its module): what
    LR files made by the chain depend on beyond the core code, so that an upgrade or edit of the
    plugin is seen (``core_code`` covers the built-in steps). ``{}`` for built-in steps only."""
    from ..plugins import BUILTIN

    kinds = reg.items.get("degradations", {})
    owners = reg.owner.get("degradations", {})
    found: dict[str, dict[str, str]] = {}
    for step in chain.steps:
        cls = type(step)
        name = next((n for n, c in kinds.items() if c is cls), str(getattr(cls, "name", cls.__name__)))
        plugin = owners.get(name, "?")
        if plugin == BUILTIN or name in found:
            continue
        dist, ver = _dist_of(reg, plugin)
        found[name] = {"plugin": plugin, "distribution": dist, "version": ver, "code": code_fingerprint(cls.__module__)}
    return found


def loaded_components(cls: type[Method], options: Options, reg: Registry) -> dict[str, dict[str, str]]:
    """``{"KIND:NAME": {plugin, distribution, version, code}}`` for each registered component (a
    generator, an encoder, a loss, a face embedder, …) that one of the method's options names by
    value (at any depth, defaults included: pulse's ``generator="stylegan2"``) and whose code lives
    outside the method's own package and restorekit's (:func:`code_fingerprint` of the module that
    defines it). The method builds what its options name, so its results depend on that code as
    much as on its own: part of its settings, so an upgrade or edit of the plugin providing it is
    seen. ``{}`` when its options name none."""
    own = {cls.__module__.split(".")[0], __name__.split(".")[0]}  # (covered by "code" and "core_code")
    found: dict[str, dict[str, str]] = {}
    for _, value in option_strings(options.model_dump(mode="json"), ""):
        for kind, items in reg.items.items():
            if kind in ("methods", "weights") or value not in items:
                continue
            module = str(getattr(getattr(items[value], "build", items[value]), "__module__", "") or "")
            if not module or module.split(".")[0] in own:
                continue
            plugin = reg.owner[kind].get(value, "?")
            dist, ver = _dist_of(reg, plugin)
            found[f"{kind}:{value}"] = {"plugin": plugin, "distribution": dist, "version": ver,
                                        "code": code_fingerprint(module)}
    return found


def default_weights_pin(cls: type[Method] | Method, options: Options | None = None
                        ) -> dict[str, list[str | None]] | None:
    """The sha256 of each file of a method's default weights (:func:`loaded_sha256s`; None: it has
    none, they are not registered, or ``options`` set its weights option to other weights). Part of
    the method's settings beside :func:`code_fingerprint`, which sees only the method's own package:
    a default shipped in another one (pulse's face prior lives in psp_sr's package) can be
    re-shipped without the method's code changing."""
    name = cls.info.default_weights
    if not name:
        return None
    if options is not None:
        field = weights_option(type(options))
        if field is not None and getattr(options, field, None) is not None:
            return None  # other weights (the default by its name: option_files_pin pins it)
        if getattr(options, "random_weights", False) or getattr(options, "random_generator", False):
            return None  # an untrained network: no weights at all
    try:
        spec = get_spec(name)
    except RestorekitError:
        return None
    return {name: loaded_sha256s(spec)}


def loaded_sha256s(spec: WeightSpec) -> list[str | None]:
    """The sha256 of each file of ``spec`` as a load gets it: the spec's own where it publishes one
    (every load checks the file against it), else the one this cache recorded for the file it
    holds (its manifest entry, or the first-use record of a file imported with ``--trust``), which
    every load checks the file against too (size, and its full hash when its mtime changed). So
    weights without a published hash, replaced under the same name (``weights forget``, then
    another import), pin other content. None: no hash known (nothing imported: a load fails)."""
    from ..weights import cache, tofu

    shas: list[str | None] = []
    for wf in spec.files:
        sha = wf.sha256
        if sha is None:
            try:
                held = cache.read_manifest(cache.weights_dir(spec.name)).get(wf.filename)
                first = tofu.first_use(spec.name, wf.filename) if held is None else None
            except (RestorekitError, OSError):  # an unreadable record: nothing known (a load fails too)
                held = first = None
            sha = held.sha256 if held is not None else first.sha256 if first is not None else None
        shas.append(sha)
    return shas


def option_strings(value: Any, label: str) -> Iterator[tuple[str, str]]:
    """Each string inside an option's JSON value, with its label: ``key``, ``key[i]``, ``key.sub``."""
    if isinstance(value, str):
        yield label, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from option_strings(item, f"{label}[{i}]")
    elif isinstance(value, dict):
        for sub, item in value.items():
            yield from option_strings(item, f"{label}.{sub}")


def option_files_pin(options: Options) -> dict[str, str] | None:
    """The sha256 of each file an option names (``--opt psp_sr.weights=FILE``): the option's value
    is only a path, and a model retrained into the same file must not pass for the old one when a
    run is resumed. A registered weights name is pinned by its files' sha256s instead
    (:func:`loaded_sha256s`: the registry's, else those this cache recorded for the files it
    holds). Values in lists and dicts are looked at too (pulse's ``generator_options`` may name the
    generator's weights), labelled ``key[i]`` and ``key.sub``."""
    pins: dict[str, str] = {}
    for key, value in options.model_dump(mode="json").items():
        for label, item in option_strings(value, key):
            if not item.strip():
                continue
            try:  # a registered name means those weights even beside a file of that name (weights_source)
                name = registered_name(item)
            except RestorekitError:
                name = None
            try:
                path = Path(item).expanduser()
                is_file = name is None and path.is_file()
            except (OSError, ValueError):  # not a path (too long, a NUL): nothing to pin
                continue
            if is_file:
                try:
                    pins[label] = sha256_file(path)
                except OSError as exc:
                    raise CompareUsageError(f"--opt {key}: {describe_os_error(exc, path, action='read')}") from None
                continue
            try:
                spec = get_spec(item)
            except RestorekitError:
                continue
            pins[label] = ",".join(sha or "?" for sha in loaded_sha256s(spec))
    return pins or None


#: ``METHOD@LABEL`` in ``--methods``: METHOD once more, as its own column with its own ``--opt``.
VARIANT_LABEL = re.compile(r"[A-Za-z0-9_-]+")


def _filed_options(cls: type[Method], options: Options, files: dict[str, str] | None) -> Options:
    """``options`` as a result is filed under: a weights option that names exactly the method's
    default weights (by its registered name, or a file of that content: ``files``, the
    :func:`option_files_pin` of ``options``) as if unset, so that ``--opt M.weights=DEFAULT`` and no
    option share their results, as ``run`` takes them for the same setting."""
    field = weights_option(type(options))
    if field is None or getattr(options, field, None) is None or not files or field not in files:
        return options
    from ..run_record import default_content

    default = default_weights_pin(cls)  # (as run tells the default named explicitly: its pin, all of it known)
    if default is None or default_content({"default_weights": default}) != files[field]:
        return options
    return options.model_copy(update={field: None})


def _recorded_options(options: Options) -> dict[str, Any]:
    """The options a stored result is filed under: all of them (a result-neutral kernel choice still
    changes the timings compare reports), but a result-neutral ``quiet`` at its default, so that
    ``-q`` reuses the results of a run without it."""
    values = options.model_dump(mode="json")
    model = type(options)
    if "quiet" in model.result_neutral and "quiet" in model.model_fields:
        values["quiet"] = model.model_fields["quiet"].get_default(call_default_factory=True)
    return values


def parse_method_opts(pairs: list[str] | tuple[str, ...], methods: list[str]) -> dict[str, dict[str, str]]:
    """``["psp_sr.mix_layers=[8,9]", …]`` to ``{"psp_sr": {"mix_layers": "[8,9]"}}``, each method one
    of ``methods``."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:  # one at a time: the first pair that is wrong, either way, is named
        try:
            ((method, values),) = parse_targeted_pairs([pair]).items()
        except OptionError as exc:
            raise CompareUsageError(str(exc)) from None
        if method not in methods:
            raise CompareUsageError(f"--opt '{pair}': method '{method}' is not in --methods"
                                    f"{suggest(method, methods)}")
        out.setdefault(method, {}).update(values)
    return out


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    return f"{dev.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def plan(config: CompareConfig) -> Plan:
    """Resolve names, options, scale and degradation; every problem is a ``CompareUsageError``."""
    reg = registry()
    if not config.methods:
        raise CompareUsageError("--methods: give at least one method")
    if config.scale < 1:
        raise CompareUsageError(f"--scale must be a positive integer, got {config.scale}")
    if config.baseline is not None:
        if config.baseline not in config.methods:
            raise CompareUsageError(f"--baseline '{config.baseline}' is not in --methods"
                                    f"{suggest(config.baseline, config.methods)}")
        if not set(config.methods) - {config.baseline}:
            raise CompareUsageError(f"--baseline '{config.baseline}': give --methods another method to compare "
                                    "with it")
    if config.degradation and config.lr_dir:
        raise CompareUsageError("--degradation and --lr-dir exclude each other (LR files are already degraded)")
    if not config.seeds:
        raise CompareUsageError("--seeds: give at least one seed")
    for seed in config.seeds:
        if not 0 <= seed <= SEED_MAX:  # torch's generators take no other seed
            raise CompareUsageError(f"--seeds: seed {seed} is out of range: seeds are 0 to {SEED_MAX}")
    if config.limit is not None and config.limit < 1:
        raise CompareUsageError(f"--limit must be a positive integer, got {config.limit}")
    for flag, value in (("--max-pixels", config.max_pixels), ("--max-output-pixels", config.max_output_pixels)):
        if value < 1:
            raise CompareUsageError(f"{flag} must be a positive integer, got {value}")
    # The detector and the mask recorded as resolved: naming the default is no change, a later new
    # default is one.
    detector: str | None = None
    if config.faces != "aligned":
        from ..faces.detectors import DEFAULT_DETECTOR

        detector = config.detector or DEFAULT_DETECTOR
    paste_mask: str | None = None
    if config.faces == "detect":
        from ..faces.align import check_paste_mask
        from ..faces.pipeline import DEFAULT_PASTE_MASK

        try:
            paste_mask = check_paste_mask(DEFAULT_PASTE_MASK if config.paste_mask is None else config.paste_mask)
        except RestorekitError as exc:
            raise CompareUsageError(f"--paste-mask: {exc}") from None
    elif config.paste_mask is not None:
        raise CompareUsageError("--paste-mask only applies with --faces detect")
    if config.faces != "detect" and config.detector is not None:
        raise CompareUsageError("--detector only applies with --faces detect")
    try:
        device = resolve_device(config.device)
    except RestorekitError as exc:
        raise CompareUsageError(str(exc)) from None

    degradation: str | None = None
    degradation_code: dict[str, dict[str, str]] = {}
    if config.lr_dir is None:
        if config.scale == 1 and not config.degradation:
            raise CompareUsageError("--scale 1 needs --degradation (e.g. noise:15, blur:1.5, jpeg:30) or --lr-dir: "
                                    "the default, bicubic:1, leaves the HR images as they are, so every method would "
                                    "restore an undamaged image and doing nothing would score best")
        try:
            chain = parse_spec(config.degradation or f"bicubic:{config.scale}")
        except RestorekitError as exc:
            raise CompareUsageError(str(exc)) from None
        if chain.scale != config.scale:
            raise CompareUsageError(f"degradation '{chain.spec()}' downsizes by {chain.scale}, but --scale is "
                                    f"{config.scale}")
        degradation = chain.spec()
        degradation_code = degradation_plugins(chain, reg)

    core = code_fingerprint(__name__)
    methods: list[MethodPlan] = []
    files_of: dict[str, str] = {}  # file_key -> the method name that has that outputs folder / results file
    for name in dict.fromkeys(config.methods):
        base, at, label = name.partition("@")
        if at and not (base and VARIANT_LABEL.fullmatch(label)):
            raise CompareUsageError(f"--methods '{name}': a variant is METHOD@LABEL, the label of letters, digits, "
                                    "'_' and '-'")
        other = files_of.setdefault(file_key(name), name)
        if other != name:  # outputs/<name>/ and results/<name>.jsonl would be one on macOS and Windows
            raise CompareUsageError(f"--methods '{other}' and '{name}' differ only in letter case, so they would "
                                    "share their output folder and result files on a case-insensitive disk; give "
                                    "them names that differ otherwise")
        try:
            cls: type[Method] = reg.method(base)
        except RestorekitError as exc:
            raise CompareUsageError(str(exc)) from None
        try:
            values: dict[str, Any] = dict(config.opts.get(name, {}))
            if config.quiet and "quiet" in cls.Options.model_fields and "quiet" not in values:
                values["quiet"] = True  # -q: the method's own notes too, as run's -q
            options = validate_options(cls, values, label=name)  # (the variant the --opt named)
            probe = cls(options)
            probe.check_scale(config.scale)
            check_output_size_contract(probe)
        except (RestorekitError, ValueError) as exc:
            raise CompareUsageError(str(exc)) from None
        plugin = reg.owner["methods"][base]
        dist, ver = _dist_of(reg, plugin)
        # compare restores one sample per image: a method whose one sample ignores the seed runs once.
        seeds: list[int | None] = [None] if cls.info.one_sample_ignores_seed else list(dict.fromkeys(config.seeds))
        files = option_files_pin(options)
        filed = _filed_options(cls, options, files)
        if filed is not options and files is not None:
            files.pop(str(weights_option(type(options))), None)  # (the default's pin says it)
        settings = {"method": base, "options": _recorded_options(filed), "scale": config.scale,
                    "source": f"degradation:{degradation}" if degradation else "lr-dir",
                    "device": device.type, "distribution": dist, "version": ver,
                    "code": code_fingerprint(cls.__module__), "core_code": core}
        if at:
            settings["variant"] = label
        components = loaded_components(cls, options, reg)
        if components:
            settings["components"] = components
        pin = default_weights_pin(cls, filed)
        if pin:
            settings["default_weights"] = pin
        if files:
            settings["option_files"] = files
        if config.faces != "aligned" and cls.info.input_kind == "aligned_face":
            settings["faces"] = {"mode": config.faces, "detector": detector, "paste_mask": paste_mask}
        if config.backend != "torch":
            settings["backend"] = config.backend
        methods.append(MethodPlan(name, cls, options, plugin, dist, ver, seeds, settings, settings_hash(settings)))

    try:
        metrics = metric_states(config.metrics, reg)
    except RestorekitError as exc:
        raise CompareUsageError(str(exc)) from None
    if config.faces == "detect" and any(mp.cls.info.input_kind == "aligned_face" for mp in methods):
        # As `run --faces detect`: a detector that cannot be built here (its weights missing) is refused
        # before any work, not met on every image of every face method.
        from ..faces.pipeline import build_detector

        assert detector is not None  # (resolved above for --faces detect)
        try:
            build_detector(detector)
        except RestorekitError as exc:
            raise CompareUsageError(f"--detector {detector}: {exc}") from None
    return Plan(config, device, degradation, methods, metrics, reg, core, degradation_code, paste_mask)


def metric_fingerprint(cls: type[Metric], distribution: str, version_: str) -> str:
    """16 hex digits naming what a metric's values depend on: its distribution and version, the
    code of its package (:func:`code_fingerprint`), the sha256 of the weights it requires
    (:func:`loaded_sha256s`) and what else it declares (:func:`declared_dependencies`). A stored
    value of another fingerprint (an upgrade, a fixed metric, re-shipped or replaced weights, another
    model file or library under it) is scored again from the stored output instead of being
    averaged with new ones."""
    pins: list[str] = []
    for name in cls.requires_weights:
        try:
            pins.append(f"{name}={','.join(str(sha) for sha in loaded_sha256s(get_spec(name)))}")
        except RestorekitError:
            pins.append(f"{name}=?")
    text = "\0".join([distribution, version_, code_fingerprint(cls.__module__), *pins,
                      *declared_dependencies(cls)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def declared_dependencies(cls: type) -> list[str]:
    """What a metric's values depend on beyond its package and registered weights, as it declares
    them in an optional classmethod ``dependencies()`` (strings: a model file's name and sha256, a
    library's version; identity_dlib's dlib models and dlib). A metric without one declares
    nothing; one whose declaration raises gives ``["?"]`` (its set-up fails or skips it anyway)."""
    declare = getattr(cls, "dependencies", None)
    if not callable(declare):
        return []
    try:
        return [str(item) for item in declare()]
    except Exception:  # noqa: BLE001 - a broken declaration must not take the plan down
        return ["?"]


def stale_metrics(rec: Record, active: list[MetricState]) -> list[MetricState]:
    """The metrics of ``active`` that ``rec`` lacks, that raised, or that were scored by another
    version of the metric (:func:`metric_fingerprint`)."""
    versions = rec.metric_versions or {}
    return [m for m in active if m.name not in (rec.metrics or {}) or m.name in (rec.metric_errors or {})
            or versions.get(m.name) != m.fingerprint]


def metric_states(names: list[str] | tuple[str, ...] | None, reg: Registry | None = None) -> list[MetricState]:
    """The registered metrics called ``names`` (None: every one, in registration order — core
    first, then plugins), not yet set up (:func:`setup_metrics`); an unknown name raises with a
    did-you-mean."""
    reg = reg or registry()
    metrics: list[MetricState] = []
    for name in dict.fromkeys(names if names is not None else list(reg.items["metrics"])):
        mcls = reg.metric(name)
        plugin = reg.owner["metrics"][name]
        dist, ver = _dist_of(reg, plugin)
        metrics.append(MetricState(name, mcls, plugin, dist, ver, fingerprint=metric_fingerprint(mcls, dist, ver)))
    return metrics


# --------------------------------------------------------------------------------------------
# Execution


def _status_mib(key: str) -> float | None:
    """A ``kB`` line of Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB (read through
    the descriptor the process keeps open: :func:`~restorekit.memory.status_fields`)."""
    fields = status_fields(key)
    try:
        return int(fields[key].split()[0]) / 1024 if fields and key in fields else None
    except (ValueError, IndexError):
        return None


def _cpu_peak_start() -> tuple[str, float] | None:
    """Begin measuring the memory a call takes on the CPU: on Linux the resident high-water mark
    is reset to the current size (``/proc/self/clear_refs``), so the call's own peak is read
    whatever ran before it; elsewhere the process's maximum RSS so far is the base."""
    rss = _status_mib("VmRSS")
    if rss is not None and reset_peak_rss():
        return "hwm", rss
    base = _maxrss_mib()
    return None if base is None else ("maxrss", base)


def memory_measure(method: Method) -> tuple[torch.device, str]:
    """Where ``method``'s network runs and how a call's peak memory is measured there: ``cuda``
    (torch's allocator on that GPU), ``cpu`` (the process's resident memory) or ``none``: an
    onnxruntime graph on CUDA allocates outside torch's allocator, whose peak would hold only the
    call's input and output. An onnxruntime graph may run on the CPU for a method on CUDA."""
    runs_on = run_device(method)
    if runs_on.type != "cuda":
        return runs_on, "cpu"
    return runs_on, "none" if getattr(method, "session", None) is not None else "cuda"


def _cpu_peak_mib(start: tuple[str, float] | None) -> float | None:
    """The call's peak resident memory above what the process held when it began (MiB); without
    the Linux reset, only the growth of the process's maximum (0 after a hungrier call)."""
    if start is None:
        return None
    kind, base = start
    now = _status_mib("VmHWM") if kind == "hwm" else _maxrss_mib()
    return None if now is None else max(0.0, now - base)


def _maxrss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


#: Why :func:`scale_metrics` leaves an ``sr_only`` metric out at ×1.
SR_ONLY_AT_SCALE_ONE = ("at ×1 it is the distance between each output and its degraded input, which a method that "
                        "changes nothing wins; name it in --metrics to compute it anyway")


def left_out_at_scale(cls: type, name: str, scale: int, named: list[str] | tuple[str, ...] | None) -> bool:
    """Whether the metric ``name`` (class ``cls``) is left out at ``scale``: at ×1 one declaring
    :attr:`~restorekit.interfaces.Metric.sr_only`, unless ``named`` (the metrics the user named;
    None: none named) names it. ``compare`` and ``serve`` both ask here."""
    return scale == 1 and getattr(cls, "sr_only", False) is True and not (named is not None and name in named)


def scale_metrics(metrics: list[MetricState], scale: int,
                  named: list[str] | tuple[str, ...] | None) -> list[MetricState]:
    """The metrics to set up at ``scale``: at ×1 those declaring
    :attr:`~restorekit.interfaces.Metric.sr_only` (``lr_consistency``) are marked skipped with the
    reason, unless ``named`` (``--metrics``; None: every registered metric) names them."""
    keep: list[MetricState] = []
    for m in metrics:
        if left_out_at_scale(m.cls, m.name, scale, named):
            m.instance, m.status, m.reason = None, "skipped", SR_ONLY_AT_SCALE_ONE
        else:
            keep.append(m)
    return keep


def setup_metrics(metrics: list[MetricState], device: torch.device) -> None:
    """Set each metric up once; missing weights or packages, or a failing set-up, skip it with the reason."""
    for m in metrics:
        try:
            inst = m.cls()
            inst.setup(device)
            m.instance, m.status, m.reason = inst, "ok", None
        except (WeightsMissing, DependencyMissing) as exc:
            m.instance, m.status, m.reason = None, "skipped", str(exc)
        except Exception as exc:  # a broken metric must not take the comparison down
            m.instance, m.status = None, "skipped"
            m.reason = f"set-up failed: {type(exc).__name__}: {exc}"


@contextmanager
def full_float32() -> Iterator[None]:
    """Convolutions and matrix products in full float32 while inside: CUDA's TensorFloat-32 (on by
    default for cuDNN convolutions) rounds their inputs to 10 bits of mantissa, which moves a
    network metric (LPIPS, an identity descriptor) by more than the differences it is read for,
    and would make a GPU's figures differ from a CPU's."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def score(metrics: list[MetricState], pred: Tensor, hr: Tensor, lr: Tensor, scale: int,
          device: torch.device) -> tuple[dict[str, float], dict[str, str]]:
    """Every active metric on one image (``1×3×H×W``), in full float32 (:func:`full_float32`); a
    metric error gives NaN plus its message."""
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    p, h, low = pred.to(device), hr.to(device), lr.to(device)
    for m in metrics:
        if m.instance is None:
            continue
        try:
            with torch.no_grad(), full_float32():
                v = m.instance(p, h, lr=low, scale=scale)
            if not isinstance(v, Tensor) or v.numel() != 1:
                raise ValueError(f"returned {type(v).__name__} of {getattr(v, 'shape', '?')}, expected one value")
            values[m.name] = float(v.reshape(-1)[0].item())
        except Exception as exc:
            values[m.name] = math.nan
            errors[m.name] = exception_line(exc)
    return values, errors


def versions_of(metrics: list[MetricState]) -> dict[str, str]:
    """``{name: fingerprint}`` of the metrics :func:`score` computes (those set up)."""
    return {m.name: m.fingerprint for m in metrics if m.instance is not None}


def metric_device(device: torch.device) -> torch.device:
    """Where metrics run for methods on ``device``: the same for CPU and CUDA, else the CPU."""
    # float64 arithmetic: CPU and CUDA only.
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def _output_rel(method: str, stem: str, seed: int | None) -> str:
    name = stem if seed is None else f"{stem}_s{seed}"
    return f"outputs/{safe_name(method)}/{name}.png"


class _Clock:
    """Accumulates wall time per stage (for ``bench harness``)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.t[stage] = self.t.get(stage, 0.0) + seconds


def _build(mp: MethodPlan, device: torch.device, backend: str = "torch") -> Method | None:
    from ..plugins import kept_global_state

    try:
        # What its load() changes of the global torch state is put back (with a warning), so that
        # the methods after it, and the metrics, compute as they would without it.
        with kept_global_state(f"method '{mp.name}' (plugin '{mp.plugin}')", "while it loaded"):
            m = mp.cls(mp.options, device=device)
            m.load()
            if backend == "onnxruntime":
                from ..onnx_backend import onnx_method

                m = onnx_method(m)
        mp.backend = str(getattr(m, "backend", "torch"))
    except Exception as exc:
        mp.load_error = f"could not load {mp.name}: {type(exc).__name__}: {exc}"
        return None
    runs_on = run_device(m)  # an onnxruntime graph runs where its session does (maybe the CPU)
    mp.device = _device_name(runs_on)
    opt_prec = getattr(mp.options, "precision", None) or getattr(mp.options, "dtype", None)
    mp.precision = str(getattr(m, "precision", None) or opt_prec or "float32")
    if mp.backend == "torch":  # cuDNN's TF32 convolutions (Ampere and later); the CPU's stays "float32"
        mp.precision = precision_label(runs_on, mp.precision)
    info = getattr(m, "weights_info", None)
    mp.weights_info = dict(info) if isinstance(info, dict) else None
    return m


@dataclass
class _Built:
    """What building a method on one rank found out (rank 0 merges every rank's)."""

    device: str
    precision: str
    backend: str
    weights: dict[str, Any] | None
    load_error: str | None


def _make_inputs(p: Plan, job: Job, clock: _Clock) -> tuple[InputSet, list[str]]:
    """The run's (LR, HR) pairs; under ``torchrun`` each rank makes its share and every rank gets all."""
    cfg = p.config
    shard = (job.rank, job.world)
    if cfg.lr_dir is not None:
        return from_pairs(cfg.data, cfg.lr_dir, cfg.scale, limit=cfg.limit, max_pixels=cfg.max_pixels,
                          max_output_pixels=cfg.max_output_pixels, shard=shard)
    inputs = from_degradation(cfg.data, parse_spec(p.degradation or ""), cfg.scale, cfg.out, limit=cfg.limit,
                              fresh=cfg.fresh, max_pixels=cfg.max_pixels, max_output_pixels=cfg.max_output_pixels,
                              clock=clock.add, shard=shard, step_code=p.degradation_code,
                              core_code=p.core_code)
    # ("degrade" and "write_lr" are also inside "inputs")
    return inputs, []


def _agree_on_metrics(metrics: list[MetricState], job: Job) -> None:
    """A metric skipped on any rank is skipped on all, so every record has the same metrics."""
    if not job.distributed:
        return
    skipped: dict[str, str | None] = {}
    for statuses in job.gather({m.name: m.reason for m in metrics if m.status != "ok"}):
        for name, reason in statuses.items():
            skipped.setdefault(name, reason)
    for m in metrics:
        if m.name in skipped and m.status == "ok":
            m.instance, m.status, m.reason = None, "skipped", skipped[m.name]


def execute(p: Plan, progress: Callable[[str], None] | None = None, job: Job | None = None) -> CompareResult:
    """Run every method on every image and seed, reusing stored results unless ``fresh``.

    Three steps, the same alone or as one rank of a ``torchrun`` job (``job``, default the
    current one): find the (method, image, seed) units already complete in the store (each rank
    checks its share); deal the rest out — rank ``r`` takes every ``W``-th, so a resumed job
    splits what is left evenly — and run them, each rank appending to its own part of the store;
    gather every rank's records, in the order one process makes them, so the aggregates and
    reports are the same numbers bit for bit. Rank 0 alone writes ``compare.json``, the
    manifest, the method meta and the compacted store.
    """
    job = job or current_job()
    cfg = p.config
    t_start = time.perf_counter()
    clock = _Clock()
    out = cfg.out
    if job.device is not None:
        p.device = job.device  # this rank's own: cuda:LOCAL_RANK or the CPU

    def claim_folder() -> None:
        out.mkdir(parents=True, exist_ok=True)
        if job.is_main:
            claim(p)  # one configuration per --out folder (refused, or cleared with --fresh)
            if cfg.fresh:
                whole = ResultStore(out)
                for mp in p.methods:
                    whole.clear(mp.name)

    job.together(claim_folder)
    t0 = time.perf_counter()
    inputs, unmatched = job.together(lambda: _make_inputs(p, job, clock))
    if job.distributed:
        inputs = merge_shards(job.gather(inputs.portable()), inputs)
        if job.is_main and p.degradation is not None:
            update_manifest(inputs, p.degradation, cfg.fresh, p.degradation_code, p.core_code)
    if job.is_main:
        record(p)  # the inputs exist: the folder is this configuration's from now on
        for line in duplicate_lines(inputs.pairs):
            print(f"warning: {line}", file=sys.stderr, flush=True)
    clock.add("inputs", time.perf_counter() - t0)

    t0 = time.perf_counter()
    mdev = metric_device(p.device)
    setup_metrics(scale_metrics(p.metrics, cfg.scale, cfg.metrics), mdev)
    _agree_on_metrics(p.metrics, job)
    clock.add("metric_setup", time.perf_counter() - t0)
    active = [m for m in p.metrics if m.instance is not None]

    store = ResultStore(out, part=f"rank{job.rank}" if job.distributed else None)
    stored = {mp.name: store.load(mp.name) for mp in p.methods}
    units = [(mi, pi, seed) for mi, mp in enumerate(p.methods) for pi in range(len(inputs.pairs))
             for seed in mp.seeds]
    records: dict[int, Record] = {}

    def advance(g: int) -> None:
        if progress is not None:
            mi, pi, _ = units[g]
            progress(f"{p.methods[mi].name} {inputs.pairs[pi].stem}")

    # 1. Units complete in the store (each rank checks its share).
    for g in job.indices(len(units)):
        mi, pi, seed = units[g]
        rec = _complete(p, p.methods[mi], inputs.pairs[pi], seed, store, stored[p.methods[mi].name], active, clock)
        if rec is not None:
            records[g] = rec
            advance(g)
    done = {g for share in job.gather(sorted(records)) for g in share}

    # 2. This rank's share of the rest, method by method (each built lazily, once).
    todo = job.part([g for g in range(len(units)) if g not in done])
    # The last of these units to read each pair (units run in this order): after it the pair's
    # decoded images leave the input cache, but for the pairs the report's image grid shows.
    last_read = {units[g][1]: g for g in todo}
    shown = _report_stems(inputs)
    for pi, pair in enumerate(inputs.pairs):
        if pi not in last_read and pair.stem not in shown:
            inputs.release(pair.stem)  # (made with the LR files, every unit of it complete)
    built: dict[str, _Built] = {}
    try:
        for mi, mp in enumerate(p.methods):
            method: Method | None = None
            first_call = True
            for g in (g for g in todo if units[g][0] == mi):
                _, pi, seed = units[g]
                pair = inputs.pairs[pi]
                rec = _reuse(p, mp, pair, seed, inputs, store, stored[mp.name], active, mdev, clock)
                if rec is None:  # needs the method
                    if mp.name not in built:
                        t0 = time.perf_counter()
                        method = _build(mp, p.device, cfg.backend)
                        clock.add("method_load", time.perf_counter() - t0)
                        built[mp.name] = _Built(mp.device, mp.precision, mp.backend, mp.weights_info, mp.load_error)
                        if method is not None and job.is_main:
                            store.save_meta(mp.name, mp.settings_hash, {
                                "device": mp.device, "precision": mp.precision, "backend": mp.backend,
                                "weights": mp.weights_info})
                    rec = _run(p, mp, pair, seed, inputs, method, active, mdev, clock, first_call)
                    if rec.ms is not None:
                        first_call = False
                    t0 = time.perf_counter()
                    store.append(rec)
                    clock.add("store", time.perf_counter() - t0)
                if last_read[pi] == g and pair.stem not in shown:
                    inputs.release(pair.stem)
                records[g] = rec
                advance(g)
            del method
            if p.device.type == "cuda":
                torch.cuda.empty_cache()
    except OSError as exc:  # a full disk (an output, a record): stopped here, the records so far kept
        if storage_errno(exc) is None:
            raise
        raise storage_stop(exc, out) from exc
    finally:
        store.close()

    # 3. Every rank's records, in one process's order; rank 0 keeps the store.
    shares = job.gather((records, built, clock.t))
    job.settled = True
    merged: dict[int, Record] = {}
    timings: dict[str, float] = {}
    for recs, _, t in shares:
        merged.update(recs)
        for stage, seconds in t.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    ordered = [merged[g] for g in range(len(units))]
    for mp in p.methods:
        _settle_method(p, mp, [b[mp.name] for _, b, _ in shares if mp.name in b], store, job)
        if job.is_main:
            t0 = time.perf_counter()
            store.compact(mp.name, [r for r in ordered if r.method == mp.name])
            clock.add("store", time.perf_counter() - t0)
    res = CompareResult(p, inputs, ordered, unmatched, timings if job.distributed else clock.t,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), processes=job.world)
    res.wall_s = time.perf_counter() - t_start
    return res


def storage_stop(exc: OSError, out: Path) -> FileSystemError:
    """The error that ends a comparison at ``exc``, a write the file system refused as it would every
    other (:func:`~restorekit.images.storage_errno`: full, over quota, read-only): one line, the
    write and its fix, and that a rerun goes on. No report is written (it could not be, and would
    show a part as the whole); every record appended before it stays in the store (written through
    at once), so the same command run again reuses them and restores only what is left. Its errno
    is ``exc``'s."""
    err = FileSystemError(f"{describe_os_error(exc)}; compare stopped there, as every later write would fail the "
                          f"same way: no report is written, the results so far are kept, and the same command run "
                          f"again once {out} can be written goes on from there")
    err.errno = storage_errno(exc)
    return err


def _report_stems(inputs: InputSet) -> set[str]:
    """The images whose decoded pairs the report reads after the run (its image grid's): kept in
    the input cache, not read from their files again."""
    from .report_html import HTML_MAX_IMAGES

    return {pair.stem for pair in inputs.pairs[:HTML_MAX_IMAGES]}


def _settle_method(p: Plan, mp: MethodPlan, builds: list[_Built], store: ResultStore, job: Job) -> None:
    """``mp``'s device, precision, backend and weights: as built (on every rank that did), else as stored."""
    if builds:
        ok = [b for b in builds if b.load_error is None]
        mp.load_error = next((b.load_error for b in builds if b.load_error is not None), None)
        if ok:
            mp.device = job.describe_devices([b.device for b in ok])
            mp.precision, mp.backend, mp.weights_info = ok[0].precision, ok[0].backend, ok[0].weights
            if job.distributed and job.is_main:
                store.save_meta(mp.name, mp.settings_hash, {"device": mp.device, "precision": mp.precision,
                                                            "backend": mp.backend, "weights": mp.weights_info})
    else:  # everything reused: what the building run recorded
        meta = store.load_meta(mp.name, mp.settings_hash) or {}
        mp.device = str(meta.get("device") or "")
        mp.precision = str(meta.get("precision") or mp.precision)
        mp.backend = str(meta.get("backend") or mp.backend)
        mp.weights_info = meta.get("weights") if isinstance(meta.get("weights"), dict) else None
    if not mp.device:
        mp.device = _device_name(p.device)


def _complete(p: Plan, mp: MethodPlan, pair: Pair, seed: int | None, store: ResultStore, stored: dict[Any, Record],
              active: list[MetricState], clock: _Clock) -> Record | None:
    """The stored record for this key when it can be reused as it is (every active metric scored)."""
    if p.config.fresh:
        return None
    t0 = time.perf_counter()
    rec = stored.get((mp.name, pair.stem, seed, mp.settings_hash, pair.input_hash))
    ok = store.reusable(rec)
    clock.add("store", time.perf_counter() - t0)
    if not ok or rec is None:
        return None
    if stale_metrics(rec, active):
        return None  # scored by its rank in step 2
    rec.reused = True
    return rec


def _reuse(p: Plan, mp: MethodPlan, pair: Pair, seed: int | None, inputs: InputSet, store: ResultStore,
           stored: dict[Any, Record], active: list[MetricState], mdev: torch.device, clock: _Clock) -> Record | None:
    """A stored record for this key if reusable (scoring any metric it lacks), else None."""
    if p.config.fresh:
        return None
    key = (mp.name, pair.stem, seed, mp.settings_hash, pair.input_hash)
    t0 = time.perf_counter()
    rec = stored.get(key)
    ok = store.reusable(rec)
    clock.add("store", time.perf_counter() - t0)
    if not ok or rec is None:
        return None
    # Metrics this record lacks (asked for later), that raised last time, or that another version
    # of the metric scored are computed now.
    missing = stale_metrics(rec, active)
    if missing:
        t0 = time.perf_counter()
        try:
            lr, hr = inputs.load(pair)
            pred = read_image(store.out / (rec.output or ""), max_pixels=p.config.max_output_pixels)
        except (RestorekitError, OSError, ValueError):
            return None
        clock.add("inputs", time.perf_counter() - t0)
        t0 = time.perf_counter()
        vals, errs = score(missing, pred, hr, lr, p.config.scale, mdev)
        clock.add("metrics", time.perf_counter() - t0)
        rec.metrics = {**(rec.metrics or {}), **vals}
        rec.metric_errors = {k: v for k, v in (rec.metric_errors or {}).items() if k not in vals} | errs
        rec.metric_versions = {**(rec.metric_versions or {}), **versions_of(missing)}
        store.append(rec)
    rec.reused = True
    return rec


def _run(p: Plan, mp: MethodPlan, pair: Pair, seed: int | None, inputs: InputSet, method: Method | None,
         active: list[MetricState], mdev: torch.device, clock: _Clock, warmup: bool) -> Record:
    """Restore one image with one seed, save and score it; any exception becomes a failed record, but
    for a write of the output that the file system refuses for every file (a full disk:
    :func:`~restorekit.images.storage_errno`), raised for :func:`execute` to stop at."""
    scale = p.config.scale
    rec = Record(mp.name, pair.stem, seed, mp.settings_hash, pair.input_hash, "failed")
    if method is None:
        rec.error = mp.load_error or f"could not load {mp.name}"
        return rec
    t0 = time.perf_counter()
    try:
        lr, hr = inputs.load(pair)
    except (RestorekitError, OSError, ValueError) as exc:
        rec.error = f"input: {exc}"
        return rec
    clock.add("inputs", time.perf_counter() - t0)
    dev = method.device
    cuda = dev.type == "cuda"
    runs_on, measure = memory_measure(method)
    torch_cuda = measure == "cuda"
    try:
        x = lr.to(dev)
        # The method gets its own copy: one that changes its input in place (a plugin's bug the
        # conformance kit catches) would otherwise change the cached LR every later method, the
        # metrics and this record's checks read.
        given = x.clone()
        if cuda:
            torch.cuda.synchronize(dev)
        if torch_cuda:
            torch.cuda.reset_peak_memory_stats(runs_on)
        cpu_peak = _cpu_peak_start() if measure == "cpu" else None
        t0 = time.perf_counter()
        with torch.no_grad():
            if p.config.faces == "detect" and method.info.input_kind == "aligned_face":
                from ..faces.pipeline import restore_photo

                y, faces = restore_photo(method, given, scale, mp.settings["faces"]["detector"], seed=seed,
                                         max_output_pixels=p.config.max_output_pixels,
                                         paste_mask=mp.settings["faces"]["paste_mask"])  # (as recorded)
                rec.report = {"faces": faces}
            else:
                y = method.restore(given, scale, seed=seed, n_samples=1)
        if cuda:
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        clock.add("restore", dt)
        if torch_cuda:
            rec.peak_mem_mb = torch.cuda.max_memory_allocated(runs_on) / 2**20
        else:
            rec.peak_mem_mb = _cpu_peak_mib(cpu_peak)  # (None for onnxruntime on CUDA)
        rec.ms, rec.warmup = dt * 1000.0, warmup
        if not isinstance(y, Tensor) or y.dim() != 4 or tuple(y.shape[:2]) != (1, 3):
            raise ValueError(f"restore returned {getattr(y, 'shape', type(y).__name__)}, expected 1×3×H×W")
        if tuple(y.shape[-2:]) != tuple(hr.shape[-2:]):
            raise ValueError(f"output is {y.shape[-1]}×{y.shape[-2]}, expected {hr.shape[-1]}×{hr.shape[-2]} "
                             f"({scale}× the {lr.shape[-1]}×{lr.shape[-2]} input)")
        y = check_restored(mp.name, y, x, scale)  # dtype, NaN, range: one line naming the method
        y = keep_black_and_white(method, x.to(y.device), y)  # as run gives it
        # The method's own report, unless the face pipeline ran it (once per face): then the
        # per-face records stay the report.
        reports = getattr(method, "last_reports", None)
        if rec.report is None and isinstance(reports, list) and reports and isinstance(reports[0], dict):
            rec.report = reports[0]
    except Exception as exc:  # one (method, image) failing must not stop the comparison
        rec.error = str(exc) if isinstance(exc, RestorekitError) else exception_line(exc)
        if cuda:
            torch.cuda.empty_cache()
        return rec
    t0 = time.perf_counter()
    pil = to_pil(y.detach().float().cpu())
    pred = from_pil(pil)  # exactly what reading the PNG back gives
    data = png_bytes(pil)
    rel = _output_rel(mp.name, pair.stem, seed)
    try:
        atomic_write_bytes(p.config.out / rel, data, root=p.config.out)  # (no folder on the way a link)
    except OSError as exc:
        if storage_errno(exc) is not None:
            raise  # every output after it would fail the same way: execute stops there
        rec.error = describe_os_error(exc, p.config.out / rel)
        return rec
    rec.output, rec.output_sha256 = rel, hashlib.sha256(data).hexdigest()
    clock.add("save", time.perf_counter() - t0)
    t0 = time.perf_counter()
    rec.metrics, rec.metric_errors = score(active, pred, hr, lr, scale, mdev)
    rec.metric_versions = versions_of(active)
    clock.add("metrics", time.perf_counter() - t0)
    rec.status = "ok"
    return rec


# --------------------------------------------------------------------------------------------
# Context for reports


def backend_info(device: torch.device) -> dict[str, Any]:
    """Versions and hardware that numbers (runtime above all) depend on."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__, "device": _device_name(device),
                            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    for pkg in ("numpy", "pillow"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


def plugin_versions(reg: Registry) -> list[dict[str, str]]:
    return [{"name": r.name, "distribution": r.distribution, "version": r.version, "status": r.status}
            for r in reg.plugins.values()]


def restorekit_version() -> str:
    return __version__
