"""``restorekit serve``: a local web page to restore faces with every installed method and compare them.

One small ASGI application (starlette + uvicorn, the ``web`` extra) serving one page of plain
HTML/JS; the restoration itself is restorekit's own: methods through :mod:`restorekit.methods`,
LR inputs through compare's degradation (:func:`restorekit.harness.inputs.degrade_hr`), metrics
through the harness (:mod:`restorekit.harness.runner`), photos through the faces pipeline
(:mod:`restorekit.faces.pipeline`).

- :mod:`.config`: the server's settings (pydantic), safe by default.
- :mod:`.catalogue`: which methods, metrics and detector can run here, built once (or why not).
- :mod:`.files`: the server's temporary folder; outputs addressed by opaque random ids.
- :mod:`.uploads`: uploads checked (bytes, pixels, format) and decoded in memory.
- :mod:`.jobs`: the queue: one job at a time, progress, cancellation.
- :mod:`.work`: what one job does (degrade, restore, paste back, score, write).
- :mod:`.app`: the HTTP routes and their safety checks; :mod:`.server`: running it.

Nothing here is imported by the core; ``restorekit serve`` imports it when it runs.
"""

from __future__ import annotations

from ..errors import DependencyMissing

INSTALL_HINT = "restorekit serve needs the web extra: pip install 'restorekit[web]'"


def require_web() -> None:
    """Raise one line naming the install command when starlette or uvicorn is missing."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyMissing(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
