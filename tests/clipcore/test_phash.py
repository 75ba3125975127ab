"""The ingest's perceptual hash equals imagehash.phash, bit for bit: on real photos, in every color mode, and its
resize equals PIL's LANCZOS resize on every shape (small, large, thin, tall, upscaled)."""

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image

from clipcore.ingest.phash import (
    lanczos_weights,
    pass_order,
    perceptual_hash,
    picture_hash,
    resize_lanczos,
)

PHOTOS = ["astronaut", "coffee", "chelsea", "camera", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
          "page", "text", "horse", "clock", "moon", "logo", "grass", "gravel", "brick", "colorwheel", "checkerboard"]


def photo(name: str) -> Image.Image:
    pixels = getattr(skimage.data, name)()
    return Image.fromarray(pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels)


@pytest.mark.parametrize("name", PHOTOS)
def test_equals_imagehash_on_real_photos_and_their_crops(name):
    image = photo(name)
    w, h = image.size
    for crop in [image, image.crop((0, 0, w, h // 3)), image.crop((0, 0, w // 3, h)),  # wide and tall
                 image.resize((w // 5 or 1, h // 5 or 1)), image.transpose(Image.Transpose.ROTATE_90)]:
        assert perceptual_hash(crop) == str(imagehash.phash(crop)), (name, crop.size)


def test_equals_imagehash_in_every_mode():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    images = [rgb, rgb.convert("L"), rgb.convert("P"), rgb.convert("CMYK"), rgb.convert("YCbCr"), rgb.convert("RGBA"),
              rgb.convert("LA"), rgb.convert("1"), rgb.convert("I"), rgb.convert("F"),
              Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)),
              Image.new("RGB", (64, 48), (9, 200, 3)), Image.new("L", (1, 1)), Image.new("L", (32, 32), 7)]
    for image in images:
        assert perceptual_hash(image) == str(imagehash.phash(image)), (image.mode, image.size)


@pytest.mark.parametrize("height", [1, 2, 5, 17, 31, 32, 33, 63, 100, 255, 256, 257, 480, 1000])
def test_resize_equals_pils_lanczos_on_every_shape(height):
    """Wide and tall shapes alike: each resized the way `pass_order` found for its shape, on a new random image."""
    rng = np.random.default_rng(height)
    for width in sorted({1, 3, height // 3 + 1, height, height + 1, height + 3, 2 * height + 1, 3 * height, 700}):
        gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(gray).resize((32, 32), Image.Resampling.LANCZOS))
        order = pass_order(width, height)
        assert order in ("horizontal", "vertical"), (height, width)
        assert np.array_equal(resize_lanczos(gray, order), expected), (height, width, order)


def test_weights_are_pils_fixed_point_coefficients():
    """Each output's 22-bit weights sum to 2^22 within rounding, cover only the filter's support, and are cached."""
    for size in (1, 7, 32, 33, 256, 1000):
        weights = lanczos_weights(size)
        assert weights.shape == (32, size) and weights.dtype == np.int32
        assert np.all(np.abs(np.asarray(weights.sum(axis=1)).ravel() - (1 << 22)) <= weights.getnnz(axis=1))
        assert weights.getnnz(axis=1).max() <= 2 * int(np.ceil(3 * max(size / 32, 1))) + 1
    assert lanczos_weights(256) is lanczos_weights(256)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "text", "checkerboard"])
def test_picture_hash_is_imagehash_of_the_box_reduced_picture(name):
    """imagehash's own phash of the gray picture averaged in k x k blocks by PIL's `reduce` (the largest k leaving a
    short side of 64 px or more), which is the block mean within rounding; a picture under 128 px is not reduced, so
    its hash is imagehash's phash exactly."""
    image = photo(name)
    for size, k in [((256, 192), 3), ((256, 128), 2), ((300, 600), 4), ((127, 300), 1), ((28, 28), 1)]:
        picture = image.resize(size)
        gray = np.asarray(picture.convert("L"), dtype=np.float64)
        h, w = gray.shape[0] // k, gray.shape[1] // k
        blocks = gray[: h * k, : w * k].reshape(h, k, w, k).mean(axis=(1, 3))  # numpy's block mean: the reference
        reduced = picture.convert("L").reduce(k)
        assert np.abs(np.asarray(reduced, dtype=np.float64)[:h, :w] - blocks).max() <= 1  # a partial edge block too
        assert picture_hash(picture) == str(imagehash.phash(reduced)), (name, size)
        if k == 1:
            assert picture_hash(picture) == str(imagehash.phash(picture))
