"""The HTTP side of ``restorekit serve``: one page, a small JSON API, files by opaque id.

Routes (nothing else answers):

- ``GET /``, ``GET /static/app.js``, ``GET /static/style.css``: the page (package files, by fixed name).
- ``GET /api/info``: methods (with the reason those that cannot run here cannot), metrics, limits,
  and the installed plugins that did not load (``broken_plugins``, with their status).
- ``POST /api/uploads``: the image as the raw request body (its name in ``X-Filename``), at most
  ``max_upload_mb``; decoded in memory. ``POST /api/uploads/sample``: the astronaut photo.
- ``POST /api/jobs`` (JSON :class:`~restorekit.web.jobs.JobSettings`), ``GET /api/jobs/ID``,
  ``POST /api/jobs/ID/cancel``.
- ``GET /files/ID``: a file the server wrote, by the opaque id the API gave (``?download=1``: as
  an attachment).

The page, its script and the API name every URL relative to the page (``api/jobs``,
``files/ID``), so a reverse proxy may serve it under a path it strips (docs/serve.md).

Guards on every request: the ``Host`` header must name this server (listening on a loopback
address: a loopback address or ``localhost``; listening beyond: any address, ``--host`` or the
machine's name; either way the ``--allow-host`` names), so a web page elsewhere cannot reach it
through DNS rebinding; a request that changes something must not come from another origin (its
``Origin``, if sent, is ``http://`` or ``https://`` and the request's ``Host``: see :func:`same_origin`); and
every response forbids framing, MIME sniffing and resources from elsewhere. Every refusal is JSON ``{"error": "one line"}``.

Limits on what a request may hold (docs/serve.md, "Limits on connections"): a body must keep coming
(:func:`read_body`: ``408`` otherwise), at most ``max_concurrent_uploads`` uploads are decoded at
once (``503`` with ``Retry-After`` when no turn comes within ``upload_wait`` s; bodies are read
without a turn, so a slow sender blocks nobody else), files are
streamed from disk, and a client that goes away mid-upload is dropped without a word in the log.
The connection cap and the header deadline are the server's (:func:`restorekit.web.server.protocol_class`).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import RestorekitError
from ..hosts import is_address, is_loopback
from .jobs import FINISHED, Job, read_settings
from .uploads import display_name

#: The page's own files, by the only names a request may ask for.
STATIC = {"app.js": "application/javascript", "style.css": "text/css"}
#: A job request is a small JSON object.
MAX_JSON_BYTES = 64_000

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]


#: Seconds a client is told to wait (``Retry-After``) when the job queue, or the upload slots, are full.
RETRY_QUEUE_FULL = 5
RETRY_UPLOADS_BUSY = 2
#: The size of the pieces a file is sent in.
FILE_CHUNK = 64 * 1024


def error(msg: str, status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def status_for(exc: RestorekitError) -> int:
    """The status a refused upload is answered with: the server's own storage failing is not the
    request's fault (507 disk full, else 500: :class:`~restorekit.web.files.StorageError`); anything
    else about the upload is a 400."""
    from .files import StorageError

    return exc.status if isinstance(exc, StorageError) else 400


def guard_options(config: Any) -> dict[str, Any]:
    """The :class:`Guard`'s settings for a server's :class:`~restorekit.web.config.ServeConfig`."""
    return {"local_only": config.loopback, "names": config.host_names()}


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without port or IPv6 brackets (``[::1]:80`` → ``::1``); ``""``
    for one that is not a host (``[::1`` or ``[name]``: refused as any foreign host is)."""
    if any(ch in header for ch in "@#/?\\"):  # userinfo, fragment, path, query: not a Host (``a@127.0.0.1``)
        return ""
    try:
        return (urlsplit(f"//{header}").hostname or "").lower()
    except ValueError:
        return ""


def same_origin(origin: str, host: str) -> bool:
    """Whether a request's ``Origin`` is a page of the ``Host`` it was sent to: ``http://HOST`` or
    ``https://HOST``, host[:port] exactly the ``Host`` header (letter case aside).

    ``https`` is accepted because behind a reverse proxy that adds HTTPS (docs/serve.md) the browser's
    origin is ``https://NAME`` while the proxy forwards the request over HTTP with the browser's
    ``Host: NAME``; nothing here tells how the browser reached the proxy (X-Forwarded-* headers are
    not trusted). Either scheme names the same host and port as the request, which the Host check
    has already accepted as this server, so a page of any other site (its own host in its Origin)
    or an opaque one (``null``) is still refused."""
    origin, host = origin.lower(), host.lower()
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


