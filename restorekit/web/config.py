"""The settings of ``restorekit serve``: one pydantic model, safe by default."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, field_validator

from ..commands.serve import MAX_UPLOAD_MB  # the command's bound (kept there: the CLI loads no restorekit.web)
from ..devices import check_device
from ..errors import RestorekitError
from ..hosts import is_address, is_loopback
from ..interfaces import Options

#: What the page scores against the HR, as ``restorekit demo`` does (a metric whose weights are
#: missing is listed with the command that fixes it, never a number from random weights).
DEFAULT_METRICS = ("psnr_y_crop", "ssim_y_crop", "lpips_alex_v0.1", "identity_dlib", "identity_dlib_dist",
                   "lr_consistency")

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def check_host_name(value: str) -> str:
    """An ``--allow-host`` value as the ``Host`` check compares it: a bare host name (lower case,
    an international one as its ``xn--`` form, which is what browsers send) or an IP address
    (brackets around IPv6 dropped). Anything a ``Host`` header never holds as its host — a scheme,
    a port, a path, ``user@``, a wildcard — never matches a request, so it is refused
    (:class:`RestorekitError`, one line) rather than silently ignored."""
    raw = value if isinstance(value, str) else str(value)
    text = raw.strip()
    bracketed = text.startswith("[") and text.endswith("]")
    inner = text[1:-1] if bracketed else text
    if not any(ch in inner for ch in "[]") and is_address(inner) and (":" in inner or not bracketed):
        return inner.lower()
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        name = ""
    numeric_tld = bool(re.fullmatch(r"[0-9]+", name.rstrip(".").rsplit(".", 1)[-1])) if name else False
    if not name or len(name.rstrip(".")) > 253 or not _HOST_NAME.fullmatch(name) or numeric_tld:
        raise RestorekitError(f"--allow-host {raw!r}: not a bare host name or IP address (give the name alone, as "
                              "in the browser's address bar without http://, port or path: e.g. faces.example.org)")
    return name


class ServeConfig(Options):
    """Where the page listens, what it runs, and the limits it holds every request to."""

    host: str = Field("127.0.0.1", description="address to listen on (localhost only by default)")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="more names a request's Host may give (addresses and localhost need none)")
    port: int = Field(7860, ge=0, le=65535, description="port (0: any free port)")
    device: str = Field("auto", description="auto (CUDA when available, else the CPU), cpu, cuda (the current GPU) "
                                            "or cuda:N (GPU N)")
    methods: list[str] | None = Field(None, description="methods offered (None: every installed one)")
    method_options: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="options per method, as compare's --opt METHOD.KEY=VALUE")
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS),
                               description="metrics scored when the page degrades an HR upload")
    metrics_named: bool = Field(False, description="the operator named `metrics` (serve --metrics), even as the "
                                                   "default list: at ×1 a metric named is scored, lr_consistency too")
    detector: str | None = Field(None, description="face detector (None: the pipeline's default)")
    max_upload_mb: float = Field(20.0, gt=0, le=MAX_UPLOAD_MB, allow_inf_nan=False,
                                 description="largest upload accepted, in MB (10^6 bytes)")
    max_pixels: int = Field(16_000_000, ge=4, description="largest image accepted, in pixels")
    max_output_pixels: int = Field(64_000_000, ge=4,
                                   description="largest result one method may make (output × samples), in pixels")
    max_scale: int = Field(16, ge=1, le=64, description="largest --scale offered")
    max_samples: int = Field(8, ge=1, le=64, description="most samples per stochastic method")
    max_queue: int = Field(8, ge=1, description="jobs waiting at once; more are refused until one ends")
    keep_jobs: int = Field(16, ge=1, description="finished jobs whose files are kept (older ones are deleted)")
    keep_uploads: int = Field(16, ge=1, description="uploads kept in memory")
    temp_parent: Path | None = Field(None, description="where the server's temporary folder is made "
                                                       "(None: the system's temporary folder)")
    # Connections and slow clients (docs/serve.md, "Limits on connections"): generous for a slow real
    # link, but nothing a client does not send holds the server's connections or memory for long.
    max_connections: int = Field(64, ge=1, description="open connections at once; one more is answered 503 "
                                                       "(Retry-After) and closed")
    max_client_connections: int = Field(16, ge=1,
                                        description="open connections at once from one remote client (an IPv4 "
                                                    "address, an IPv6 /64); one more is answered 503 and closed. "
                                                    "This machine's own connections are not counted: its user, "
                                                    "or a reverse proxy speaking for many clients")
    header_timeout: float = Field(10.0, gt=0, allow_inf_nan=False,
                                  description="seconds a connection may take to send a request's headers (from "
                                              "connecting, or from the previous response); then it is closed")
    write_timeout: float = Field(30.0, gt=0, allow_inf_nan=False,
                                 description="seconds a response may wait for the client to read it (its send "
                                             "buffer full); then the connection is dropped")
    body_timeout: float = Field(10.0, gt=0, allow_inf_nan=False,
                                description="seconds a request body may pause, or fall behind body_min_rate_kb; "
                                            "then it is answered 408")
    body_min_rate_kb: float = Field(32.0, gt=0, allow_inf_nan=False,
                                    description="the slowest a request body may arrive on average, "
                                                "in KB/s (10^3 bytes)")
    body_max_time: float = Field(300.0, gt=0, allow_inf_nan=False,
                                 description="seconds a request body may take at most, however fast it comes (408)")
    max_concurrent_uploads: int = Field(2, ge=1, description="uploads decoded at once (bodies are read without "
                                                             "a turn); another waits upload_wait seconds for a "
                                                             "turn, then is answered 503")
    upload_wait: float = Field(30.0, ge=0, allow_inf_nan=False,
                               description="seconds a received upload waits for its turn to be decoded before it "
                                           "is answered 503")

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: object) -> str:
        """A ``--device`` value (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), as the command line checks it."""
        try:
            return check_device(value if isinstance(value, str) else str(value))
        except RestorekitError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        """Each name as :func:`check_host_name` gives it (one that can never match is refused)."""
        try:
            return [check_host_name(v) for v in value]
        except RestorekitError as exc:
            raise ValueError(str(exc)) from None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def loopback(self) -> bool:
        """Whether the server listens only on this machine."""
        return is_loopback(self.host)

    def host_names(self) -> set[str]:
        """The names (not addresses) a request's ``Host`` may give: the allowed ones and, unless the
        server listens on a loopback address, ``--host`` and this machine's own name. A web page that
        reaches the server through DNS rebinding sends its own name, which is none of these."""
        names = {n.strip("[]").lower() for n in self.allowed_hosts}
        if not self.loopback:
            names |= {self.host.strip("[]").lower(), socket.gethostname().lower()}
        return names
