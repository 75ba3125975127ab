"""The registered pyfunc (pipelines/clip_pyfunc.py, loaded through MLflow with its signature) keeps the DESIGN.md
contract and refuses mixed, null and oversized inputs with a clear error naming the row."""

import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.tracking import PYFUNC_CODE, model_signature
from tests.conftest import tiny_checkpoint


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny RGB checkpoint saved as the project's pyfunc and loaded back through MLflow."""
    root = tmp_path_factory.mktemp("served")
    tiny_checkpoint(root / "checkpoint", image_size=32, channels=3)
    mlflow.pyfunc.save_model(path=str(root / "model"), python_model=str(PYFUNC_CODE), signature=model_signature(),
                             artifacts={"checkpoint": str(root / "checkpoint")}, pip_requirements=["torch"])
    return mlflow.pyfunc.load_model(str(root / "model"))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


RGB = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)))


def test_contract_images_texts_and_labels(served):
    cmyk = encoded(Image.open(io.BytesIO(RGB)).convert("CMYK"), "JPEG")
    image_emb = served.predict(pd.DataFrame({"image": [RGB, cmyk]}))
    text_emb = served.predict(pd.DataFrame({"text": ["a coat", ""]}))
    assert image_emb.shape == (2, 16) and text_emb.shape == (2, 16)
    assert np.allclose(np.linalg.norm(image_emb, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(text_emb, axis=1), 1, atol=1e-5)
    probs = served.predict(pd.DataFrame({"image": [RGB]}), params={"labels": ["coat", "bag"]})
    assert list(probs.columns) == ["coat", "bag", "label"]
    assert np.isclose(probs[["coat", "bag"]].to_numpy().sum(), 1, atol=1e-5)
    assert probs["label"][0] == ("coat" if probs["coat"][0] > probs["bag"][0] else "bag")


@pytest.mark.parametrize(("frame", "params", "message"), [
    ({"image": [RGB], "text": ["a coat"]}, None, "exactly one of the columns `image` .* or `text`"),
    ({"caption": ["a coat"]}, None, "exactly one of the columns"),
    ({"text": ["a coat", None]}, None, "^row 1: `text` must be a string, got a missing value$"),
    ({"text": ["a coat", b"a bag"]}, None, "^row 1: `text` must be a string, got bytes b'a bag'$"),
    ({"image": [RGB, None]}, None, "^row 1: `image` must be PNG/JPEG bytes, got a missing value$"),
    ({"image": [RGB, b"junk"]}, None, "^row 1: undecodable_image"),
    ({"image": [encoded(Image.new("L", (1_000_000, 1)))]}, None, "^row 0: too_many_pixels: 1000000x1 resizes"),
    ({"text": ["a coat"]}, {"labels": ["coat"]}, "`labels` classify images"),
])
def test_bad_requests_are_refused_clearly(served, frame, params, message):
    with pytest.raises(ValueError, match=message):
        served.predict(pd.DataFrame(frame), params=params)
