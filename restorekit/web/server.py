"""Running ``restorekit serve``: build everything once, listen, clean up.

:func:`build_state` loads every method and metric once (:class:`~restorekit.web.catalogue.Catalogue`)
and makes the server's temporary folder; :func:`serve_forever` (the command) and :func:`start`
(a background thread: tests, notebooks) listen on a socket bound here, so ``port=0`` gets a free
port whose number is known before the first request. Stopping cancels the running job at its next
step and deletes the temporary folder.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RestorekitError
from .catalogue import Catalogue
from .config import ServeConfig
from .files import FileStore
from .jobs import JobQueue
from .uploads import UploadStore
from .work import Restorer, forget_job


@dataclass
class ServeState:
    """Everything the routes use; one per server."""

    config: ServeConfig
    files: FileStore
    uploads: UploadStore
    catalogue: Catalogue
    restorer: Restorer
    queue: JobQueue

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


def build_state(config: ServeConfig, log: Callable[[str], None] | None = None) -> ServeState:
    """Load the methods, metrics and detector once; make the temporary folder (deleted again when
    anything after it fails)."""
    catalogue = Catalogue(config, log=log)
    catalogue.load()
    files = FileStore(config.temp_parent)
    try:
        uploads = UploadStore(files, max_bytes=config.max_upload_bytes, max_pixels=config.max_pixels,
                              keep=config.keep_uploads)
        restorer = Restorer(config, catalogue, files, uploads)
        queue = JobQueue(restorer.run, max_waiting=config.max_queue, keep=config.keep_jobs,
                         forget=lambda job: forget_job(files, job))
    except BaseException:
        files.close()
        raise
    return ServeState(config, files, uploads, catalogue, restorer, queue)


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


def _server(state: ServeState) -> Any:
    import uvicorn

    from .app import create_app

    config = uvicorn.Config(create_app(state), log_level="warning", lifespan="off", access_log=False,
                            server_header=False, timeout_graceful_shutdown=5)
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
