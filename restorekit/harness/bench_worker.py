"""``python -m restorekit.harness.bench_worker ARGS``: the ``restorekit`` command with the bench
stand-ins registered in this process (what ``bench scaleout`` launches under ``torchrun``; the
stand-ins are not installed methods)."""

from __future__ import annotations

from ..cli import main
from .bench import StandIn, _registered
from .bench_scaleout import PulseLike

if __name__ == "__main__":
    with _registered(StandIn), _registered(PulseLike):
        main()
