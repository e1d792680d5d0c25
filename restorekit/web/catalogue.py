"""What the page can run here: every method, metric and the face detector, built once at start.

Each installed method is built and loaded once (:func:`restorekit.methods.build_method`, with the
server's ``--opt`` values) and kept for every job; one that cannot be built is listed with the
one-line reason the method and weights layer gives (weights missing and the command that gets
them, an option it refuses…) — shown on the page, never hidden or replaced by a stand-in.
Metrics are set up once by the harness (:func:`restorekit.harness.runner.setup_metrics`); a
metric whose weights are missing is listed as skipped with its fix.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import RestorekitError, is_stop
from ..harness.runner import MetricState, metric_device, metric_states, setup_metrics
from ..interfaces import FaceDetector, Method
from ..methods import build_method, check_output_size_contract, method_class, resolve_device
from ..options import OptionError
from ..plugins import failure_reason, registry
from .config import ServeConfig


@dataclass
class MethodEntry:
    """One method as the page lists it: what it is, and whether (or why not) it runs here."""

    name: str
    summary: str
    plugin: str
    license: str
    paper: str
    deterministic: bool
    one_sample_ignores_seed: bool
    input_kind: str
    scales: list[int] | None
    task: str = "super-resolution"
    method: Method | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.method is not None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "plugin": self.plugin, "license": self.license,
                "paper": self.paper, "deterministic": self.deterministic,
                "stochastic": not self.one_sample_ignores_seed or not self.deterministic,
                "input_kind": self.input_kind, "task": self.task, "scales": self.scales,
                "available": self.available,
                "reason": self.reason, "notes": self.notes}


class Catalogue:
    """Methods, metrics and the detector, built once; ``lock`` serialises their building and their
    use (one job at a time: a method's ``restore`` is never called from two threads at once)."""

    def __init__(self, config: ServeConfig, log: Any = None) -> None:
        self.config = config
        self.device: torch.device = resolve_device(config.device)
        self.lock = threading.Lock()
        self._log = log or (lambda msg: None)
        self.methods: dict[str, MethodEntry] = {}
        reg = registry()
        names = config.methods if config.methods is not None else reg.names("methods")
        unknown = [n for n in config.method_options if n not in names]
        if unknown:
            raise RestorekitError(f"--opt names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                                  "not offered (--methods)")
        for name in names:
            cls = method_class(name)  # unknown names: one line with a did-you-mean
            i = cls.info
            self.methods[name] = MethodEntry(
                name, i.summary, reg.owner["methods"][name], i.license, i.paper, i.deterministic,
                i.one_sample_ignores_seed, i.input_kind, list(i.scales) if i.scales is not None else None, i.task)
        self.metrics: list[MetricState] = metric_states(config.metrics, reg)
        #: Installed plugins that could not load: their methods are missing from the list, so say why.
        self.broken_plugins = [{"name": name, "distribution": rec.distribution, "status": rec.status}
                               for name, rec in sorted(reg.plugins.items()) if rec.status.startswith("broken")]
        self.detector_name = config.detector or _default_detector()
        #: Finds every face (*a photo, every face*), as ``run --faces detect``; None: ``detector_reason``.
        self.detector: FaceDetector | None = None
        #: Finds the largest face (*a photo, largest face*), as ``restorekit demo``; set with ``detector``.
        self.crop_detector: FaceDetector | None = None
        self.detector_reason: str | None = None

    def load(self) -> None:
        """Build every method, set up the metrics and the detector (once; failures become reasons).

        Holds ``lock``, as a job does: a build puts back the process-wide state it changes
        (:func:`~restorekit.plugins.kept_global_state`), which would also undo a running job's."""
        with self.lock:
            self._load()

    def _load(self) -> None:
        for entry in self.methods.values():
            self._log(f"loading {entry.name} …")
            try:
                method = build_method(entry.name, dict(self.config.method_options.get(entry.name, {})),
                                      str(self.device))
                check_output_size_contract(method)  # the page shows and scores scale × the input
                entry.method = method
                entry.notes = [str(n) for n in getattr(entry.method, "notes", [])]
            except (RestorekitError, OptionError) as exc:
                entry.reason = str(exc)
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the page down (Ctrl-C does)
                if is_stop(exc):  # SIGTERM while a method loads: the server stops (it kept running)
                    raise
                entry.reason = f"could not load {entry.name}: {failure_reason(exc)}"
        setup_metrics(self.metrics, metric_device(self.device))
        try:
            from ..faces.detectors import check_available
            from ..faces.pipeline import DEFAULT_MIN_FACE, build_detector, largest_face_detector

            check_available(self.detector_name)
            # Every face: the pyramid `run --faces detect` searches (its default --min-face), so the
            # page finds the same faces at the same places. The largest face: the demo's detector.
            detector = build_detector(self.detector_name, min_face=DEFAULT_MIN_FACE)
            self.crop_detector = largest_face_detector(self.detector_name)
            self.detector = detector
        except RestorekitError as exc:
            self.detector_reason = str(exc)
        except (Exception, SystemExit) as exc:
            if is_stop(exc):
                raise
            self.detector_reason = f"face detector '{self.detector_name}': {failure_reason(exc)}"

    def entry(self, name: str) -> MethodEntry:
        found = self.methods.get(name)
        if found is None:
            from ..plugins import suggest

            raise RestorekitError(f"unknown method '{name}'{suggest(name, list(self.methods))}")
        return found

    def public(self) -> dict[str, Any]:
        """What the page lists: methods (with reasons), metrics (with skip reasons), detector."""
        return {
            "methods": [e.public() for e in self.methods.values()],
            "metrics": [{"name": m.name, "higher_is_better": m.higher_is_better,
                         "summary": str(getattr(m.cls, "summary", "") or ""), "status": m.status,
                         "reason": m.reason} for m in self.metrics],
            "detector": {"name": self.detector_name, "available": self.detector is not None,
                         "reason": self.detector_reason},
            "device": str(self.device),
            "broken_plugins": list(self.broken_plugins),
        }


def _default_detector() -> str:
    from ..faces.detectors import DEFAULT_DETECTOR

    return DEFAULT_DETECTOR
