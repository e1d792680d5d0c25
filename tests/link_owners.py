"""Fixtures of the shared-folder tests: whose symbolic links a test plants.

Imported by a test module (``from link_owners import as_another_user, own_links``): every link a
test plants counts as another user's, unless the test asks for ``own_links``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture()
def own_links() -> None:
    """Asked for by a test whose links are the user's own (see :func:`as_another_user`)."""


@pytest.fixture(autouse=True)
def as_another_user(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The links a test plants count as another user's (as if this process ran as another uid),
    but in a test that asks for :func:`own_links`."""
    if "own_links" not in request.fixturenames:
        uid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
