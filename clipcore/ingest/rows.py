"""One input row -> its manifest fields and, when it succeeded, the image to store: fetch, hash, decode, resize,
encode (or, for a JPEG that already fits, its bytes as they came). Never raises: every failure is a status and a
reason on the row."""

from __future__ import annotations

import hashlib
import io
import math

from PIL import Image

from clipcore.config import IngestConfig
from clipcore.data.images import draft_thumbnail, load_image, open_image
from clipcore.ingest.fetch import Fetcher, FetchError
from clipcore.ingest.phash import HASHED_SIDE, picture_hash

STATUS_INPUT, STATUS_DOWNLOAD, STATUS_DECODE = "invalid_row", "failed_to_download", "failed_to_decode"
STATUS_PROCESS = "failed_to_process"  # an unexpected error on this row; the reason is the exception's class


def thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size `Image.thumbnail((max_side, max_side))` gives a `width` x `height` image (Pillow's rounding)."""
    if width <= max_side and height <= max_side:
        return width, height
    aspect = width / height
    if aspect <= 1:  # max_side / max_side >= aspect: the height is the one that fits
        return max(min(math.floor(max_side * aspect), math.ceil(max_side * aspect),
                       key=lambda n: abs(aspect - n / max_side)), 1), max_side
    return max_side, max(min(math.floor(max_side / aspect), math.ceil(max_side / aspect),
                             key=lambda n: 0 if n == 0 else abs(aspect - max_side / n)), 1)


THUMBNAIL_FILTER = Image.Resampling.BILINEAR
"""Pillow's antialiased bilinear (a triangle filter as wide as the scale), the filter training resizes with
(torchvision's `Resize(antialias=True)`): a picture shrunk to fit `max_side` is cropped and resized again there.
After a DCT-scale decode less than a halving is left, where BICUBIC costs 1.6x its time and LANCZOS 2.3x (1.06, 1.74
and 2.47 ms, medians over 60 web-sized JPEGs) for detail a 224-px crop hardly keeps; area averaging (BOX, 0.70 ms)
degrades to nearest-pixel sampling at such small factors."""


def thumbnail(image: Image.Image, original: tuple[int, int], max_side: int) -> Image.Image:
    """`image` (decoded at `draft_thumbnail`'s scale from a file of `original` size) shrunk to fit `max_side`, at
    the size `Image.thumbnail` gives the original, with `THUMBNAIL_FILTER`. An image decoded at a DCT scale is
    resized over the original's area (the box `Image.thumbnail` uses after its own draft)."""
    if image.size == original:
        return fit(image, max_side)
    scale = next(s for s in (2, 4, 8) if image.size == (-(-original[0] // s), -(-original[1] // s)))
    return image.resize(thumbnail_size(*original, max_side), THUMBNAIL_FILTER,
                        box=(0, 0, original[0] / scale, original[1] / scale))


def fit(image: Image.Image, max_side: int) -> Image.Image:
    """`image` shrunk to fit `max_side` (its aspect ratio kept, never enlarged) with `THUMBNAIL_FILTER`, after a
    box reduction by an integer factor while more than twice the size is left (`reducing_gap`: what `Image.thumbnail`
    does; a PNG ten times too large costs little more than its final size)."""
    if max(image.size) <= max_side:
        return image
    return image.resize(thumbnail_size(*image.size, max_side), THUMBNAIL_FILTER, reducing_gap=2.0)


def encode_image(image: Image.Image, config: IngestConfig) -> tuple[bytes, str, int, int]:
    """Downscale to `max_side` (keeping the aspect ratio) and re-encode; returns (bytes, ext, width, height)."""
    image = fit(image, config.max_side)
    buf = io.BytesIO()
    if config.encode_format == "png":
        if image.mode not in ("L", "RGB", "RGBA", "LA"):
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        image.save(buf, format="PNG")
        ext = "png"
    elif config.encode_format == "jpg":
        mode = "L" if image.mode in ("L", "LA", "1") else "RGB"
        # no copy when the mode is already right: convert() to the same mode would copy every pixel
        (image if image.mode == mode else image.convert(mode)).save(buf, format="JPEG", quality=config.jpeg_quality)
        ext = "jpg"
    else:
        raise ValueError(f"ingest.encode_format must be jpg or png, not {config.encode_format!r}")
    return buf.getvalue(), ext, image.width, image.height


async def process_row(row: dict, fetcher: Fetcher, config: IngestConfig) -> tuple[dict, tuple[bytes, str] | None]:
    """One row -> (manifest fields, (stored bytes, extension) when it succeeded). Never raises.

    An unexpected exception (a decoder or encoder bug, a filesystem error no reason foresaw) becomes the row's
    status `failed_to_process` with the exception's class as reason; the shard's other rows go on.
    """
    try:
        if row["source_error"] is not None:
            return {"status": STATUS_INPUT, "error": row["source_error"]}, None
        try:
            payload = await fetcher.fetch(row["url"])
        except FetchError as err:
            return {"status": STATUS_DOWNLOAD, "error": err.reason}, None
        return process_image(payload, config)  # on the event loop's thread: one worker, one thread doing CPU work
    except Exception as err:  # the row is the unit of failure: one bad row must never cost the shard its manifest
        return {"status": STATUS_PROCESS, "error": type(err).__name__}, None


def process_image(payload: bytes, config: IngestConfig) -> tuple[dict, tuple[bytes, str] | None]:
    """A fetched row's bytes -> (manifest fields, (stored bytes, extension) when they are a picture): hash, decode,
    resize, phash, encode; or, for a JPEG stored as it came (`stored_as_is`), hash, decode in gray for the phash."""
    out = {"sha256": hashlib.sha256(payload).hexdigest()}
    try:
        image = open_image(payload, config.max_pixels)
        width, height = image.size
        if stored_as_is(image, config):
            out["phash"] = picture_hash(load_image(gray_draft(image)))  # decoding checks every byte of it, too
            out.update(original_width=width, original_height=height, width=width, height=height, status="success",
                       error=None)
            return out, (payload, "jpg")
        image = load_image(draft_thumbnail(image, config.max_side))  # a large JPEG: at the DCT scale it needs
    except ValueError as err:
        return {**out, "status": STATUS_DECODE, "error": str(err).split(":")[0]}, None
    image = thumbnail(image, (width, height), config.max_side)
    # the phash of the stored picture: a large image's costs a thumbnail's, not its own
    out.update(original_width=width, original_height=height, phash=picture_hash(image))
    encoded, ext, width, height = encode_image(image, config)
    out.update(width=width, height=height, status="success", error=None)
    return out, (encoded, ext)


def stored_as_is(image: Image.Image, config: IngestConfig) -> bool:
    """Whether an opened (not yet decoded) image is stored byte for byte (`ingest.skip_reencode`): a baseline or
    progressive JPEG in color or gray that already fits `max_side`, when jpg is the format stored. CMYK JPEGs, other
    formats and pictures to shrink are encoded again."""
    return (config.skip_reencode and config.encode_format == "jpg" and image.format == "JPEG"
            and image.mode in ("RGB", "L") and max(image.size) <= config.max_side)


def gray_draft(image: Image.Image) -> Image.Image:
    """An opened JPEG set to decode in gray (libjpeg decodes the luma channel alone) at the smallest DCT scale that
    leaves its short side at least `HASHED_SIDE` px: what `picture_hash` reduces a picture to anyway."""
    width, height = image.size
    short = min(width, height)
    target = (width, height) if short <= HASHED_SIDE else (-(-width * HASHED_SIDE // short),
                                                           -(-height * HASHED_SIDE // short))
    image.draft("L", target)
    return image
