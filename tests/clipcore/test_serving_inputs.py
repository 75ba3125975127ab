"""Serving inputs: every PIL mode embeds as the same picture in RGB or L would, a long thin image is refused from its
header with bounded memory, and bad requests are refused naming the row."""

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.config import ModelConfig
from clipcore.data.images import check_pixels, resized_size
from clipcore.evaluate.predict import (
    MAX_PIXELS,
    check_images,
    check_labels,
    check_texts,
    embed_image_bytes,
    input_column,
)
from clipcore.model.clip_model import build_model
from clipcore.model.tokenizer import train_tokenizer


def tiny_model(channels: int):
    tokenizer = train_tokenizer(["a photo of a coat", "a bag"] * 20, vocab_size=300, context_length=8)
    config = ModelConfig(image_size=32, patch_size=8, channels=channels, vision_width=32, vision_heads=2,
                         text_width=32, text_heads=2, embed_dim=16, vocab_size=300, context_length=8)
    torch.manual_seed(0)
    return build_model(config, tokenizer).eval()


@pytest.fixture(scope="module", params=[1, 3], ids=["gray_model", "rgb_model"])
def model(request):
    return tiny_model(request.param)


def picture(width: int = 64, height: int = 48) -> np.ndarray:
    """(H, W, 3) uint8: color gradients under a checkerboard, so colors and edges both matter."""
    y, x = np.mgrid[0:height, 0:width]
    red, green = 255 * x / (width - 1), 255 * y / (height - 1)
    blue = ((x // 8 + y // 8) % 2) * 200 + 30
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def embed(model, payload: bytes) -> torch.Tensor:
    return embed_image_bytes(model, [payload])[0]


def test_cmyk_jpeg_embeds_like_the_same_picture_in_rgb(model):
    rgb = Image.fromarray(picture())
    cmyk = encoded(rgb.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"  # a real CMYK JPEG, refused before
    reference = embed(model, encoded(rgb))
    # 0.99999 measured (JPEG loss); the inverted picture scores about 0.91
    assert torch.nn.functional.cosine_similarity(embed(model, cmyk), reference, dim=0) > 0.999


@pytest.mark.parametrize("mode", ["P", "RGBA", "YCbCr"])
def test_color_modes_embed_exactly_as_their_rgb_picture(model, mode):
    rgb = Image.fromarray(picture())
    if mode == "P":
        image = rgb.quantize(colors=32)  # palette indices: embedding them as gray levels was wrong
        rgb = image.convert("RGB")  # the picture the palette shows
    elif mode == "RGBA":
        alpha = Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8))
        image = rgb.copy()
        image.putalpha(alpha)
    else:
        image = rgb.convert("YCbCr")
        rgb = image.convert("RGB")
    payload = encoded(image, "TIFF" if mode == "YCbCr" else "PNG")  # PNG cannot hold YCbCr
    assert Image.open(io.BytesIO(payload)).mode == mode
    assert torch.equal(embed(model, payload), embed(model, encoded(rgb)))


def test_gray_modes_embed_exactly_as_their_8_bit_picture(model):
    gray = picture()[..., 0]  # (H, W) uint8
    reference = embed(model, encoded(Image.fromarray(gray)))
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)  # 0..65535: PIL's own convert would clip at 255
    with_alpha = Image.fromarray(gray).convert("LA")
    for image in (sixteen, with_alpha):
        payload = encoded(image)
        assert Image.open(io.BytesIO(payload)).mode in ("I;16", "LA")
        assert torch.equal(embed(model, payload), reference)
    bits = gray > 127
    assert torch.equal(embed(model, encoded(Image.fromarray(bits))),
                       embed(model, encoded(Image.fromarray(bits.astype(np.uint8) * 255))))


def test_long_thin_image_is_refused_from_its_header():
    tiny = encoded(Image.new("L", (1_000_000, 1)))
    assert len(tiny) < 2_000  # 1 KB on disk: only its resize for the model is large (28 x 28,000,000)
    with pytest.raises(ValueError, match=r"^row 0: too_many_pixels: 1000000x1 resizes to 32000000x32 for the model"):
        embed_image_bytes(tiny_model(1), [tiny])


def test_pixel_limits_from_the_header_size():
    assert resized_size(1_000_000, 1, 28) == (28_000_000, 28) and resized_size(30, 60, 28) == (28, 56)
    check_pixels(7_000, 7_000, MAX_PIXELS, 224)  # a large photo passes
    for width, height in [(7_072, 7_072), (1, 1_000_000), (300_000, 3)]:
        with pytest.raises(ValueError, match="^too_many_pixels"):
            check_pixels(width, height, MAX_PIXELS, 28)


MEMORY_PROBE = textwrap.dedent("""
    import io, json, resource, sys
    from PIL import Image
    sys.path.insert(0, sys.argv[1])
    from test_serving_inputs import encoded, picture, tiny_model
    from clipcore.evaluate.predict import embed_image_bytes

    model = tiny_model(1)
    embed_image_bytes(model, [encoded(Image.fromarray(picture()))])  # every lazy import and buffer before measuring
    bomb = encoded(Image.new("L", (1_000_000, 1)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    try:
        embed_image_bytes(model, [bomb])
        error = None
    except ValueError as err:
        error = str(err)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"error": error, "peak_growth_kib": after - before}))
""")


def test_long_thin_image_costs_bounded_memory():
    """In a fresh process: the peak resident size must not grow (it grew by 5.3 GB when the image was resized)."""
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(Path(__file__).parent)], capture_output=True,
                           text=True, check=True)
    result = json.loads(probe.stdout.splitlines()[-1])
    assert result["error"].startswith("row 0: too_many_pixels")
    assert result["peak_growth_kib"] < 64 * 1024


def test_request_values_are_checked_naming_the_row():
    assert input_column(["image"]) == "image" and input_column(["text", "id"]) == "text"
    for columns in (["image", "text"], ["id"]):
        with pytest.raises(ValueError, match="exactly one of the columns"):
            input_column(columns)
    assert check_texts(["a", np.str_("b")]) == ["a", "b"]
    for value, described in [(None, "a missing value"), (float("nan"), "a missing value"), (b"x", "bytes b'x'"),
                             (3, "int 3")]:
        with pytest.raises(ValueError, match=f"^row 1: `text` must be a string, got {described}$"):
            check_texts(["ok", value])
    assert check_images([b"x", bytearray(b"y")]) == [b"x", b"y"]
    for value, described in [(None, "a missing value"), ("abc", "str 'abc'")]:
        with pytest.raises(ValueError, match=f"^row 2: `image` must be PNG/JPEG bytes, got {described}$"):
            check_images([b"x", b"y", value])
    with pytest.raises(ValueError, match="no rows"):
        check_texts([])
    assert check_labels(None) == [] and check_labels(["coat", "bag"]) == ["coat", "bag"]
    for labels in (["coat", "coat"], ["coat", ""], ["coat", 3]):
        with pytest.raises(ValueError, match="params `labels`"):
            check_labels(labels)


def test_undecodable_bytes_name_the_row():
    good = encoded(Image.fromarray(picture()))
    with pytest.raises(ValueError, match="^row 1: undecodable_image"):
        embed_image_bytes(tiny_model(1), [good, b"not an image"])
