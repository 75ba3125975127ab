"""Report thumbnails of the images a labeled set gives: grayscale (HW, 1HW) and colour in either channel order."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from clipcore.report.render import _thumbnail


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (3, 32, 16), (32, 16, 3)])
def test_thumbnail_of_any_layout_keeps_its_pixels(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    hwc = image.transpose(1, 2, 0) if shape[0] in (1, 3) and len(shape) == 3 else image
    hwc = hwc.squeeze()
    scale = 2  # nearest neighbour by an integer factor: every pixel repeated scale x scale
    uri = _thumbnail(image, size=scale * max(hwc.shape[:2]))
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert decoded.shape[:2] == (hwc.shape[0] * scale, hwc.shape[1] * scale)
    assert np.array_equal(decoded[::scale, ::scale], hwc)
