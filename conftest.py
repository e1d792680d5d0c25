"""Fixtures shared by every test folder (core and plugins)."""

from __future__ import annotations

import pytest
import torch

from restorekit import plugins

# One intra-op thread for the whole run: golden tensors are recorded single-threaded (a reduction's
# order, and so its last bits, depends on the thread count), and the multi-process tests (torchrun,
# workers) run side by side on few cores, where one thread per process is the faster. A test that
# changes the count has it put back after it (below). On a machine with a GPU (the GPU checks of
# scripts/gpu, beside a training run) the CPU references keep torch's own count, as they were timed.
TEST_THREADS = torch.get_num_threads() if torch.cuda.is_available() else 1
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """Each test discovers plugins anew, in a clean plugin environment (no leaked selection)."""
    monkeypatch.delenv("RESTOREKIT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("RESTOREKIT_STRICT_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


#: Variables by which a developer's or a CI service's environment changes how output is laid out
#: (restorekit.terminals, rich): each test starts without them and sets the ones it is about.
TERMINAL_VARIABLES = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")


@pytest.fixture(autouse=True)
def plain_terminal_environment(monkeypatch: pytest.MonkeyPatch):
    """GitHub Actions users are told to export TTY_INTERACTIVE, many set FORCE_COLOR: tests of the
    layout would pass or fail by the machine they run on."""
    for name in TERMINAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(autouse=True)
def kept_thread_count():
    """A test that sets torch's thread count (a fixture pinning it for a golden value, a plugin
    under test) does not change it for the tests after it."""
    yield
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
