"""``restorekit bench method NAME``: time one method per image, optionally against another.

For each batch size: median milliseconds per call over ``--repeat`` timed runs after
``--warmup`` untimed ones (CUDA synchronised), with the range of the runs (smallest–largest,
``*_range`` in the JSON, the runs themselves in ``ms_per_call_samples``), per image, and peak memory:
``peak_memory_mib``, whose ``memory_kind`` (:data:`MEMORY_KINDS`; the table's label beside the
figure) says what it is. Torch on CUDA: the peak its allocator held during that side's calls, a
figure of that side alone. On the CPU: the process's peak resident set, which includes everything
loaded so far and every call timed up to then — the same figure for each side timed interleaved at
a batch size; timed one after the other (keep_memory, below), a later side's includes the earlier
one's peak — so it does not tell two sides apart. onnxruntime on CUDA allocates outside torch's allocator, so its
memory is not measured there (null). Only two figures of one per-side kind make a ratio: the
torch and onnxruntime backends never do (in one process the CPU's resident memory cannot be
split between them: memory one leaves to the allocator is reused by the other, and the export
ran the torch network beforehand; measured per call with the high-water mark reset, psp_sr's
torch rise at batch 1 was 10 MiB here against 37 MiB in a fresh process), so ``--backend
torch,onnxruntime`` gives no memory ratio, and says why (``backend_memory_ratio`` null,
``backend_memory_note``). A method may expose ``bench_parts(lr, scale) -> {part: ms}`` (pSp:
encoder, generator), shown beside the total. ``--compare-to OTHER`` times a second method on the same input in the
same run (``--compare-repeat`` runs) and prints the ratio ``OTHER ms/image ÷ NAME ms/image`` at each batch
size (against NAME's first ``--backend``: ``speed_ratio_backend``): the ratio of the medians, with its
range over every pairing of a run of one with a run of the other (``speed_ratio_range``); a range
that spans 1.0 is a difference within the noise.
``--backend torch,onnxruntime`` times NAME's network in each backend side by side (the
onnxruntime one exported on first use, see :mod:`restorekit.onnx_backend`) and prints
``torch ms/image ÷ onnxruntime ms/image``; ``--threads`` sets both backends' thread counts.

At each batch size the runs of everything timed there (NAME's backends, OTHER) are interleaved
— each gets ``--warmup`` untimed runs, then their timed runs alternate in proportion to their
counts — so a change in the machine's load during the run hits both sides of a ratio alike.
One exception: :mod:`restorekit.memory`'s ``keep_memory`` is process-wide and cannot be undone
once a method switched it on, so when one side asks for it on the CPU and the other does not
(``--compare-opt keep_memory=false``, or a method without the option), the side without it is
timed first, all of it, then the other (said on stderr and in the JSON's ``timing``).

A batch size that fails (a method's memory guard, torch out of memory) is said in one ``error:`` line
with bench's fix (a smaller ``--batch`` or ``--size``) and listed under ``failed`` in the JSON; the
batch sizes measured are still reported, and the exit code is 1 (as ``run``'s failed inputs). ``--batch``
takes 1 to :data:`MAX_BATCH` and ``--size`` up to :data:`MAX_SIZE`, whose ×scale output is held to
``run``'s default output limit; a size listed twice in ``--batch`` (or a backend in ``--backend``)
is timed once.

``--resolution R`` benchmarks an untrained model of the method's paper shapes at output
resolution ``R`` (methods with a ``bench_model_options(R)`` class hook; psp_sr: IR-SE50 encoder,
config-f generator), so no weights are needed. A method with ``bench_breakdown(lr, scale,
repeats=)`` (psp_sr: encoder and generator) also gets, per part, milliseconds and the fraction
of the plain-convolution rate measured on the same shapes in the same run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import torch

from ..cli import emit_json, error_line, fail_usage, json_output, table, warn
from ..devices import DEVICE, DEVICE_HELP, precision_label, run_device
from .bench import fmt_ratio, fmt_spread, ratio_spread, spread
from ..errors import InsufficientMemory, RestorekitError
from ..interfaces import Method
from ..methods import build_method, check_restored, method_class, method_values, validate_options


#: The largest batch size timed (``bench generator --batch``'s bound too).
MAX_BATCH = 256
#: The largest ``--size``: an input of ``run``'s default ``--max-pixels`` (64 MP).
MAX_SIZE = 8000


def parse_batches(text: str, flag: str = "--batch") -> list[int]:
    """Batch sizes from ``1,4``: each from 1 to :data:`MAX_BATCH`, each once in the order first given
    (as ``--seeds`` and ``--methods``: a size listed twice is one measurement, not two rows)."""
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}': expected batch sizes like 1,4", param_hint=flag) from None
    if not out or any(not 1 <= b <= MAX_BATCH for b in out):
        raise click.BadParameter(f"'{text}': batch sizes must be integers from 1 to {MAX_BATCH}", param_hint=flag)
    return list(dict.fromkeys(out))


def check_bench_size(side: int, scale: int, batch: int) -> None:
    """Refuse, before the input is made, an input whose ×``scale`` output passes ``run``'s default
    output limit per image, or whose largest ``batch`` would not fit the memory left to make it:
    the process would otherwise grow until it fails or the kernel kills it."""
    from ..device_memory import check_working_memory
    from ..images import DEFAULT_MAX_OUTPUT_PIXELS, _mp
    from ..testing.data import smooth_batch_bytes

    out = side * scale
    if out * out > DEFAULT_MAX_OUTPUT_PIXELS:
        raise RestorekitError(f"--size {side}: its ×{scale} output would be {out}×{out} = {_mp(out * out)} "
                              f"per image, over the output limit of {_mp(DEFAULT_MAX_OUTPUT_PIXELS)} that run and compare apply; "
                              f"lower --size or --scale")
    check_working_memory(smooth_batch_bytes(batch, side, side), torch.device("cpu"),
                         f"the input of bench method ({batch} images of {side}×{side})", "lower --batch or --size")


def default_scale(cls: type[Method]) -> int:
    scales = cls.info.scales
    if scales is None or 4 in scales:
        return 4
    return scales[0]


def input_size(method: Method, scale: int, size: int | None) -> int:
    """``--size``, else the method's ``preferred_input_size(scale)``, else 64."""
    if size is not None:
        return size
    pref = getattr(method, "preferred_input_size", None)
    return int(pref(scale)) if callable(pref) else 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: What ``peak_memory_mib`` measures, by the row's ``memory_kind`` (a kind not here starts with
