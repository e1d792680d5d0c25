"""Pin for 32-bit integer (mode "I") images: values up to 255 are 8-bit data, above it 16-bit."""

from __future__ import annotations

import numpy as np
from PIL import Image

from restorekit.images import to_numpy_pixels


def test_pin_mode_i_scale_is_8_bit_up_to_255_and_16_bit_above():
    eight = Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32), mode="I")
    arr = to_numpy_pixels(eight)
    assert arr.dtype == np.float32 and arr.shape == (1, 3, 3)
    np.testing.assert_allclose(arr[0, :, 0], [0.0, 128 / 255, 1.0], rtol=0, atol=1e-7)
    sixteen = Image.fromarray(np.array([[0, 256, 65535]], dtype=np.int32), mode="I")
    np.testing.assert_allclose(to_numpy_pixels(sixteen)[0, :, 0], [0.0, 256 / 65535, 1.0], rtol=0, atol=1e-7)
