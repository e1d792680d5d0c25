"""Per-method aggregates of a ``compare`` run, and the best method per column.

Rules:
- A metric's value for a method is the mean over the images it succeeded on, NaN values
  (e.g. no face found) left out and counted; images where the metric raised are counted apart. ``+inf`` (PSNR of a perfect output) is a value:
  a mean containing it is ``+inf``.
- Stochastic methods: the mean over images is taken per seed, and the table shows the mean ±
  population standard deviation (ddof = 0) of those per-seed means. The per-seed means are over
  the same images: those every seed has a (finite or infinite) value for; an image some seed has
  none for (it failed there, the metric raised, or NaN) is left out for all of them and counted
  (``seed_left_out``), so that a seed failing on a hard image does not raise its mean. A seed
  with no value at all is not one of "every seed" (its failures are counted as such).
  Deterministic methods run once and have no ± part.
- Runtime: mean ms per call over the successful calls, warm-up calls left out (when the only
  timed call was the warm-up, it is used and flagged). Peak memory: the maximum over calls.
- Best per metric: where the methods' means are over different images (one failed on a hard image,
  a seed failed, a NaN), they are compared over the images every one of them has a value on
  (:func:`shared_means`), not as they are: a method that failed on the hardest face would otherwise
  win on the easier ones. The means in the table stay each method's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .store import Record


@dataclass
class Stat:
    """An aggregate value: ``mean`` (± ``std`` over seeds when stochastic) of ``n`` values, ``nan`` left
    out; ``inf`` of the ``n`` are infinite (then so is the mean). ``seed_left_out``: images of a
    stochastic method left out because not every seed has a value there (their values are in
    neither ``n`` nor ``nan``)."""

    mean: float = math.nan
    std: float | None = None
    n: int = 0
    nan: int = 0
    inf: int = 0
    seed_left_out: int = 0
    # Each image's value behind the mean (a stochastic method's: the mean over its seeds, on the
    # images every seed has), to compare methods on the images they share; not in the reports.
    per_image: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "nan": self.nan, "inf": self.inf,
                "seed_left_out": self.seed_left_out}


@dataclass
class MethodSummary:
    """One row of the comparison table."""

    name: str
    deterministic: bool
    seeds: list[int | None]
    images: int
    ok: int
    failed: int
    metrics: dict[str, Stat] = field(default_factory=dict)
    runtime_ms: Stat = field(default_factory=Stat)
    runtime_is_warmup: bool = False
    warmup_ms: float | None = None
    peak_mem_mb: float | None = None
    failures: list[dict[str, str | int | None]] = field(default_factory=list)
    metric_errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "deterministic": self.deterministic, "seeds": self.seeds,
                "images": self.images, "ok": self.ok, "failed": self.failed,
                "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
                "runtime_ms": self.runtime_ms.as_dict(), "runtime_is_warmup": self.runtime_is_warmup,
                "warmup_ms": self.warmup_ms, "peak_mem_mb": self.peak_mem_mb, "failures": self.failures,
                "metric_errors": self.metric_errors}


def _mean(xs: list[float]) -> float:
    if not xs:
        return math.nan
    if any(math.isinf(x) for x in xs):
        pos, neg = any(x == math.inf for x in xs), any(x == -math.inf for x in xs)
        return math.nan if pos and neg else (math.inf if pos else -math.inf)
    return math.fsum(xs) / len(xs)


def _pstd(xs: list[float]) -> float | None:
    if len(xs) < 2 or not all(math.isfinite(x) for x in xs):
        return None
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


def _per_image(by_seed: dict[int | None, list[tuple[str, float]]]) -> dict[str, float]:
    """Per image, the mean of its values over the seeds (a deterministic method's one value)."""
    values: dict[str, list[float]] = {}
    for pairs in by_seed.values():
        for img, x in pairs:
            values.setdefault(img, []).append(x)
    return {img: _mean(xs) for img, xs in values.items()}


def metric_stat(records: Iterable[Record], metric: str, stochastic: bool) -> Stat:
    """Aggregate one metric over the successful records of one method."""
    by_seed: dict[int | None, list[tuple[str, float]]] = {}
    nan = 0
    for r in records:
        if r.status != "ok" or r.metrics is None or metric not in r.metrics:
            continue
        if r.metric_errors and metric in r.metric_errors:
            continue  # counted as an error by summarize(), not as the metric's own NaN
        v = r.metrics[metric]
        if math.isnan(v):
            nan += 1
            continue
        by_seed.setdefault(r.seed, []).append((r.image, v))
    if not by_seed:
        return Stat(math.nan, None, 0, nan)
    left_out = 0
    if stochastic and len(by_seed) > 1:  # the seeds compared on the same images
        images = [{img for img, _ in v} for v in by_seed.values()]
        common = set.intersection(*images)
        left_out = len(set.union(*images) - common)
        by_seed = {seed: [(img, x) for img, x in v if img in common] for seed, v in by_seed.items()}
    values = [x for v in by_seed.values() for _, x in v]
    n, inf = len(values), sum(math.isinf(x) for x in values)
    if not values:
        return Stat(math.nan, None, 0, nan, 0, left_out)
    if stochastic:
        means = [_mean([x for _, x in v])
                 for _, v in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
        return Stat(_mean(means), _pstd(means), n, nan, inf, left_out, _per_image(by_seed))
    return Stat(_mean(values), None, n, nan, inf, per_image=_per_image(by_seed))


def summarize(name: str, deterministic: bool, seeds: list[int | None], n_images: int,
              records: list[Record], metric_names: list[str]) -> MethodSummary:
    """The table row of one method from its records of this run."""
    ok = [r for r in records if r.status == "ok"]
    failed = [r for r in records if r.status != "ok"]
    s = MethodSummary(name, deterministic, list(seeds), n_images, len(ok), len(failed))
    for m in metric_names:
        s.metrics[m] = metric_stat(ok, m, not deterministic)
        errs = sum(1 for r in ok if r.metric_errors and m in r.metric_errors)
        if errs:
            s.metric_errors[m] = errs
    timed = [r.ms for r in ok if r.ms is not None and not r.warmup]
    # (successful calls only: a call that failed on its output was timed before it was checked)
    warm = [r.ms for r in ok if r.ms is not None and r.warmup]
    if not timed and warm:
        timed, s.runtime_is_warmup = warm[:1], True
    if timed:
        mean = math.fsum(timed) / len(timed)
        std = math.sqrt(math.fsum((t - mean) ** 2 for t in timed) / len(timed)) if len(timed) > 1 else None
        s.runtime_ms = Stat(mean, std, len(timed), 0)
    s.warmup_ms = warm[0] if warm else None
    mems = [r.peak_mem_mb for r in ok if r.peak_mem_mb is not None]
    s.peak_mem_mb = max(mems) if mems else None
    s.failures = [{"image": r.image, "seed": r.seed, "error": r.error} for r in failed]
    return s


@dataclass(frozen=True)
class SharedImages:
    """A metric column whose means are over different images: how many images each method's mean is
    over, how many every one of them has a value on, and each method's mean over those."""

    counts: dict[str, int]
    images: int
    means: dict[str, float]


def shared_means(summaries: list[MethodSummary], metric: str) -> SharedImages | None:
    """The methods with a value of ``metric`` compared on the images all of them have one on; None
    when their means are over the same images already (or fewer than two have a value).

    A Stat without ``per_image`` (made by hand) counts as having no image.
    """
    stats = {s.name: s.metrics[metric] for s in summaries
             if metric in s.metrics and not math.isnan(s.metrics[metric].mean)}
    sets = [set(st.per_image) for st in stats.values()]
    if len(sets) < 2 or all(images == sets[0] for images in sets):
        return None
    common = sorted(set.intersection(*sets))
    return SharedImages({name: len(st.per_image) for name, st in stats.items()}, len(common),
                        {name: _mean([st.per_image[img] for img in common]) for name, st in stats.items()})


def best_per_column(summaries: list[MethodSummary], directions: dict[str, bool],
                    shown: Callable[[str, float], str] | None = None) -> dict[str, set[str]]:
    """For each metric (``directions``: name → higher is better) and ``runtime``, the best method(s).

    A column is marked only when at least two methods have a value in it. Means over different
    images are compared over the images every one of those methods has (:func:`shared_means`; none
    in common: no mark). With ``shown`` (column, mean → the text a report prints), means are
    compared as printed, so every method whose number reads the same as the best one is marked too.
    """
    out: dict[str, set[str]] = {}
    columns: dict[str, tuple[bool, dict[str, float]]] = {}
    for m, hib in directions.items():
        shared = shared_means(summaries, m)
        columns[m] = (hib, shared.means if shared is not None else
                      {s.name: s.metrics[m].mean for s in summaries if m in s.metrics})
    columns["runtime"] = (False, {s.name: s.runtime_ms.mean for s in summaries})
    for col, (hib, values) in columns.items():
        vals = {k: v for k, v in values.items() if not math.isnan(v)}
        if shown is not None:
            vals = {k: _as_printed(shown, col, v) for k, v in vals.items()}
        if len(vals) < 2:
            out[col] = set()
            continue
        target = max(vals.values()) if hib else min(vals.values())
        out[col] = {k for k, v in vals.items() if v == target}
    return out


def _as_printed(shown: Callable[[str, float], str], col: str, v: float) -> float:
    """``v`` rounded as ``shown`` prints it (``v`` itself when the text is not a number)."""
    try:
        return float(shown(col, v).replace(",", "").removesuffix("%"))
    except ValueError:
        return v


def failure_groups(summary: MethodSummary) -> list[tuple[str, list[str]]]:
    """Failures of one method grouped by message: ``[(error, [image[/seed], …]), …]``."""
    groups: dict[str, list[str]] = {}
    for f in summary.failures:
        label = str(f["image"]) if f["seed"] is None else f"{f['image']} (seed {f['seed']})"
        groups.setdefault(str(f["error"]), []).append(label)
    return list(groups.items())