#: ``not measured:`` and says why).
MEMORY_KINDS = {
    "cuda_peak_allocated": "the peak CUDA memory torch's allocator held during this side's calls (weights included)",
    "process_peak_rss": "the process's peak resident memory so far: everything loaded and every call timed up to "
                        "then, not one side's own",
}
#: What that means for the sides at one batch size, by the JSON's ``timing.order``.
PEAK_RSS_ORDER = {
    "interleaved": "; the sides at a batch size are timed together (runs interleaved), so each shows the same figure",
    "sequential": "; the sides were timed one after the other, so the side timed later shows a peak that "
                  "includes the earlier side's (its figure is at least as high), the earlier side's does not "
                  "include the later's",
}
#: The table's label of each kind.
MEMORY_LABELS = {"cuda_peak_allocated": "cuda, this side", "process_peak_rss": "rss, whole process"}
#: Kinds measured on one side's own calls alone: two rows of one such kind are comparable.
PER_SIDE_KINDS = ("cuda_peak_allocated",)
ONNX_CUDA_UNMEASURED = "not measured: onnxruntime allocates its CUDA memory outside torch's allocator"
NO_RESOURCE = "not measured: no resource module here"


def runs_onnxruntime(method: Any) -> bool:
    """Whether ``method`` is a network running on onnxruntime (it holds a session)."""
    return getattr(method, "session", None) is not None


def memory_kind(method: Any) -> str:
    """How ``method``'s peak memory is measured: a key of :data:`MEMORY_KINDS`, else
    ``not measured: why``. Decided by where its network runs (an onnxruntime graph may run on
    the CPU for a method on CUDA) and by which backend runs it."""
    dev = run_device(method)
    if dev.type == "cuda":
        return ONNX_CUDA_UNMEASURED if runs_onnxruntime(method) else "cuda_peak_allocated"
    return "process_peak_rss" if peak_memory_mib(dev) is not None else NO_RESOURCE


