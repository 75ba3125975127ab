"""Image decoding and preprocessing shared by ingestion, training, evaluation and serving."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch and torchvision load lazily: ingestion workers decode with PIL alone
    import torch
    from torchvision.transforms import v2

LEGACY_MEAN, LEGACY_STD = (0.5,), (0.5,)
"""What checkpoints written before `model.image_mean`/`image_std` existed were trained with ([0, 1] -> [-1, 1])."""
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
"""PIL modes holding one color channel (16-bit `I;16*` modes too); they become `L`, every other mode `RGB`."""


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(width, height) after `build_resize`'s resize of the shorter side to `image_size` (torchvision's rounding),
    before its center crop: a very long thin image grows along its long side."""
    if width <= height:
        return image_size, int(image_size * height / width)
    return int(image_size * width / height), image_size


def check_pixels(width: int, height: int, max_pixels: int, image_size: int | None = None) -> None:
    """Refuse an image (from its header's size alone) with more than `max_pixels` pixels or, with `image_size`, whose
    resize for the model would have more: a 1,000,000x1 image is small but resizes to 28x28,000,000.

    Raises:
        ValueError: `"too_many_pixels: <detail>"`.
    """
    if width < 1 or height < 1:
        raise ValueError(f"undecodable_image: {width}x{height} has no pixels")
    if width * height > max_pixels:
        raise ValueError(f"too_many_pixels: {width}x{height} > {max_pixels}")
    if image_size is not None:
        resized = resized_size(width, height, image_size)
        if resized[0] * resized[1] > max_pixels:
            raise ValueError(f"too_many_pixels: {width}x{height} resizes to {resized[0]}x{resized[1]} for the model, "
                             f"> {max_pixels}")


def decode_image(payload: bytes, max_pixels: int, image_size: int | None = None) -> Image.Image:
    """Decode and fully load image bytes, its size checked from the header first (see `check_pixels`).

    Raises:
        ValueError: `"<reason>: <detail>"` with reason `empty_file`, `too_many_pixels` or `undecodable_image`.
    """
    return decode_reduced(payload, max_pixels, None, image_size)[0]


def decode_reduced(payload: bytes, max_pixels: int, max_side: int | None,
                   image_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_image` for an image that will be shrunk to fit `max_side` (as `Image.thumbnail` does): a JPEG at least
    twice that large decodes at the smallest DCT scale (1/2, 1/4 or 1/8, done by libjpeg while decoding) that still
    leaves it at least the size it will be shrunk to, on both sides (libvips' shrink-on-load; PIL's `Image.draft`).
    Returns (image, the size in the file's header).

    Other formats, smaller JPEGs and `max_side=None` decode at full size. The pixel limits apply to the header's size.

    Raises:
        ValueError: as `decode_image`.
    """
    image = open_image(payload, max_pixels, image_size)
    size = image.size
    return load_image(draft_thumbnail(image, max_side) if max_side is not None else image), size


def draft_thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    """An opened JPEG at least twice `max_side` set to decode at the smallest DCT scale that still covers its
    thumbnail (see `decode_reduced`); any other image as it is."""
    size = image.size
    if max(size) >= 2 * max_side:
        image.draft(None, tuple(max(1, math.ceil(side * max_side / max(size))) for side in size))
    return image


def open_image(payload: bytes, max_pixels: int, image_size: int | None = None) -> Image.Image:
    """The image in `payload` opened (its header read, no pixel decoded) and its size checked (see `check_pixels`);
    `load_image` decodes it.

    Raises:
        ValueError: as `decode_image`.
    """
    if not payload:
        raise ValueError("empty_file: 0 bytes")
    try:
        image = Image.open(io.BytesIO(payload))
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"undecodable_image: {err}") from err
    check_pixels(*image.size, max_pixels, image_size)  # the header's size: nothing decoded yet
    return image


def load_image(image: Image.Image) -> Image.Image:
    """`image` (from `open_image`, maybe given a `draft`) with every pixel decoded: truncated or corrupt data fails
    here, not later. No copy: the file is only bytes in memory.

    Raises:
        ValueError: `"undecodable_image: ..."`.
    """
    try:
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"undecodable_image: {err}") from err
    return image


def to_rgb_or_gray(image: Any) -> Any:
    """A PIL image in any mode as `L` (one-channel modes) or `RGB` (all others) with its colors kept: palettes looked
    up, CMYK/YCbCr/HSV/LAB converted, alpha dropped (as CLIP's own `convert("RGB")`), 16-bit samples scaled to 8
    bits (PIL's convert would clip them at 255). `L` and `RGB` images, and anything not a PIL image, pass as they
    are, so the tensor steps of `build_resize` still map L <-> RGB exactly as before.

    Raises:
        ValueError: `"undecodable_image: ..."` for a mode PIL cannot convert.
    """
    if not isinstance(image, Image.Image) or image.mode in ("L", "RGB"):
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, ... and I (PNG's 16-bit gray in older Pillow): 0..65535
        samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return Image.fromarray(((samples * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8: mode L
    target = "L" if image.mode in GRAY_MODES else "RGB"
    try:
        return image.convert("RGBA").convert(target) if image.mode in ("P", "PA") else image.convert(target)
    except ValueError as err:  # e.g. premultiplied `La`, which no decoder produces
        raise ValueError(f"undecodable_image: image mode {image.mode} cannot be converted to {target}") from err


def build_resize(image_size: int, channels: int) -> v2.Compose:
    """PIL image (any mode) -> (C, S, S) uint8 tensor: channel mode, shorter side resized to S, center crop."""
    from torchvision.transforms import v2

    mode = v2.Grayscale(num_output_channels=1) if channels == 1 else v2.RGB()
    return v2.Compose([to_rgb_or_gray, v2.ToImage(), mode, v2.Resize(image_size, antialias=True),
                       v2.CenterCrop(image_size)])


def channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[tuple[float, ...], ...]:
    """(mean, std) with one value per model channel: one value serves every channel; three RGB values serve a
    1-channel model as their average.

    Raises:
        ValueError: a count other than 1, 3 or `channels`, or a standard deviation <= 0.
    """
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(f"model.image_mean and model.image_std need 1 or 3 values each, got {list(mean)} and "
                         f"{list(std)}")
    if min(std) <= 0:
        raise ValueError(f"model.image_std must be > 0, got {list(std)}")
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * channels, tuple(std) * channels
    return (sum(mean) / 3,), (sum(std) / 3,)


def normalize_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalize a (B, H, W) or (B, C, H, W) uint8 batch (from `build_resize` or the IDX files) to float
    `(x / 255 - mean[c]) / std[c]`, with one `mean`/`std` value per output channel (see `channel_stats`): a gray batch
    is repeated to 3 channels, an RGB batch averaged to 1 (as `fit_pixels` would) before it is normalized."""
    import torch

    if images.ndim == 3:
        images = images[:, None]  # (B, 1, H, W)
    channels = len(mean)
    if images.shape[1] == 1 and channels > 1:
        images = images.expand(-1, channels, -1, -1)
    pixels = images.float().div_(255.0)  # in place from here: one float copy
    if pixels.shape[1] != channels:
        if channels != 1:
            raise ValueError(f"images have {pixels.shape[1]} channels; the model takes {channels}")
        pixels = pixels.mean(dim=1, keepdim=True)
    shape = (1, channels, 1, 1)
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(shape)
    return pixels.sub_(mean_t).div_(std_t)
