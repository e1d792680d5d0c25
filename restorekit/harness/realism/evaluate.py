"""Realism of a generator without FID: Fréchet distances in offline feature spaces + face share.

:func:`evaluate_generator` samples a :class:`~restorekit.interfaces.Generator` deterministically
(``z`` for sample ``i`` is row ``i`` of one ``randn(n, z_dim)`` drawn with ``seed`` on the CPU, so
batch size and device do not change the samples; truncation towards ``mean_latent()``; constant
noise), computes each space's feature statistics and their Fréchet distance to the reference
statistics, and counts the samples in which a registered face detector finds a face.
:func:`evaluate_images` does the same for a second set of images (real-vs-real floors,
degraded copies).

Reference statistics of a file set can be cached (:func:`reference_statistics`): one ``.npz`` per
space, keyed by the space's identity (name, preprocessing, weights hash, restorekit's code) and
the sha256 of every file's bytes (order-independent), so a trainer compares snapshots without
re-reading the data.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import stat
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import RestorekitError
from ...interfaces import Generator
from .frechet import FeatureStats, StatsAccumulator, frechet_distance
from .spaces import DEFAULT_SPACES, FeatureSpace, build_space, canonical_space

__all__ = [
    "NOT_FID_NOTE", "SpaceFigure", "FaceShare", "RealismReport", "feature_statistics",
    "multi_statistics", "image_batches", "generator_latents", "generator_batches", "reference_key", "file_digests",
    "reference_statistics", "save_statistics", "load_statistics", "face_share",
    "evaluate_generator", "evaluate_images", "default_cache_dir", "generator_provenance", "latent_avg_sha256",
]

NOT_FID_NOTE = ("These are Fréchet distances in the feature spaces of other networks (named per row), "
                "NOT FID: FID's Inception weights are not available offline. They are not comparable "
                "with published FIDs, only with each other at the same sample count, reference set and "
                "--seed (the seed alone moves them by several per cent at 1000 samples).")

ImageSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
ReferenceArg = Mapping[str, FeatureStats] | ImageSource
SpaceArg = str | FeatureSpace


@dataclass(frozen=True)
class SpaceFigure:
    """One space's Fréchet distance between samples and reference (lower is more realistic)."""

    space: str
    metric: str
    distance: float
    n_samples: int
    n_reference: int
    dim: int
    summary: str


@dataclass(frozen=True)
class FaceShare:
    """How many of ``n`` samples (drawn at ``truncation``) a face detector found a face in."""

    detector: str
    n: int
    found: int
    truncation: float | None

    @property
    def share(self) -> float:
        return self.found / self.n if self.n else math.nan


@dataclass(frozen=True)
class RealismReport:
    """What :func:`evaluate_generator` / :func:`evaluate_images` measured."""

    source: str
    reference: str
    figures: tuple[SpaceFigure, ...]
    truncation: float | None
    seed: int | None
    faces: FaceShare | None = None
    seconds: float = 0.0
    note: str = field(default=NOT_FID_NOTE)
    skipped: tuple[str, ...] = ()  # one line per image file left out (unreadable)
    #: Which generator made the samples (None for an image set): name, weights as asked for,
    #: the sha256 of its loaded state and of its truncation centre, its options and its notes
    #: (which weights were loaded).
    generator: Mapping[str, Any] | None = None

    def distance(self, space: str) -> float:
        """The Fréchet distance of one space (name or alias)."""
        key = canonical_space(space)
        for f in self.figures:
            if f.space == key:
                return f.distance
        raise KeyError(f"no figure for space '{key}' in this report")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["generator"] = None if self.generator is None else dict(self.generator)
        d["figures"] = [asdict(f) for f in self.figures]
        if self.faces is not None:
            d["faces"] = {**asdict(self.faces), "share": self.faces.share}
        d["not_fid"] = True
        return d


# --------------------------------------------------------------------------------------------
# Statistics