def memory_ratio(num: dict[str, Any], den: dict[str, Any]) -> tuple[float | None, str | None]:
    """``num``'s peak memory ÷ ``den``'s (two rows), else None and why: only two figures of the
    same per-side measure (:data:`PER_SIDE_KINDS`) make a ratio."""
    kn, kd = num["memory_kind"], den["memory_kind"]
    if kn != kd:
        return None, f"they measure different things ({num['backend']}: {kn}; {den['backend']}: {kd})"
    if kn not in PER_SIDE_KINDS:
        return None, (f"both figures are {kn}, the whole process's, not each side's own" if kn in MEMORY_KINDS
                      else f"both: {kn}")
    a, b = num["peak_memory_mib"], den["peak_memory_mib"]
    if a is None or b is None or b <= 0:
        return None, f"{den['backend']}'s figure is {b}, no base for a ratio"
    return a / b, None


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak CUDA allocation, or the process's peak resident set; None where neither is known
    (Windows has no ``resource``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class _Side:
    """One method timed on one input batch: its timed runs (ms), its last output, and (CUDA, torch)
    the peak its calls allocated; ``memory_kind`` says how its memory is measured."""

    def __init__(self, method: Method, lr: torch.Tensor, repeat: int) -> None:
        self.method, self.lr, self.repeat = method, lr.to(method.device), repeat
        self.times: list[float] = []
        self.out: Any = None
        self.memory_kind = memory_kind(method)
        self.cuda_peak: float | None = None

    def call(self, scale: int) -> float:
        """One synchronised call; its milliseconds (and, torch on CUDA, the peak allocation it reached)."""
        dev = self.method.device
        cuda = self.memory_kind == "cuda_peak_allocated"
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        self.out = self.method.restore(self.lr, scale)
        _sync(dev)
        ms = (time.perf_counter() - t0) * 1000
        if cuda:
            self.cuda_peak = max(self.cuda_peak or 0.0, torch.cuda.max_memory_allocated(dev) / 2**20)
        return ms


def interleaved_order(repeats: list[int]) -> list[int]:
    """The order of the timed runs of sides with these run counts: side ``i``'s ``k``-th run at
    ``(k + ½) / repeats[i]`` of the way through, so unequal counts still alternate evenly (ties:
    the earlier side first)."""
    return [i for _, i in sorted(((k + 0.5) / n, i) for i, n in enumerate(repeats) for k in range(n))]


def time_interleaved(sides: list[tuple[Method, torch.Tensor, int]], scale: int, *,
                     warmup: int) -> list[dict[str, Any]]:
    """:func:`time_method`'s figures for several ``(method, input, repeat)`` at once: each gets
    ``warmup`` untimed runs (round robin), then their timed runs alternate
    (:func:`interleaved_order`), so load that comes and goes during the run hits every side alike.
    Parts (``bench_parts``) are timed after all the runs, side by side."""
    runs = [_Side(m, lr, repeat) for m, lr, repeat in sides]
    with torch.inference_mode():
        for _ in range(warmup):
            for s in runs:
                s.method.restore(s.lr, scale)
        for s in runs:
            _sync(s.method.device)
        for i in interleaved_order([s.repeat for s in runs]):
            runs[i].times.append(runs[i].call(scale))
        return [_figures(s, scale) for s in runs]


def _figures(side: _Side, scale: int) -> dict[str, Any]:
    """One side's row: the median and range of its runs, per call and per image, its parts and peak memory."""
    method, lr, times = side.method, side.lr, side.times
    if side.out is not None:  # the time of a wrong output is no figure: size, dtype, NaN and range, as run checks
        check_restored(method.info.name, side.out, lr, scale)
    parts: dict[str, dict[str, Any]] = {}
    bench_parts = getattr(method, "bench_parts", None)
    if callable(bench_parts):
        part_runs = [bench_parts(lr, scale) for _ in range(side.repeat)]
        parts = {k: spread([r[k] for r in part_runs]) for k in part_runs[0]}
    s, b = spread(times), int(lr.shape[0])
    kind = side.memory_kind
    peak = (side.cuda_peak if kind == "cuda_peak_allocated"
            else peak_memory_mib(torch.device("cpu")) if kind == "process_peak_rss" else None)
    return {"batch": b, "repeats": len(times), "ms_per_call": s["median"], "ms_per_call_range": [s["min"], s["max"]],
            "ms_per_image": s["median"] / b, "ms_per_image_range": [s["min"] / b, s["max"] / b],
            "ms_per_call_samples": times,
            "parts_ms": {k: p["median"] for k, p in parts.items()},
            "parts_ms_range": {k: [p["min"], p["max"]] for k, p in parts.items()},
            "peak_memory_mib": None if peak is None else round(peak, 1),
            "memory_kind": kind}


def time_method(method: Method, lr: torch.Tensor, scale: int, *, repeat: int, warmup: int) -> dict[str, Any]:
    """Median ms per call (and the range of the ``repeat`` runs), ms per image, the parts (if any,
    medians and ranges) and peak memory for one input batch."""
    return time_interleaved([(method, lr, repeat)], scale, warmup=warmup)[0]


def switches_memory(method: Method) -> bool:
    """Whether timing ``method`` switches on :mod:`restorekit.memory`'s process-wide keep_memory:
    its ``keep_memory`` option is on, it runs on the CPU and its generator is
    :data:`~restorekit.memory.MIN_RESOLUTION` px or more (one that does not tell its resolution
    counts as one that is)."""
    from ..memory import MIN_RESOLUTION

    if getattr(getattr(method, "options", None), "keep_memory", None) is not True or run_device(method).type != "cpu":
        return False
    try:
        res = getattr(method, "resolution", None) or getattr(getattr(method, "generator", None), "resolution", None)
        return res is None or int(res) >= MIN_RESOLUTION
    except Exception:  # a property of a model not loaded: assume it asks
        return True


def bench_model_opts(name: str, resolution: int | None, *, required: bool = True) -> tuple[str, ...]:
    """``--opt`` strings for ``--resolution``: the method's untrained paper-shaped model (none for
    a method without one unless ``required``: then that is an error)."""
    if resolution is None:
        return ()
    hook = getattr(method_class(name), "bench_model_options", None)
    if not callable(hook):
        if not required:
            return ()
        raise RestorekitError(f"{name} has no untrained benchmark model, so --resolution does not apply to it; "
                              f"pass --weights instead")
    return tuple(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in hook(resolution).items())


def time_breakdown(method: Method, lr: torch.Tensor, scale: int, *, repeats: int) -> dict[str, dict[str, Any]]:
    """The method's per-part conv-rate breakdown (``bench_breakdown``), or ``{}`` without one."""
    hook = getattr(method, "bench_breakdown", None)
    if not callable(hook):
        return {}
    return dict(hook(lr.to(method.device), scale, repeats=repeats))


def _build(name: str, opts: tuple[str, ...], weights: str | None, device: str) -> Method:
    cls = method_class(name)
    values = method_values(cls, opts, weights)
    validate_options(cls, values)
    return build_method(name, values, device)


@click.command("method")
@click.argument("name")
@click.option("--scale", type=click.IntRange(min=1), default=None, help="Output = scale × input (default 4).")
@click.option("--size", type=click.IntRange(2, MAX_SIZE), default=None,
              help="Input side in px (default: the method's preferred size for --scale, else 64).")
@click.option("--batch", "batches", default="1,4", show_default=True,
              help=f"Batch sizes to time, each 1 to {MAX_BATCH} (a size listed twice is timed once).")
@click.option("--repeat", "--repeats", "repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per batch size (median and range).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs before the timed ones.")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Option of NAME (repeatable).")
@click.option("--weights", default=None, help="Weights name or path for NAME.")
@click.option("--compare-to", "other", default=None, help="A second method timed on the same input.")
@click.option("--compare-opt", "other_opts", multiple=True, metavar="KEY=VALUE", help="Option of the second method.")
@click.option("--compare-repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs of the second method (its median and range; slow methods: keep it small).")
@click.option("--compare-batch", "other_batches", default=None,
              help="Batch sizes for the second method (default: the smallest --batch, where the ratio is given).")
@click.option("--backend", "backends", default="torch", show_default=True,
              help="Backends for NAME, timed side by side: torch, onnxruntime (comma-separated).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and onnxruntime (default: torch's current setting).")
@click.option("--resolution", type=click.Choice(["32", "64", "128", "256", "512", "1024"]), default=None,
              help="An untrained model of the paper's shapes at this output resolution (psp_sr), for NAME and "
                   "--compare-to; no weights needed.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@json_output
def bench_method_cmd(name: str, scale: int | None, size: int | None, batches: str, repeat: int, warmup: int,
                     device: str, opts: tuple[str, ...], weights: str | None, other: str | None,
                     other_opts: tuple[str, ...], compare_repeat: int, other_batches: str | None, backends: str,
                     threads: int | None, resolution: str | None, as_json: bool) -> None:
    """Time METHOD per image at each --batch size (and against --compare-to)."""
    from ..testing.data import smooth_batch

    if other is None:  # options of a second method that is not there: said, not silently ignored
        ctx = click.get_current_context()
        loose = [flag for key, flag in (("other_opts", "--compare-opt"), ("compare_repeat", "--compare-repeat"),
                                        ("other_batches", "--compare-batch"))
                 if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE]
        if loose:
            fail_usage(f"{', '.join(loose)} {'applies' if len(loose) == 1 else 'apply'} to the second method of "
                       f"--compare-to OTHER, which is not given")
            return
    sizes = parse_batches(batches)
    other_sizes = parse_batches(other_batches, "--compare-batch") if other_batches is not None else [min(sizes)]
    if other and not set(sizes) & set(other_sizes):
        # The speed ratio sets the two methods side by side at one batch size; across sizes it
        # would credit one of them with batching.
        fail_usage(f"--batch {batches} and --compare-batch {other_batches} share no batch size, so no speed ratio "
                   f"of the two at the same batch size can be given; list one in both (e.g. --compare-batch "
                   f"{','.join(map(str, sorted(set(other_sizes) | {sizes[0]})))})")
        return
    backend_list = list(dict.fromkeys(b.strip() for b in backends.split(",") if b.strip()))  # each once
    bad = [b for b in backend_list if b not in ("torch", "onnxruntime")] or ([] if backend_list else [backends])
    if bad:
        raise click.BadParameter(f"'{bad[0]}': backends are torch, onnxruntime", param_hint="--backend")
    if threads is not None:
        torch.set_num_threads(threads)
    res = int(resolution) if resolution is not None else None
    try:
        cls = method_class(name)
        k = scale if scale is not None else default_scale(cls)
        method = _build(name, bench_model_opts(name, res) + opts, weights, device)
        method.check_scale(k)
        side = input_size(method, k, size)
        largest = max(sizes + (other_sizes if other else []))
        check_bench_size(side, k, largest)
        other_m = (_build(other, bench_model_opts(other, res, required=False) + other_opts, None, device)
                   if other else None)
        if other_m is not None:
            other_m.check_scale(k)
        variants: list[tuple[str, Method]] = []
        for be in backend_list:
            if be == "onnxruntime":
                from ..onnx_backend import onnx_method

                variants.append((be, onnx_method(method, threads=threads)))
            else:
                variants.append((be, method))
    except (RestorekitError, ValueError) as exc:
        fail_usage(str(exc))
        return
    try:
        lr_all = smooth_batch(largest, side, side, seed=0)
    except MemoryError:  # (past the estimate checked above: under a ulimit -v, which it cannot see)
        raise RestorekitError(f"bench method: the {side}×{side} input batch does not fit in memory; {BATCH_FIX}")

    def n_threads(m: Method) -> int:
        session = getattr(m, "session", None)
        return int(session.threads) if session is not None else torch.get_num_threads()

    parts_repeats = max(2, repeat)
    def precision(m: Method, be: str) -> str:  # as compare records it (TF32 convolutions on recent GPUs)
        own = str(getattr(m, "precision", None) or "float32")
        return precision_label(run_device(m), own) if be == "torch" else own

    # What is timed: (side, backend, batch) → method and runs. NAME's backends and OTHER at each batch
    # size are timed interleaved, unless keep_memory (process-wide, permanent) sets them apart.
    plan: dict[tuple[str, str, int], tuple[Method, int]] = {("name", be, b): (mm, repeat) for be, mm in variants
                                                            for b in sizes}
    if other_m is not None:
        plan.update({("other", "torch", b): (other_m, compare_repeat) for b in other_sizes})
    phases: list[tuple[str, ...]] = [("name", "other")]
    timing: dict[str, Any] = {"order": "interleaved"}
    if other is not None and other_m is not None and switches_memory(method) != switches_memory(other_m):
        first, then = ("other", "name") if switches_memory(method) else ("name", "other")
        plain = " ".join([other, *other_opts] if first == "other" else [name, *opts])  # the side without it
        from ..memory import kept

        if kept():
            fail_usage(f"{plain} would be timed with keep_memory on: this process already keeps freed memory "
                       f"(restorekit.memory: process-wide, cannot be undone); time it in a fresh process")
            return
        phases = [(first,), (then,)]
        timing = {"order": "sequential", "first": first,
                  "reason": f"keep_memory: {plain} runs without it, and once the other side has switched it on "
                            f"(process-wide, permanent) it stays on; so {plain} is timed first, all of it, "
                            f"then the other, not interleaved"}
        warn(f"{' '.join([name, *opts])} and --compare-to {' '.join([other, *other_opts])} differ in keep_memory "
             f"(process-wide and permanent once on), so {plain} is timed first and the other after it, not "
             f"interleaved: a change in load between the two shows in the ratio")

    def side_of(key: tuple[str, str, int]) -> tuple[str, list[str], str]:
        """The method, options and backend of a key of ``plan``."""
        return (name, list(opts), key[1]) if key[0] == "name" else (str(other), list(other_opts), key[1])

    figures: dict[tuple[str, str, int], dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []  # a batch size that could not be timed; the others are still reported
    for phase in phases:
        for b in dict.fromkeys(sizes + (other_sizes if other_m is not None else [])):
            keys = [key for key in plan if key[0] in phase and key[2] == b]
            if not keys:
                continue
            try:
                rows_b = time_interleaved([(plan[key][0], lr_all[:b], plan[key][1]) for key in keys], k,
                                          warmup=warmup)
                done = {key: dict(device=str(run_device(plan[key][0])), precision=precision(plan[key][0], key[1]),
                                  **row, breakdown=time_breakdown(plan[key][0], lr_all[:b], k, repeats=parts_repeats))
                        for key, row in zip(keys, rows_b)}
            except BATCH_ERRORS as exc:
                msg = batch_failure(exc)
                sides = [side_of(key) for key in keys]
                timed = ", ".join(" ".join([m, *o]) + f" ({be})" for m, o, be in sides)
                error_line(f"bench method: batch {b} of {timed} not measured: {msg}")
                failed.extend({"method": m, "options": o, "backend": be, "batch": b, "error": msg}
                              for m, o, be in sides)
                continue
            figures.update(done)
    rows = [dict(method=name, options=list(opts), backend=be, threads=n_threads(mm), **figures[("name", be, b)])
            for be, mm in variants for b in sizes if ("name", be, b) in figures]
    result: dict[str, Any] = {"method": name, "scale": k, "input_size": side, "device": str(method.device),
                              "dtype": precision(method, "torch"), "backends": backend_list, "timing": timing,
                              "results": rows, "failed": failed}
    if res is not None:
        result["resolution"] = res
    def per_image(r: dict[str, Any]) -> list[float]:
        return [t / r["batch"] for t in r["ms_per_call_samples"]]

    def ratios(pairs: dict[str, tuple[dict[str, Any], dict[str, Any]]], key: str) -> None:
        """``result[key]``: ratio of the medians per batch; ``result[key + "_range"]``: its range."""
        rs = {b: ratio_spread(per_image(num), per_image(den)) for b, (num, den) in pairs.items()}
        result[key] = {b: r["ratio"] if r else None for b, r in rs.items()}
        result[f"{key}_range"] = {b: [r["min"], r["max"]] if r else None for b, r in rs.items()}

    if len(backend_list) > 1 and "torch" in backend_list and "onnxruntime" in backend_list:
        by = {(r["backend"], r["batch"]): r for r in rows}
        both = [b for b in sizes if ("torch", b) in by and ("onnxruntime", b) in by]  # (a failed batch size: none)
        ratios({str(b): (by[("torch", b)], by[("onnxruntime", b)]) for b in both}, "backend_ratio")
        mem = {str(b): memory_ratio(by[("torch", b)], by[("onnxruntime", b)]) for b in both}
        result["backend_memory_ratio"] = {b: r for b, (r, _) in mem.items()}
        notes = {b: why for b, (_, why) in mem.items() if why}
        if notes:
            result["backend_memory_note"] = notes
    if other_m is not None:
        other_rows = [dict(method=other, options=list(other_opts), backend="torch", threads=torch.get_num_threads(),
                           **figures[("other", "torch", b)])
                      for b in other_sizes if ("other", "torch", b) in figures]
        result["compare_to"] = other
        result["compare_results"] = other_rows
        result["speed_ratio_backend"] = backend_list[0]  # NAME's rows the ratio is taken against
        mine = {r["batch"]: r for r in rows if r["backend"] == backend_list[0]}
        # Only at batch sizes both lists share (a list with none in common is refused above).
        ratios({str(r["batch"]): (r, mine[r["batch"]]) for r in other_rows if r["batch"] in mine}, "speed_ratio")
    if as_json:
        emit_json(result)
        if failed:  # some batch sizes failed (each said on stderr): exit 1, as run's failed inputs
            raise SystemExit(1)
        return

    def label(r: dict[str, Any]) -> str:
        return " ".join([r["method"], *r["options"]])

    def cell(r: dict[str, Any], key: str, part: str | None = None) -> str:
        med, rng = (r[key][part], r[f"{key}_range"][part]) if part else (r[key], r[f"{key}_range"])
        return fmt_spread({"median": med, "min": rng[0], "max": rng[1], "n": r["repeats"]})

    def ratio_text(key: str, b: str) -> str:
        rng = result[f"{key}_range"][b]
        return fmt_ratio({"ratio": result[key][b], "min": rng[0], "max": rng[1]} if rng else None)

    first_label = " ".join([name, *opts] if timing.get("first") == "name" else [str(other), *other_opts])
    order = "runs interleaved" if timing["order"] == "interleaved" else f"timed one after the other, {first_label} first"
    table(f"{name} ×{k} on {side}×{side} input, {result['device']}: median of the runs (smallest–largest); {order}",
          ["method", "backend", "threads", "batch", "runs", "ms/call", "ms/image", "parts (ms)", "peak MiB"],
          [[label(r), r["backend"], str(r["threads"]), str(r["batch"]), str(r["repeats"]), cell(r, "ms_per_call"),
            cell(r, "ms_per_image"),
            ", ".join(f"{p} {cell(r, 'parts_ms', p)}" for p in r["parts_ms"]) or "-",
            "n/a" if r["peak_memory_mib"] is None else
            f"{r['peak_memory_mib']:.0f} ({MEMORY_LABELS[r['memory_kind']]})"]
           for r in rows + result.get("compare_results", [])], overflow="fold")
    parts = [(r, part, p) for r in rows + result.get("compare_results", []) for part, p in r["breakdown"].items()]
    if parts:
        table("per part, against its own convolutions replayed as plain aten.convolution on the same shapes",
              ["method", "batch", "part", "ms/image", "GFLOP/image", "conv ms (layout)", "fraction",
               "conv ms (NCHW)", "fraction vs NCHW"],
              [[label(r), str(r["batch"]), part, _part_cell(p, "ms_per_image", 1), f"{p['gflop_per_image']:.1f}",
                f"{_part_cell(p, 'conv_ms_per_image', 1)} ({p['layout']})", _part_cell(p, "fraction", 2),
                _part_cell(p, "conv_nchw_ms_per_image", 1), _part_cell(p, "fraction_nchw", 2)]
               for r, part, p in parts], overflow="fold")
    for b in result.get("backend_ratio", {}):
        click.echo(f"{name}: onnxruntime is {ratio_text('backend_ratio', b)} as fast as torch per image (batch {b}; "
                   f"ratio of the medians, range over all pairs of runs)")
    mine_label = " ".join([name, *opts]) + (f" ({backend_list[0]})" if backend_list != ["torch"] else "")
    for b in result.get("speed_ratio", {}):
        click.echo(f"{mine_label} is {ratio_text('speed_ratio', b)} as fast as "
                   f"{' '.join([str(other), *other_opts])} per image (batch {b}; ratio of the medians, range over all "
                   f"pairs of runs; {order})")
    for b, mr in result.get("backend_memory_ratio", {}).items():
        if mr is not None:
            click.echo(f"{name}: torch's peak memory is {mr:.2f}× onnxruntime's (batch {b})")
    unlike: dict[str, list[str]] = {}  # each reason once, with its batch sizes
    for b, why in result.get("backend_memory_note", {}).items():
        unlike.setdefault(why, []).append(b)
    for why, bs in unlike.items():
        click.echo(f"{name}: no peak-memory ratio of torch to onnxruntime (batch {', '.join(bs)}): {why}")
    # What each label of the peak MiB column measures (and why a row has none).
    for kind, backends_of in _kinds(rows + result.get("compare_results", [])).items():
        click.echo(f"peak MiB ({MEMORY_LABELS[kind]}): {memory_footnote(kind, timing['order'])}" if kind in MEMORY_KINDS
                   else f"peak MiB of {', '.join(backends_of)}: {kind}")
    if failed:  # some batch sizes failed (each said on stderr): exit 1, as run's failed inputs
        raise SystemExit(1)


def memory_footnote(kind: str, order: str) -> str:
    """What a peak-memory figure of ``kind`` is, when the sides at a batch size were timed in
    ``order`` (``interleaved`` or ``sequential``, the JSON's ``timing.order``)."""
    return MEMORY_KINDS[kind] + (PEAK_RSS_ORDER[order] if kind == "process_peak_rss" else "")


#: Errors that fail one batch size, which a smaller one may not meet (a memory guard's refusal,
#: torch or Python out of memory): said in one line, and the batch sizes measured are still
#: reported. Any other error is the method's at every size — a wrong output (refused, exit 2, as
#: before), a ValueError or RuntimeError from its code (unexpected: a bug to report, with its
#: traceback under --debug).
BATCH_ERRORS: tuple[type[BaseException], ...] = (InsufficientMemory, MemoryError, torch.OutOfMemoryError)
#: bench method's own way to need less memory, in place of the fix a method names for run.
BATCH_FIX = "bench method: a smaller --batch or --size needs less"


def batch_failure(exc: BaseException) -> str:
    """One line for a batch size that failed: a method's memory refusal with bench's own fix
    (:data:`BATCH_FIX`; the one it names is for run, e.g. ``--faces detect``, no option of bench)."""
    import re

    text = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    if isinstance(exc, InsufficientMemory):
        m = re.match(r"^(.* is available on \S+) \(.*\)$", text)
        return f"{m.group(1) if m else text} ({BATCH_FIX})"
    if isinstance(exc, MemoryError) or isinstance(exc, torch.OutOfMemoryError):
        return f"out of memory: {text} ({BATCH_FIX})"
    return text


def _kinds(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The memory kinds of ``rows``, in order, each with the backends that have it."""
    out: dict[str, list[str]] = {}
    for r in rows:
        seen = out.setdefault(r["memory_kind"], [])
        if r["backend"] not in seen:
            seen.append(r["backend"])
    return out


def _part_cell(p: dict[str, Any], key: str, digits: int) -> str:
    """A breakdown figure with its range (``<key>_range``, when the breakdown gives one)."""
    rng = p.get(f"{key}_range")
    if not rng:
        return f"{p[key]:.{digits}f}"
    return fmt_spread({"median": p[key], "min": rng[0], "max": rng[1], "n": 2}, digits)


def attach(cli: click.Group) -> None:
    """Add ``method`` to the core ``bench`` group (created by ``restorekit.commands.bench``)."""
    group = cli.commands.get("bench")
    if not isinstance(group, click.Group):
        from .bench import bench_group

        cli.add_command(bench_group)
        group = bench_group
    group.add_command(bench_method_cmd)
