"""pytest fixtures for plugin authors (loaded through the ``pytest11`` entry point ``restorekit``).

Every project with restorekit installed gets these in its tests without any conftest, so this
module is imported by every pytest run in such an environment: it imports nothing heavy (torch,
numpy) at module level; each fixture imports what it needs when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:
    import torch


@pytest.fixture
def rk_batch() -> torch.Tensor:
    """A random 2×3×12×10 batch in the image convention (non-square on purpose)."""
    from .data import sample_batch

    return sample_batch()


@pytest.fixture
def rk_odd_batch() -> torch.Tensor:
    """A random 1×3×11×9 batch: odd sides catch off-by-one resizing."""
    from .data import sample_batch

    return sample_batch(1, 11, 9, seed=3)


@pytest.fixture
def rk_smooth_batch() -> torch.Tensor:
    """Two smooth 32×32 images (what SR is judged on; white noise is not)."""
    from .data import smooth_batch

    return smooth_batch(2, 32, 32)


@pytest.fixture
def rk_face() -> torch.Tensor:
    """A public-domain face photo (scikit-image's astronaut) as 3×256×256; skipped without skimage."""
    from .conformance import default_face_image

    img = default_face_image()
    if img is None:
        pytest.skip("rk_face needs scikit-image (pip install scikit-image)")
    return img


@pytest.fixture
def rk_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``RESTOREKIT_HOME`` so tests never touch the user's weight cache."""
    home = tmp_path / "restorekit-home"
    home.mkdir()
    monkeypatch.setenv("RESTOREKIT_HOME", str(home))
    return home


@pytest.fixture
def rk_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A freshly discovered plugin registry (strictness and plugin selection from the environment cleared)."""
    from .. import plugins

    monkeypatch.delenv("RESTOREKIT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("RESTOREKIT_STRICT_PLUGINS", raising=False)
    plugins.reset()
    yield plugins.registry()
    plugins.reset()


@pytest.fixture
def rk_cli() -> Callable[..., Any]:
    """``rk_cli("methods", "--json")``: run the ``restorekit`` command in-process (click's CliRunner).

    Returns the click ``Result`` (``exit_code``, ``output``, ``stdout``, ``stderr``); exceptions
    other than exits propagate, so a crash shows its traceback.
    """
    from click.testing import CliRunner

    from ..cli import build_cli

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False, prog_name="restorekit")

    return invoke
