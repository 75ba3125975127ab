"""Image decoding and preprocessing shared by ingestion, training, evaluation and serving."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # torch and torchvision load lazily: ingestion workers decode with PIL alone
    import torch
    from torchvision.transforms import v2

MEAN, STD = 0.5, 0.5  # maps [0, 1] pixels to [-1, 1]


def decode_image(payload: bytes, max_pixels: int) -> Image.Image:
    """Decode and fully load image bytes.

    Raises:
        ValueError: `"<reason>: <detail>"` with reason `empty_file`, `too_many_pixels` or `undecodable_image`.
    """
    if not payload:
        raise ValueError("empty_file: 0 bytes")
    try:
        with Image.open(io.BytesIO(payload)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise ValueError(f"too_many_pixels: {width}x{height} > {max_pixels}")
            probe.load()  # decodes every pixel: truncated or corrupt data fails here, not later
            return probe.copy()
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"undecodable_image: {err}") from err


def build_resize(image_size: int, channels: int) -> v2.Compose:
    """PIL image -> (C, S, S) uint8 tensor: channel mode, shorter side resized to S, center crop."""
    from torchvision.transforms import v2

    mode = v2.Grayscale(num_output_channels=1) if channels == 1 else v2.RGB()
    return v2.Compose([v2.ToImage(), mode, v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Normalize a (B, H, W) or (B, C, H, W) uint8 batch (from `build_resize` or the IDX files) to the model's
    float input."""
    if images.ndim == 3:
        images = images[:, None]  # (B, 1, H, W)
    return (images.float() / 255.0 - MEAN) / STD