def _check_batch(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected N×3×H×W image batches, got {shape}")
    return images


def multi_statistics(images: Iterable[Tensor], spaces: Sequence[FeatureSpace],
                     on_batch: Callable[[Tensor], None] | None = None) -> dict[str, FeatureStats]:
    """Statistics of ``images`` (an iterable of ``N×3×H×W`` batches in [0, 1]) in every space,
    in one pass over the images; ``on_batch`` sees each batch too."""
    accs, _ = _accumulate(images, spaces, on_batch)
    return {name: acc.stats() for name, acc in accs.items()}


def _accumulate(images: Iterable[Tensor], spaces: Sequence[FeatureSpace],
                on_batch: Callable[[Tensor], None] | None = None) -> tuple[dict[str, StatsAccumulator], int]:
    """Every space's running statistics of ``images``, and the number of images seen."""
    accs = {s.name: StatsAccumulator() for s in spaces}
    n = 0
    for batch in images:
        _check_batch(batch)
        for s in spaces:
            accs[s.name].add(s.features(batch))
        n += int(batch.shape[0])
        if on_batch is not None:
            on_batch(batch)
    return accs, n


def feature_statistics(images: Iterable[Tensor], space: FeatureSpace) -> FeatureStats:
    """``(mu, sigma, n)`` of ``images`` (``N×3×H×W`` batches in [0, 1]) in ``space`` (float64)."""
    return multi_statistics(images, [space])[space.name]


def _paths(source: ImageSource) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        from ...images import list_inputs

        return [item.path for item in list_inputs(source)]
    return [Path(p) for p in source]


def _named(source: ImageSource) -> str:
    """``"SPEC: "`` for a message about an image set given by a spec (folder, glob, ``@list.txt``);
    ``""`` for a list of paths."""
    return f"{source}: " if isinstance(source, (str, os.PathLike)) else ""


def image_batches(paths: Sequence[str | os.PathLike[str]], batch_size: int = 64,
                  skipped: list[str] | None = None, skipped_paths: list[str] | None = None) -> Iterator[Tensor]:
    """Read image files into batches (consecutive files of one size share a batch). With
    ``skipped``, a file that cannot be read is left out and its one-line error appended there
    (one bad image does not stop a statistic over thousands), and its path to ``skipped_paths``
    when given; without, the error is raised."""
    from ...errors import ImageError
    from ...images import read_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pending: list[Tensor] = []
    for p in paths:
        try:
            img = read_image(p)
        except ImageError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
            if skipped_paths is not None:
                skipped_paths.append(str(p))
            continue
        if pending and (img.shape[-2:] != pending[0].shape[-2:] or len(pending) == batch_size):
            yield torch.cat(pending)
            pending = []
        pending.append(img)
    if pending:
        yield torch.cat(pending)


def _file_statistics(paths: Sequence[Path], spaces: Sequence[FeatureSpace], batch_size: int,
                     skipped: list[str] | None, what: str, source: ImageSource,
                     on_batch: Callable[[Tensor], None] | None = None,
                     skipped_paths: list[str] | None = None) -> dict[str, FeatureStats]:
    """:func:`multi_statistics` of image files, files that cannot be read left out into ``skipped``
    (raised without it; their paths into ``skipped_paths``); fewer than the 2 readable images a
    covariance needs is a :class:`RestorekitError` naming the set and the files left out, not a
    bare ``ValueError``."""
    left_out: list[str] = []
    try:
        accs, n = _accumulate(image_batches(paths, batch_size, left_out if skipped is not None else None,
                                            skipped_paths), spaces, on_batch)
    finally:
        if skipped is not None:
            skipped.extend(left_out)
    if n < 2:
        shown = "; ".join(left_out[:3]) + (f"; and {len(left_out) - 3} more" if len(left_out) > 3 else "")
        raise RestorekitError(f"{_named(source)}{what} needs at least 2 readable images, got {n} of {len(paths)}"
                              + (f" (left out: {shown})" if left_out else ""))
    return {name: acc.stats() for name, acc in accs.items()}


def _device_of(module: torch.nn.Module) -> torch.device:
    """Where a module's first parameter (else buffer) lives; CPU for a module with neither."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def generator_latents(generator: Generator, n: int, seed: int) -> Tensor:
    """The ``n×z_dim`` normal noise of :func:`generator_batches` (one CPU draw with ``seed``, as
    :func:`~restorekit.seeds.torch_seed` hands it on: seeds 2**32 apart draw other noise)."""
    from ...seeds import torch_seed

    return torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(torch_seed(seed)))


def generator_batches(generator: Generator, n: int, *, truncation: float = 1.0, seed: int = 0,
                      batch_size: int = 32, first_of: int | None = None) -> Iterator[Tensor]:
    """``n`` samples of ``generator`` in batches (in [0, 1], on the generator's device), the
    same for every batch size: truncated towards ``mean_latent()``, constant noise. ``first_of``:
    the first ``n`` of the latents a draw of that many makes (torch's CPU normal draw of fewer is
    not its start where the count is not a multiple of 16: the face share's samples are the first
    of the Fréchet ones)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n ≥ 1 and batch_size ≥ 1, got n={n}, batch_size={batch_size}")
    device = _device_of(generator)
    z_all = generator_latents(generator, max(n, first_of or 0), seed)[:n]
    with torch.no_grad():
        center = generator.mean_latent().to(device) if truncation != 1.0 else None
    for i in range(0, n, batch_size):
        # Grad mode is restored before each yield: the consumer's code never runs under no_grad.
        with torch.no_grad():
            w = generator.map(z_all[i:i + batch_size].to(device))
            if center is not None:
                w = center + truncation * (w - center)
            w_plus = w.unsqueeze(1).expand(-1, generator.n_styles, -1)
            images = generator.synthesize(w_plus, noise_mode="const").float().clamp(0, 1)
        yield images


# --------------------------------------------------------------------------------------------
# Reference statistics and their cache


def default_cache_dir() -> Path:
    """``<restorekit cache>/realism`` (``$RESTOREKIT_HOME`` when set)."""
    from ...weights import cache_dir

    return cache_dir() / "realism"


def file_digests(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The sorted sha256 of every file's bytes (read in chunks): a reference set's content, hashed
    once for all the spaces of a run. A path that is no regular file to read (missing, a dangling
    link, a FIFO or a device: listed so that reading it fails with its own line) stands as its name
    and what it is — never read: a FIFO's read waits for a writer, a device's never ends."""
    return sorted(_content_digest(Path(p)) for p in paths)


def _content_digest(p: Path) -> str:
    from ...safe_open import NotRegularFile, open_regular
    from ...weights.checksum import sha256_fd

    try:
        fd = open_regular(p)
    except NotRegularFile as exc:
        return f"not a regular file {stat.S_IFMT(exc.mode):o}: {p}"
    except OSError as exc:
        return f"unreadable {exc.errno}: {p}"
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def reference_key(paths: Sequence[str | os.PathLike[str]], space: FeatureSpace, *,
                  digests: Sequence[str] | None = None) -> str:
    """sha256 of the space's identity and the sorted sha256 of every file's bytes (``digests``:
    :func:`file_digests` of ``paths``, when already computed)."""
    h = hashlib.sha256(space.identity.encode())
    for d in file_digests(paths) if digests is None else digests:
        h.update(d.encode())
    return h.hexdigest()


def save_statistics(path: str | os.PathLike[str], stats: FeatureStats, *, space: str = "",
                    key: str = "", skipped: Sequence[str] = (),
                    skipped_files: Sequence[tuple[str, str]] = ()) -> Path:
    """Write statistics to an ``.npz`` (atomically; no pickles). ``skipped``: the one-line errors of
    the files left out of them (unreadable), replayed when the statistics are read from a cache;
    ``skipped_files``: each one's ``(path, content digest)``, so that a replay names the file of
    the set read then (the cache is keyed by content: another folder of the same files hits it)."""
    from ...images import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), space=np.str_(space), key=np.str_(key),
             skipped=np.array([str(x) for x in skipped], dtype=np.str_),
             skipped_paths=np.array([str(p) for p, _ in skipped_files], dtype=np.str_),
             skipped_digests=np.array([str(d) for _, d in skipped_files], dtype=np.str_))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, buf.getvalue())
    return p


def load_statistics(path: str | os.PathLike[str], *, key: str | None = None) -> FeatureStats:
    """Read statistics written by :func:`save_statistics`; with ``key``, it must match."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            stats = FeatureStats(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), n=int(z["n"]))
            found = str(z["key"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # cut short, foreign
        raise RestorekitError(f"{path}: not a realism statistics file ({exc})") from None
    if key is not None and found != key:
        raise RestorekitError(f"{path}: statistics of another reference set or network")
    return stats


def _cached_skipped(path: str | os.PathLike[str]) -> list[tuple[str, str, str]] | None:
    """``(line, path, digest)`` of each file a cached statistics file recorded as left out; None for
    a file written before they were recorded (its figures may leave out files nobody would be told
    of), or before their paths and digests were (its lines would name another set's files)."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            if "skipped" not in z.files:
                return None
            lines = [str(x) for x in z["skipped"].tolist()]
            if not lines:
                return []
            if "skipped_paths" not in z.files or "skipped_digests" not in z.files:
                return None
            paths = [str(x) for x in z["skipped_paths"].tolist()]
            digests = [str(x) for x in z["skipped_digests"].tolist()]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return list(zip(lines, paths, digests)) if len(paths) == len(digests) == len(lines) else None


def _renamed(left_out: Sequence[tuple[str, str, str]], own: Sequence[tuple[Path, str]]) -> list[str]:
    """The cached left-out lines, each naming the file of the set read now with the content of the
    one it was recorded for (``own``: each current path and its digest; files of equal content
    taken in order), not a file of the folder that filled the cache."""
    free: dict[str, list[str]] = {}
    for p, d in own:
        free.setdefault(d, []).append(str(p))
    out = []
    for line, old, digest in left_out:
        now = free.get(digest)
        new = now.pop(0) if now else old
        out.append(new + line[len(old):] if line.startswith(old) else line.replace(old, new))
    return out


def reference_statistics(source: ImageSource, spaces: Sequence[FeatureSpace], *, batch_size: int = 64,
                         cache_dir: str | os.PathLike[str] | None = None,
                         skipped: list[str] | None = None) -> dict[str, FeatureStats]:
    """Statistics of the image files ``source`` (a folder, glob, ``@list.txt`` or a list of
    paths) in each space; with ``cache_dir``, read from / written to ``<space>-<key>.npz``.
    ``skipped``: as :func:`image_batches`; the files left out are recorded in the cache and their
    lines replayed from it, so a cached run reports (and fails on) them as the first one did."""
    paths = _paths(source)
    if len(paths) < 2:
        raise RestorekitError(f"{_named(source)}the reference set needs at least 2 images, got {len(paths)}")
    out: dict[str, FeatureStats] = {}
    todo: list[FeatureSpace] = []
    keys: dict[str, str] = {}
    replay: list[str] | None = None
    own = [(p, _content_digest(p)) for p in paths] if cache_dir is not None else []
    digests = sorted(d for _, d in own) if cache_dir is not None else None
    for s in spaces:
        if cache_dir is None:
            todo.append(s)
            continue
        keys[s.name] = reference_key(paths, s, digests=digests)
        f = Path(cache_dir) / f"{s.name}-{keys[s.name][:24]}.npz"
        if f.is_file():
            try:
                stats = load_statistics(f, key=keys[s.name])
                lines = _cached_skipped(f)
                if lines is not None:  # else written before the left-out files were recorded
                    out[s.name] = stats
                    replay = _renamed(lines, own) if replay is None else replay
                    continue
            except RestorekitError:
                pass  # unreadable or stale: recompute and overwrite
        todo.append(s)
    if todo:
        left_out: list[str] = []
        left_paths: list[str] = []
        computed = _file_statistics(paths, todo, batch_size, left_out if skipped is not None else None,
                                    "the reference set", source, skipped_paths=left_paths)
        digest_of = {str(p): d for p, d in own}
        files = [(p, digest_of.get(p, "")) for p in left_paths]
        for s in todo:
            out[s.name] = computed[s.name]
            if cache_dir is not None:
                _cache_statistics(Path(cache_dir) / f"{s.name}-{keys[s.name][:24]}.npz", computed[s.name],
                                  space=s.identity, key=keys[s.name], skipped=left_out, skipped_files=files)
        replay = left_out
    if replay:
        if skipped is None:  # a caller that lets no file be left out: as image_batches would have raised
            raise RestorekitError(replay[0])
        skipped.extend(replay)
    return out


def _cache_statistics(path: Path, stats: FeatureStats, *, space: str, key: str, skipped: Sequence[str] = (),
                      skipped_files: Sequence[tuple[str, str]] = ()) -> None:
    """:func:`save_statistics` into the cache; a cache that cannot be written (read-only, full)
    costs the next run the computation again, not this run its figures: one warning line."""
    try:
        save_statistics(path, stats, space=space, key=key, skipped=skipped, skipped_files=skipped_files)
    except (OSError, RestorekitError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"warning: the reference statistics could not be cached at {path} ({reason}); the figures "
              "stand, and the next run computes them again (--cache DIR chooses another folder, --cache none "
              "skips caching)", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Face detection share


def face_share(images: Iterable[Tensor], detector: str, *, device: str | torch.device = "cpu",
               truncation: float | None = None) -> FaceShare:
    """Count the images in which the registered face ``detector`` finds at least one face.

    The detector runs on the CPU, as in the face pipeline, whatever ``device`` (kept for callers
    that pass the feature networks' device) says."""
    from ...faces.pipeline import build_detector

    det = build_detector(detector)  # on the CPU, where the face pipeline runs detectors
    n = found = 0
    for batch in images:
        for img in _check_batch(batch):
            n += 1
            found += bool(det.detect(img.detach().float().cpu()))
    return FaceShare(detector=detector, n=n, found=found, truncation=truncation)


# --------------------------------------------------------------------------------------------
# Evaluation


def _build_spaces(spaces: Sequence[SpaceArg], device: torch.device) -> list[FeatureSpace]:
    built: list[FeatureSpace] = []
    for s in spaces:
        built.append(s if isinstance(s, FeatureSpace) else build_space(s, device=device))
    names = [s.name for s in built]
    if len(set(names)) != len(names):
        raise ValueError(f"a feature space is listed twice: {', '.join(names)}")
    if not built:
        raise ValueError("no feature space given")
    return built


def _reference(reference: ReferenceArg, spaces: Sequence[FeatureSpace], batch_size: int,
               cache_dir: str | os.PathLike[str] | None,
               skipped: list[str] | None = None) -> tuple[dict[str, FeatureStats], str]:
    if isinstance(reference, Mapping):
        missing = [s.name for s in spaces if s.name not in reference]
        if missing:
            raise RestorekitError(f"the reference statistics lack the space(s) {', '.join(missing)}")
        return {s.name: reference[s.name] for s in spaces}, "precomputed statistics"
    label = str(reference) if isinstance(reference, (str, os.PathLike)) else f"{len(reference)} files"
    return reference_statistics(reference, spaces, batch_size=batch_size, cache_dir=cache_dir,
                                skipped=skipped), label


def _figures(samples: Mapping[str, FeatureStats], ref: Mapping[str, FeatureStats],
             spaces: Sequence[FeatureSpace]) -> tuple[SpaceFigure, ...]:
    out = []
    for s in spaces:
        a, b = samples[s.name], ref[s.name]
        out.append(SpaceFigure(space=s.name, metric=f"frechet_{s.name}",
                               distance=frechet_distance(a.mu, a.sigma, b.mu, b.sigma),
                               n_samples=a.n, n_reference=b.n, dim=s.dim, summary=s.summary))
    return tuple(out)


def evaluate_generator(generator: Generator, reference: ReferenceArg, *, n_samples: int = 1000,
                       truncation: float = 1.0, seed: int = 0,
                       spaces: Sequence[SpaceArg] = DEFAULT_SPACES, batch_size: int = 32,
                       device: str | torch.device | None = None, detector: str | None = None,
                       detect_n: int = 32, detect_truncation: float | None = 0.7,
                       cache_dir: str | os.PathLike[str] | None = None,
                       label: str = "generator", provenance: Mapping[str, Any] | None = None) -> RealismReport:
    """Fréchet distances between ``n_samples`` samples of ``generator`` and ``reference``.

    ``reference``: statistics per space (e.g. from :func:`reference_statistics`) or image files.
    ``spaces``: names (built on ``device`` from the weights cache) or built spaces.
    ``device``: where the feature networks run (default: the generator's device; the generator
    is not moved). With ``detector``, the first ``detect_n`` samples of the same seed, drawn at
    ``detect_truncation`` (``None``: ``truncation``), are searched for faces. ``provenance``: what
    says which generator this is (the report's ``generator``; :func:`generator_provenance`).
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples}")
    t0 = time.perf_counter()
    gen_device = _device_of(generator)
    dev = torch.device(device) if device is not None else gen_device
    built = _build_spaces(spaces, dev)
    skipped: list[str] = []
    ref, ref_label = _reference(reference, built, batch_size, cache_dir, skipped)
    samples = multi_statistics(generator_batches(generator, n_samples, truncation=truncation, seed=seed,
                                                 batch_size=batch_size), built)
    faces = None
    if detector is not None:
        t = truncation if detect_truncation is None else detect_truncation
        faces = face_share(generator_batches(generator, detect_n, truncation=t, seed=seed, batch_size=batch_size,
                                             first_of=n_samples), detector, device=dev, truncation=t)
    return RealismReport(source=label, reference=ref_label, figures=_figures(samples, ref, built),
                         truncation=truncation, seed=seed, faces=faces,
                         seconds=round(time.perf_counter() - t0, 3), skipped=tuple(skipped),
                         generator=None if provenance is None else dict(provenance))


def generator_provenance(name: str, generator: Any, *, weights: str | None = None,
                         options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Which generator a report is about, as ``generate`` records it: the registered ``name``,
    ``weights`` as asked for (None: the factory's default, which ``notes`` name), the sha256 of
    its loaded state (two runs of the same name with other weights differ there) and of its
    truncation centre (:func:`latent_avg_sha256`), its options (``--opt``) and its ``notes``."""
    sha = None
    if isinstance(generator, torch.nn.Module):
        from ...onnx_export import state_sha256

        sha = state_sha256(generator)
    return {"name": name, "weights": weights, "weights_state_sha256": sha,
            "latent_avg_sha256": latent_avg_sha256(generator), "options": dict(options or {}),
            "notes": [str(n) for n in getattr(generator, "notes", [])]}


def latent_avg_sha256(generator: Any) -> str | None:
    """sha256 of the bytes of a generator's ``latent_avg`` (the truncation centre a checkpoint
    brings), or None when it has none: a non-persistent buffer, so the state's sha256 leaves it
    out, though two files of the same weights with and without it draw other truncated images."""
    from ...onnx_export import tensor_bytes

    t = getattr(generator, "latent_avg", None)
    if not isinstance(t, Tensor) or not t.numel():
        return None
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def evaluate_images(images: ImageSource, reference: ReferenceArg, *,
                    spaces: Sequence[SpaceArg] = DEFAULT_SPACES, batch_size: int = 64,
                    device: str | torch.device = "cpu", detector: str | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> RealismReport:
    """The same figures for a set of image files instead of a generator (e.g. real vs real)."""
    t0 = time.perf_counter()
    built = _build_spaces(spaces, torch.device(device))
    skipped: list[str] = []
    ref, ref_label = _reference(reference, built, batch_size, cache_dir, skipped)
    paths = _paths(images)
    if len(paths) < 2:
        raise RestorekitError(f"{_named(images)}the image set needs at least 2 images, got {len(paths)}")
    faces = None
    if detector is None:
        samples = _file_statistics(paths, built, batch_size, skipped, "the image set", images)
    else:
        from ...faces.pipeline import build_detector

        det = build_detector(detector)  # on the CPU, where the face pipeline runs detectors
        counts = [0, 0]

        def count(batch: Tensor) -> None:
            for img in batch:
                counts[0] += 1
                counts[1] += bool(det.detect(img.float().cpu()))

        samples = _file_statistics(paths, built, batch_size, skipped, "the image set", images, on_batch=count)
        faces = FaceShare(detector=detector, n=counts[0], found=counts[1], truncation=None)
    label = str(images) if isinstance(images, (str, os.PathLike)) else f"{len(paths)} files"
    return RealismReport(source=label, reference=ref_label, figures=_figures(samples, ref, built),
                         truncation=None, seed=None, faces=faces, seconds=round(time.perf_counter() - t0, 3),
                         skipped=tuple(skipped))