class Guard:
    """ASGI middleware: a Host of this server only, same-origin changes, safe headers.

    Listening on a loopback address, the ``Host`` must be a loopback address, ``localhost`` or one of
    ``names``; listening beyond this machine, any address or one of ``names`` (see
    :meth:`~restorekit.web.config.ServeConfig.host_names`). Either way a name that a web page
    elsewhere made resolve here (DNS rebinding) is refused.
    """

    def __init__(self, app: ASGIApp, *, local_only: bool, names: Collection[str] = ()) -> None:
        self.app = app
        self.local_only = local_only
        self.names = frozenset(names)

    def host_ok(self, name: str) -> bool:
        if is_loopback(name) or name in self.names:
            return True
        return not self.local_only and is_address(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        refusal: JSONResponse | None = None
        if not self.host_ok(host_name(host)):
            refusal = error(f"request refused: Host '{host}' is not this machine (the server answers "
                            "localhost only)" if self.local_only else
                            f"request refused: Host '{host}' is neither an address nor a name of this server "
                            "(restorekit serve --allow-host NAME adds a name)", 400)
        elif scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin is not None and not same_origin(origin, host):
                refusal = error(f"request refused: it comes from another site ({origin})", 403)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    """The body (or its declared length) is over the limit."""


class BodyTooSlow(Exception):
    """The body did not come fast enough (answered 408)."""


async def read_body(request: Request, limit: int, config: Any) -> bytes:
    """The request body (``bytes``, not copied once more: the decoder reads it in place).

    Raises :class:`BodyTooLarge` as soon as it (or its declared length) is over ``limit`` bytes;
    :class:`BodyTooSlow` when nothing comes for ``config.body_timeout`` s, when it falls behind
    ``config.body_min_rate_kb`` KB/s by more than that (at any moment ``t`` s after reading began,
    at least ``(t - body_timeout) × rate`` bytes have come), or when it takes over
    ``config.body_max_time`` s; starlette's ``ClientDisconnect`` when the client goes away."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    rate, pause = config.body_min_rate_kb * 1000.0, config.body_timeout
    loop = asyncio.get_running_loop()
    start = loop.time()
    buf = io.BytesIO()  # grows in place; getvalue() hands its buffer over without copying it
    received = 0
    try:
        async with asyncio.timeout_at(start + min(config.body_max_time, pause)) as deadline:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge
                buf.write(chunk)
                deadline.reschedule(min(start + config.body_max_time, start + pause + received / rate,
                                        loop.time() + pause))
    except TimeoutError:
        raise BodyTooSlow from None
    return buf.getvalue()


def too_slow(config: Any) -> JSONResponse:
    """The answer to a body that came too slowly (the connection is closed after it)."""
    return error(f"request body too slow: it must come at {config.body_min_rate_kb:g} KB/s or more and take at most "
                 f"{config.body_max_time:g} s", 408, {"Connection": "close"})


class OpenFileResponse(Response):
    """A file sent from an open handle, piece by piece (never read whole into memory): a file
    deleted once it is open is still sent whole; the handle is closed however sending ends."""

    def __init__(self, handle: Any, size: int, media_type: str, headers: Mapping[str, str]) -> None:
        super().__init__(content=None, media_type=media_type, headers=dict(headers))
        self.handle = handle
        self.size = size
        self.headers["content-length"] = str(size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            left = self.size if scope.get("method") != "HEAD" else 0
            more = left > 0
            while more:  # exactly the declared length, even of a file that grew since
                chunk = await run_in_threadpool(self.handle.read, min(FILE_CHUNK, left))
                left -= len(chunk)
                more = bool(chunk) and left > 0
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if self.size == 0 and scope.get("method") != "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.handle.close()


def open_file(path: Any) -> tuple[Any, int] | None:
    """``path`` opened for reading, and its size; None when it is gone."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by OpenFileResponse)
    except OSError:
        return None
    try:
        return handle, os.fstat(handle.fileno()).st_size
    except OSError:
        handle.close()
        return None


def job_view(state: Any, job: Job) -> dict[str, Any]:
    """What the page polls: status, place in the queue, progress and the results so far."""
    from ..harness.store import jsonable

    with job.lock:
        result = jsonable(job.result)  # a copy, non-finite numbers encoded as results.json encodes them
    return {"id": job.id, "status": job.status, "position": state.queue.position(job), "stage": job.stage,
            "step": list(job.step) if job.step else None, "units_done": job.units_done, "units": job.units,
            "error": job.error, "finished": job.status in FINISHED, "result": result}


def create_app(state: Any) -> Starlette:
    """The application over a running :class:`~restorekit.web.server.ServeState`."""
    cfg = state.config
    page_files = resources.files("restorekit.web") / "page"
    index_html = (page_files / "index.html").read_text(encoding="utf-8")
    static = {name: ((page_files / name).read_bytes(), media) for name, media in STATIC.items()}

    async def index(request: Request) -> Response:
        return HTMLResponse(index_html, headers={"Cache-Control": "no-store"})

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            return error("no such file", 404)
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        from importlib.util import find_spec

        return JSONResponse({
            "version": __version__, **state.catalogue.public(),
            "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_upload_mb": cfg.max_upload_mb,
                       "max_pixels": cfg.max_pixels, "max_output_pixels": cfg.max_output_pixels,
                       "max_scale": cfg.max_scale, "max_samples": cfg.max_samples},
            "sample": find_spec("skimage") is not None,
        })

    # Turns to decode an upload (decoding holds several times its pixels). An asyncio semaphore binds
    # to the event loop that first waits on it: the server's.
    slots = asyncio.Semaphore(cfg.max_concurrent_uploads)

    async def upload(request: Request) -> Response:
        name = display_name(unquote(request.headers.get("x-filename", "")))
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else None
        if size is not None and size > cfg.max_upload_bytes:  # refused before waiting for a turn
            return error(str(state.uploads.too_large(name, size)), 413)
        # The body is read without a turn (a slow link holds only its own bytes: at most max_connections
        # bodies of max_upload_bytes); decoding, which holds the pixels as well, takes one of the
        # max_concurrent_uploads turns.
        try:
            data = await read_body(request, cfg.max_upload_bytes, cfg)
        except BodyTooLarge:
            return error(str(state.uploads.too_large(name, size)), 413)
        except BodyTooSlow:
            return too_slow(cfg)
        except ClientDisconnect:  # the client went away: nobody to answer, nothing to log
            return Response(status_code=400)
        try:
            async with asyncio.timeout(cfg.upload_wait):
                await slots.acquire()
        except TimeoutError:
            return error(f"{name}: the server is busy decoding {cfg.max_concurrent_uploads} other upload(s); "
                         "try again in a moment", 503, {"Retry-After": str(RETRY_UPLOADS_BUSY)})
        try:
            up = await run_in_threadpool(state.uploads.accept, data, name)
        except RestorekitError as exc:
            return error(str(exc), status_for(exc))
        finally:
            del data
            slots.release()
        return JSONResponse(up.public(), status_code=201)

    async def upload_sample(request: Request) -> Response:
        from .work import sample_upload

        try:
            up = await run_in_threadpool(sample_upload, state.uploads)
        except RestorekitError as exc:
            return error(str(exc), status_for(exc))
        return JSONResponse(up.public(), status_code=201)

    async def submit(request: Request) -> Response:
        try:
            data = await read_body(request, MAX_JSON_BYTES, cfg)
        except BodyTooLarge:
            return error(f"a job request is at most {MAX_JSON_BYTES} bytes", 413)
        except BodyTooSlow:
            return too_slow(cfg)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
            return error("a job request is a JSON object", 400)
        try:
            settings = read_settings(payload)
            held = await run_in_threadpool(state.restorer.check, settings)
            job = state.queue.submit(settings, upload=held)  # the job holds its upload until it ends
        except RestorekitError as exc:
            from .jobs import QueueFull

            if isinstance(exc, QueueFull):
                return error(str(exc), 429, {"Retry-After": str(RETRY_QUEUE_FULL)})
            return error(str(exc), 400)
        return JSONResponse(job_view(state, job), status_code=202)

    async def job_status(request: Request) -> Response:
        job = state.queue.get(request.path_params["job_id"])
        if job is None:
            return error("no such job (the server keeps the last few)", 404)
        return JSONResponse(job_view(state, job), headers={"Cache-Control": "no-store"})

    async def job_cancel(request: Request) -> Response:
        job = state.queue.cancel(request.path_params["job_id"])
        if job is None:
            return error("no such job (the server keeps the last few)", 404)
        return JSONResponse(job_view(state, job))

    async def file(request: Request) -> Response:
        found = state.files.get(request.path_params["token"])
        if found is None:
            return error("no such file", 404)
        opened = await run_in_threadpool(open_file, found.path)
        if opened is None:
            return error("no such file (it was deleted with its job)", 404)
        disposition = "attachment" if request.query_params.get("download") else "inline"
        return OpenFileResponse(*opened, media_type=found.media_type,
                                headers={"Content-Disposition": f'{disposition}; filename="{found.download_name}"',
                                         "Cache-Control": "no-store"})

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error("not found", 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(f"{request.method} is not allowed here", 405, getattr(exc, "headers", None))  # its Allow

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/uploads/sample", upload_sample, methods=["POST"]),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", job_status, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", job_cancel, methods=["POST"]),
        Route("/files/{token}", file, methods=["GET"]),
        Route("/favicon.ico", no_icon, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    # No redirect for a trailing slash: starlette's is an absolute URL built from the Host, which
    # behind a proxy loses its path prefix and https; every URL handed out is relative anyway.
    app.router.redirect_slashes = False
    app.add_middleware(Guard, **guard_options(cfg))
    return app
