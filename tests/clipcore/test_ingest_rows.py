"""One row's image work: a large JPEG decodes at the DCT scale its thumbnail needs (never smaller than it), its
thumbnail has the size Pillow's thumbnail gives the original, and the limits and reasons stay those of full decoding."""

import asyncio
import io

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image

from clipcore.config import IngestConfig
from clipcore.data.images import decode_image, decode_reduced
from clipcore.ingest.rows import encode_image, process_row, thumbnail, thumbnail_size


def jpeg_of(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def photo(width: int, height: int) -> Image.Image:
    """The astronaut photo resized to width x height: real content for the JPEG decoder."""
    return Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("size", [(1030, 515), (1021, 767), (640, 480), (513, 300), (511, 2000), (4000, 3000),
                                  (2048, 9), (300, 300), (512, 512)])
def test_large_jpegs_decode_reduced_but_never_below_their_thumbnail(size):
    payload = jpeg_of(photo(*size))
    image, original = decode_reduced(payload, 50_000_000, 256)
    target = thumbnail_size(*size, 256)
    assert original == size
    assert image.width >= target[0] and image.height >= target[1]
    if max(size) >= 512:  # twice the largest side: at least a 1/2 DCT scale
        assert image.width * 2 <= size[0] + 1 and image.height * 2 <= size[1] + 1
    else:
        assert image.size == size
    encoded, _, width, height = encode_image(thumbnail(image, original, 256), IngestConfig(max_side=256))
    thumb = Image.open(io.BytesIO(encoded))
    full = Image.open(io.BytesIO(payload))
    full.thumbnail((256, 256), Image.Resampling.BILINEAR, reducing_gap=None)  # the same filter on the full decode
    assert thumb.size == (width, height) == full.size == target  # Pillow's own size for the original
    # the same picture: close to Pillow's thumbnail of the fully decoded file (after a JPEG round trip)
    # (a 2048x9 strip's one-pixel-high thumbnail averages the 1/8-scale decode's first row, one 8x8 block's mean, where
    # the full decode weighs all 9 rows: a gradient differs by ~9 levels there)
    limit = 4 if min(target) >= 8 else 12
    assert np.abs(np.asarray(thumb, dtype=int) - np.asarray(full, dtype=int)).mean() < limit


def test_other_formats_and_no_max_side_decode_at_full_size():
    png = io.BytesIO()
    photo(1024, 768).save(png, format="PNG")
    assert decode_reduced(png.getvalue(), 50_000_000, 256)[0].size == (1024, 768)
    payload = jpeg_of(photo(1024, 768))
    assert decode_reduced(payload, 50_000_000, None)[0].size == (1024, 768)
    assert decode_image(payload, 50_000_000).size == (1024, 768)


def test_limits_and_reasons_are_those_of_full_decoding():
    payload = jpeg_of(photo(2000, 1500))
    with pytest.raises(ValueError, match="^too_many_pixels"):  # the header's size counts, not the reduced one
        decode_reduced(payload, 1_000_000, 256)
    with pytest.raises(ValueError, match="^undecodable_image"):
        decode_reduced(payload[: len(payload) // 2], 50_000_000, 256)
    with pytest.raises(ValueError, match="^empty_file"):
        decode_reduced(b"", 50_000_000, 256)


class OneImage:
    """A fetcher that returns the same bytes for every URL."""

    def __init__(self, payload: bytes):
        self.payload = payload

    async def fetch(self, url: str) -> bytes:
        return self.payload


def test_a_large_jpeg_row_records_the_original_size_and_its_thumbnails_phash():
    payload = jpeg_of(photo(1200, 800))
    config = IngestConfig(max_side=256, encode_format="jpg")
    row = {"url": "http://x/a.jpg", "source_error": None}
    fields, (encoded, ext) = asyncio.run(process_row(row, OneImage(payload), config))
    decoded, _ = decode_reduced(payload, config.max_pixels, 256)
    thumb = thumbnail(decoded, (1200, 800), 256)
    assert (fields["original_width"], fields["original_height"]) == (1200, 800)
    assert (fields["width"], fields["height"]) == (256, 171) == Image.open(io.BytesIO(encoded)).size == thumb.size
    assert fields["phash"] == str(imagehash.phash(thumb.convert("L").reduce(2)))  # 171 px high: halved to 85
    distance = imagehash.hex_to_hash(fields["phash"]) - imagehash.phash(Image.open(io.BytesIO(payload)))
    assert distance <= 4  # the full-size picture's hash within a few bits: a near duplicate by any threshold in use
    assert encode_image(thumb, config)[0] == encoded  # deterministic


def run_row(payload: bytes, config: IngestConfig) -> tuple[dict, tuple[bytes, str] | None]:
    return asyncio.run(process_row({"url": "http://x/a.jpg", "source_error": None}, OneImage(payload), config))


def test_a_jpeg_that_fits_is_stored_as_it_came():
    """`skip_reencode` (the default): the stored bytes are the downloaded ones, the sizes those of the picture, and
    the phash (of the luma decoded at a DCT scale) within a few bits of imagehash's phash of the decoded picture."""
    config = IngestConfig(max_side=256, encode_format="jpg")
    for image in (photo(256, 171), photo(200, 256).convert("L"), photo(64, 40)):
        payload = jpeg_of(image)
        fields, (stored, ext) = run_row(payload, config)
        assert (stored, ext) == (payload, "jpg") and fields["status"] == "success"
        assert (fields["width"], fields["height"]) == image.size
        assert (fields["original_width"], fields["original_height"]) == image.size
        reference = imagehash.phash(Image.open(io.BytesIO(payload)))
        assert imagehash.hex_to_hash(fields["phash"]) - reference <= 4, image.size


def test_other_pictures_are_encoded_again():
    """A JPEG to shrink, a CMYK JPEG, a PNG, and any JPEG with `skip_reencode` off are decoded and encoded anew."""
    config = IngestConfig(max_side=256, encode_format="jpg")
    fitting = jpeg_of(photo(256, 171))
    cases = [(jpeg_of(photo(300, 200)), config, (256, 171)),
             (jpeg_of(photo(200, 100).convert("CMYK")), config, (200, 100)),
             (png_of(photo(100, 80)), config, (100, 80)),
             (fitting, IngestConfig(max_side=256, encode_format="jpg", skip_reencode=False), (256, 171)),
             (fitting, IngestConfig(max_side=256, encode_format="png"), (256, 171))]
    for payload, cfg, size in cases:
        fields, (stored, ext) = run_row(payload, cfg)
        assert stored != payload and ext == cfg.encode_format
        decoded = Image.open(io.BytesIO(stored))
        assert decoded.size == size == (fields["width"], fields["height"]) and decoded.mode in ("RGB", "L")


def test_a_broken_jpeg_that_fits_is_still_refused():
    """The gray decode of a JPEG stored as it came reads every byte: truncated or corrupt data is undecodable."""
    config = IngestConfig(max_side=256, encode_format="jpg")
    payload = jpeg_of(photo(256, 171))
    for broken in (payload[: len(payload) // 2], payload[:20], payload[:600] + b"\x00" * (len(payload) - 600)):
        fields, sample = run_row(broken, config)
        assert (fields["status"], fields["error"], sample) == ("failed_to_decode", "undecodable_image", None)
