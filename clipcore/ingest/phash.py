"""Perceptual hash of an image: exactly `str(imagehash.phash(image))`, at about half its CPU; and the hash ingest
records, `picture_hash`: imagehash's phash of the picture box-reduced to a short side of 64-127 px first.

imagehash's phash: the image in gray (PIL's `convert("L")`), resized to 32x32 by PIL's LANCZOS filter, a 2-D DCT-II
(scipy.fftpack), the 8x8 lowest frequencies compared with their median, the 64 bits as 16 hex digits. Most of its time
is the resize: PIL filters every row of the full image. Here the resize is the same fixed-point arithmetic as Pillow's
8-bit resampler (libImaging/Resample.c: each output pixel a sum of input pixels times coefficients rounded to 22
bits, each pass rounded and clipped to 0..255) written as two matrix products with those coefficients in float64,
which are exact: the same pixels, so the same DCT and the same hash. Which pass Pillow runs first depends on its
version and the shape (Pillow 13 runs the vertical one first for some tall images), so for each shape it is found once
by resizing a random image both ways and with PIL; a shape neither way reproduces (none known) is resized by PIL itself.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fftpack
import scipy.sparse
from PIL import Image

SIDE = 32  # imagehash: hash_size 8 x highfreq_factor 4
HASHED_SIDE = 2 * SIDE  # picture_hash box-reduces a picture while its short side stays at least this
PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2
DENSE_UP_TO = 512  # inputs along a side up to which the resize weights are a dense matrix
PROBE_PIXELS = 4_000_000  # shapes larger than this are resized by PIL: a probe would cost as much as it saves


def perceptual_hash(image: Image.Image) -> str:
    """`str(imagehash.phash(image))`: 16 hex digits."""
    gray = image.convert("L")
    order = pass_order(gray.width, gray.height)
    if order == "pil":
        pixels = np.asarray(gray.resize((SIDE, SIDE), Image.Resampling.LANCZOS))
    else:
        pixels = resize_lanczos(np.asarray(gray), order).astype(np.uint8)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8]
    middle = np.sort(dct, axis=None)[31:33]  # np.median of 64 values, without its overhead: the mean of these two
    return np.packbits(dct > (middle[0] + middle[1]) / 2).tobytes().hex()  # row-major, the first bit highest


def picture_hash(image: Image.Image) -> str:
    """The phash ingest records: `str(imagehash.phash(gray.reduce(k)))`, `gray` the picture in gray
    (`convert("L")`, imagehash's own first step) and `k` the largest integer factor that leaves its short side at
    least 64 px (1 for smaller pictures: then imagehash's phash exactly).

    PIL's `reduce` averages k x k blocks, a fraction of the cost of the 32x32 LANCZOS resize that follows (which from
    a 256-px thumbnail filters every row of it): 0.15 ms instead of 0.25 ms for a 256-px thumbnail. Against
    imagehash's phash of the unreduced picture, on 60 web-sized photos' thumbnails: 17 equal, 31 two bits apart,
    12 four bits apart.
    """
    gray = image.convert("L")
    factor = min(gray.size) // HASHED_SIDE
    return perceptual_hash(gray.reduce(factor) if factor > 1 else gray)


@functools.lru_cache(maxsize=4096)
def pass_order(width: int, height: int) -> str:
    """`horizontal` or `vertical`: the pass that PIL's LANCZOS resize of a `width` x `height` gray image to 32x32
    runs first, found by reproducing PIL's result on a random image of that shape; `pil` when neither order does
    (or the shape is too large to probe)."""
    if width * height > PROBE_PIXELS:
        return "pil"
    gray = np.random.default_rng(width * 100_003 + height).integers(0, 256, (height, width), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(gray).resize((SIDE, SIDE), Image.Resampling.LANCZOS))
    if np.array_equal(resize_lanczos(gray, "vertical"), expected):  # both when one pass is all there is
        return "vertical"
    return "horizontal" if np.array_equal(resize_lanczos(gray, "horizontal"), expected) else "pil"


def resize_lanczos(pixels: np.ndarray, order: str) -> np.ndarray:
    """PIL's `resize((32, 32), LANCZOS)` of a gray image `pixels` (H, W) uint8, its `horizontal` or `vertical` pass
    first; (32, 32) float64 holding the integers 0..255.

    Each pass is a product with the fixed-point weights in float64, which is exact: every product and sum is an
    integer under 2^53 (weights under 2^23, pixels under 2^8, a few hundred taps), and adding 2^21, scaling by 2^-22
    and flooring is the C code's `(sum + (1 << 21)) >> 22` on such integers.
    """
    out = pixels.astype(np.float64)
    for axis in ((1, 0) if order == "horizontal" else (0, 1)):
        size = out.shape[axis]
        if size == SIDE:
            continue
        out = _round(_float_weights(size) @ out if axis == 0 else out @ _float_weights(size).T)
    return out


def _round(sums: np.ndarray) -> np.ndarray:
    """Resample.c's clip8, in place on exact float64 integers: plus a half, shifted down 22 bits, clipped to 0..255."""
    sums += 1 << (PRECISION_BITS - 1)
    sums *= 1.0 / (1 << PRECISION_BITS)
    np.floor(sums, out=sums)
    return np.clip(sums, 0, 255, out=sums)


@functools.lru_cache(maxsize=2048)
def _float_weights(size: int) -> np.ndarray | scipy.sparse.csr_matrix:
    """`lanczos_weights(size)` in float64: dense up to 512 inputs (a BLAS product beats the sparse one there), sparse
    beyond (where most weights are zero)."""
    weights = lanczos_weights(size).astype(np.float64)
    return weights.toarray() if size <= DENSE_UP_TO else weights


@functools.lru_cache(maxsize=2048)
def lanczos_weights(size: int) -> scipy.sparse.csr_matrix:
    """(32, size) int32: Resample.c's coefficients from `size` input pixels to 32 (precompute_coeffs, then
    normalize_coeffs_8bpc), the same double arithmetic in the same order."""
    scale = size / SIDE
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    center = (np.arange(SIDE) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): toward zero
    count = np.minimum((center + support + 0.5).astype(np.int64), size) - first
    taps = np.arange(count.max())
    valid = taps[None, :] < count[:, None]  # (32, taps)
    inputs = taps[None, :] + first[:, None]
    x = (inputs - center[:, None] + 0.5) * (1.0 / filterscale)
    scaled = _scaled(np.where(valid, _lanczos(x, np.sin), 0.0))
    # np.sin may differ from the C library's sin in the last bit, which matters only for a weight that lies at a
    # rounding boundary: then the weights are computed again with math.sin (the C library's)
    if (np.abs(np.abs(scaled) % 1.0 - 0.5) < 1e-6).any():
        scaled = _scaled(np.where(valid, _lanczos(x, np.vectorize(math.sin, otypes=[float])), 0.0))
    fixed = np.where(scaled < 0, scaled - 0.5, scaled + 0.5).astype(np.int32)  # (int)(w * 2^22 +- 0.5)
    return scipy.sparse.csr_matrix((fixed[valid], (np.repeat(np.arange(SIDE), count), inputs[valid])),
                                   shape=(SIDE, size), dtype=np.int32)


def _lanczos(x: np.ndarray, sin) -> np.ndarray:
    """Resample.c's lanczos_filter: sinc(x) * sinc(x / 3) on [-3, 3), with sinc(v) = sin(v pi) / (v pi)."""
    def sinc(v: np.ndarray) -> np.ndarray:
        v_pi = v * math.pi
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(v == 0.0, 1.0, sin(v_pi) / v_pi)

    return np.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3), 0.0)


def _scaled(weights: np.ndarray) -> np.ndarray:
    """Each output's weights divided by their sum (unless it is 0), times 2^22. The sum runs left to right as the C
    loop's does (numpy's own sum is pairwise: other roundings)."""
    total = np.zeros(weights.shape[0])
    for column in weights.T:
        total += column
    normalized = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    return normalized * (1 << PRECISION_BITS)
