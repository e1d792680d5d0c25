"""Public-domain photos that ship inside restorekit's optional dependencies, for demos.

``restorekit demo`` and the ``restorekit serve`` page both use NASA's portrait of astronaut Eileen
Collins (public domain), which scikit-image ships as ``skimage.data.astronaut()`` (512×512 RGB).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import RestorekitError
from .images import pixels_to_image, to_numpy_pixels

ASTRONAUT_CREDIT = "skimage.data.astronaut() — NASA portrait of Eileen Collins, public domain"


def astronaut_pixels() -> torch.Tensor:
    """The scikit-image astronaut photo's 8-bit pixels, 1×3×H×W uint8 (needs the ``demo`` extra)."""
    try:
        from skimage import data
    except ImportError:
        raise RestorekitError("the demo photo ships in scikit-image: pip install 'restorekit[demo]'") from None
    arr = to_numpy_pixels(Image.fromarray(data.astronaut()))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)


def astronaut() -> torch.Tensor:
    """The scikit-image astronaut photo as a 1×3×H×W batch (needs the ``demo`` extra)."""
    return pixels_to_image(astronaut_pixels())
