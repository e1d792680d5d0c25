"""Public-domain photos that ship inside restorekit's optional dependencies, for demos.

``restorekit demo`` and the ``restorekit serve`` page both use NASA's portrait of astronaut Eileen
Collins (public domain), which scikit-image ships as ``skimage.data.astronaut()`` (512×512 RGB).
"""

from __future__ import annotations

import torch
from PIL import Image

from .errors import RestorekitError
from .images import from_pil

ASTRONAUT_CREDIT = "skimage.data.astronaut() — NASA portrait of Eileen Collins, public domain"


def astronaut() -> torch.Tensor:
    """The scikit-image astronaut photo as a 1×3×H×W batch (needs the ``demo`` extra)."""
    try:
        from skimage import data
    except ImportError:
        raise RestorekitError("the demo photo ships in scikit-image: pip install 'restorekit[demo]'") from None
    return from_pil(Image.fromarray(data.astronaut()))
