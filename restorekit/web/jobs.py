"""The job queue: one job runs at a time, the rest wait their turn; each can be followed and cancelled.

A job's methods already use every core they are given (torch's threads), so running two jobs at
once would only make both slower and hold two jobs' memory: one worker thread takes jobs in order.
Progress comes from :mod:`restorekit.progress` (a method that reports its steps, as PULSE does,
shows them; every method shows its start). Cancelling a waiting job removes it; cancelling the
running one stops it at its next step (PULSE: the next optimisation step; another method: when
its current restore returns) — what was finished by then stays on the page.

A job holds what it works on (``Job.upload``: the upload's decoded pixels, given at submission) from
submission until it ends, so newer uploads pushing it out of the upload store cannot fail a job that
waits; at most ``max_waiting`` + 1 jobs hold one. A job cancelled while waiting leaves the line at
once (and lets its upload go), so submitting and cancelling over and over holds nothing.

A job that fails unexpectedly (a bug, a plugin's exception, a file that could not be written) shows
one line on the page and leaves its traceback on the server's stderr, for its operator; a failed
write's line names no path of the server's (:func:`restorekit.web.files.storage_error`).
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError

from ..errors import RestorekitError
from ..interfaces import Options
from ..plugins import failure_reason
from ..progress import Cancelled

Status = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED = ("done", "failed", "cancelled")


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # (pydantic reads JSON's true as 1: "scale": true ran ×1)
        raise ValueError("takes a number, not true or false")
    return value


#: A whole number of the request; JSON's true/false are refused, not read as 1/0.
Number = Annotated[int, BeforeValidator(_no_bool)]


class JobSettings(Options):
    """What the page asks for: which upload, which methods, how."""

    upload: str = Field(description="id of the upload")
    methods: list[str] = Field(min_length=1, description="methods to run, in order")
    scale: Number = Field(ge=1, description="output = scale × the LR input")
    faces: Literal["aligned", "crop", "detect"] = Field(
        "aligned", description="aligned: the image is an aligned face crop; crop: restore the largest face, "
                               "FFHQ-aligned (as restorekit demo); detect: every face, pasted back into the photo")
    degrade: bool = Field(False, description="the upload is a sharp (HR) image: make its LR here and score "
                                             "each output against it")
    degradation: str | None = Field(None, max_length=1000,  # degradations.MAX_SPEC_LENGTH
                                    description="degradation spec (default bicubic:SCALE)")
    seed: Number = Field(0, ge=0, le=2**31 - 1, description="seed of stochastic methods")
    samples: Number = Field(1, ge=1, description="samples per stochastic method")


def read_settings(payload: Any) -> JobSettings:
    """The page's JSON as :class:`JobSettings`; a bad field is one ``RestorekitError`` line naming it."""
    try:
        return JobSettings.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise RestorekitError(f"{where}: {first.get('msg', 'invalid')}") from None


class QueueFull(RestorekitError):
    """Too many jobs are waiting."""


@dataclass
class Job:
    """One request to restore an upload; its progress and results are read by the page while it runs."""

    id: str
    settings: JobSettings
    status: Status = "queued"
    stage: str = "waiting"
    step: tuple[int, int] | None = None
    units_done: int = 0
    units: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: What the job works on, held from submission until it ends (then None): the upload object.
    upload: Any = None
    #: When the job was submitted, started and ended, on the monotonic clock (``time.monotonic``):
    #: for how long it waited and ran, which a step of the system clock (NTP, a suspend) must not
    #: make negative or huge; not dates.
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    #: Held while ``result`` changes (the worker) or is copied (a request).
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, key: str, value: Any, *, append: bool = False) -> None:
        """Set ``result[key]`` (or append to the list there), where the page can see it."""
        with self.lock:
            if append:
                self.result.setdefault(key, []).append(value)
            else:
                self.result[key] = value

    def report(self, label: str, done: int, total: int) -> None:
        """A :mod:`restorekit.progress` reporter: records the step; raises ``Cancelled`` when asked to stop."""
        self.stage, self.step = label, (int(done), int(total))
        self.check_cancel()

    def check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise Cancelled("cancelled")


