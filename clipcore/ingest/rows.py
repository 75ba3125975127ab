"""One input row -> its manifest fields and, when it succeeded, the re-encoded image: fetch, hash, decode, resize,
encode. Never raises: every failure is a status and a reason on the row."""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from clipcore.config import IngestConfig
from clipcore.data.images import decode_image
from clipcore.ingest.fetch import Fetcher, FetchError
from clipcore.ingest.phash import perceptual_hash

STATUS_INPUT, STATUS_DOWNLOAD, STATUS_DECODE = "invalid_row", "failed_to_download", "failed_to_decode"
STATUS_PROCESS = "failed_to_process"  # an unexpected error on this row; the reason is the exception's class


def encode_image(image: Image.Image, config: IngestConfig) -> tuple[bytes, str, int, int]:
    """Downscale to `max_side` (keeping the aspect ratio) and re-encode; returns (bytes, ext, width, height)."""
    if max(image.size) > config.max_side:
        image.thumbnail((config.max_side, config.max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if config.encode_format == "png":
        if image.mode not in ("L", "RGB", "RGBA", "LA"):
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        image.save(buf, format="PNG")
        ext = "png"
    elif config.encode_format == "jpg":
        image.convert("L" if image.mode in ("L", "LA", "1") else "RGB").save(buf, format="JPEG",
                                                                              quality=config.jpeg_quality)
        ext = "jpg"
    else:
        raise ValueError(f"ingest.encode_format must be jpg or png, not {config.encode_format!r}")
    return buf.getvalue(), ext, image.width, image.height


def process_row(row: dict, fetcher: Fetcher, config: IngestConfig) -> tuple[dict, tuple[bytes, str] | None]:
    """One row -> (manifest fields, (encoded bytes, extension) when it succeeded). Never raises.

    An unexpected exception (a decoder or encoder bug, a filesystem error no reason foresaw) becomes the row's
    status `failed_to_process` with the exception's class as reason; the shard's other rows go on.
    """
    try:
        return _process_row(row, fetcher, config)
    except Exception as err:  # the row is the unit of failure: one bad row must never cost the shard its manifest
        return {"status": STATUS_PROCESS, "error": type(err).__name__}, None


def _process_row(row: dict, fetcher: Fetcher, config: IngestConfig) -> tuple[dict, tuple[bytes, str] | None]:
    out = {"status": STATUS_INPUT, "error": row["source_error"]}
    if row["source_error"] is None:
        try:
            payload = fetcher.fetch(row["url"])
        except FetchError as err:
            return {"status": STATUS_DOWNLOAD, "error": err.reason}, None
        out["sha256"] = hashlib.sha256(payload).hexdigest()
        try:
            image = decode_image(payload, config.max_pixels)
        except ValueError as err:
            return {**out, "status": STATUS_DECODE, "error": str(err).split(":")[0]}, None
        out.update(original_width=image.width, original_height=image.height, phash=perceptual_hash(image))
        encoded, ext, width, height = encode_image(image, config)
        out.update(width=width, height=height, status="success", error=None)
        return out, (encoded, ext)
    return out, None


