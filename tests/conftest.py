"""Fixtures for the core tests: sample images and throwaway plugin distributions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from restorekit import plugins
from restorekit.testing.data import smooth_image
from plugin_sources import write_plugin_dist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hr_folder(tmp_path: Path) -> Path:
    """Four 64×64 smooth PNGs."""
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(4):
        Image.fromarray(smooth_image(64, 64, i)).save(d / f"img{i}.png")
    return d


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Returns ``add(dist, module, source)``; the site folder is on sys.path and PYTHONPATH."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    def add(dist: str, module: str, source: str, ep_name: str | None = None) -> Path:
        write_plugin_dist(site, dist, module, source, ep_name)
        plugins.reset()
        return site

    yield add
    for name in list(sys.modules):
        if name.endswith("_3p") or name.startswith("thirdparty"):
            sys.modules.pop(name, None)