class JobQueue:
    """Jobs in arrival order, run one at a time by ``run(job)`` on a worker thread."""

    def __init__(self, run: Callable[[Job], None], *, max_waiting: int, keep: int,
                 forget: Callable[[Job], None] = lambda job: None) -> None:
        self._run = run
        self._forget = forget
        self.max_waiting = max_waiting
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: deque[Job] = deque()  # the jobs in line, in order (a cancelled one leaves it)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a job joined the line, or the queue closes
        self._closing = False
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._work, name="restorekit-serve-jobs", daemon=True)
        self._thread.start()

    def submit(self, settings: JobSettings, upload: Any = None) -> Job:
        """Put a job in line; ``upload``: what it works on, held by the job until it ends."""
        with self._lock:
            waiting = len(self._waiting)
            if waiting >= self.max_waiting:
                raise QueueFull(f"{waiting} jobs are already waiting; try again when one has finished")
            job = Job(secrets.token_hex(8), settings, upload=upload)
            self._jobs[job.id] = job
            self._trim()
            self._waiting.append(job)
            self._wake.notify()
        return job

    def waiting(self) -> int:
        """How many jobs wait in line (not the running one)."""
        with self._lock:
            return len(self._waiting)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many jobs run or wait before this one (0: it is running or finished)."""
        if job.status != "queued":
            return 0
        with self._lock:
            ahead = 0
            for other in self._jobs.values():
                if other is job:
                    break
                ahead += other.status in ("queued", "running")
            return ahead

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop; a waiting job is cancelled at once."""
        job = self.get(job_id)
        if job is None:
            return None
        job.cancel_requested.set()
        with self._lock:
            if job.status == "queued":
                job.status, job.stage, job.finished = "cancelled", "cancelled before it started", time.monotonic()
                job.upload = None
                try:
                    self._waiting.remove(job)
                except ValueError:  # the worker has just taken it: it sees the status and skips it
                    pass
                self._trim()
        return job

    def busy(self) -> bool:
        """Whether a job is running or waiting."""
        with self._lock:
            return any(job.status in ("queued", "running") for job in self._jobs.values())

    @property
    def worker_alive(self) -> bool:
        """Whether the worker is still inside a job (told by the worker itself: Python's own
        ``is_alive`` says False once a Ctrl-C has interrupted a ``join`` on it)."""
        return not self._ended.is_set()

    def close(self) -> None:
        """Stop the running job at its next step and end the worker."""
        with self._lock:
            for job in self._jobs.values():
                job.cancel_requested.set()
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout=30)

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in FINISHED]
        for job in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]
            self._forget(job)

    def _work(self) -> None:
        try:
            self._serve_jobs()
        finally:
            self._ended.set()

    def _serve_jobs(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._closing or bool(self._waiting))
                if self._closing:
                    return
                job = self._waiting.popleft()
                if job.status != "queued":  # cancelled while waiting
                    continue
                job.status, job.started, job.stage = "running", time.monotonic(), "starting"
            try:
                self._run(job)
                status: Status = "done"
            except Cancelled:
                status = "cancelled"
            except RestorekitError as exc:
                status, job.error = "failed", str(exc)
            except OSError as exc:  # a write or read of the server's own: the page is not told its paths
                from .files import storage_error

                _log_failure(job, exc)
                status, job.error = "failed", str(storage_error(exc))
            except Exception as exc:  # a bug must not stop the queue; the page says what happened
                _log_failure(job, exc)
                status, job.error = "failed", f"unexpected {type(exc).__name__}: {exc}"
            except BaseException as exc:  # sys.exit() in a plugin would end this thread: no job would run again
                _log_failure(job, exc)
                status, job.error = "failed", f"unexpected {failure_reason(exc)}"
            with self._lock:
                job.status, job.finished, job.step = status, time.monotonic(), None
                job.upload = None  # a finished job keeps its files and numbers, not the pixels
                job.stage = {"done": "done", "cancelled": "cancelled", "failed": "failed"}[status]
                self._trim()


def _log_failure(job: Job, exc: BaseException) -> None:
    """An unexpected failure of ``job`` with its traceback on the server's stderr (the page has one line)."""
    try:
        print(f"restorekit serve: job {job.id} failed unexpectedly:", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stderr must not stop the queue
        pass
