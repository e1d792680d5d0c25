"""Running ``restorekit serve``: build everything once, listen, clean up.

:func:`build_state` loads every method and metric once (:class:`~restorekit.web.catalogue.Catalogue`)
and makes the server's temporary folder; :func:`serve_forever` (the command) and :func:`start`
(a background thread: tests, notebooks) listen on a socket bound here, so ``port=0`` gets a free
port whose number is known before the first request. Stopping cancels the running job at its next
step and deletes the temporary folder.

uvicorn runs with :func:`protocol_class`'s HTTP/1.1 protocol (its h11 one, with a connection cap and
a deadline for request headers), ``limit_concurrency`` (requests in flight) and without reading
``X-Forwarded-*`` headers (docs/serve.md, "Limits on connections").
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RestorekitError
from .catalogue import Catalogue
from .config import ServeConfig
from .files import FileStore, remove_stale_folders
from .jobs import JobQueue
from .uploads import UploadStore
from .work import Restorer, forget_job


#: Where torch keeps its compile cache. torch makes that folder as soon as ``torch._dynamo`` is
#: imported (torchvision imports it, and the LPIPS metric's set-up imports torchvision): unless told
#: otherwise, ``torchinductor_USER`` in the system's temporary folder, left there after the server stops.
TORCH_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def keep_torch_cache_in(root: Path) -> Callable[[], None]:
    """Point torch's compile cache into ``root`` (the server's own folder, deleted when it stops)
    unless ``TORCHINDUCTOR_CACHE_DIR`` is set already (the user's choice, kept); returns what puts
    the environment back. Only what imports ``torch._dynamo`` after this call follows it."""
    if TORCH_CACHE_ENV in os.environ:
        return lambda: None
    ours = str(root / "torchinductor")
    os.environ[TORCH_CACHE_ENV] = ours

    def put_back() -> None:
        if os.environ.get(TORCH_CACHE_ENV) == ours:
            del os.environ[TORCH_CACHE_ENV]

    return put_back


@dataclass
class ServeState:
    """Everything the routes use; one per server."""

    config: ServeConfig
    files: FileStore
    uploads: UploadStore
    catalogue: Catalogue
    restorer: Restorer
    queue: JobQueue
    #: Puts back what :func:`keep_torch_cache_in` changed (when the folder is deleted).
    put_back_env: Callable[[], None] = lambda: None

    def close(self, say: Callable[[str], None] | None = None) -> None:
        """Stop the job worker (the running job at its next step) and delete the temporary folder —
        also when a second Ctrl-C or a TERM cuts the wait for the job short (``say``: what the
        wait is for, shown before it)."""
        try:
            if say is not None and self.queue.busy():
                say("waiting for the running job to stop at its next step (Ctrl-C again: quit at once)")
            self.queue.close()
        finally:
            self.files.close()
            self.put_back_env()


def build_state(config: ServeConfig, log: Callable[[str], None] | None = None) -> ServeState:
    """Remove the folders that killed servers left (:func:`~restorekit.web.files.remove_stale_folders`,
    said in one line through ``log``); make the temporary folder, and point torch's compile cache into
    it (:func:`keep_torch_cache_in`); then load the methods, metrics and detectors once. The folder is
    deleted again, and the environment put back, when anything after it fails."""
    catalogue = Catalogue(config, log=log)  # unknown names: one line, before any folder is touched
    stale = remove_stale_folders(config.temp_parent)
    if stale and log is not None:
        log(f"removed {len(stale)} temporary folder(s) of photos left by servers that were killed "
            f"({', '.join(p.name for p in stale[:3])}{', …' if len(stale) > 3 else ''} in {stale[0].parent})")
    files = FileStore(config.temp_parent)
    put_back_env = keep_torch_cache_in(files.root)
    try:
        catalogue.load()
        uploads = UploadStore(files, max_bytes=config.max_upload_bytes, max_pixels=config.max_pixels,
                              keep=config.keep_uploads)
        restorer = Restorer(config, catalogue, files, uploads)
        queue = JobQueue(restorer.run, max_waiting=config.max_queue, keep=config.keep_jobs,
                         forget=lambda job: forget_job(files, job))
    except BaseException:
        files.close()
        put_back_env()
        raise
    return ServeState(config, files, uploads, catalogue, restorer, queue, put_back_env)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a port in use or a bad address is one line naming the fix."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RestorekitError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RestorekitError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port; "
                              "0 picks a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_key(peername: Any) -> str | None:
    """The client a connection counts against (:attr:`ServeConfig.max_client_connections`): its IPv4
    address, or its IPv6 /64 (one host's usual share); None for this machine's own connections —
    loopback peers (the user, or a reverse proxy speaking for many clients) and Unix sockets."""
    if not isinstance(peername, (tuple, list)) or not peername or not isinstance(peername[0], str):
        return None
    try:
        ip = ipaddress.ip_address(peername[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def protocol_class(config: ServeConfig) -> type:
    """uvicorn's h11 HTTP/1.1 protocol with two limits of the server's own:

    - at most ``config.max_connections`` connections at once: one more is answered ``503`` (JSON,
      ``Retry-After: 1``) as soon as it is accepted and closed, so a crowd of idle sockets holds
      neither file descriptors nor memory (uvicorn's ``limit_concurrency`` answers 503 only once a
      request's headers have come, and keeps the connection until then); and at most
      ``config.max_client_connections`` of them from one remote client (:func:`client_key`), so
      that one client cannot hold all of them;
    - a request's headers must have come ``config.header_timeout`` s after the connection was made
      or the previous response was sent, else the connection is closed (uvicorn's keep-alive timeout
      is cancelled by any byte, so a client sending one header byte now and then held a connection
      forever). The body has its own deadline (:func:`restorekit.web.app.read_body`); the rest of a
      body answered before it was read (a ``413``, an upload told to come back later) may go on
      coming while it comes at ``body_min_rate_kb``, for at most ``body_max_time`` s;
    - a response whose client stops reading (the send buffer full) for ``config.write_timeout`` s
      has its connection dropped, so a crowd of clients that ask and never read cannot hold the
      connection cap.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    # What is overridden or read here (uvicorn 0.29-0.55); another uvicorn without them gets its plain
    # protocol and a warning, not a server that fails on its first connection.
    needed = ("connection_made", "connection_lost", "data_received", "handle_events", "on_response_complete",
              "pause_writing", "resume_writing")
    if not all(callable(getattr(H11Protocol, name, None)) for name in needed):
        import sys

        print("warning: serve: this uvicorn's HTTP protocol lacks what the connection cap and header "
              "deadline use; they are off (limit_concurrency and the body deadline still hold)", file=sys.stderr)
        return H11Protocol

    from .app import SECURITY_HEADERS

    def refusal(message: str) -> bytes:
        """A 503 written before the connection is closed, with the headers of every other response
        (no framing, no MIME sniffing, the content security policy: :data:`~restorekit.web.app.SECURITY_HEADERS`)."""
        body = json.dumps({"error": message}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                (b"retry-after", b"1"), (b"cache-control", b"no-store"), *SECURITY_HEADERS, (b"connection", b"close")]
        return b"HTTP/1.1 503 Service Unavailable\r\n" + b"".join(b"%s: %s\r\n" % kv for kv in head) + b"\r\n" + body

    busy = refusal(f"the server is busy ({config.max_connections} connections at once); try again in a moment")
    client_busy = refusal(f"too many connections from your address ({config.max_client_connections} at once); "
                          "try again in a moment")
    max_connections, header_timeout = config.max_connections, config.header_timeout
    per_client = config.max_client_connections
    clients: Counter[str] = Counter()  # open connections per remote client, across this server's connections
    min_bytes = config.body_min_rate_kb * 1000.0 * header_timeout  # per deadline, of a body already answered
    body_max_time, write_timeout = config.body_max_time, config.write_timeout

    class LimitedH11Protocol(H11Protocol):  # type: ignore[misc]
        _deadline: Any = None
        _stall: Any = None  # armed while the client does not read what is sent (the send buffer full)
        _received = 0  # bytes received on this connection
        _mark = 0  # … when the deadline was armed
        _answered = 0.0  # when the last response was complete
        _client: str | None = None  # the remote client this connection counts against

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                return
            self._client = client_key(transport.get_extra_info("peername"))
            if self._client is not None:
                clients[self._client] += 1  # undone in connection_lost, which follows every close
                if clients[self._client] > per_client:
                    transport.write(client_busy)
                    transport.close()
                    return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._client is not None:
                clients[self._client] -= 1
                if clients[self._client] <= 0:
                    del clients[self._client]
                self._client = None
            self._disarm()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(write_timeout, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def _stalled(self) -> None:
            self._stall = None
            # A reset, not a close: abort() alone is a plain close() of the socket, and the kernel
            # then keeps the megabytes the client never read (FIN-WAIT-1) until it gives up. With
            # SO_LINGER (on, 0 s) the close drops them and tells the client the body was cut off.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

        def data_received(self, data: bytes) -> None:
            self._received += len(data)
            super().data_received(data)

        def _arm(self) -> None:
            self._disarm()
            self._mark = self._received
            self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # closed already, or a request runs (its body has read_body's deadline)
            if (self.conn.their_state is h11.SEND_BODY and self._received - self._mark >= min_bytes
                    and self.loop.time() - self._answered < body_max_time):
                self._arm()  # the rest of a body already answered still comes, fast enough: let it end
                return
            self.transport.close()  # no (complete) request: idle, or sending it too slowly

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request's headers came: its body has read_body's deadline

        def on_response_complete(self) -> None:
            self._answered = self.loop.time()
            self._arm()  # for the next request's headers (a pipelined one disarms it at once)
            super().on_response_complete()

    return LimitedH11Protocol


def _server(state: ServeState) -> Any:
    import uvicorn

    from .app import create_app

    cfg = state.config
    config = uvicorn.Config(create_app(state), log_level="warning", lifespan="off", access_log=False,
                            server_header=False, timeout_graceful_shutdown=5, http=protocol_class(cfg),
                            # requests in flight (a closed connection's request may still run): one more
                            # than the connections, so that every allowed connection is answered
                            limit_concurrency=cfg.max_connections + 1, backlog=128,
                            proxy_headers=False)  # X-Forwarded-* are not read (docs/serve.md)
    return uvicorn.Server(config)


def serve_forever(state: ServeState, sock: socket.socket, say: Callable[[str], None] | None = None) -> None:
    """Answer requests until Ctrl-C (or SIGTERM), then clean up (``say``: see :meth:`ServeState.close`)."""
    server = _server(state)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.close(say)


@dataclass
class RunningServer:
    """A server answering on a background thread: ``url``, and ``stop()``."""

    url: str
    state: ServeState
    _server: Any
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.state.close()


def start(config: ServeConfig, log: Callable[[str], None] | None = None) -> RunningServer:
    """Build the state and answer on a background thread; returns once the server listens."""
    state = build_state(config, log)
    try:
        sock = bind(config.host, config.port)
    except BaseException:
        state.close()
        raise
    server = _server(state)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="restorekit-serve", daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        thread.join(timeout=0.05)
        if not thread.is_alive():
            state.close()
            raise RestorekitError("the server stopped while starting")
    return RunningServer(url_of(sock), state, server, thread)
