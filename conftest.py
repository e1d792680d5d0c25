"""Fixtures shared by every test folder (core and plugins)."""

from __future__ import annotations

import pytest

from restorekit import plugins


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """Each test discovers plugins anew, in a clean plugin environment (no leaked selection)."""
    monkeypatch.delenv("RESTOREKIT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("RESTOREKIT_STRICT_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()
