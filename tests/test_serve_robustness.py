"""``restorekit serve``'s pieces on their own: what keeps the queue, the catalogue and the folder sound
when something misbehaves (no server, no HTTP: ``test_serve.py`` does those)."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from restorekit.web.jobs import Job, JobQueue, JobSettings  # noqa: E402

SETTINGS = JobSettings(upload="u", methods=["bicubic"], scale=2)


def wait_finished(job: Job, timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    while job.status not in ("done", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job.status} after {timeout} s")
        time.sleep(0.01)
    return job


@pytest.mark.parametrize("escape", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_job_that_escapes_with_a_base_exception_fails_and_the_worker_goes_on(escape: BaseException) -> None:
    def run(job: Job) -> None:
        if job.settings.scale == 2:
            raise escape

    q = JobQueue(run, max_waiting=4, keep=4)
    try:
        first, second = q.submit(SETTINGS), q.submit(SETTINGS.model_copy(update={"scale": 4}))
        assert wait_finished(first).status == "failed"
        assert first.error is not None and type(escape).__name__ in first.error
        assert wait_finished(second).status == "done"
    finally:
        q.close()


def test_a_method_that_calls_sys_exit_while_it_is_built_is_listed_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.web.catalogue as catalogue_module
    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    real = catalogue_module.build_method

    def build(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "bicubic":
            sys.exit(3)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(catalogue_module, "build_method", build)
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic", "pix2pixhd"], metrics=["psnr_y_crop"]))
    cat.load()
    assert (cat.methods["bicubic"].available, cat.methods["bicubic"].reason) == (
        False, "could not load bicubic: SystemExit(3): the plugin tried to end the program")
    assert cat.methods["pix2pixhd"].available
