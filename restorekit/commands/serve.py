"""``restorekit serve``: a local web page to restore faces with every installed method and compare them.

Needs the ``web`` extra (starlette + uvicorn), imported only when the command runs.
"""

from __future__ import annotations

import os
import sys

import click

from ..cli import INTERRUPTED, UsageProblem, warn
from ..devices import DEVICE, DEVICE_HELP
from ..errors import RestorekitError
from ..options import FiniteFloatRange

#: The largest --max-upload-mb: an upload is held in memory, decoded, while the page uses it. Here,
#: not in :mod:`restorekit.web.config` (which takes it from here), so that building the command line
#: imports nothing of :mod:`restorekit.web`.
MAX_UPLOAD_MB = 100_000.0


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default answers this machine only; another address lets "
                   "anyone who can reach it use the page (there is no login).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Another name the page may be reached by (repeatable): a bare host name or address, without "
                   "scheme, port or path. Requests name the server in their "
                   "Host header; only this machine's addresses and names are answered (and, with another "
                   "--host, any address), so that a web page elsewhere cannot reach it by DNS rebinding.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True,
              help="Port (0: any free port).")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--methods", default=None, help="Methods to offer, comma-separated (default: every installed one).")
@click.option("--opt", "opts", multiple=True, metavar="METHOD.KEY=VALUE",
              help="A method's option, as compare's (repeatable).")
@click.option("--metrics", default=None, help="Metrics to score, comma-separated (default: the demo's).")
@click.option("--detector", default=None, help="Face detector for crop and detect (default: mtcnn).")
@click.option("--max-upload-mb", type=FiniteFloatRange(min=0, min_open=True, max=MAX_UPLOAD_MB), default=20.0,
              show_default=True,
              help="Refuse uploads larger than this (MB).")
@click.option("--max-pixels", type=click.IntRange(min=4), default=16_000_000, show_default=True,
              help="Refuse images larger than this many pixels.")
@click.option("--max-output-pixels", type=click.IntRange(min=4), default=64_000_000,
              show_default=True, help="Refuse jobs whose result (× samples) would be larger than this many pixels.")
@click.option("--max-scale", type=click.IntRange(1, 64), default=16, show_default=True, help="Largest scale offered.")
@click.option("--max-samples", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Most samples per stochastic method.")
@click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Open connections at once; one more is answered 503 (Retry-After) and closed.")
@click.option("--max-client-connections", type=click.IntRange(min=1), default=16, show_default=True,
              help="Of those, at most this many from one remote client (an IPv4 address, an IPv6 /64; this "
                   "machine's loopback connections are not counted). Behind a proxy on another address, or "
                   "for many users behind one NAT, raise it to --max-connections.")
@click.option("--body-min-rate-kb", type=FiniteFloatRange(min=0, min_open=True), default=32.0, show_default=True,
              help="The slowest an upload may come on average (KB/s); slower is answered 408.")
@click.option("--body-max-time", type=FiniteFloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds an upload may take at most (408 after); raise it for very slow links.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the address.")
def serve_cmd(host: str, allow_hosts: tuple[str, ...], port: int, device: str, methods: str | None, opts: tuple[str, ...], metrics: str | None,
              detector: str | None, max_upload_mb: float, max_pixels: int, max_output_pixels: int, max_scale: int,
              max_samples: int, max_connections: int, max_client_connections: int, body_min_rate_kb: float,
              body_max_time: float, quiet: bool) -> None:
    """Serve a page to restore and compare faces: upload a face or a photo, pick methods, download results.

    Listens on http://127.0.0.1:7860 by default. Methods are loaded once and reused; jobs run one
    at a time; uploads, outputs and results live in a temporary folder that is deleted when the
    server stops (Ctrl-C).
    """
    from ..web import require_web

    require_web()
    from ..harness.runner import parse_method_opts
    from ..plugins import registry
    from pydantic import ValidationError

    from ..options import format_error
    from ..web.config import DEFAULT_METRICS, ServeConfig, check_host_name
    from ..web.server import bind, build_state, serve_forever, url_of

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    try:
        allowed = [check_host_name(h) for h in allow_hosts]  # one line naming the value, before loading anything
        offered = names if names is not None else registry().names("methods")
        config = ServeConfig(
            host=host, allowed_hosts=allowed, port=port, device=device, methods=names, method_options=parse_method_opts(opts, offered),
            metrics=[m.strip() for m in metrics.split(",") if m.strip()] if metrics else list(DEFAULT_METRICS),
            metrics_named=bool(metrics),
            detector=detector, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
            max_output_pixels=max_output_pixels, max_scale=max_scale, max_samples=max_samples,
            max_connections=max_connections, max_client_connections=max_client_connections,
            body_min_rate_kb=body_min_rate_kb, body_max_time=body_max_time)
        log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
        state = build_state(config, log=log)
    except RestorekitError as exc:
        raise UsageProblem(str(exc)) from None
    except ValidationError as exc:
        raise UsageProblem(format_error(ServeConfig, exc, "serve")) from None
    try:
        sock = bind(host, port)
    except RestorekitError:
        state.close()
        raise
    if not quiet:
        cat = state.catalogue
        ok = [e.name for e in cat.methods.values() if e.available]
        click.echo(f"methods: {', '.join(ok) or 'none'}", err=True)
        for e in cat.methods.values():
            if not e.available:
                click.echo(f"  not here: {e.name}: {e.reason}", err=True)
        for m in cat.metrics:
            if m.status != "ok":
                click.echo(f"  metric skipped: {m.name}: {m.reason}", err=True)
        if cat.detector is None:
            click.echo(f"  face detection not here: {cat.detector_reason}", err=True)
    if not config.loopback:
        warn(f"listening on {host}: anyone who can reach this machine can use the page (there is no login)")
    click.echo(f"restorekit serve: {url_of(sock)}  (Ctrl-C stops)")
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(f"restorekit serve: {msg}", err=True))
    code = 0  # Ctrl-C is how a server is stopped: not an error
    try:
        serve_forever(state, sock, say)  # cleans up however it ends
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # TERM
        code = exc.code if isinstance(exc.code, int) else 1
    if state.files.root.exists():
        warn(f"restorekit serve: its temporary folder {state.files.root} could not be deleted (remove it)")
    else:
        say("stopped; its temporary folder is deleted")
    if state.queue.worker_alive:
        # A second Ctrl-C cut the wait for the running job short: leave without finalising the
        # interpreter under a thread still inside a network (torch aborts the process then).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or INTERRUPTED)
    if code:
        raise SystemExit(code)


def attach(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
